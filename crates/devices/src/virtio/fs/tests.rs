//! virtio-fs against hand-built queues (no KVM) and a socket pair standing in for the server:
//! the framing both ways, the device's own `unique`, chains that break the rules, a server that
//! lies or ends.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::wire::{RequestFrame, IN_HEADER_LEN, OUT_HEADER_LEN};
use super::*;
use crate::persist::Persist;
use crate::test_util::RingDriver;
use crate::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::GuestMemoryMmap;

const F_WRITE: u16 = 2;
const QSIZE: u16 = 16;
const RINGS: [(u64, u64, u64); 2] = [(0x0, 0x1000, 0x2000), (0x4000, 0x5000, 0x6000)];
const REQ_AREA: u64 = 0x10_0000;
const REPLY_AREA: u64 = 0x20_0000;
const SLOT: u64 = 0x1000;
const MEM_SIZE: u64 = 0x40_0000;
const OP_LOOKUP: u32 = 1;

struct Harness {
    mem: GuestMemoryMmap,
    dev: Fs,
    drivers: [RingDriver; 2],
    /// The server's end.
    server: UnixStream,
    next: u64,
}

/// A FUSE request: its in-header (`len` as the guest claims it) and `body`.
fn request(opcode: u32, unique: u64, claimed_len: u32, body: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; IN_HEADER_LEN];
    r[..4].copy_from_slice(&claimed_len.to_le_bytes());
    r[4..8].copy_from_slice(&opcode.to_le_bytes());
    r[8..16].copy_from_slice(&unique.to_le_bytes());
    r.extend_from_slice(body);
    r
}

/// A reply of `len` bytes in all to request `unique`.
fn reply(unique: u64, len: usize) -> Vec<u8> {
    let mut r = vec![0xab; len];
    r[..4].copy_from_slice(&(len as u32).to_le_bytes());
    r[4..8].copy_from_slice(&0i32.to_le_bytes());
    r[8..16].copy_from_slice(&unique.to_le_bytes());
    r
}

impl Harness {
    fn new() -> Harness {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut dev = Fs::new("work", OwnedFd::from(ours), None).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let queues = RINGS
            .iter()
            .map(|&rings| crate::test_util::ready_queue(&mem, QSIZE, rings, false))
            .collect();
        let interrupt = Arc::new(Interrupt::new().unwrap());
        dev.activate(mem.clone(), interrupt, queues, 1 << VIRTIO_F_VERSION_1)
            .unwrap();
        theirs
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        Harness {
            mem,
            dev,
            drivers: RINGS.map(|(d, a, u)| RingDriver::new(d, a, u, QSIZE)),
            server: theirs,
            next: 0,
        }
    }

    /// Posts `req` (readable) and `room` writable bytes on queue `q`, and lets the device take
    /// it; returns where the reply goes.
    fn post(&mut self, q: usize, req: &[u8], room: u32) -> u64 {
        let slot = self.next;
        self.next += 1;
        let (at, reply_at) = (REQ_AREA + slot * SLOT, REPLY_AREA + slot * SLOT);
        self.mem.write_slice(req, GuestAddress(at)).unwrap();
        let mut descs = vec![(at, req.len() as u32, 0)];
        if room > 0 {
            descs.push((reply_at, room, F_WRITE));
        }
        self.drivers[q].add_chain(&self.mem, &descs);
        self.dev.process_queues();
        reply_at
    }

    /// What the server reads next: the frame and the request.
    fn server_reads(&mut self) -> (RequestFrame, Vec<u8>) {
        let mut frame = [0u8; RequestFrame::LEN];
        self.server.read_exact(&mut frame).unwrap();
        let frame = RequestFrame::from_bytes(frame);
        let mut req = vec![0u8; frame.len as usize];
        self.server.read_exact(&mut req).unwrap();
        (frame, req)
    }

    fn server_sends(&mut self, bytes: &[u8]) {
        self.server.write_all(bytes).unwrap();
        self.dev.read_replies();
    }

    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let n = self.drivers[q].used_idx(&self.mem);
        (0..n).map(|i| self.drivers[q].used(&self.mem, i)).collect()
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
}

fn unique_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[8..16].try_into().unwrap())
}

fn error_of(bytes: &[u8]) -> i32 {
    i32::from_le_bytes(bytes[4..8].try_into().unwrap())
}

#[test]
fn config_space_holds_the_tag_and_one_request_queue() {
    let h = Harness::new();
    let mut config = [0xffu8; TAG_LEN + 4];
    h.dev.read_config(0, &mut config);
    assert_eq!(&config[..4], b"work");
    assert!(config[4..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(&config[TAG_LEN..], &1u32.to_le_bytes());
    assert_eq!(h.dev.device_type(), VIRTIO_ID_FS);
    assert_eq!(h.dev.queue_max_sizes(), &[QUEUE_SIZE; 2]);
}

#[test]
fn bad_tags_are_refused() {
    for tag in ["", "a-tag-that-is-longer-than-thirty-six-bytes", "nul\0"] {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        assert!(Fs::new(tag, OwnedFd::from(ours), None).is_err(), "{tag:?}");
    }
}

#[test]
fn a_request_reaches_the_server_framed_and_its_reply_the_guest() {
    let mut h = Harness::new();
    // The guest claims a length that is not what it posted: the device frames what it posted.
    let req = request(OP_LOOKUP, 0x1234, 9999, b"name\0");
    let reply_at = h.post(REQUEST_QUEUE, &req, 256);
    let (frame, got) = h.server_reads();
    assert_eq!(frame.len as usize, req.len());
    assert_eq!(frame.reply_room, 256);
    assert_eq!(&got[..4], &(req.len() as u32).to_le_bytes());
    let ours = unique_of(&got);
    assert_ne!(
        ours, 0x1234,
        "the guest's unique is replaced by the device's"
    );
    assert_eq!(&got[16..], &req[16..]);
    assert_eq!(h.dev.in_flight(), 1);
    assert!(h.used(REQUEST_QUEUE).is_empty(), "held until the reply");

    h.server_sends(&reply(ours, 100));
    assert_eq!(h.used(REQUEST_QUEUE), vec![(0, 100)]);
    let back = h.read(reply_at, 100);
    assert_eq!(
        unique_of(&back),
        0x1234,
        "the guest gets its own unique back"
    );
    assert!(back[16..].iter().all(|&b| b == 0xab));
    assert_eq!(h.dev.in_flight(), 0);
    assert_eq!(h.dev.stats().replies, 1);
}

#[test]
fn replies_split_across_reads_and_out_of_order_are_matched() {
    let mut h = Harness::new();
    let a_at = h.post(REQUEST_QUEUE, &request(OP_LOOKUP, 1, 0, b"a\0"), 128);
    let b_at = h.post(REQUEST_QUEUE, &request(OP_LOOKUP, 2, 0, b"b\0"), 128);
    let (_, a) = h.server_reads();
    let (_, b) = h.server_reads();
    let (a_reply, b_reply) = (reply(unique_of(&a), 40), reply(unique_of(&b), 24));
    // B first, cut in two writes; then A.
    h.server_sends(&b_reply[..10]);
    assert!(h.used(REQUEST_QUEUE).is_empty());
    h.server_sends(&b_reply[10..]);
    h.server_sends(&a_reply);
    let used = h.used(REQUEST_QUEUE);
    assert_eq!(used.len(), 2);
    assert_eq!(unique_of(&h.read(b_at, 24)), 2);
    assert_eq!(unique_of(&h.read(a_at, 40)), 1);
}

#[test]
fn forget_gets_no_reply_and_is_returned_at_once() {
    let mut h = Harness::new();
    h.post(HIPRIO_QUEUE, &request(wire::OP_FORGET, 7, 0, &[1; 8]), 0);
    assert_eq!(h.used(HIPRIO_QUEUE), vec![(0, 0)]);
    let (_, got) = h.server_reads();
    assert_eq!(
        u32::from_le_bytes(got[4..8].try_into().unwrap()),
        wire::OP_FORGET
    );
    assert_eq!(h.dev.in_flight(), 0);
}

#[test]
fn chains_that_break_the_rules_are_answered_without_the_server() {
    let mut h = Harness::new();
    // Shorter than an in-header: EINVAL in the reply buffer.
    let at = h.post(REQUEST_QUEUE, &[0u8; 20], 64);
    assert_eq!(h.used(REQUEST_QUEUE), vec![(0, OUT_HEADER_LEN as u32)]);
    assert_eq!(error_of(&h.read(at, OUT_HEADER_LEN)), -libc::EINVAL);
    // A request that needs a reply, with no room for one: returned empty.
    h.post(REQUEST_QUEUE, &request(OP_LOOKUP, 3, 0, b"x\0"), 0);
    assert_eq!(h.used(REQUEST_QUEUE)[1].1, 0);
    // A readable buffer after a writable one.
    let req = request(OP_LOOKUP, 4, 0, b"y\0");
    h.mem.write_slice(&req, GuestAddress(REQ_AREA)).unwrap();
    h.drivers[REQUEST_QUEUE].add_chain(
        &h.mem,
        &[(REPLY_AREA, 64, F_WRITE), (REQ_AREA, req.len() as u32, 0)],
    );
    h.dev.process_queues();
    assert_eq!(h.used(REQUEST_QUEUE)[2].1, 0);
    assert_eq!(h.dev.stats().bad_chains, 3);
    assert_eq!(h.dev.stats().requests, 0, "none reached the server");
    assert!(!h.dev.core.failed, "a bad chain does not fail the device");
}

#[test]
fn a_reply_larger_than_the_room_posted_is_an_eio() {
    let mut h = Harness::new();
    let at = h.post(REQUEST_QUEUE, &request(OP_LOOKUP, 5, 0, b"z\0"), 32);
    let (frame, got) = h.server_reads();
    assert_eq!(frame.reply_room, 32);
    h.server_sends(&reply(unique_of(&got), 64));
    assert_eq!(h.used(REQUEST_QUEUE), vec![(0, OUT_HEADER_LEN as u32)]);
    let back = h.read(at, OUT_HEADER_LEN);
    assert_eq!(error_of(&back), -libc::EIO);
    assert_eq!(unique_of(&back), 5);
    // A reply for nothing pending is dropped.
    h.server_sends(&reply(999, 16));
    assert_eq!(h.used(REQUEST_QUEUE).len(), 1);
    assert!(h.dev.gone.is_none());
}

#[test]
fn a_server_that_breaks_the_framing_is_gone_and_every_request_fails() {
    let mut h = Harness::new();
    let at = h.post(REQUEST_QUEUE, &request(OP_LOOKUP, 6, 0, b"q\0"), 64);
    h.server_reads();
    // A length below the out-header's.
    h.server_sends(&[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(h.dev.gone.is_some());
    assert_eq!(error_of(&h.read(at, OUT_HEADER_LEN)), -libc::EIO);
    assert_eq!(unique_of(&h.read(at, OUT_HEADER_LEN)), 6);
    // Later requests: EIO at once.
    let later = h.post(REQUEST_QUEUE, &request(OP_LOOKUP, 8, 0, b"r\0"), 64);
    assert_eq!(error_of(&h.read(later, OUT_HEADER_LEN)), -libc::EIO);
    assert_eq!(h.used(REQUEST_QUEUE).len(), 2);
}

#[test]
fn a_server_that_ends_fails_what_is_in_flight() {
    let mut h = Harness::new();
    let a = h.post(REQUEST_QUEUE, &request(OP_LOOKUP, 10, 0, b"a\0"), 64);
    let b = h.post(REQUEST_QUEUE, &request(OP_LOOKUP, 11, 0, b"b\0"), 64);
    drop(std::mem::replace(
        &mut h.server,
        UnixStream::pair().unwrap().0,
    ));
    h.dev.read_replies();
    assert!(h.dev.gone.is_some());
    assert_eq!(h.used(REQUEST_QUEUE).len(), 2);
    for (at, unique) in [(a, 10), (b, 11)] {
        let back = h.read(at, OUT_HEADER_LEN);
        assert_eq!((error_of(&back), unique_of(&back)), (-libc::EIO, unique));
    }
    assert_eq!(h.dev.stats().failed, 2);
}

#[test]
fn a_reset_drops_what_is_in_flight_and_its_late_reply() {
    let mut h = Harness::new();
    h.post(REQUEST_QUEUE, &request(OP_LOOKUP, 12, 0, b"a\0"), 64);
    let (_, got) = h.server_reads();
    h.dev.reset();
    assert_eq!(h.dev.in_flight(), 0);
    h.server_sends(&reply(unique_of(&got), 32));
    assert!(h.dev.gone.is_none());
}

#[test]
fn a_saved_state_is_refused_on_restore() {
    let mut h = Harness::new();
    let state = h.dev.save();
    assert_eq!(state.tag, "work");
    let e = h.dev.restore(state).unwrap_err().to_string();
    assert!(e.contains("share 'work'"), "{e}");
}

#[test]
fn a_chain_posted_again_while_held_fails_the_device() {
    let mut h = Harness::new();
    let req = request(OP_LOOKUP, 20, 0, b"a\0");
    h.post(REQUEST_QUEUE, &req, 64);
    assert_eq!(h.dev.in_flight(), 1);
    // The same head (descriptors 0 and 1) made available again before it was used.
    h.drivers[REQUEST_QUEUE].rewind();
    h.drivers[REQUEST_QUEUE].add_chain(
        &h.mem,
        &[(REQ_AREA, req.len() as u32, 0), (REPLY_AREA, 64, F_WRITE)],
    );
    h.dev.process_queues();
    assert!(h.dev.core.failed, "the device failed");
    assert_eq!(h.dev.in_flight(), 1, "nothing more is held");
}
