//! The saved state of a virtio-console device: besides the core's queue positions, the bytes in
//! flight. Host input read but not yet in guest buffers, guest output taken from the guest but
//! not yet by the backend, and the transmit chain being written (with how far), so a restored
//! device neither loses nor repeats a byte. The size the guest saw is saved too.

use serde::{Deserialize, Serialize};
use vm_memory::GuestAddress;

use super::device::TxChain;
use super::{Console, TX_QUEUE};
use crate::persist::{Persist, PersistError};
use crate::virtio::CoreState;
use virtio_queue::QueueT;

/// The transmit chain being written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxChainState {
    /// The head descriptor's index.
    pub head: u16,
    /// Its device-readable buffers (address, length).
    pub segs: Vec<(u64, u32)>,
    /// The buffer being written.
    pub seg: usize,
    /// How far into it.
    pub off: u32,
}

/// What a virtio-console device saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// Activation, accepted features, queue positions.
    pub core: CoreState,
    /// The (cols, rows) in the config space.
    pub size: (u16, u16),
    /// Host input not yet delivered.
    pub rx_pending: Vec<u8>,
    /// Guest output not yet taken by the backend.
    pub tx_pending: Vec<u8>,
    /// The transmit chain being written.
    pub tx_chain: Option<TxChainState>,
}

impl Persist for Console {
    const NAME: &'static str = "virtio-console";
    const STATE_VERSION: u16 = 1;
    type State = ConsoleState;

    fn save(&self) -> ConsoleState {
        ConsoleState {
            core: self.core.save(),
            size: self.size(),
            rx_pending: self.rx_pending.clone(),
            tx_pending: self
                .tx_stage
                .get(self.tx_pos..)
                .unwrap_or_default()
                .to_vec(),
            tx_chain: self.tx_chain.as_ref().map(|c| TxChainState {
                head: c.head,
                segs: c.segs.iter().map(|&(a, l)| (a.0, l)).collect(),
                seg: c.seg,
                off: c.off,
            }),
        }
    }

    fn restore(&mut self, state: ConsoleState) -> Result<(), PersistError> {
        let mismatch = |why: String| PersistError::Mismatch {
            device: Self::NAME,
            why,
        };
        if let Some(chain) = &state.tx_chain {
            // The transport's restore activated the core with the queues the driver configured.
            let size = self
                .core
                .active
                .as_ref()
                .and_then(|a| a.queues.get(TX_QUEUE))
                .map_or(0, |q| q.size());
            if !state.core.activated || chain.head >= size || chain.seg > chain.segs.len() {
                return Err(mismatch(format!(
                    "transmit chain {} (buffer {} of {}) does not fit",
                    chain.head,
                    chain.seg,
                    chain.segs.len()
                )));
            }
        }
        // Receive chains are filled as they are taken; the transmit chain being written is held.
        let mut in_flight = [0; 2];
        in_flight[TX_QUEUE] = usize::from(state.tx_chain.is_some());
        state.core.check_held(Self::NAME, &in_flight)?;
        self.core.restore(state.core)?;
        self.set_size(state.size.0, state.size.1);
        self.rx_pending = state.rx_pending;
        self.tx_stage = state.tx_pending;
        self.tx_pos = 0;
        self.tx_chain = state.tx_chain.map(|c| TxChain {
            head: c.head,
            segs: c
                .segs
                .into_iter()
                .map(|(a, l)| (GuestAddress(a), l))
                .collect(),
            seg: c.seg,
            off: c.off,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    use vm_memory::Bytes;

    use super::*;
    use crate::chardev::Chardev;
    use crate::persist::test_util::round_trip;
    use crate::virtio::console::{RX_QUEUE, TX_QUEUE};
    use crate::virtio::persist::test_util::{Driver, DATA};
    use crate::virtio::{MmioTransport, VIRTIO_F_VERSION_1};

    /// A console writing into one end of a stream socket pair; the other end reads its output.
    fn console() -> (UnixStream, Arc<Mutex<Console>>) {
        let (ours, out) = UnixStream::pair().unwrap();
        out.set_nonblocking(true).unwrap();
        let chardev = Chardev::writer("console", Box::new(ours)).unwrap();
        let console = Console::with_size(chardev, Some((80, 25))).unwrap();
        (out, Arc::new(Mutex::new(console)))
    }

    #[test]
    fn an_idle_device_round_trips() {
        let (_o1, a) = console();
        let (_o2, b) = console();
        a.lock().unwrap().set_size(100, 40);
        let state = round_trip(&*a.lock().unwrap(), &mut *b.lock().unwrap());
        assert_eq!(state.size, (100, 40));
        assert_eq!(b.lock().unwrap().size(), (100, 40));
    }

    #[test]
    fn bytes_in_flight_reach_their_ends_after_restore() {
        let (_o1, a) = console();
        let mut driver = Driver::new(a.clone(), 1 << VIRTIO_F_VERSION_1);
        // The device took a transmit chain and wrote 2 of its bytes; "ab" wait for the
        // backend; "hi" from the host wait for a receive buffer.
        driver
            .mem
            .write_slice(b"0123456789", GuestAddress(DATA))
            .unwrap();
        driver.post(TX_QUEUE, &[(DATA, 10, false)]);
        {
            let mut c = a.lock().unwrap();
            let head = c.core.pop(TX_QUEUE, |chain| chain.head_index()).unwrap();
            c.tx_chain = Some(TxChain {
                head,
                segs: vec![(GuestAddress(DATA), 10)],
                seg: 0,
                off: 2,
            });
            c.tx_stage = b"xxab".to_vec();
            c.tx_pos = 2;
            c.rx_pending = b"hi".to_vec();
        }

        let (mut out, b) = console();
        let mut transport = MmioTransport::new(driver.mem.clone(), b.clone()).unwrap();
        round_trip(&driver.transport, &mut transport);
        let state = round_trip(&*a.lock().unwrap(), &mut *b.lock().unwrap());
        assert_eq!(state.tx_pending, b"ab");
        driver.transport = transport;

        b.lock().unwrap().process_tx();
        let mut written = [0u8; 16];
        let n = out.read(&mut written).unwrap();
        assert_eq!(&written[..n], b"ab23456789");
        assert_eq!(driver.used_idx(TX_QUEUE), 1);
        driver.post(RX_QUEUE, &[(DATA + 0x100, 16, true)]);
        b.lock().unwrap().process_rx();
        assert_eq!(driver.used(RX_QUEUE, 0), (0, 2));
        let mut got = [0u8; 2];
        driver
            .mem
            .read_slice(&mut got, GuestAddress(DATA + 0x100))
            .unwrap();
        assert_eq!(&got, b"hi");
    }

    /// The transmit chain's head is checked against the size the driver gave the queue (16
    /// here), not the device's maximum: a head beyond it can never be returned, and the
    /// restored device would fail on its first transmit.
    #[test]
    fn a_transmit_chain_beyond_the_configured_queue_is_refused() {
        let (_o, a) = console();
        let _driver = Driver::new(a.clone(), 1 << VIRTIO_F_VERSION_1);
        let mut state = a.lock().unwrap().save();
        state.tx_chain = Some(TxChainState {
            head: 100,
            segs: vec![(DATA, 10)],
            seg: 0,
            off: 0,
        });
        let err = a.lock().unwrap().restore(state);
        assert!(matches!(err, Err(PersistError::Mismatch { .. })), "{err:?}");
    }
}
