//! virtio-console against hand-built queues (no KVM): transmit to the backend, receive from
//! its input, hostile chains, the size and its config interrupt.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::chardev::Chardev;
use crate::test_util::{RingDriver, SharedBuf};
use crate::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_CONFIG};
use crate::GuestMemoryMmap;

const F_WRITE: u16 = 2;
const QSIZE: u16 = 16;
/// Per queue: descriptor table, avail ring, used ring.
const RINGS: [(u64, u64, u64); 2] = [(0x0, 0x1000, 0x2000), (0x4000, 0x5000, 0x6000)];
const DATA: u64 = 0x10000;
const MEM_SIZE: u64 = 0x10_0000;

struct Harness {
    mem: GuestMemoryMmap,
    console: Console,
    interrupt: Arc<Interrupt>,
    out: SharedBuf,
    drivers: [RingDriver; 2],
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created by pipe(2) and are owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

impl Harness {
    fn new(input: Option<File>, size: Option<(u16, u16)>, features: u64) -> Harness {
        let out = SharedBuf::default();
        let mut chardev = Chardev::writer("console", Box::new(out.clone())).unwrap();
        if let Some(input) = input {
            chardev = chardev.with_input(input);
        }
        let mut console = Console::with_size(chardev, size).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let interrupt = Arc::new(Interrupt::new().unwrap());
        let queues = RINGS
            .iter()
            .map(|&rings| crate::test_util::ready_queue(&mem, QSIZE, rings, false))
            .collect();
        console
            .activate(mem.clone(), interrupt.clone(), queues, features)
            .unwrap();
        Harness {
            mem,
            console,
            interrupt,
            out,
            drivers: RINGS.map(|(d, a, u)| RingDriver::new(d, a, u, QSIZE)),
        }
    }

    fn add_chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        self.drivers[q].add_chain(&self.mem, descs)
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.drivers[q].used_idx(&self.mem)
    }

    fn used(&self, q: usize, n: u16) -> (u32, u32) {
        self.drivers[q].used(&self.mem, n)
    }

    fn output(&self) -> Vec<u8> {
        self.out.0.lock().unwrap().clone()
    }
}

#[test]
fn transmit_chains_reach_the_backend_in_order() {
    let mut h = Harness::new(None, None, 1 << VIRTIO_F_VERSION_1);
    h.mem.write_slice(b"hello ", GuestAddress(DATA)).unwrap();
    h.mem
        .write_slice(b"world\n", GuestAddress(DATA + 0x100))
        .unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    h.mem
        .write_slice(&big, GuestAddress(DATA + 0x1000))
        .unwrap();
    let a = h.add_chain(TX_QUEUE, &[(DATA, 6, 0), (DATA + 0x100, 6, 0)]);
    let b = h.add_chain(TX_QUEUE, &[(DATA + 0x1000, big.len() as u32, 0)]);
    h.console.process_tx();
    let mut want = b"hello world\n".to_vec();
    want.extend_from_slice(&big);
    assert!(h.output() == want);
    assert_eq!(h.used_idx(TX_QUEUE), 2);
    assert_eq!(h.used(TX_QUEUE, 0), (u32::from(a), 0));
    assert_eq!(h.used(TX_QUEUE, 1), (u32::from(b), 0));
    assert_eq!(h.console.tx_bytes(), want.len() as u64);
    assert_ne!(h.interrupt.status() & 1, 0, "used-buffer interrupt");
}

#[test]
fn hostile_transmit_chains_are_returned_and_counted() {
    let mut h = Harness::new(None, None, 1 << VIRTIO_F_VERSION_1);
    h.mem.write_slice(b"ok\n", GuestAddress(DATA)).unwrap();
    // Outside guest memory, straddling its end, device-writable, then a good one.
    h.add_chain(TX_QUEUE, &[(0x1_0000_0000, 16, 0)]);
    h.add_chain(TX_QUEUE, &[(MEM_SIZE - 4, 64, 0)]);
    h.add_chain(TX_QUEUE, &[(DATA, 3, F_WRITE)]);
    h.add_chain(TX_QUEUE, &[(DATA, 3, 0)]);
    h.console.process_tx();
    assert_eq!(h.used_idx(TX_QUEUE), 4, "every chain is returned");
    assert_eq!(h.output(), b"ok\n");
    assert_eq!(h.console.bad_chains(), 3);
    assert!(h.console.is_activated());
}

#[test]
fn input_goes_into_receive_buffers_only_when_posted() {
    let (rx, mut tx) = pipe();
    let mut h = Harness::new(Some(rx), None, 1 << VIRTIO_F_VERSION_1);
    tx.write_all(b"typed text").unwrap();
    // No receive buffer yet: nothing is read.
    h.console.on_input();
    assert_eq!(h.console.rx_bytes(), 0);
    h.console.update_input_pause();
    // Two small buffers: the input is split across them.
    let a = h.add_chain(RX_QUEUE, &[(DATA, 4, F_WRITE)]);
    let b = h.add_chain(RX_QUEUE, &[(DATA + 0x100, 64, F_WRITE)]);
    h.console.on_input();
    assert_eq!(h.used_idx(RX_QUEUE), 2);
    assert_eq!(h.used(RX_QUEUE, 0), (u32::from(a), 4));
    assert_eq!(h.used(RX_QUEUE, 1), (u32::from(b), 6));
    let mut got = [0u8; 10];
    h.mem.read_slice(&mut got[..4], GuestAddress(DATA)).unwrap();
    h.mem
        .read_slice(&mut got[4..], GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(&got, b"typed text");
    // A device-readable receive buffer is returned empty and counted.
    tx.write_all(b"x").unwrap();
    h.add_chain(RX_QUEUE, &[(DATA, 4, 0)]);
    h.console.on_input();
    assert_eq!(h.used(RX_QUEUE, 2).1, 0);
    assert_eq!(h.console.bad_chains(), 1);
}

#[test]
fn size_is_offered_and_changes_raise_a_config_interrupt() {
    let h = Harness::new(None, None, 1 << VIRTIO_F_VERSION_1);
    assert_eq!(
        h.console.avail_features() & 1,
        0,
        "no F_SIZE without a size"
    );

    let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_CONSOLE_F_SIZE);
    let mut h = Harness::new(None, Some((80, 25)), features);
    assert_eq!(h.console.avail_features() & 1, 1);
    let mut cfg = [0u8; 4];
    h.console.read_config(0, &mut cfg);
    assert_eq!(cfg, [80, 0, 25, 0]);
    assert_eq!(h.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    h.console.set_size(132, 43);
    h.console.read_config(0, &mut cfg);
    assert_eq!(cfg, [132, 0, 43, 0]);
    assert_ne!(h.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    // Beyond the config space reads as zero.
    let mut far = [0xffu8; 4];
    h.console.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
}

/// One transmit event copies a bounded amount of guest output: a chain of descriptors that each
/// cover most of guest memory (here 16 × 960 KiB; with 256 descriptors of up to 4 GiB, a
/// terabyte) must not hold the event loop while a backend that never blocks (a file) takes it
/// all. The rest follows on the next events (the queue is kicked), nothing lost or repeated.
#[test]
fn one_transmit_event_copies_a_bounded_amount() {
    let mut h = Harness::new(None, None, 1 << VIRTIO_F_VERSION_1);
    let len = (MEM_SIZE - DATA) as u32;
    let descs = vec![(DATA, len, 0); usize::from(QSIZE)];
    let head = h.add_chain(TX_QUEUE, &descs);
    let total = u64::from(len) * u64::from(QSIZE);
    let _ = h.console.queue_events()[TX_QUEUE].read();
    h.console.process_tx();
    let first = h.output().len() as u64;
    assert!(
        first <= 2 << 20,
        "one event copied {first} of {total} bytes"
    );
    assert_eq!(h.console.queue_events()[TX_QUEUE].read().unwrap(), 1);
    let mut events = 1;
    while h.used_idx(TX_QUEUE) == 0 {
        events += 1;
        assert!(events < 100, "stuck at {} bytes", h.output().len());
        h.console.process_tx();
    }
    assert_eq!(h.output().len() as u64, total);
    assert_eq!(h.used(TX_QUEUE, 0), (u32::from(head), 0));
}

/// One receive event serves a bounded number of chains: receive buffers that take nothing (zero
/// bytes), re-posted by the guest from another vCPU as fast as they are returned, must not keep
/// `process_rx` (and the event loop) going.
#[test]
fn a_guest_that_keeps_posting_empty_receive_buffers_does_not_hold_the_event_loop() {
    use crate::test_util::spawn_reposter;
    use std::sync::atomic::Ordering;

    const POSTS: u16 = 50_000;
    let mut h = Harness::new(None, None, 1 << VIRTIO_F_VERSION_1);
    let (desc, avail, used) = RINGS[RX_QUEUE];
    for i in 0..QSIZE {
        let d = virtio_queue::desc::split::Descriptor::new(DATA, 0, F_WRITE, 0);
        virtio_queue::mock::DescriptorTable::new(&h.mem, GuestAddress(desc), QSIZE)
            .store(i, virtio_queue::desc::RawDescriptor::from(d))
            .unwrap();
    }
    h.console.rx_pending = b"x".to_vec();
    let (stop, poster) = spawn_reposter(h.mem.clone(), avail, used, QSIZE, POSTS);
    while h.mem.read_obj::<u16>(GuestAddress(avail + 2)).unwrap() < QSIZE {
        std::hint::spin_loop();
    }
    h.console.process_rx();
    let served = h.used_idx(RX_QUEUE);
    stop.store(true, Ordering::Relaxed);
    poster.join().unwrap();
    assert!(
        served <= QUEUE_SIZE,
        "one event returned {served} receive chains"
    );
}
