//! The virtio-console device: features, config space, the transmit and receive paths.

use std::io::ErrorKind;

use log::{debug, warn};
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::resize;
use super::{QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_CONSOLE_F_SIZE, VIRTIO_ID_CONSOLE};
use crate::chardev::Chardev;
use crate::virtio::{Step, VirtioCore, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_CONFIG};
use crate::Error;

/// How much guest output is copied out of guest memory at a time.
const TX_CHUNK: usize = 16 << 10;
/// How much guest output one event copies at most (each chain taken counts as at least
/// `TX_BUDGET / QUEUE_SIZE` bytes); the transmit queue is kicked for the rest, so the event
/// loop serves the other devices in between.
const TX_BUDGET: usize = 1 << 20;
/// How much host input is read at a time (only when the guest has a buffer posted).
const RX_CHUNK: usize = 4096;
/// struct virtio_console_config: cols (le16), rows (le16), max_nr_ports (le32), emerg_wr (le32).
const CONFIG_LEN: usize = 12;

/// A transmit chain taken from the queue and not yet fully written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TxChain {
    pub(super) head: u16,
    /// Its device-readable buffers.
    pub(super) segs: Vec<(GuestAddress, u32)>,
    /// The buffer being written, and how far.
    pub(super) seg: usize,
    pub(super) off: u32,
}

/// A virtio-console device with one port on a [`Chardev`].
///
/// Queues: receiveq (0) and transmitq (1), [`QUEUE_SIZE`] each. Features: VERSION_1, and
/// F_SIZE when the backend is stdio on a terminal (cols/rows from TIOCGWINSZ, updated on
/// SIGWINCH with a configuration-change interrupt).
pub struct Console {
    pub(super) core: VirtioCore,
    pub(super) chardev: Chardev,
    /// SIGWINCH, when the size is tracked.
    pub(super) resize_evt: Option<EventFd>,
    /// Host input read but not yet in guest buffers.
    pub(super) rx_pending: Vec<u8>,
    /// Guest output copied out of guest memory, not yet taken by the backend.
    pub(super) tx_stage: Vec<u8>,
    pub(super) tx_pos: usize,
    pub(super) tx_chain: Option<TxChain>,
    /// Chains (or parts) that could not be used, counted; the first is logged.
    bad_chains: u64,
    /// Bytes the guest sent and the backend took / bytes delivered to the guest.
    tx_bytes: u64,
    rx_bytes: u64,
}

impl Console {
    /// A console on `chardev`. On a stdio backend on a terminal the device offers F_SIZE and
    /// follows the terminal's size.
    pub fn new(chardev: Chardev) -> Result<Self, Error> {
        let size = if chardev.is_stdio() {
            resize::stdio_terminal_size()
        } else {
            None
        };
        let mut console = Self::with_size(chardev, size)?;
        if size.is_some() {
            match resize::winch_event() {
                Ok(evt) => console.resize_evt = Some(evt),
                Err(e) => warn!("virtio-console: cannot follow terminal resizes: {e}"),
            }
        }
        Ok(console)
    }

    /// A console with a fixed size to report (F_SIZE offered when `size` is given), no
    /// terminal tracking.
    pub fn with_size(chardev: Chardev, size: Option<(u16, u16)>) -> Result<Self, Error> {
        let mut avail_features = 1u64 << VIRTIO_F_VERSION_1;
        let mut config_space = vec![0u8; CONFIG_LEN];
        if let Some((cols, rows)) = size {
            avail_features |= 1 << VIRTIO_CONSOLE_F_SIZE;
            config_space[0..2].copy_from_slice(&cols.to_le_bytes());
            config_space[2..4].copy_from_slice(&rows.to_le_bytes());
        }
        let mut chardev = chardev;
        // No input until the driver posts receive buffers.
        chardev.set_input_paused(true);
        Ok(Console {
            core: VirtioCore::new(
                "virtio-console",
                VIRTIO_ID_CONSOLE,
                avail_features,
                &[QUEUE_SIZE; 2],
                config_space,
            )?,
            chardev,
            resize_evt: None,
            rx_pending: Vec::new(),
            tx_stage: Vec::new(),
            tx_pos: 0,
            tx_chain: None,
            bad_chains: 0,
            tx_bytes: 0,
            rx_bytes: 0,
        })
    }

    /// The backend.
    pub fn chardev(&self) -> &Chardev {
        &self.chardev
    }

    /// Whether the driver has started the device.
    pub fn is_activated(&self) -> bool {
        self.core.is_activated()
    }

    /// The (cols, rows) in the config space.
    pub fn size(&self) -> (u16, u16) {
        let c = self.core.config_space();
        (
            u16::from_le_bytes([c[0], c[1]]),
            u16::from_le_bytes([c[2], c[3]]),
        )
    }

    /// Bytes of guest output the backend has taken.
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes
    }

    /// Bytes of host input delivered to the guest.
    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes
    }

    /// Chains that broke the rules and were returned unused (or partly used).
    pub fn bad_chains(&self) -> u64 {
        self.bad_chains
    }

    /// Reports a new terminal size: updates the config space and, if the driver accepted
    /// F_SIZE, raises a configuration-change interrupt.
    pub fn set_size(&mut self, cols: u16, rows: u16) {
        if self.core.avail_features() & (1 << VIRTIO_CONSOLE_F_SIZE) == 0
            || self.size() == (cols, rows)
        {
            return;
        }
        let c = self.core.config_space_mut();
        c[0..2].copy_from_slice(&cols.to_le_bytes());
        c[2..4].copy_from_slice(&rows.to_le_bytes());
        if self.core.acked(VIRTIO_CONSOLE_F_SIZE) {
            self.core.trigger(VIRTIO_MMIO_INT_CONFIG);
        }
    }

    /// A chain (or part of one) that cannot be used: counted, the first one logged.
    fn bad_chain(&mut self, why: &str) {
        self.bad_chains += 1;
        if self.bad_chains == 1 {
            warn!("virtio-console: {why} (further bad chains logged at debug level)");
        } else {
            debug!("virtio-console: {why}");
        }
    }

    /// Whether input should be read now: the device runs and the guest has a receive buffer.
    fn wants_input(&self) -> bool {
        if !self.core.is_running() || !self.rx_pending.is_empty() {
            return false;
        }
        let Some(active) = &self.core.active else {
            return false;
        };
        let Some(rx) = active.queues.get(RX_QUEUE).filter(|q| q.ready()) else {
            return false;
        };
        match rx.avail_idx(&active.mem, std::sync::atomic::Ordering::Acquire) {
            Ok(idx) => idx.0 != rx.next_avail(),
            Err(_) => false,
        }
    }

    /// Tells the backend whether to watch its input.
    pub(super) fn update_input_pause(&mut self) {
        let paused = !self.wants_input();
        self.chardev.set_input_paused(paused);
    }

    /// Reads host input (if the guest has room for it) and delivers it.
    pub(super) fn on_input(&mut self) {
        if self.wants_input() {
            let mut buf = [0u8; RX_CHUNK];
            let n = self.chardev.read_input(&mut buf);
            self.rx_pending.extend_from_slice(&buf[..n]);
        }
        self.process_rx();
    }

    /// Moves pending host input into the guest's receive buffers.
    pub(super) fn process_rx(&mut self) {
        if self.rx_pending.is_empty() {
            return;
        }
        let mut done = 0usize;
        let mut bad = Vec::new();
        let pending = &self.rx_pending;
        // At most a queue's worth of chains per call (the core kicks the queue for the rest):
        // chains that take nothing would otherwise keep the loop going.
        self.core
            .drain(RX_QUEUE, usize::from(QUEUE_SIZE), |mem, chain| {
                if done >= pending.len() {
                    return Step::Unpop;
                }
                let head = chain.head_index();
                let mut written = 0u32;
                for desc in chain {
                    if !desc.is_write_only() {
                        bad.push(format!("receive chain {head}: device-readable buffer"));
                        continue;
                    }
                    let rest = &pending[done..];
                    let n = rest.len().min(desc.len() as usize);
                    if n == 0 {
                        break;
                    }
                    if let Err(e) = mem.write_slice(&rest[..n], desc.addr()) {
                        bad.push(format!("receive chain {head}: {e}"));
                        break;
                    }
                    done += n;
                    written += n as u32;
                }
                Step::Used(written)
            });
        self.rx_bytes += done as u64;
        self.rx_pending.drain(..done);
        for why in bad {
            self.bad_chain(&why);
        }
    }

    /// Copies the next piece of the current transmit chain into the stage; false when the
    /// chain is exhausted.
    fn stage_next(&mut self) -> bool {
        let (Some(chain), Some(active)) = (self.tx_chain.as_mut(), self.core.active.as_ref())
        else {
            return false;
        };
        while let Some(&(addr, len)) = chain.segs.get(chain.seg) {
            if chain.off >= len {
                chain.seg += 1;
                chain.off = 0;
                continue;
            }
            let n = ((len - chain.off) as usize).min(TX_CHUNK);
            self.tx_stage.resize(n, 0);
            let at = addr.checked_add(u64::from(chain.off));
            match at.map(|a| active.mem.read_slice(&mut self.tx_stage, a)) {
                Some(Ok(())) => {
                    chain.off += n as u32;
                    self.tx_pos = 0;
                    return true;
                }
                _ => {
                    let head = chain.head;
                    self.tx_stage.clear();
                    chain.seg = chain.segs.len();
                    self.bad_chain(&format!(
                        "transmit chain {head}: buffer {:#x}+{len:#x} is outside guest memory",
                        addr.0
                    ));
                    return false;
                }
            }
        }
        false
    }

    /// Sends guest output to the backend until the queue is empty, the backend is full (then
    /// it resumes when the event loop sees the backend writable) or [`TX_BUDGET`] is spent (then
    /// the queue is kicked).
    pub(super) fn process_tx(&mut self) {
        let mut used_any = false;
        let mut budget = TX_BUDGET;
        loop {
            while self.tx_pos < self.tx_stage.len() {
                match self.chardev.write(&self.tx_stage[self.tx_pos..]) {
                    Ok(n) => {
                        self.tx_pos += n;
                        self.tx_bytes += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.notify_tx(used_any);
                        return;
                    }
                    Err(e) => {
                        // Chardev::write reports other errors as written; not reached.
                        debug!("virtio-console: output error: {e}");
                        self.tx_pos = self.tx_stage.len();
                    }
                }
            }
            self.tx_stage.clear();
            self.tx_pos = 0;
            if budget == 0 {
                // Come back for the rest after the others had their turn.
                self.core.kick(TX_QUEUE);
                break;
            }
            if self.stage_next() {
                budget = budget.saturating_sub(self.tx_stage.len());
                continue;
            }
            if let Some(chain) = self.tx_chain.take() {
                if self.core.is_activated() {
                    if !self.core.add_used(TX_QUEUE, chain.head, 0) {
                        break;
                    }
                    used_any = true;
                }
            }
            if !self.take_tx_chain() {
                break;
            }
            // Each chain counts too, so empty ones cannot keep the loop going either.
            budget = budget.saturating_sub(TX_BUDGET / usize::from(QUEUE_SIZE));
        }
        self.notify_tx(used_any);
    }

    /// Takes the next chain off the transmit queue; false if none (or the device cannot run).
    fn take_tx_chain(&mut self) -> bool {
        let taken = self.core.pop(TX_QUEUE, |chain| {
            let head = chain.head_index();
            let mut segs = Vec::new();
            let mut writable = false;
            for desc in chain {
                if desc.is_write_only() {
                    writable = true;
                } else {
                    segs.push((desc.addr(), desc.len()));
                }
            }
            (head, segs, writable)
        });
        let Some((head, segs, writable)) = taken else {
            return false;
        };
        if writable {
            self.bad_chain(&format!(
                "transmit chain {head}: device-writable buffer ignored"
            ));
        }
        self.tx_chain = Some(TxChain {
            head,
            segs,
            seg: 0,
            off: 0,
        });
        true
    }

    fn notify_tx(&mut self, used_any: bool) {
        if used_any {
            self.core.notify_used(TX_QUEUE);
        }
    }
}

impl VirtioDevice for Console {
    crate::virtio::core_accessors!(core);

    fn on_activate(&mut self, _acked_features: u64) -> Result<(), Error> {
        self.tx_chain = None;
        Ok(())
    }

    /// Output already taken from the guest (tx_stage) and input already read (rx_pending) are
    /// kept for the next driver; references into guest memory are dropped.
    fn on_reset(&mut self) {
        self.tx_chain = None;
    }
}
