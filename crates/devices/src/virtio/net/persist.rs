//! The saved state of a virtio-net device.
//!
//! Besides the core's queue positions, the device may hold RX chains it popped but has not
//! filled yet (with MRG_RXBUF a frame waits until its chains add up), and the frame read from
//! the tap that waits for them. Both are saved, so a restored device fills the same chains with
//! the same frame. A TX frame that waits (tap full, rate limiter) is still in the ring.

use serde::{Deserialize, Serialize};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::device::{max_held, Held, RxChain, RxState};
use virtio_queue::QueueT;

use super::{Net, MAX_BUFFER_LEN, RX_QUEUE, VNET_HDR_LEN};
use crate::persist::{Persist, PersistError};
use crate::virtio::CoreState;

/// An RX chain the device holds: its head and device-writable buffers (address, length).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldChain {
    /// The head descriptor's index.
    pub head: u16,
    /// The chain's buffers.
    pub bufs: Vec<(u64, u32)>,
}

/// What a virtio-net device saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Activation, accepted features, queue positions.
    pub core: CoreState,
    /// The MAC address the guest saw.
    pub mac: [u8; 6],
    /// RX chains popped and not yet used, in order.
    pub held: Vec<HeldChain>,
    /// The frame (vnet header first) read from the tap and waiting for guest buffers.
    pub rx_frame: Option<Vec<u8>>,
}

impl Persist for Net {
    const NAME: &'static str = "virtio-net";
    const STATE_VERSION: u16 = 1;
    type State = NetState;

    fn save(&self) -> NetState {
        NetState {
            core: self.core.save(),
            mac: self.mac(),
            held: self
                .held
                .iter()
                .map(|c| HeldChain {
                    head: c.head,
                    bufs: c.bufs.iter().map(|&(a, l)| (a.0, l)).collect(),
                })
                .collect(),
            rx_frame: self.rx_pending.map(|len| self.rx_buf[..len].to_vec()),
        }
    }

    fn restore(&mut self, state: NetState) -> Result<(), PersistError> {
        let mismatch = |why: String| PersistError::Mismatch {
            device: Self::NAME,
            why,
        };
        if state.mac != self.mac() {
            return Err(mismatch(format!(
                "'{}': saved MAC {}, the device has {}",
                self.tap_name(),
                super::format_mac(&state.mac),
                super::format_mac(&self.mac())
            )));
        }
        if let Some(frame) = &state.rx_frame {
            if !(VNET_HDR_LEN..=MAX_BUFFER_LEN).contains(&frame.len()) {
                return Err(mismatch(format!(
                    "pending RX frame of {} bytes (from {VNET_HDR_LEN} to {MAX_BUFFER_LEN})",
                    frame.len()
                )));
            }
        }
        let held = self.check_held(&state)?;
        // RX holds `held`; a TX frame that waits stays in the ring.
        let mut in_flight = [0; 2];
        in_flight[RX_QUEUE] = held.len();
        state.core.check_held(Self::NAME, &in_flight)?;
        self.core.restore(state.core)?;
        self.held = held;
        self.rx_pending = state.rx_frame.map(|frame| {
            self.rx_buf[..frame.len()].copy_from_slice(&frame);
            frame.len()
        });
        self.rx_state = RxState::Stopped;
        self.tx_blocked = false;
        self.tx_throttled = false;
        Ok(())
    }
}

impl Net {
    /// The saved held chains, checked against the queue size and guest memory (the core's
    /// activation must match, checked by the core's restore).
    fn check_held(&self, state: &NetState) -> Result<Held, PersistError> {
        let mismatch = |why: String| PersistError::Mismatch {
            device: Self::NAME,
            why,
        };
        let active = self.core.active.as_ref();
        let mut held = Held::default();
        for chain in &state.held {
            let Some((mem, rx)) = active.and_then(|a| Some((&a.mem, a.queues.get(RX_QUEUE)?)))
            else {
                return Err(mismatch("held RX chains in a device not activated".into()));
            };
            let (max_chains, max_bufs) = max_held(rx.size());
            // The live device's own rule (`deliver`): it takes another chain only while it holds
            // fewer than the limits, whatever that chain's size.
            if held.len() >= max_chains
                || held.bufs() >= max_bufs
                || chain.bufs.len() > usize::from(rx.size())
            {
                return Err(mismatch(format!(
                    "more than {max_chains} held RX chains or {max_bufs} buffers in them"
                )));
            }
            if chain.head >= rx.size()
                || chain.bufs.is_empty()
                || held.iter().any(|h: &RxChain| h.head == chain.head)
            {
                return Err(mismatch(format!(
                    "held RX chain {} is not valid",
                    chain.head
                )));
            }
            let mut capacity = 0usize;
            for &(addr, len) in &chain.bufs {
                if !mem.check_range(GuestAddress(addr), len as usize, Permissions::Write) {
                    return Err(mismatch(format!(
                        "held RX chain {}: buffer {addr:#x}+{len:#x} is outside guest memory",
                        chain.head
                    )));
                }
                capacity = capacity.saturating_add(len as usize);
            }
            if capacity == 0 {
                return Err(mismatch(format!(
                    "held RX chain {} has no room",
                    chain.head
                )));
            }
            held.push_back(RxChain {
                head: chain.head,
                bufs: chain
                    .bufs
                    .iter()
                    .filter(|&&(_, l)| l > 0)
                    .map(|&(a, l)| (GuestAddress(a), l))
                    .collect(),
                capacity,
            });
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;
    use std::sync::{Arc, Mutex};

    use vm_memory::Bytes;

    use super::*;
    use crate::persist::test_util::round_trip;
    use crate::virtio::net::{Tap, VIRTIO_NET_F_MRG_RXBUF};
    use crate::virtio::persist::test_util::{Driver, DATA};
    use crate::virtio::{MmioTransport, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

    const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];

    /// A NIC on one end of a datagram socket pair (frames keep their boundaries, as on a
    /// tap); the other end is the peer.
    fn net() -> (UnixDatagram, Arc<Mutex<Net>>) {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let net = Net::new(Tap::from_fd(OwnedFd::from(ours), "test0"), MAC).unwrap();
        (peer, Arc::new(Mutex::new(net)))
    }

    #[test]
    fn an_idle_device_round_trips() {
        let (_p1, a) = net();
        let (_p2, b) = net();
        let state = round_trip(&*a.lock().unwrap(), &mut *b.lock().unwrap());
        assert!(state.held.is_empty() && state.rx_frame.is_none());
    }

    #[test]
    fn a_frame_waiting_for_buffers_is_delivered_after_restore() {
        let (peer, a) = net();
        let features = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_NET_F_MRG_RXBUF);
        let mut driver = Driver::new(a.clone(), features);
        // A 52-byte frame (header included) and one 32-byte buffer: the device holds the chain and the frame.
        let frame: Vec<u8> = (0..52u8).collect();
        assert_eq!(peer.send(&frame).unwrap(), 52);
        driver.post(RX_QUEUE, &[(DATA, 32, true)]);
        a.lock().unwrap().process_rx();
        assert_eq!(driver.used_idx(RX_QUEUE), 0);

        let (_p2, b) = net();
        let mut transport = MmioTransport::new(driver.mem.clone(), b.clone()).unwrap();
        round_trip(&driver.transport, &mut transport);
        let state = round_trip(&*a.lock().unwrap(), &mut *b.lock().unwrap());
        assert_eq!(state.held.len(), 1);
        assert_eq!(state.rx_frame.as_deref(), Some(&frame[..]));
        driver.transport = transport;

        // The restored device fills the held chain and a new one with the same frame.
        driver.post(RX_QUEUE, &[(DATA + 0x100, 64, true)]);
        b.lock().unwrap().process_rx();
        assert_eq!(driver.used_idx(RX_QUEUE), 2);
        assert_eq!(driver.used(RX_QUEUE, 0), (0, 32));
        assert_eq!(driver.used(RX_QUEUE, 1), (1, 20));
        let mut got = [0u8; 52];
        driver
            .mem
            .read_slice(&mut got[..32], GuestAddress(DATA))
            .unwrap();
        driver
            .mem
            .read_slice(&mut got[32..], GuestAddress(DATA + 0x100))
            .unwrap();
        assert_eq!(&got[..10], &frame[..10]);
        assert_eq!(&got[10..12], &2u16.to_le_bytes(), "num_buffers");
        assert_eq!(&got[12..], &frame[12..]);
    }

    #[test]
    fn held_chains_in_an_idle_device_are_refused() {
        let (_p1, a) = net();
        let mut state = a.lock().unwrap().save();
        state.held.push(HeldChain {
            head: 0,
            bufs: vec![(DATA, 32)],
        });
        assert!(a.lock().unwrap().restore(state).is_err());
    }

    /// The device holds only chains with room (an empty one is returned at once when popped):
    /// a held chain of zero bytes could never take a frame, and without MRG_RXBUF every frame
    /// would be dropped against it while it stays held.
    #[test]
    fn a_held_chain_without_room_is_refused() {
        let (_p, a) = net();
        let _driver = Driver::new(a.clone(), 1 << VIRTIO_F_VERSION_1);
        let mut state = a.lock().unwrap().save();
        state.held.push(HeldChain {
            head: 0,
            bufs: vec![(DATA, 0)],
        });
        state.core.queues[RX_QUEUE].next_avail += 1;
        let err = a.lock().unwrap().restore(state);
        assert!(matches!(err, Err(PersistError::Mismatch { .. })), "{err:?}");
    }

    /// A descriptor is the head of one chain the device holds at most: the same head twice
    /// (or more held chains than the queue has entries) would have the device return a chain
    /// the driver never made available, and put more entries in the used ring than the driver
    /// posted.
    #[test]
    fn a_head_held_twice_is_refused() {
        let (_p, a) = net();
        let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF);
        let _driver = Driver::new(a.clone(), features);
        let mut state = a.lock().unwrap().save();
        for _ in 0..2 {
            state.held.push(HeldChain {
                head: 3,
                bufs: vec![(DATA, 32)],
            });
        }
        state.rx_frame = Some(vec![0; 60]);
        state.core.queues[RX_QUEUE].next_avail += 2;
        let err = a.lock().unwrap().restore(state);
        assert!(format!("{err:?}").contains("held RX chain 3"), "{err:?}");
        assert!(matches!(err, Err(PersistError::Mismatch { .. })), "{err:?}");
    }

    /// The device never holds more buffers than [`max_held`] allows for one frame, nor a chain
    /// longer than the queue; a state with more (a crafted buffer list of any length) is refused,
    /// and a state the live device reaches (chains taken while it held fewer than the limits)
    /// is not.
    #[test]
    fn more_held_buffers_than_the_device_holds_are_refused() {
        let (_p, a) = net();
        let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF);
        let _driver = Driver::new(a.clone(), features);
        let mut state = a.lock().unwrap().save();
        let size = a.lock().unwrap().core.queue(RX_QUEUE).unwrap().1.size();
        let (_, max_bufs) = max_held(size);
        state.held.push(HeldChain {
            head: 0,
            bufs: (0..=max_bufs as u64).map(|i| (DATA + i, 1)).collect(),
        });
        state.rx_frame = Some(vec![0; 60]);
        state.core.queues[RX_QUEUE].next_avail += 1;
        let err = a.lock().unwrap().restore(state.clone());
        assert!(format!("{err:?}").contains("buffers"), "{err:?}");
        assert!(matches!(err, Err(PersistError::Mismatch { .. })), "{err:?}");

        // What the live device can reach: chains of one buffer up to one below the limit, then
        // one long chain (as long as the queue) on top.
        state.held.clear();
        for head in 0..(max_bufs as u16 - 1).min(size / 2) {
            state.held.push(HeldChain {
                head,
                bufs: vec![(DATA + u64::from(head), 1)],
            });
        }
        let n = state.held.len() as u16;
        state.held.push(HeldChain {
            head: n,
            bufs: (0..u64::from(size))
                .map(|i| (DATA + 0x1000 + i, 1))
                .collect(),
        });
        state.core.queues[RX_QUEUE].next_avail = state.core.queues[RX_QUEUE].next_used + n + 1;
        let restored = a.lock().unwrap().restore(state);
        assert!(restored.is_ok(), "{restored:?}");
    }
}
