//! The virtio-vsock device: features, config space (the guest's CID), the transmit and receive
//! queues.

use std::path::Path;

use super::muxer::{Muxer, Outgoing, Took};
use super::packet::{self, Header, Invalid, HDR_LEN};
use super::{
    EVENT_QUEUE, MAX_PKT_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_ID_VSOCK,
    VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
};
use crate::chardev::SocketFile;
use crate::virtio::buffers::{buffers, gather, scatter, total};
use crate::virtio::{Step, VirtioCore, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::Error;
use log::warn;

/// The lowest CID a guest may have (0, 1 and 2 are the hypervisor, local and host).
pub const MIN_GUEST_CID: u64 = 3;

/// A virtio-vsock device for the guest `cid`, its host side at a Unix socket path.
///
/// Queues: rx (0), tx (1), event (2), [`QUEUE_SIZE`] each. Features: VERSION_1 (stream
/// sockets only).
pub struct Vsock {
    pub(super) core: VirtioCore,
    pub(super) muxer: Muxer,
    /// Packet payload on its way, either direction (header room in front).
    stage: Vec<u8>,
    /// A transport-reset event is owed to the guest (after a restore: its connections are
    /// gone).
    pub(super) reset_owed: bool,
}

impl Vsock {
    /// A device for guest `cid` listening at `path` ([`SocketFile::bind`]: mode 0600, refused
    /// if anything is there); guest connections to host port P go to `PATH_P`.
    pub fn new(cid: u64, path: &Path) -> Result<Self, Error> {
        Self::with_socket(cid, SocketFile::bind(path)?)
    }

    /// A device on a socket bound beforehand.
    pub fn with_socket(cid: u64, socket: SocketFile) -> Result<Self, Error> {
        if !(MIN_GUEST_CID..u64::from(u32::MAX)).contains(&cid) {
            return Err(Error::VsockCid { cid });
        }
        Ok(Vsock {
            core: VirtioCore::new(
                "virtio-vsock",
                VIRTIO_ID_VSOCK,
                (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX),
                &[QUEUE_SIZE; 3],
                cid.to_le_bytes().to_vec(),
            )?,
            muxer: Muxer::new(cid, socket)?,
            stage: vec![0; HDR_LEN + MAX_PKT_LEN],
            reset_owed: false,
        })
    }

    /// Guest connections to host port P go to the socket named `<file name of PATH>_P` in the
    /// working directory instead of to `PATH_P`: for a VMM that cannot reach PATH by its name
    /// but whose working directory is PATH's directory (the CLI's jail, which makes it so and
    /// lets `..` go no further up).
    pub fn connect_by_name(&mut self) {
        self.muxer.connect_by_name();
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.muxer.guest_cid
    }

    /// The listening socket's path.
    pub fn path(&self) -> &Path {
        self.muxer.socket().path()
    }

    /// Open connections (and host programs that have not said where to).
    pub fn connections(&self) -> usize {
        self.muxer.len()
    }

    /// Guest packets that broke the rules.
    pub fn bad_packets(&self) -> u64 {
        self.muxer.bad_packets
    }

    /// Takes the guest's packets, at most a queue's worth per call (the core kicks the queue
    /// for the rest), stopping while the answers owed would not fit or a connection is full.
    pub(super) fn process_tx(&mut self) {
        let Vsock {
            core, muxer, stage, ..
        } = self;
        muxer.tx_stalled = false;
        let mut bad = Vec::new();
        core.drain(TX_QUEUE, usize::from(QUEUE_SIZE), |mem, chain| {
            if !muxer.can_take() {
                muxer.tx_stalled = true;
                return Step::Unpop;
            }
            let head = chain.head_index();
            let (bufs, writable) = buffers(chain, false);
            if writable {
                bad.push(format!("transmit chain {head}: device-writable buffer"));
            }
            let mut hdr = [0u8; HDR_LEN];
            if !gather(mem, &bufs, 0, &mut hdr) {
                bad.push(format!("transmit chain {head}: no readable header"));
                return Step::Used(0);
            }
            let h = Header::from_bytes(&hdr);
            let room = total(&bufs).saturating_sub(HDR_LEN);
            match packet::check(&h, muxer.guest_cid, room) {
                Ok(()) => {}
                Err(Invalid::Drop(why)) => {
                    bad.push(format!("transmit chain {head}: {why}"));
                    return Step::Used(0);
                }
                Err(Invalid::Reset(why)) => {
                    bad.push(format!("transmit chain {head}: {why}"));
                    muxer.reset_peer((h.dst_port, h.src_port));
                    return Step::Used(0);
                }
            }
            let len = if h.op == super::VSOCK_OP_RW {
                h.len as usize
            } else {
                0
            };
            let data = &mut stage[..len];
            if !gather(mem, &bufs, HDR_LEN, data) {
                bad.push(format!(
                    "transmit chain {head}: payload outside guest memory"
                ));
                return Step::Used(0);
            }
            match muxer.on_guest_packet(&h, data) {
                Took::Done => Step::Used(0),
                Took::Later => Step::Unpop,
            }
        });
        for why in bad {
            self.muxer.bad(&why);
        }
    }

    /// Fills the guest's receive buffers with what is owed and what host sockets have, at most
    /// a queue's worth per call.
    pub(super) fn process_rx(&mut self) {
        if !self.muxer.has_rx_work() {
            return;
        }
        let Vsock {
            core, muxer, stage, ..
        } = self;
        let mut bad = Vec::new();
        core.drain(RX_QUEUE, usize::from(QUEUE_SIZE), |mem, chain| {
            let head = chain.head_index();
            let (bufs, readable) = buffers(chain, true);
            let room = total(&bufs);
            if readable || room < HDR_LEN {
                bad.push(format!(
                    "receive chain {head}: {room} writable bytes{}",
                    if readable {
                        " and readable buffers"
                    } else {
                        ""
                    }
                ));
                return Step::Used(0);
            }
            let payload_room = (room - HDR_LEN).min(MAX_PKT_LEN);
            let (hdr_part, data_part) = stage.split_at_mut(HDR_LEN);
            let Some(out) = muxer.next_for_guest(&mut data_part[..payload_room]) else {
                return Step::Unpop;
            };
            let (h, n) = match out {
                Outgoing::Control(h) => (h, 0),
                Outgoing::Data(h, n) => (h, n),
            };
            hdr_part.copy_from_slice(&h.to_bytes());
            if !scatter(mem, &bufs, &stage[..HDR_LEN + n]) {
                // The packet is lost with the chain; the guest's memory map is broken anyway.
                bad.push(format!("receive chain {head}: outside guest memory"));
                return Step::Used(0);
            }
            Step::Used((HDR_LEN + n) as u32)
        });
        for why in bad {
            self.muxer.bad(&why);
        }
    }

    /// Tells the guest its connections are gone (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, in the
    /// first buffer it posted on the event queue), if that is owed; the driver then resets its
    /// connected sockets and reads the CID again. Without a buffer it waits for one.
    pub(super) fn process_events(&mut self) {
        if !self.reset_owed || !self.core.is_running() {
            return;
        }
        let mut sent = false;
        let mut bad = None;
        self.core.drain(EVENT_QUEUE, 1, |mem, chain| {
            let head = chain.head_index();
            let (bufs, _) = buffers(chain, true);
            let event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
            if total(&bufs) < event.len() || !scatter(mem, &bufs, &event) {
                bad = Some(format!("event chain {head}: no room for an event"));
                return Step::Used(0);
            }
            sent = true;
            Step::Used(event.len() as u32)
        });
        if let Some(why) = bad {
            self.muxer.bad(&why);
        }
        if sent {
            self.reset_owed = false;
        }
    }

    /// Serves both directions until neither can move further this time: the receive path makes
    /// room for answers, which lets a stopped transmit path go on.
    pub(super) fn run(&mut self) {
        self.process_rx();
        if self.muxer.tx_stalled && self.muxer.can_take() {
            self.process_tx();
            self.process_rx();
        }
    }
}

impl VirtioDevice for Vsock {
    crate::virtio::core_accessors!(core);

    /// Connections do not survive a reset: their host sockets are closed (those the event loop
    /// watches once it has stopped watching them: the event queue's kick brings it round).
    fn on_reset(&mut self) {
        self.muxer.reset();
        self.core.kick(EVENT_QUEUE);
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        if self.muxer.bad_packets > 1 {
            warn!(
                "virtio-vsock: {} bad packets from the guest",
                self.muxer.bad_packets
            );
        }
    }
}
