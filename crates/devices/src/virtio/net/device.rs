//! The virtio-net device: feature set, config space (the MAC), RX and TX processing.
//!
//! TX: each chain the guest makes available is one frame (vnet header first); it goes to the tap
//! with one `writev` straight from guest memory. A chain that breaks the rules (a device-writable
//! descriptor, a buffer outside guest memory, shorter than the header or longer than
//! [`MAX_BUFFER_LEN`], a vnet header that asks for offloads not negotiated or does not fit the
//! frame: [`check_tx_header`]) is returned unused and counted; the device keeps going.
//!
//! RX: a frame read from the tap is kept until the guest has posted enough buffers for it. Without
//! MRG_RXBUF one chain must hold the whole frame; with it, the frame is spread over as many chains
//! as it needs and `num_buffers` says how many. Chains popped from the available ring but not yet
//! filled are held by the device ([`Net::held`]), never given back half-used; at most a queue's
//! size of them (and twice that in buffers, zero-length ones skipped) for one frame, which is
//! dropped if they still fall short, and a head made available again while held fails the device.
//! Every tap read, chain popped (bad ones too) and look at the ring after re-enabling
//! notifications counts against the event's budget ([`RX_BUDGET`]); when it runs out the RX
//! queue's event is signalled, so the event loop serves everything else first. When the guest has
//! no buffers the device stops watching the tap (the event handler) until the guest notifies the
//! RX queue, so a full RX ring costs no CPU and loses no frame.

use std::collections::VecDeque;
use std::io;

use log::{debug, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::tap::Tap;
use super::{
    format_mac, MAX_BUFFER_LEN, NUM_BUFFERS_OFFSET, QUEUE_SIZE, RX_QUEUE, TUN_F_CSUM, TUN_F_TSO4,
    TUN_F_TSO6, TX_QUEUE, VIRTIO_ID_NET, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP, VNET_HDR_LEN,
};
use crate::rate_limiter::RateLimiter;
use crate::virtio::core::unnegotiated_indirect;
use crate::virtio::{Step, VirtioCore, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::{Error, GuestMemoryMmap};

/// TX frames moved per event before the loop serves others (the event comes back).
const BUDGET: usize = 256;
/// RX work per event before the loop serves others: every tap read, every chain popped (good or
/// bad) and every look at the ring after re-enabling notifications costs one. Twice the queue
/// size: 256 one-chain frames, as for TX.
const RX_BUDGET: usize = 2 * QUEUE_SIZE as usize;

/// Counters of one NIC, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the guest.
    pub rx_frames: u64,
    /// Bytes handed to the guest, vnet headers excluded.
    pub rx_bytes: u64,
    /// Frames from the tap that could not be delivered (too large for the guest's buffers).
    pub rx_dropped: u64,
    /// RX chains returned unused because they broke the rules.
    pub rx_bad_chains: u64,
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Bytes written to the tap, vnet headers excluded.
    pub tx_bytes: u64,
    /// TX chains dropped: malformed, or refused by the tap.
    pub tx_dropped: u64,
}

/// What the RX side is waiting for, which decides whether the tap is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RxState {
    /// Not running (not activated, failed, or the tap broke): the tap is not watched.
    Stopped,
    /// The tap is drained and buffers may be left: watch the tap.
    WantFrames,
    /// A frame waits for guest buffers: do not watch the tap; the RX queue notification resumes.
    WantBuffers,
    /// The RX rate limiter is out of tokens: do not watch the tap; its timer resumes.
    Throttled,
}

/// One RX chain popped from the available ring: its head and device-writable buffers (none of
/// zero length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RxChain {
    pub(super) head: u16,
    pub(super) bufs: Vec<(GuestAddress, u32)>,
    pub(super) capacity: usize,
}

/// The RX chains the device holds, in order, with running totals of their room and buffers (so
/// no pop re-sums them).
#[derive(Debug, Default)]
pub(super) struct Held {
    chains: VecDeque<RxChain>,
    /// Sum of the chains' capacities.
    capacity: usize,
    /// Sum of the chains' buffer counts.
    bufs: usize,
}

impl Held {
    pub(super) fn push_back(&mut self, chain: RxChain) {
        self.capacity += chain.capacity;
        self.bufs += chain.bufs.len();
        self.chains.push_back(chain);
    }

    pub(super) fn pop_front(&mut self) -> Option<RxChain> {
        let chain = self.chains.pop_front()?;
        self.capacity -= chain.capacity;
        self.bufs -= chain.bufs.len();
        Some(chain)
    }

    pub(super) fn clear(&mut self) {
        *self = Held::default();
    }

    pub(super) fn len(&self) -> usize {
        self.chains.len()
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(super) fn bufs(&self) -> usize {
        self.bufs
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &RxChain> {
        self.chains.iter()
    }

    fn holds(&self, head: u16) -> bool {
        self.chains.iter().any(|c| c.head == head)
    }
}

// Things logged once per device (bit flags).
const LOG_TX_CHAIN: u32 = 1;
const LOG_TX_TAP: u32 = 2;
const LOG_RX_CHAIN: u32 = 4;
const LOG_RX_BIG: u32 = 8;
const LOG_TAP_READ: u32 = 16;
const LOG_TX_HEADER: u32 = 32;

/// A virtio-net device backed by a tap.
///
/// Two queues of [`QUEUE_SIZE`] (RX, TX); features VERSION_1, EVENT_IDX, MAC, CSUM, GUEST_CSUM,
/// GUEST_TSO4/6, HOST_TSO4/6 and MRG_RXBUF.
pub struct Net {
    pub(super) core: VirtioCore,
    pub(super) tap: Tap,
    mac: [u8; 6],
    /// The driver accepted MRG_RXBUF (set at activation).
    mergeable: bool,
    /// Bounce buffer for one frame read from the tap.
    pub(super) rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` waiting for guest buffers.
    pub(super) rx_pending: Option<usize>,
    /// RX chains popped but not yet used.
    pub(super) held: Held,
    pub(super) rx_state: RxState,
    /// The tap would block on write: TX waits for the tap to become writable.
    pub(super) tx_blocked: bool,
    /// Reading the tap failed for good (e.g. the interface was deleted).
    tap_broken: bool,
    /// What the event loop currently watches on the tap fd.
    pub(super) tap_watch: event_manager::EventSet,
    stats: NetStats,
    logged: u32,
    /// Limits on frames to the guest; its timer is watched by the event handler.
    pub(super) rx_limiter: Option<RateLimiter>,
    /// Limits on frames from the guest; its timer is watched by the event handler.
    pub(super) tx_limiter: Option<RateLimiter>,
    /// A TX chain waits at the head of the queue for the TX limiter's timer.
    pub(super) tx_throttled: bool,
}

impl Net {
    /// A NIC on an open tap with the given MAC address.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Result<Self, Error> {
        let avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_TSO6)
            | (1 << VIRTIO_NET_F_HOST_TSO4)
            | (1 << VIRTIO_NET_F_HOST_TSO6)
            | (1 << VIRTIO_NET_F_MRG_RXBUF);
        let name = format!("virtio-net '{}'", tap.name());
        Ok(Net {
            // struct virtio_net_config: mac[6], then status, max_virtqueue_pairs and mtu (all 0:
            // not offered).
            core: VirtioCore::new(
                name,
                VIRTIO_ID_NET,
                avail_features,
                &[QUEUE_SIZE; 2],
                mac.to_vec(),
            )?,
            tap,
            mac,
            mergeable: false,
            rx_buf: vec![0; MAX_BUFFER_LEN],
            rx_pending: None,
            held: Held::default(),
            rx_state: RxState::Stopped,
            tx_blocked: false,
            tap_broken: false,
            tap_watch: event_manager::EventSet::empty(),
            stats: NetStats::default(),
            logged: 0,
            rx_limiter: None,
            tx_limiter: None,
            tx_throttled: false,
        })
    }

    /// Throttles the NIC, each direction on its own limiter (bytes without the vnet header, one
    /// operation per frame). TX: a frame waits at the head of the TX queue. RX: the device stops
    /// reading the tap (frames wait in the tap's queue). Set them before the device is added to
    /// the event loop, which then watches their timers.
    pub fn with_rate_limiters(mut self, rx: Option<RateLimiter>, tx: Option<RateLimiter>) -> Self {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
        self
    }

    /// The (RX, TX) rate limiters.
    pub fn rate_limiters(&self) -> (Option<&RateLimiter>, Option<&RateLimiter>) {
        (self.rx_limiter.as_ref(), self.tx_limiter.as_ref())
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Whether the driver has started the device.
    pub fn is_activated(&self) -> bool {
        self.core.is_activated()
    }

    fn log_once(&mut self, what: u32, msg: &str) {
        if self.logged & what == 0 {
            self.logged |= what;
            warn!("virtio-net '{}': {msg} (logged once)", self.tap.name());
        } else {
            debug!("virtio-net '{}': {msg}", self.tap.name());
        }
    }

    /// Sends every available TX chain to the tap (at most [`BUDGET`] per call), then
    /// interrupts the driver if it wants to know. A frame the tap cannot take now, or the TX
    /// limiter refuses, stays in the ring.
    pub(super) fn process_tx(&mut self) {
        if self.core.queue(TX_QUEUE).is_none() {
            return;
        }
        self.tx_blocked = false;
        let mut problems = Problems::default();
        let acked_features = self.core.active.as_ref().map_or(0, |a| a.acked_features);
        let Net {
            core,
            tap,
            stats,
            tx_limiter,
            tx_throttled,
            tx_blocked,
            ..
        } = self;
        core.drain(TX_QUEUE, BUDGET, |mem, chain| {
            if let Some(limiter) = tx_limiter.as_mut() {
                let bytes: u64 = chain.clone().map(|d| u64::from(d.len())).sum();
                let frame = bytes.saturating_sub(VNET_HDR_LEN as u64);
                if !limiter.try_consume(frame, 1) {
                    *tx_throttled = true;
                    return Step::Unpop;
                }
            }
            let head = chain.head_index();
            match send_frame(tap, mem, chain, acked_features) {
                Ok(bytes) => {
                    stats.tx_frames += 1;
                    stats.tx_bytes += bytes as u64;
                }
                Err(TxError::Blocked) => {
                    // The tap's writability brings us back.
                    *tx_blocked = true;
                    return Step::Unpop;
                }
                Err(TxError::Chain(why)) => {
                    stats.tx_dropped += 1;
                    problems.note(LOG_TX_CHAIN, || format!("dropped TX chain {head}: {why}"));
                }
                Err(TxError::Header(why)) => {
                    stats.tx_dropped += 1;
                    problems.note(LOG_TX_HEADER, || {
                        format!("dropped TX chain {head}: vnet header: {why}")
                    });
                }
                Err(TxError::Tap(e)) => {
                    stats.tx_dropped += 1;
                    problems.note(LOG_TX_TAP, || format!("the tap refused a frame: {e}"));
                }
            }
            Step::Used(0)
        });
        for (what, msg) in problems.list {
            self.log_once(what, &msg);
        }
    }

    /// Moves frames from the tap to the guest until the tap is drained, the guest runs out of
    /// buffers, or the budget is spent. Records and returns the new [`RxState`].
    pub(super) fn process_rx(&mut self) -> RxState {
        self.rx_state = self.rx_loop();
        self.rx_state
    }

    fn rx_loop(&mut self) -> RxState {
        if self.tap_broken {
            return RxState::Stopped;
        }
        let mergeable = self.mergeable;
        let Some((mem, rx)) = self.core.queue(RX_QUEUE) else {
            return RxState::Stopped;
        };
        let mut used_any = false;
        let mut budget = RX_BUDGET;
        let mut problems = Problems::default();
        let mut failure = None;
        let state = loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => {
                    if budget == 0 {
                        break RxState::WantFrames;
                    }
                    if let Some(limiter) = self.rx_limiter.as_mut() {
                        if !limiter.try_ready() {
                            break RxState::Throttled;
                        }
                    }
                    let read = self.tap.read(&mut self.rx_buf);
                    if read.is_ok() {
                        budget -= 1;
                    }
                    match read {
                        Ok(n) if n < VNET_HDR_LEN => {
                            debug!("virtio-net: ignored a {n}-byte read from the tap");
                            continue;
                        }
                        Ok(n) => {
                            if let Some(limiter) = self.rx_limiter.as_mut() {
                                limiter.charge((n - VNET_HDR_LEN) as u64, 1);
                            }
                            self.rx_pending = Some(n);
                            n
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            break RxState::WantFrames;
                        }
                        Err(e) => {
                            problems.note(LOG_TAP_READ, || format!("cannot read the tap: {e}"));
                            self.tap_broken = true;
                            break RxState::Stopped;
                        }
                    }
                }
            };
            let frame = &mut self.rx_buf[..len];
            match deliver(rx, mem, &mut self.held, frame, mergeable, &mut budget) {
                Ok(Delivery::Done) => {
                    self.rx_pending = None;
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
                    used_any = true;
                }
                Ok(Delivery::TooBig(capacity)) => {
                    self.rx_pending = None;
                    self.stats.rx_dropped += 1;
                    problems.note(LOG_RX_BIG, || format!(
                            "dropped a {len}-byte frame: the guest's RX buffer holds {capacity} bytes \
                             (and MRG_RXBUF is {})",
                            if mergeable { "on" } else { "off" }
                        ));
                }
                Ok(Delivery::OutOfBudget) => {
                    // The frame stays pending; come back after the others had their turn.
                    self.core.kick(RX_QUEUE);
                    break RxState::WantBuffers;
                }
                Ok(Delivery::NeedBuffers) if budget == 0 => {
                    self.core.kick(RX_QUEUE);
                    break RxState::WantBuffers;
                }
                Ok(Delivery::NeedBuffers) => match rx.enable_notification(mem) {
                    Ok(true) => {
                        budget -= 1;
                        continue;
                    }
                    Ok(false) => break RxState::WantBuffers,
                    Err(e) => {
                        failure = Some(format!("cannot update RX avail_event: {e}"));
                        break RxState::Stopped;
                    }
                },
                Err(RxError::BadChains(n)) => {
                    // Its pop was counted against the budget.
                    used_any = true;
                    self.stats.rx_bad_chains += n;
                    problems.note(LOG_RX_CHAIN, || {
                        "returned an RX chain with a device-readable or out-of-memory buffer unused"
                            .to_string()
                    });
                }
                Err(RxError::Queue(why)) => {
                    failure = Some(why);
                    break RxState::Stopped;
                }
            }
        };
        if used_any {
            self.core.notify_used(RX_QUEUE);
        }
        for (what, msg) in problems.list {
            self.log_once(what, &msg);
        }
        if let Some(why) = failure {
            self.core.fail(&why);
            return RxState::Stopped;
        }
        state
    }
}

/// What went wrong during one event, to be logged after it: the first problem of each kind only,
/// so a guest that sends a queue of bad chains costs no message (or allocation) per chain.
#[derive(Default)]
struct Problems {
    seen: u32,
    list: Vec<(u32, String)>,
}

impl Problems {
    fn note(&mut self, what: u32, msg: impl FnOnce() -> String) {
        if self.seen & what == 0 {
            self.seen |= what;
            self.list.push((what, msg()));
        }
    }
}

/// Why a TX chain was not sent.
enum TxError {
    /// The tap would block: retry the same chain later.
    Blocked,
    /// The chain breaks the rules.
    Chain(String),
    /// The vnet header asks for what the driver did not negotiate, or does not fit the frame.
    Header(String),
    /// The tap refused the frame.
    Tap(io::Error),
}

/// Gathers one TX chain and writes it to the tap with one writev; returns the frame's length
/// without the vnet header.
fn send_frame(
    tap: &Tap,
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    acked_features: u64,
) -> Result<usize, TxError> {
    let mut slices = Vec::new();
    let mut total = 0usize;
    let mut truncated = false;
    // virtio-queue bounds the walk (at most queue-size descriptors, no loops) and stops early
    // on an unreadable descriptor or indirect table.
    for desc in chain {
        truncated = desc.has_next();
        if desc.is_write_only() {
            return Err(TxError::Chain("device-writable descriptor".into()));
        }
        let len = desc.len() as usize;
        total = total.saturating_add(len);
        if total > MAX_BUFFER_LEN {
            return Err(TxError::Chain(format!(
                "longer than {MAX_BUFFER_LEN} bytes"
            )));
        }
        let parts = GuestMemory::get_slices(mem, desc.addr(), len, Permissions::Read)
            .map_err(|e| TxError::Chain(format!("buffer {:#x}: {e}", desc.addr().0)))?;
        for part in parts {
            slices.push(
                part.map_err(|e| TxError::Chain(format!("buffer {:#x}: {e}", desc.addr().0)))?,
            );
        }
    }
    if truncated {
        return Err(TxError::Chain(
            "truncated (loop, too long or unreadable descriptor)".into(),
        ));
    }
    if total < VNET_HDR_LEN {
        return Err(TxError::Chain(format!(
            "{total} bytes, shorter than the {VNET_HDR_LEN}-byte header"
        )));
    }
    let mut header = [0u8; VNET_HDR_LEN];
    let mut filled = 0;
    for s in &slices {
        if filled == VNET_HDR_LEN {
            break;
        }
        filled += s.copy_to(&mut header[filled..]);
    }
    check_tx_header(&header, total - VNET_HDR_LEN, acked_features).map_err(TxError::Header)?;
    // The tap gets the header that was checked, not guest memory the guest may have rewritten
    // since; the frame itself follows from guest memory.
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
    let mut iovs = Vec::with_capacity(slices.len() + 1);
    iovs.push(libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: VNET_HDR_LEN,
    });
    let mut skip = VNET_HDR_LEN;
    for (g, s) in guards.iter().zip(&slices) {
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        iovs.push(libc::iovec {
            iov_base: g.as_ptr().wrapping_add(skip) as *mut libc::c_void,
            iov_len: s.len() - skip,
        });
        skip = 0;
    }
    // SAFETY: the first iovec is `header`, on this stack for the duration of the call; every
    // other one points into guest memory checked by vm-memory (`skip` is less than the slice's
    // length), kept mapped by `mem` and the live `guards` for the duration of the call. writev
    // only reads them.
    match unsafe { tap.writev(&iovs) } {
        Ok(_) => Ok(total - VNET_HDR_LEN),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(TxError::Blocked),
        Err(e) => Err(TxError::Tap(e)),
    }
}

/// Checks the guest's TX vnet header against the features it negotiated and the frame (`frame_len`
/// bytes after the header) before the host kernel sees it: its checksum and segmentation paths
/// trust the header. Flags: NEEDS_CSUM (only with CSUM, and the checksum field inside the frame)
/// and DATA_VALID; GSO only of a type whose HOST_* feature was negotiated, with a segment size
/// from 1 to the frame's length; `hdr_len` within the frame; `num_buffers` 0.
pub(super) fn check_tx_header(
    header: &[u8; VNET_HDR_LEN],
    frame_len: usize,
    acked_features: u64,
) -> Result<(), String> {
    let acked = |bit: u32| acked_features & (1u64 << bit) != 0;
    let word = |at: usize| usize::from(u16::from_le_bytes([header[at], header[at + 1]]));
    let flags = u32::from(header[0]);
    let gso_type = u32::from(header[1]);
    let (hdr_len, gso_size) = (word(2), word(4));
    let (csum_start, csum_offset) = (word(6), word(8));
    let num_buffers = word(NUM_BUFFERS_OFFSET);
    if flags & !(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) != 0 {
        return Err(format!("header flags {flags:#x}"));
    }
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        if !acked(VIRTIO_NET_F_CSUM) {
            return Err("NEEDS_CSUM without CSUM negotiated".into());
        }
        if csum_start + csum_offset + 2 > frame_len {
            return Err(format!(
                "checksum at {csum_start}+{csum_offset} outside the {frame_len}-byte frame"
            ));
        }
    }
    let ecn = gso_type & VIRTIO_NET_HDR_GSO_ECN != 0;
    let needed = match gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE if !ecn => None,
        VIRTIO_NET_HDR_GSO_TCPV4 => Some(VIRTIO_NET_F_HOST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => Some(VIRTIO_NET_F_HOST_TSO6),
        VIRTIO_NET_HDR_GSO_UDP => Some(VIRTIO_NET_F_HOST_UFO),
        _ => return Err(format!("GSO type {gso_type:#x}")),
    };
    if let Some(bit) = needed {
        if !acked(bit) || (ecn && !acked(VIRTIO_NET_F_HOST_ECN)) {
            return Err(format!("GSO type {gso_type:#x} not negotiated"));
        }
        if gso_size == 0 || gso_size > frame_len {
            return Err(format!(
                "GSO segment size {gso_size} for a {frame_len}-byte frame"
            ));
        }
    }
    if hdr_len > frame_len {
        return Err(format!(
            "header length {hdr_len} beyond the {frame_len}-byte frame"
        ));
    }
    if num_buffers != 0 {
        return Err(format!("num_buffers {num_buffers} on TX"));
    }
    Ok(())
}

/// What became of the pending RX frame.
enum Delivery {
    /// Written to the guest and its chains used.
    Done,
    /// More buffers are needed; the frame stays pending.
    NeedBuffers,
    /// The frame can never fit (no MRG_RXBUF and the next chain is too small, or the chains
    /// held reached [`max_held`] and still fall short): dropped.
    TooBig(usize),
    /// The event's budget ran out before the frame found its buffers; it stays pending.
    OutOfBudget,
}

/// The most RX chains, and buffers in them, the device holds for one frame. A frame of at most
/// [`MAX_BUFFER_LEN`] bytes never needs more chains than a queue of sane buffers has; a guest that
/// posts tiny buffers (or names one head again and again) must not make the device hold tens of
/// thousands of them. Without MRG_RXBUF one chain is held, of at most a queue's size of buffers.
pub(super) fn max_held(queue_size: u16) -> (usize, usize) {
    let size = usize::from(queue_size);
    (size, 2 * size)
}

enum RxError {
    /// This many bad chains were returned unused; try again.
    BadChains(u64),
    /// The queue itself is broken.
    Queue(String),
}

/// Pops the next RX chain and checks it: device-writable buffers inside guest memory only.
/// `Ok(None)`: the ring is empty; `Err(BadChains)`: the chain was bad and has been returned.
fn pop_rx_chain(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<Option<RxChain>, RxError> {
    let chain = match queue.iter(mem) {
        Ok(mut iter) => iter.next(),
        Err(e) => return Err(RxError::Queue(format!("bad RX available ring: {e}"))),
    };
    let Some(chain) = chain else {
        return Ok(None);
    };
    let head = chain.head_index();
    let mut bufs = Vec::new();
    let mut capacity = 0usize;
    // virtio-net never offers VIRTIO_RING_F_INDIRECT_DESC: an indirect descriptor makes the
    // chain bad.
    let indirect =
        unnegotiated_indirect(mem, queue.desc_table(), queue.size(), &chain, false).is_some();
    let mut ok = !indirect;
    let mut truncated = false;
    for desc in chain.take(if indirect { 0 } else { usize::MAX }) {
        truncated = desc.has_next();
        if !desc.is_write_only()
            || !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write)
        {
            ok = false;
            break;
        }
        if desc.len() == 0 {
            continue;
        }
        capacity = capacity.saturating_add(desc.len() as usize);
        bufs.push((desc.addr(), desc.len()));
    }
    if ok && !truncated && capacity > 0 {
        return Ok(Some(RxChain {
            head,
            bufs,
            capacity,
        }));
    }
    queue
        .add_used(mem, head, 0)
        .map_err(|e| RxError::Queue(format!("cannot return RX chain {head}: {e}")))?;
    Err(RxError::BadChains(1))
}

/// Writes `frame` (vnet header first) into the held chains, popping more as needed.
fn deliver(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    held: &mut Held,
    frame: &mut [u8],
    mergeable: bool,
    budget: &mut usize,
) -> Result<Delivery, RxError> {
    let total = frame.len();
    let (max_chains, max_bufs) = max_held(queue.size());
    let want = |held: &Held| -> bool {
        if mergeable {
            held.capacity() < total
        } else {
            held.len() == 0
        }
    };
    while want(held) {
        if held.len() >= max_chains || held.bufs() >= max_bufs {
            return Ok(Delivery::TooBig(held.capacity()));
        }
        if *budget == 0 {
            return Ok(Delivery::OutOfBudget);
        }
        *budget -= 1;
        match pop_rx_chain(queue, mem)? {
            Some(chain) if held.holds(chain.head) => {
                return Err(RxError::Queue(format!(
                    "RX chain {} made available again while the device holds it",
                    chain.head
                )));
            }
            Some(chain) => held.push_back(chain),
            None => return Ok(Delivery::NeedBuffers),
        }
    }
    // How many chains this frame takes.
    let count = if mergeable {
        let mut sum = 0usize;
        held.chains
            .iter()
            .take_while(|c| {
                let before = sum;
                sum += c.capacity;
                before < total
            })
            .count()
    } else {
        let capacity = held.chains.front().map_or(0, |c| c.capacity);
        if capacity < total {
            return Ok(Delivery::TooBig(capacity));
        }
        1
    };
    // num_buffers is part of the header the tap handed us (it leaves the field as it was).
    let num = u16::try_from(count).unwrap_or(u16::MAX);
    frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&num.to_le_bytes());

    let mut offset = 0usize;
    for _ in 0..count {
        let Some(chain) = held.pop_front() else { break };
        let mut written = 0usize;
        for &(addr, len) in &chain.bufs {
            if offset == total {
                break;
            }
            let n = (len as usize).min(total - offset);
            mem.write_slice(&frame[offset..offset + n], addr)
                .map_err(|e| {
                    RxError::Queue(format!("cannot write RX buffer {:#x}: {e}", addr.0))
                })?;
            offset += n;
            written += n;
        }
        queue
            .add_used(mem, chain.head, written as u32)
            .map_err(|e| RxError::Queue(format!("cannot return RX chain {}: {e}", chain.head)))?;
    }
    Ok(Delivery::Done)
}

impl VirtioDevice for Net {
    crate::virtio::core_accessors!(core);

    /// Sets the tap's offloads to what the guest takes; the event loop then starts RX (and
    /// watches the tap) and sends what the driver queued before DRIVER_OK.
    fn on_activate(&mut self, acked_features: u64) -> Result<(), Error> {
        let acked = |bit: u32| acked_features & (1u64 << bit) != 0;
        let mut offload = 0;
        if acked(VIRTIO_NET_F_GUEST_CSUM) {
            offload |= TUN_F_CSUM;
            if acked(VIRTIO_NET_F_GUEST_TSO4) {
                offload |= TUN_F_TSO4;
            }
            if acked(VIRTIO_NET_F_GUEST_TSO6) {
                offload |= TUN_F_TSO6;
            }
        }
        self.tap.set_offload(offload)?;
        debug!(
            "virtio-net '{}': activated, MAC {}, features {acked_features:#x}, tap offloads {offload:#x}",
            self.tap.name(),
            format_mac(&self.mac)
        );
        self.tap_broken = false;
        self.held.clear();
        self.mergeable = acked(VIRTIO_NET_F_MRG_RXBUF);
        Ok(())
    }

    fn on_reset(&mut self) {
        self.held.clear();
        self.rx_pending = None;
        self.rx_state = RxState::Stopped;
        self.tx_blocked = false;
        self.tx_throttled = false;
    }
}
