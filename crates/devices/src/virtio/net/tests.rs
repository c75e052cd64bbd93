//! virtio-net tests against crafted descriptor chains (no KVM, no tap): a SOCK_SEQPACKET
//! socket pair stands in for the tap, keeping frame boundaries as a tap does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::device::RxState;
use super::*;
use crate::test_util::RingDriver;
use crate::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::GuestMemoryMmap;

const F_WRITE: u16 = 2;
const QSIZE: u16 = 16;
const MEM_SIZE: u64 = 0x40_0000;
/// Ring addresses of queue `q`: descriptors, available, used.
fn rings(q: u64) -> (u64, u64, u64) {
    let base = q * 0x4000;
    (base, base + 0x1000, base + 0x2000)
}
/// Buffers live from here on.
const BUF: u64 = 0x10_0000;
const BAD: u64 = 0x1000_0000;
/// Rings of a large RX queue (up to 8192 entries), above the buffers.
const BIG_RX_RINGS: (u64, u64, u64) = (0x20_0000, 0x30_0000, 0x34_0000);

type Desc = (u64, u32, u16);

struct Driver {
    ring: RingDriver,
    used_seen: u16,
}

impl Driver {
    fn new(q: u64) -> Driver {
        let (desc, avail, used) = rings(q);
        Driver {
            ring: RingDriver::new(desc, avail, used, QSIZE),
            used_seen: 0,
        }
    }
}

struct Harness {
    mem: GuestMemoryMmap,
    net: Net,
    peer: OwnedFd,
    interrupt: Arc<Interrupt>,
    rx: Driver,
    tx: Driver,
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Harness {
    fn new(features: u64) -> Harness {
        Harness::with_rx_size(features, QSIZE)
    }

    /// An RX queue of `rx_size` entries (other than [`QSIZE`]: its rings at [`BIG_RX_RINGS`]).
    fn with_rx_size(features: u64, rx_size: u16) -> Harness {
        let rx_rings = if rx_size == QSIZE {
            rings(0)
        } else {
            BIG_RX_RINGS
        };
        let (a, b) = socketpair();
        let net = Net::new(Tap::from_fd(a, "test0"), [0x52, 0x54, 0, 1, 2, 3]).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let mut h = Harness {
            mem,
            net,
            peer: b,
            interrupt: Arc::new(Interrupt::new().unwrap()),
            rx: Driver {
                ring: RingDriver::new(rx_rings.0, rx_rings.1, rx_rings.2, rx_size),
                used_seen: 0,
            },
            tx: Driver::new(1),
        };
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = (0..2)
            .map(|i| {
                let ((d, a, u), size) = if i == 0 {
                    (rx_rings, rx_size)
                } else {
                    (rings(i), QSIZE)
                };
                crate::test_util::ready_queue(&h.mem, size, (d, a, u), event_idx)
            })
            .collect();
        h.net
            .activate(h.mem.clone(), h.interrupt.clone(), queues, features)
            .unwrap();
        h
    }

    fn add_chain(mem: &GuestMemoryMmap, d: &mut Driver, descs: &[Desc]) -> u16 {
        d.ring.add_chain(mem, descs)
    }

    /// Used entries (id, len) added since the last call.
    fn take_used(mem: &GuestMemoryMmap, d: &mut Driver) -> Vec<(u32, u32)> {
        let idx = d.ring.used_idx(mem);
        let mut out = Vec::new();
        while d.used_seen != idx {
            out.push(d.ring.used(mem, d.used_seen));
            d.used_seen = d.used_seen.wrapping_add(1);
        }
        out
    }

    fn tx_chain(&mut self, descs: &[Desc]) -> u16 {
        Self::add_chain(&self.mem, &mut self.tx, descs)
    }
    fn rx_chain(&mut self, descs: &[Desc]) -> u16 {
        Self::add_chain(&self.mem, &mut self.rx, descs)
    }
    fn tx_used(&mut self) -> Vec<(u32, u32)> {
        Self::take_used(&self.mem, &mut self.tx)
    }
    fn rx_used(&mut self) -> Vec<(u32, u32)> {
        Self::take_used(&self.mem, &mut self.rx)
    }

    /// One frame the "tap" received from the device, or None.
    fn peer_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_BUFFER_LEN + 100];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                self.peer.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    /// The "tap" hands the device a frame (vnet header included).
    fn peer_send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(self.peer.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize);
    }

    fn put(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// A frame with a zeroed vnet header: `len` bytes after the header, byte i = (i * 7 + seed).
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn base_features() -> u64 {
    1 << VIRTIO_F_VERSION_1
}

#[test]
fn config_space_holds_the_mac_and_features_are_offered() {
    let (a, _b) = socketpair();
    let net = Net::new(Tap::from_fd(a, "t"), [2, 3, 4, 5, 6, 7]).unwrap();
    let mut mac = [0u8; 8];
    net.read_config(0, &mut mac);
    assert_eq!(mac, [2, 3, 4, 5, 6, 7, 0, 0]);
    let mut far = [0xffu8; 4];
    net.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
    let f = net.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(net.device_type(), VIRTIO_ID_NET);
    assert_eq!(net.queue_max_sizes().len(), 2);
}

#[test]
fn mac_from_name_is_stable_local_unicast() {
    let a = mac_from_name("tap0");
    assert_eq!(a, mac_from_name("tap0"));
    assert_ne!(a, mac_from_name("tap1"));
    assert_eq!(a[0] & 0x03, 0x02, "locally administered unicast");
    assert_eq!(
        format_mac(&[0x52, 0x54, 0, 0xab, 1, 2]),
        "52:54:00:ab:01:02"
    );
}

#[test]
fn tx_gathers_a_chain_into_one_frame() {
    for features in [
        base_features(),
        base_features() | (1 << VIRTIO_RING_F_EVENT_IDX),
    ] {
        let mut h = Harness::new(features);
        let f = frame(100, 1);
        // header alone in the first descriptor, the payload split over two more
        h.put(BUF, &f[..12]);
        h.put(BUF + 0x1000, &f[12..50]);
        h.put(BUF + 0x2000, &f[50..]);
        let head = h.tx_chain(&[
            (BUF, 12, 0),
            (BUF + 0x1000, 38, 0),
            (BUF + 0x2000, (f.len() - 50) as u32, 0),
        ]);
        h.net.process_tx();
        assert_eq!(h.peer_recv().as_deref(), Some(&f[..]));
        assert_eq!(h.tx_used(), vec![(u32::from(head), 0)]);
        assert_ne!(h.interrupt.status(), 0, "interrupt raised");
        assert_eq!(h.net.stats().tx_frames, 1);
        assert_eq!(h.net.stats().tx_bytes, 100);
    }
}

#[test]
fn malformed_tx_chains_are_dropped_counted_and_the_device_goes_on() {
    let mut h = Harness::new(base_features());
    let f = frame(60, 9);
    h.put(BUF, &f);
    let bad: [&[Desc]; 4] = [
        &[(BUF, f.len() as u32, F_WRITE)], // device-writable
        &[(BUF, 8, 0)],                    // shorter than the header
        &[(BUF, 12, 0), (BAD, 64, 0)],     // outside guest memory
        &[(BUF, 12, 0), (BUF, (MAX_BUFFER_LEN) as u32, 0)], // too long
    ];
    let mut heads = Vec::new();
    for chain in bad {
        heads.push(h.tx_chain(chain));
    }
    let good = h.tx_chain(&[(BUF, f.len() as u32, 0)]);
    h.net.process_tx();
    assert_eq!(
        h.peer_recv().as_deref(),
        Some(&f[..]),
        "only the good frame"
    );
    assert_eq!(h.peer_recv(), None);
    let used = h.tx_used();
    assert_eq!(used.len(), 5, "every chain returned: {used:?}");
    assert_eq!(used[4], (u32::from(good), 0));
    let s = h.net.stats();
    assert_eq!((s.tx_frames, s.tx_dropped), (1, 4));
    assert!(!h.interrupt.needs_reset());
}

#[test]
fn rx_waits_for_buffers_then_delivers_without_losing_the_frame() {
    let mut h = Harness::new(base_features() | (1 << VIRTIO_RING_F_EVENT_IDX));
    let f = frame(200, 3);
    h.peer_send(&f);
    // no buffers: the frame stays pending and the tap is not to be watched
    assert_eq!(h.net.process_rx(), RxState::WantBuffers);
    assert!(h.rx_used().is_empty());
    // the device asked to be notified at the next buffer
    let (_, _, used) = rings(0);
    let avail_event: u16 = h.mem.read_obj(GuestAddress(used + 4 + 8 * 16)).unwrap();
    assert_eq!(avail_event, 0);

    let head = h.rx_chain(&[(BUF, 2048, F_WRITE)]);
    assert_eq!(h.net.process_rx(), RxState::WantFrames);
    assert_eq!(h.rx_used(), vec![(u32::from(head), f.len() as u32)]);
    let got = h.get(BUF, f.len());
    assert_eq!(got[NUM_BUFFERS_OFFSET..12], [1, 0], "num_buffers");
    assert_eq!(got[12..], f[12..]);
    assert_eq!(h.net.stats().rx_frames, 1);
}

#[test]
fn rx_without_mrg_rxbuf_needs_one_chain_that_holds_the_frame() {
    let mut h = Harness::new(base_features());
    let big = frame(3000, 5);
    let small = frame(100, 6);
    h.peer_send(&big);
    h.peer_send(&small);
    // a chain of two descriptors holds the big frame
    let head = h.rx_chain(&[(BUF, 1000, F_WRITE), (BUF + 0x1000, 4000, F_WRITE)]);
    assert_eq!(h.net.process_rx(), RxState::WantBuffers);
    assert_eq!(h.rx_used(), vec![(u32::from(head), big.len() as u32)]);
    assert_eq!(h.get(BUF + 12, 988), big[12..1000]);
    assert_eq!(h.get(BUF + 0x1000, big.len() - 1000), big[1000..]);
    // a chain too small for the next frame: that frame is dropped, the chain kept for the next
    let big2 = frame(3000, 7);
    h.peer_send(&big2);
    let head2 = h.rx_chain(&[(BUF + 0x3000, 1500, F_WRITE)]);
    assert_eq!(h.net.process_rx(), RxState::WantBuffers);
    // the small frame fit, then big2 did not fit in the (empty) ring: pending
    assert_eq!(h.rx_used(), vec![(u32::from(head2), small.len() as u32)]);
    let head3 = h.rx_chain(&[(BUF + 0x5000, 1500, F_WRITE)]);
    assert_eq!(h.net.process_rx(), RxState::WantFrames);
    assert!(h.rx_used().is_empty(), "big2 dropped, chain {head3} kept");
    assert_eq!(h.net.stats().rx_dropped, 1);
    let f = frame(64, 8);
    h.peer_send(&f);
    assert_eq!(h.net.process_rx(), RxState::WantFrames);
    assert_eq!(h.rx_used(), vec![(u32::from(head3), f.len() as u32)]);
}

#[test]
fn rx_with_mrg_rxbuf_spreads_a_frame_over_chains() {
    let mut h = Harness::new(base_features() | (1 << VIRTIO_NET_F_MRG_RXBUF));
    let f = frame(2500, 11); // 2512 bytes: three 1024-byte chains
    let heads: Vec<u16> = (0..2)
        .map(|i| h.rx_chain(&[(BUF + i * 0x1000, 1024, F_WRITE)]))
        .collect();
    h.peer_send(&f);
    assert_eq!(
        h.net.process_rx(),
        RxState::WantBuffers,
        "two chains are not enough"
    );
    assert!(h.rx_used().is_empty(), "nothing written half-way");
    let third = h.rx_chain(&[(BUF + 0x2000, 1024, F_WRITE)]);
    let fourth = h.rx_chain(&[(BUF + 0x3000, 1024, F_WRITE)]);
    assert_eq!(h.net.process_rx(), RxState::WantFrames);
    assert_eq!(
        h.rx_used(),
        vec![
            (u32::from(heads[0]), 1024),
            (u32::from(heads[1]), 1024),
            (u32::from(third), 464)
        ]
    );
    let mut got = h.get(BUF, 1024);
    got.extend(h.get(BUF + 0x1000, 1024));
    got.extend(h.get(BUF + 0x2000, 464));
    assert_eq!(got[NUM_BUFFERS_OFFSET..12], [3, 0], "num_buffers");
    assert_eq!(got[12..], f[12..]);
    // the fourth chain takes the next frame
    let g = frame(10, 1);
    h.peer_send(&g);
    h.net.process_rx();
    assert_eq!(h.rx_used(), vec![(u32::from(fourth), g.len() as u32)]);
    assert_eq!(h.get(BUF + 0x3000 + 10, 2), [1, 0]);
}

#[test]
fn bad_rx_chains_are_returned_unused() {
    let mut h = Harness::new(base_features());
    let f = frame(50, 2);
    h.peer_send(&f);
    let readable = h.rx_chain(&[(BUF, 2048, 0)]);
    let outside = h.rx_chain(&[(BAD, 2048, F_WRITE)]);
    let good = h.rx_chain(&[(BUF + 0x1000, 2048, F_WRITE)]);
    assert_eq!(h.net.process_rx(), RxState::WantFrames);
    assert_eq!(
        h.rx_used(),
        vec![
            (u32::from(readable), 0),
            (u32::from(outside), 0),
            (u32::from(good), f.len() as u32)
        ]
    );
    assert_eq!(h.net.stats().rx_bad_chains, 2);
    assert!(!h.interrupt.needs_reset());
}

#[test]
fn a_broken_available_ring_asks_for_a_reset() {
    let mut h = Harness::new(base_features());
    let (_, avail, _) = rings(1);
    // avail.idx far ahead of anything the queue can hold
    h.mem.write_obj(1000u16, GuestAddress(avail + 2)).unwrap();
    h.net.process_tx();
    assert!(h.interrupt.needs_reset());
    // after a reset and a new activation the device works again
    h.net.reset();
    assert!(!h.net.is_activated());
}

#[test]
fn reset_drops_state_and_stops_rx() {
    let mut h = Harness::new(base_features());
    h.peer_send(&frame(10, 0));
    assert_eq!(h.net.process_rx(), RxState::WantBuffers);
    h.net.reset();
    assert_eq!(h.net.process_rx(), RxState::Stopped);
    assert_eq!(h.net.process_rx(), RxState::Stopped);
}

/// Waits (at most 5 s) for a rate limiter's timer to fire, and acknowledges it.
fn wait_for_timer(limiter: &mut crate::rate_limiter::RateLimiter) {
    let mut pfd = libc::pollfd {
        fd: limiter.timer_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "the rate-limit timer never fired");
    limiter.timer_fired();
}

fn two_frames_per_burst() -> crate::rate_limiter::RateLimiter {
    use crate::rate_limiter::{BucketConfig, RateLimitConfig, RateLimiter};
    // 500 frames/s with a bucket of 2: two frames go at once, each next one waits ~2 ms.
    RateLimiter::new(&RateLimitConfig {
        bytes: None,
        ops: Some(BucketConfig {
            rate: 500,
            burst: Some(2),
        }),
    })
    .unwrap()
}

#[test]
fn throttled_tx_frames_wait_in_the_ring_and_all_go_in_order() {
    for features in [
        base_features(),
        base_features() | (1 << VIRTIO_RING_F_EVENT_IDX),
    ] {
        let mut h = Harness::new(features);
        h.net.tx_limiter = Some(two_frames_per_burst());
        let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(60 + i, i as u8)).collect();
        for (i, f) in frames.iter().enumerate() {
            let addr = BUF + i as u64 * 0x1000;
            h.put(addr, f);
            h.tx_chain(&[(addr, f.len() as u32, 0)]);
        }
        h.net.process_tx();
        assert_eq!(h.tx_used().len(), 2, "the burst goes at once");
        assert!(h.net.tx_throttled);
        let mut sent = 2;
        let mut rounds = 0;
        while sent < 5 {
            rounds += 1;
            assert!(rounds <= 10, "stuck after {sent} frames");
            wait_for_timer(h.net.tx_limiter.as_mut().unwrap());
            h.net.tx_throttled = false;
            h.net.process_tx();
            sent += h.tx_used().len();
        }
        for f in &frames {
            assert_eq!(
                h.peer_recv().as_deref(),
                Some(&f[..]),
                "in order, none lost"
            );
        }
        assert_eq!(h.peer_recv(), None);
        assert_eq!(h.net.stats().tx_frames, 5);
        assert_eq!(h.net.stats().tx_dropped, 0);
    }
}

#[test]
fn throttled_rx_stops_reading_the_tap_and_loses_nothing() {
    let mut h = Harness::new(base_features() | (1 << VIRTIO_RING_F_EVENT_IDX));
    h.net.rx_limiter = Some(two_frames_per_burst());
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(100 + i, 40 + i as u8)).collect();
    for f in &frames {
        h.peer_send(f);
    }
    for i in 0..5 {
        h.rx_chain(&[(BUF + i * 0x1000, 2048, F_WRITE)]);
    }
    // Two frames, then the tap is left alone until the timer.
    assert_eq!(h.net.process_rx(), RxState::Throttled);
    let mut got = h.rx_used();
    assert_eq!(got.len(), 2);
    let mut rounds = 0;
    while got.len() < 5 {
        rounds += 1;
        assert!(rounds <= 10, "stuck after {} frames", got.len());
        wait_for_timer(h.net.rx_limiter.as_mut().unwrap());
        let state = h.net.process_rx();
        got.extend(h.rx_used());
        if got.len() < 5 {
            assert_eq!(state, RxState::Throttled);
        } else {
            // All delivered: out of tokens again, or found the tap drained.
            assert!(matches!(state, RxState::Throttled | RxState::WantFrames));
        }
    }
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(got[i].1, f.len() as u32);
        assert_eq!(h.get(BUF + i as u64 * 0x1000 + 12, f.len() - 12), f[12..]);
    }
    assert_eq!(h.net.stats().rx_frames, 5);
    assert_eq!(h.net.stats().rx_dropped, 0);
}

/// VIRTIO_RING_F_INDIRECT_DESC is never offered: an RX chain that names an indirect table is
/// returned unused (and the frame waits for a good one); a TX chain with one fails the device.
#[test]
fn indirect_descriptors_never_negotiated_are_refused() {
    const F_INDIRECT: u16 = 4;
    let mut h = Harness::new(base_features());
    // An indirect table of one device-writable buffer, big enough for the frame.
    let table = BUF + 0x8000;
    h.mem.write_obj(BUF + 0x9000, GuestAddress(table)).unwrap();
    h.mem.write_obj(2048u32, GuestAddress(table + 8)).unwrap();
    h.mem.write_obj(F_WRITE, GuestAddress(table + 12)).unwrap();
    let f = frame(50, 3);
    h.peer_send(&f);
    let indirect = h.rx_chain(&[(table, 16, F_INDIRECT)]);
    let good = h.rx_chain(&[(BUF, 2048, F_WRITE)]);
    h.net.process_rx();
    assert_eq!(
        h.rx_used(),
        vec![(u32::from(indirect), 0), (u32::from(good), f.len() as u32)]
    );
    assert_eq!(h.net.stats().rx_bad_chains, 1);
    assert!(!h.interrupt.needs_reset());

    h.tx_chain(&[(table, 16, F_INDIRECT)]);
    h.net.process_tx();
    assert!(h.interrupt.needs_reset());
    assert!(h.peer_recv().is_none());
}

/// A vnet header: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
fn header(
    flags: u8,
    gso: u8,
    hdr_len: u16,
    gso_size: u16,
    start: u16,
    off: u16,
    num: u16,
) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso;
    for (i, v) in [hdr_len, gso_size, start, off, num].into_iter().enumerate() {
        h[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    h
}

fn with(bits: &[u32]) -> u64 {
    bits.iter().fold(base_features(), |f, &b| f | (1 << b))
}

#[test]
fn tx_header_flags_only_needs_csum_and_data_valid() {
    use super::device::check_tx_header as check;
    let csum = with(&[VIRTIO_NET_F_CSUM]);
    assert!(check(&header(0, 0, 0, 0, 0, 0, 0), 100, base_features()).is_ok());
    assert!(check(&header(2, 0, 0, 0, 0, 0, 0), 100, base_features()).is_ok());
    assert!(check(&header(1, 0, 0, 0, 20, 16, 0), 100, csum).is_ok());
    for flags in [4u8, 8, 0x80, 0xff] {
        assert!(
            check(&header(flags, 0, 0, 0, 0, 0, 0), 100, csum).is_err(),
            "{flags:#x}"
        );
    }
}

#[test]
fn tx_header_needs_csum_wants_csum_and_the_checksum_inside_the_frame() {
    use super::device::check_tx_header as check;
    let csum = with(&[VIRTIO_NET_F_CSUM]);
    // Not negotiated.
    assert!(check(&header(1, 0, 0, 0, 20, 16, 0), 100, base_features()).is_err());
    // The 2-byte checksum field ends exactly at the frame's end, or one byte past it.
    assert!(check(&header(1, 0, 0, 0, 90, 8, 0), 100, csum).is_ok());
    assert!(check(&header(1, 0, 0, 0, 90, 9, 0), 100, csum).is_err());
    assert!(check(&header(1, 0, 0, 0, 0xffff, 0xffff, 0), 100, csum).is_err());
}

#[test]
fn tx_header_gso_only_of_a_negotiated_type_with_a_sane_segment_size() {
    use super::device::check_tx_header as check;
    let tso4 = with(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4]);
    let tso6 = with(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO6]);
    let gso = |t: u8, size: u16| header(1, t, 54, size, 34, 16, 0);
    assert!(check(&gso(1, 1448), 3000, tso4).is_ok());
    assert!(check(&gso(4, 1448), 3000, tso6).is_ok());
    // Not negotiated: TSO6 with TSO4 only, TSO4 with nothing, UFO and ECN never offered.
    assert!(check(&gso(4, 1448), 3000, tso4).is_err());
    assert!(check(&gso(1, 1448), 3000, with(&[VIRTIO_NET_F_CSUM])).is_err());
    assert!(check(&gso(3, 1448), 3000, tso4).is_err());
    assert!(check(&gso(0x81, 1448), 3000, tso4).is_err());
    assert!(check(&gso(0x80, 1448), 3000, tso4).is_err(), "ECN alone");
    // Unknown types.
    for t in [2u8, 5, 6, 0x7f, 0xff] {
        assert!(check(&gso(t, 1448), 3000, tso4).is_err(), "{t:#x}");
    }
    // Segment size 0, or beyond the frame.
    assert!(check(&gso(1, 0), 3000, tso4).is_err());
    assert!(check(&gso(1, 3001), 3000, tso4).is_err());
}

#[test]
fn tx_header_length_within_the_frame_and_no_num_buffers() {
    use super::device::check_tx_header as check;
    assert!(check(&header(0, 0, 100, 0, 0, 0, 0), 100, base_features()).is_ok());
    assert!(check(&header(0, 0, 101, 0, 0, 0, 0), 100, base_features()).is_err());
    assert!(check(&header(0, 0, 0, 0, 0, 0, 1), 100, base_features()).is_err());
}

/// Frames whose header asks for offloads not negotiated never reach the tap; they are counted, and
/// a good frame behind them goes. The header may span descriptors.
#[test]
fn tx_frames_with_a_bad_vnet_header_are_dropped_before_the_tap() {
    let mut h = Harness::new(base_features());
    let payload = frame(200, 4);
    let bad = [
        header(0xff, 0xff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff),
        header(1, 0, 0, 0, 10, 6, 0),      // NEEDS_CSUM without CSUM
        header(1, 1, 54, 1448, 34, 16, 0), // TSO4 without HOST_TSO4
        header(0, 0, 0, 0, 0, 0, 3),       // num_buffers
    ];
    for (i, hdr) in bad.iter().enumerate() {
        let at = BUF + i as u64 * 0x1000;
        h.put(at, &hdr[..5]);
        h.put(at + 0x800, &hdr[5..]);
        h.put(at + 0x800 + 7, &payload[12..]);
        h.tx_chain(&[(at, 5, 0), (at + 0x800, 7 + 200, 0)]);
    }
    h.put(BUF + 0x8000, &payload);
    h.tx_chain(&[(BUF + 0x8000, payload.len() as u32, 0)]);
    h.net.process_tx();
    assert_eq!(
        h.peer_recv().as_deref(),
        Some(&payload[..]),
        "only the good frame"
    );
    assert_eq!(h.peer_recv(), None);
    assert_eq!(h.tx_used().len(), 5, "every chain returned");
    let s = h.net.stats();
    assert_eq!((s.tx_frames, s.tx_dropped), (1, 4));
    assert!(!h.interrupt.needs_reset());
}

/// One RX event does a bounded amount of work: RX chains the device must return unused
/// (device-readable, or with no room), re-posted by the guest from another vCPU as fast as they
/// come back while a frame waits, must not keep `process_rx` (and the event loop) going. The RX
/// queue's event is signalled so the loop comes back after serving the others.
#[test]
fn a_guest_that_keeps_posting_bad_receive_buffers_does_not_hold_the_event_loop() {
    use crate::test_util::spawn_reposter;
    use std::sync::atomic::Ordering;

    const POSTS: u16 = 50_000;
    for (what, bad) in [
        ("device-readable", (BUF, 2048, 0)),
        ("empty", (BUF, 0, F_WRITE)),
    ] {
        let mut h = Harness::new(base_features() | (1 << VIRTIO_RING_F_EVENT_IDX));
        let (desc, avail, used) = rings(0);
        let table = virtio_queue::mock::DescriptorTable::new(&h.mem, GuestAddress(desc), QSIZE);
        for i in 0..QSIZE {
            let (addr, len, flags) = bad;
            let d = virtio_queue::desc::split::Descriptor::new(addr, len, flags, 0);
            table
                .store(i, virtio_queue::desc::RawDescriptor::from(d))
                .unwrap();
        }
        h.peer_send(&frame(100, 1));
        let _ = h.net.queue_events()[RX_QUEUE].read();
        let (stop, poster) = spawn_reposter(h.mem.clone(), avail, used, QSIZE, POSTS);
        while h.mem.read_obj::<u16>(GuestAddress(avail + 2)).unwrap() < QSIZE {
            std::hint::spin_loop();
        }
        let state = h.net.process_rx();
        let served = h.rx.ring.used_idx(&h.mem);
        stop.store(true, Ordering::Relaxed);
        poster.join().unwrap();
        assert!(
            usize::from(served) <= 2 * usize::from(QUEUE_SIZE),
            "{what}: one event returned {served} receive chains"
        );
        // Out of budget (the RX event was signalled) or out of buffers (notifications on).
        assert_eq!(state, RxState::WantBuffers, "{what}");
        assert!(!h.interrupt.needs_reset(), "{what}");
    }
}

/// The same without a race: a guest with a large RX queue posts thousands of bad chains at once
/// while a frame waits. One event returns at most the budget of them, and signals the RX event.
#[test]
fn one_receive_event_returns_a_bounded_number_of_bad_chains() {
    const SIZE: u16 = 4096;
    for bad in [(BUF, 2048, 0), (BUF, 0, F_WRITE)] {
        let mut h = Harness::with_rx_size(base_features() | (1 << VIRTIO_RING_F_EVENT_IDX), SIZE);
        for _ in 0..SIZE {
            h.rx_chain(&[bad]);
        }
        h.peer_send(&frame(100, 1));
        let _ = h.net.queue_events()[RX_QUEUE].read();
        assert_eq!(h.net.process_rx(), RxState::WantBuffers);
        let served = h.rx_used().len();
        assert!(
            served <= 2 * usize::from(QUEUE_SIZE),
            "{bad:?}: one event returned {served} receive chains"
        );
        assert_eq!(h.net.queue_events()[RX_QUEUE].read().unwrap(), 1);
        // The next events go on where it stopped.
        let mut total = served;
        for _ in 0..usize::from(SIZE) {
            if total == usize::from(SIZE) {
                break;
            }
            h.net.process_rx();
            total += h.rx_used().len();
        }
        assert_eq!(total, usize::from(SIZE));
        assert_eq!(h.net.stats().rx_bad_chains, u64::from(SIZE));
        assert!(!h.interrupt.needs_reset());
    }
}

/// With MRG_RXBUF, tiny receive buffers cannot make the device hold more chains than the queue
/// has entries for one frame: the frame that does not fit in them is dropped, and the chains serve
/// the next frames. Zero-length descriptors take no room in the held buffer lists.
#[test]
fn mergeable_rx_holds_at_most_a_queue_of_chains_per_frame() {
    let mut h = Harness::new(base_features() | (1 << VIRTIO_NET_F_MRG_RXBUF));
    h.peer_send(&frame(MAX_FRAME_LEN, 3));
    // A zero-length descriptor in front of a 1-byte buffer.
    h.rx_chain(&[(BUF, 0, F_WRITE), (BUF, 1, F_WRITE)]);
    assert_eq!(h.net.process_rx(), RxState::WantBuffers);
    assert!(h
        .net
        .held
        .iter()
        .all(|c| c.bufs.len() == 1 && c.capacity == 1));

    let mut h = Harness::new(base_features() | (1 << VIRTIO_NET_F_MRG_RXBUF));
    h.peer_send(&frame(MAX_FRAME_LEN, 3));
    for i in 0..QSIZE / 2 {
        h.rx_chain(&[(BUF + u64::from(i) * 0x10, 1, F_WRITE)]);
    }
    assert_eq!(h.net.process_rx(), RxState::WantBuffers);
    assert_eq!(h.net.held.len(), usize::from(QSIZE / 2));
    for i in QSIZE / 2..QSIZE {
        h.rx_chain(&[(BUF + u64::from(i) * 0x10, 1, F_WRITE)]);
    }
    // The queue's worth of chains is held and still too small: the frame goes.
    h.net.process_rx();
    assert_eq!(h.net.held.len(), usize::from(QSIZE));
    assert_eq!(h.net.held.capacity(), usize::from(QSIZE));
    assert_eq!(h.net.stats().rx_dropped, 1);
    assert!(h.rx_used().is_empty());
    assert!(!h.interrupt.needs_reset());
    // A frame that fits takes the chains it needs, the rest stay held.
    let small = frame(2, 9);
    h.peer_send(&small);
    h.net.process_rx();
    assert_eq!(h.rx_used().len(), small.len());
    assert_eq!(h.net.held.len(), usize::from(QSIZE) - small.len());
    assert_eq!(h.net.held.capacity(), usize::from(QSIZE) - small.len());
}

/// A head made available again while the device holds it breaks the queue protocol (the device
/// would return it twice); before, the device held it once more on every notification.
#[test]
fn an_rx_head_posted_again_while_held_fails_the_device() {
    let mut h = Harness::new(base_features() | (1 << VIRTIO_NET_F_MRG_RXBUF));
    h.peer_send(&frame(5000, 3));
    h.rx_chain(&[(BUF, 1024, F_WRITE)]);
    assert_eq!(h.net.process_rx(), RxState::WantBuffers);
    let (_, avail, _) = rings(0);
    h.mem.write_obj(0u16, GuestAddress(avail + 4 + 2)).unwrap();
    h.mem.write_obj(2u16, GuestAddress(avail + 2)).unwrap();
    assert_eq!(h.net.process_rx(), RxState::Stopped);
    assert!(h.interrupt.needs_reset());
}

/// The header the tap gets is the one that was checked: another vCPU rewriting it in guest memory
/// between the check and the write cannot slip an unchecked one through.
#[test]
fn a_tx_header_rewritten_after_the_check_does_not_reach_the_tap() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut h = Harness::new(base_features());
    let f = frame(200, 5);
    h.put(BUF, &f);
    let mem = h.mem.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let flipper = std::thread::spawn(move || {
        let mut flags = 0u8;
        while !stopped.load(Ordering::Relaxed) {
            flags ^= 0xfc;
            mem.store(flags, GuestAddress(BUF), Ordering::Relaxed)
                .unwrap();
        }
    });
    let mut sent = 0;
    for _ in 0..5000 {
        h.tx_chain(&[(BUF, f.len() as u32, 0)]);
        h.net.process_tx();
        h.tx_used();
        while let Some(got) = h.peer_recv() {
            sent += 1;
            assert_eq!(got[0], 0, "an unchecked header reached the tap");
            assert_eq!(got[1..], f[1..]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    assert!(sent > 0);
    assert_eq!(h.net.stats().tx_frames, sent);
}
