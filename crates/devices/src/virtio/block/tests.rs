//! virtio-blk tests against crafted descriptor chains (no KVM).
//!
//! The driver side is written by hand: descriptors through virtio-queue's mock
//! `DescriptorTable`, the rings at fixed addresses. (`MockSplitQueue` of virtio-queue 0.18
//! places the used ring inside the available ring for queues larger than a few entries, so it
//! is not used for the rings.)

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::DescriptorTable;

use crate::test_util::ready_queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::request::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use super::*;
use crate::bus::BusDevice;
use crate::virtio::{Interrupt, MmioTransport, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::{Error, GuestMemoryMmap};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

const QSIZE: u16 = 16;
const DESC_TABLE: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Request headers, status bytes and data buffers live from here on.
const HDR: u64 = 0x3000;
const STATUS: u64 = 0x3800;
const DATA: u64 = 0x4000;
const MEM_SIZE: u64 = 0x10_0000;
/// An address outside guest memory.
const BAD: u64 = 0x1000_0000;

const DISK_SECTORS: u64 = 16;

/// (address, length, flags) of one descriptor; NEXT links are filled in.
type Desc = (u64, u32, u16);

/// The driver side of one split queue, plus a block device activated on it.
struct Harness {
    mem: GuestMemoryMmap,
    block: Block,
    interrupt: Arc<Interrupt>,
    file: TempFile,
    next_desc: u16,
    avail_idx: u16,
}

fn image(sectors: u64) -> TempFile {
    image_in(sectors, None)
}

/// An image in `dir` (the default temporary directory if `None`).
fn image_in(sectors: u64, dir: Option<&std::path::Path>) -> TempFile {
    let f = match dir {
        Some(dir) => TempFile::new_in(dir).unwrap(),
        None => TempFile::new().unwrap(),
    };
    let data: Vec<u8> = (0..sectors * SECTOR_SIZE).map(|i| (i / 7) as u8).collect();
    f.as_file().write_all(&data).unwrap();
    f
}

impl Harness {
    fn new(read_only: bool, id: Option<&str>, event_idx: bool) -> Self {
        Self::with(image(DISK_SECTORS), read_only, id, event_idx, 0)
    }

    /// A harness on `file` whose driver also accepted `features`.
    fn with(
        file: TempFile,
        read_only: bool,
        id: Option<&str>,
        event_idx: bool,
        features: u64,
    ) -> Self {
        let path = file.as_path().to_path_buf();
        Self::on(file, path, read_only, id, event_idx, features)
    }

    /// A harness whose device opens `path` (`file` itself, or a block device over it).
    fn on(
        file: TempFile,
        path: std::path::PathBuf,
        read_only: bool,
        id: Option<&str>,
        event_idx: bool,
        features: u64,
    ) -> Self {
        let block = Block::new(BlockConfig {
            format: None,
            path,
            read_only,
            id: id.map(String::from),
            snapshot: false,
            aio: Aio::Auto,
        })
        .unwrap();
        Self::around(file, block, event_idx, features)
    }

    /// A harness driving `block` (opened on `file`).
    fn around(file: TempFile, block: Block, event_idx: bool, features: u64) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let mut h = Harness {
            mem,
            block,
            interrupt: Arc::new(Interrupt::new().unwrap()),
            file,
            next_desc: 0,
            avail_idx: 0,
        };
        let q = ready_queue(&h.mem, QSIZE, (DESC_TABLE, AVAIL, USED), event_idx);
        let mut features = features | (1 << VIRTIO_F_VERSION_1);
        if event_idx {
            features |= 1 << crate::virtio::VIRTIO_RING_F_EVENT_IDX;
        }
        h.block
            .activate(h.mem.clone(), h.interrupt.clone(), vec![q], features)
            .unwrap();
        h
    }

    fn header(&self, req_type: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&req_type.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Puts a chain in the descriptor table (NEXT links filled in unless `raw_next`), makes
    /// it available; returns its head index.
    fn add_chain(&mut self, descs: &[Desc]) -> u16 {
        if usize::from(self.next_desc) + descs.len() > usize::from(QSIZE) {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        let table = DescriptorTable::new(&self.mem, GuestAddress(DESC_TABLE), QSIZE);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            let desc = SplitDescriptor::new(addr, len, flags, idx + 1);
            table.store(idx, RawDescriptor::from(desc)).unwrap();
        }
        self.next_desc += descs.len() as u16;
        self.publish(head);
        head
    }

    fn publish(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// The (id, len) of used ring entry `n`.
    fn used(&self, n: u16) -> (u32, u32) {
        let base = USED + 4 + 8 * u64::from(n % QSIZE);
        (
            self.mem.read_obj(GuestAddress(base)).unwrap(),
            self.mem.read_obj(GuestAddress(base + 4)).unwrap(),
        )
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Serves the queue and, with io_uring, waits for the requests in flight and returns them
    /// (on the event loop, their completion `EventFd` does that).
    fn serve(&mut self) {
        self.block.process_queue();
        self.block.quiesce();
    }

    /// Submits one chain, runs the device, returns (used len, status byte).
    fn run(&mut self, descs: &[Desc]) -> (u32, u8) {
        let before = self.used_idx();
        let head = self.add_chain(descs);
        self.serve();
        assert_eq!(self.used_idx(), before.wrapping_add(1), "one chain used");
        let (id, len) = self.used(before);
        assert_eq!(id, u32::from(head));
        (len, self.status())
    }

    fn disk(&self) -> Vec<u8> {
        let mut f = self.file.as_file();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }
}

fn hdr() -> Desc {
    (HDR, 16, 0)
}
fn status() -> Desc {
    (STATUS, 1, F_WRITE)
}

#[test]
fn read_spans_descriptors() {
    let mut h = Harness::new(false, None, false);
    h.header(VIRTIO_BLK_T_IN, 3);
    let (len, st) = h.run(&[
        hdr(),
        (DATA, 512, F_WRITE),
        (DATA + 0x1000, 1024, F_WRITE),
        status(),
    ]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
    assert_eq!(len, 1536 + 1);
    let disk = h.disk();
    let mut got = vec![0u8; 512];
    h.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, disk[3 * 512..4 * 512]);
    let mut got = vec![0u8; 1024];
    h.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, disk[4 * 512..6 * 512]);
    // The driver is interrupted (no EVENT_IDX).
    assert_eq!(h.interrupt.irq_event().read().unwrap(), 1);
    assert_eq!(h.interrupt.status() & 1, 1);
}

#[test]
fn write_then_flush() {
    let mut h = Harness::new(false, None, false);
    let pattern: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    h.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    h.header(VIRTIO_BLK_T_OUT, DISK_SECTORS - 2);
    let (len, st) = h.run(&[hdr(), (DATA, 1024, 0), status()]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_OK));
    let disk = h.disk();
    assert_eq!(disk.len() as u64, DISK_SECTORS * SECTOR_SIZE);
    assert_eq!(&disk[disk.len() - 1024..], &pattern[..]);
    assert_eq!(disk[..512], image_byte_range(0, 512)[..]);

    h.header(VIRTIO_BLK_T_FLUSH, 0);
    let (len, st) = h.run(&[hdr(), status()]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_OK));
}

fn image_byte_range(start: u64, end: u64) -> Vec<u8> {
    (start..end).map(|i| (i / 7) as u8).collect()
}

#[test]
fn get_id_given_and_default() {
    let mut h = Harness::new(false, Some("disk-zero"), false);
    h.mem.write_slice(&[0xaa; 32], GuestAddress(DATA)).unwrap();
    h.header(VIRTIO_BLK_T_GET_ID, 0);
    let (len, st) = h.run(&[hdr(), (DATA, 32, F_WRITE), status()]);
    assert_eq!((len, st), (21, VIRTIO_BLK_S_OK));
    let mut got = [0u8; 21];
    h.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..9], b"disk-zero");
    assert_eq!(&got[9..20], &[0u8; 11]);
    assert_eq!(got[20], 0xaa, "only 20 bytes written");

    // A short buffer gets what fits.
    h.header(VIRTIO_BLK_T_GET_ID, 0);
    let (len, st) = h.run(&[hdr(), (DATA, 4, F_WRITE), status()]);
    assert_eq!((len, st), (5, VIRTIO_BLK_S_OK));

    // Default: derived from device + inode, so stable for the same file.
    let a = Block::new(BlockConfig {
        format: None,
        path: h.file.as_path().to_path_buf(),
        read_only: true,
        id: None,
        snapshot: false,
        aio: Aio::Auto,
    });
    // The harness holds the exclusive lock.
    assert!(matches!(a, Err(Error::DiskLocked { .. })));
    let f = image(1);
    let cfg = BlockConfig {
        format: None,
        path: f.as_path().to_path_buf(),
        read_only: true,
        id: None,
        snapshot: false,
        aio: Aio::Auto,
    };
    let a = Block::new(cfg.clone()).unwrap();
    let b = Block::new(cfg).unwrap();
    assert_eq!(a.id(), b.id());
    assert_ne!(a.id()[0], 0);
}

#[test]
fn unsupported_type() {
    let mut h = Harness::new(false, None, false);
    h.header(11, 0); // DISCARD: not negotiated
    let (len, st) = h.run(&[hdr(), (DATA, 512, 0), status()]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_UNSUPP));
}

#[test]
fn hostile_data_descriptors() {
    let mut h = Harness::new(false, None, false);
    let original = h.disk();
    let cases: Vec<(&str, u32, u64, Vec<Desc>)> = vec![
        (
            "read into memory that does not exist",
            VIRTIO_BLK_T_IN,
            0,
            vec![hdr(), (BAD, 512, F_WRITE), status()],
        ),
        (
            "read straddling the end of memory",
            VIRTIO_BLK_T_IN,
            0,
            vec![hdr(), (MEM_SIZE - 256, 512, F_WRITE), status()],
        ),
        (
            "write from memory that does not exist",
            VIRTIO_BLK_T_OUT,
            0,
            vec![hdr(), (BAD, 512, 0), status()],
        ),
        (
            "zero-length read",
            VIRTIO_BLK_T_IN,
            0,
            vec![hdr(), (DATA, 0, F_WRITE), status()],
        ),
        (
            "zero-length write",
            VIRTIO_BLK_T_OUT,
            0,
            vec![hdr(), (DATA, 0, 0), status()],
        ),
        (
            "read without data",
            VIRTIO_BLK_T_IN,
            0,
            vec![hdr(), status()],
        ),
        (
            "partial sector",
            VIRTIO_BLK_T_OUT,
            0,
            vec![hdr(), (DATA, 100, 0), status()],
        ),
        (
            "read into a device-readable buffer",
            VIRTIO_BLK_T_IN,
            0,
            vec![hdr(), (DATA, 512, 0), status()],
        ),
        (
            "write from a device-writable buffer",
            VIRTIO_BLK_T_OUT,
            0,
            vec![hdr(), (DATA, 512, F_WRITE), status()],
        ),
        (
            "mixed directions",
            VIRTIO_BLK_T_OUT,
            0,
            vec![hdr(), (DATA, 512, 0), (DATA, 512, F_WRITE), status()],
        ),
        (
            "get-id into a readable buffer",
            VIRTIO_BLK_T_GET_ID,
            0,
            vec![hdr(), (DATA, 20, 0), status()],
        ),
        (
            "writable header",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 16, F_WRITE), (DATA, 512, F_WRITE), status()],
        ),
        (
            "short header",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 8, 0), (DATA, 512, F_WRITE), status()],
        ),
        (
            "header outside memory",
            VIRTIO_BLK_T_IN,
            0,
            vec![(BAD, 16, 0), (DATA, 512, F_WRITE), status()],
        ),
        (
            "only a status descriptor",
            VIRTIO_BLK_T_IN,
            0,
            vec![status()],
        ),
        (
            "write past the end",
            VIRTIO_BLK_T_OUT,
            DISK_SECTORS - 1,
            vec![hdr(), (DATA, 1024, 0), status()],
        ),
        (
            "read past the end",
            VIRTIO_BLK_T_IN,
            DISK_SECTORS,
            vec![hdr(), (DATA, 512, F_WRITE), status()],
        ),
        (
            "sector overflow",
            VIRTIO_BLK_T_OUT,
            u64::MAX / 256,
            vec![hdr(), (DATA, 512, 0), status()],
        ),
        (
            "sector overflow 2",
            VIRTIO_BLK_T_OUT,
            u64::MAX,
            vec![hdr(), (DATA, 512, 0), status()],
        ),
    ];
    for (what, t, sector, descs) in cases {
        h.header(t, sector);
        let (len, st) = h.run(&descs);
        assert_eq!((len, st), (1, VIRTIO_BLK_S_IOERR), "{what}");
    }
    assert_eq!(h.disk(), original, "no hostile request changed the disk");
}

#[test]
fn unusable_status_descriptor() {
    let mut h = Harness::new(false, None, false);
    let cases: Vec<(&str, Vec<Desc>)> = vec![
        (
            "device-readable status",
            vec![hdr(), (DATA, 512, F_WRITE), (STATUS, 1, 0)],
        ),
        (
            "zero-length status",
            vec![hdr(), (DATA, 512, F_WRITE), (STATUS, 0, F_WRITE)],
        ),
        (
            "status outside memory",
            vec![hdr(), (DATA, 512, F_WRITE), (BAD, 1, F_WRITE)],
        ),
        ("header only", vec![hdr()]),
    ];
    for (what, descs) in cases {
        h.header(VIRTIO_BLK_T_IN, 0);
        let (len, st) = h.run(&descs);
        assert_eq!(len, 0, "{what}");
        assert_eq!(st, 0xff, "{what}: status untouched");
    }
}

#[test]
fn descriptor_loop_comes_back_empty() {
    let mut h = Harness::new(false, None, false);
    // 0 -> 1 -> 0 -> ...
    let table = DescriptorTable::new(&h.mem, GuestAddress(DESC_TABLE), QSIZE);
    table
        .store(
            0,
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, F_NEXT, 1)),
        )
        .unwrap();
    table
        .store(
            1,
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, F_WRITE | F_NEXT, 0)),
        )
        .unwrap();
    h.next_desc = 2;
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.publish(0);
    // The loop comes back with a used length of 0; a good request after it still works.
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    let head = h.add_chain(&[hdr(), status()]);
    h.serve();
    assert_eq!(h.used_idx(), 2);
    assert_eq!(h.used(0), (0, 0));
    assert_eq!(h.used(1), (u32::from(head), 1));
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert!(!h.interrupt.needs_reset());
}

/// A head index beyond the queue can never be returned: rather than drop it silently (the driver
/// would wait for it forever), the device asks for a reset and serves nothing more; it works again
/// after the reset.
#[test]
fn head_index_beyond_the_queue_fails_the_device() {
    let mut h = Harness::new(false, None, false);
    h.header(VIRTIO_BLK_T_OUT, 0);
    h.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    let original = h.disk();
    // Descriptor QSIZE + 3 would be read from beyond the table: a valid-looking write there.
    let table = DescriptorTable::new(&h.mem, GuestAddress(DESC_TABLE), QSIZE + 8);
    table
        .store(
            QSIZE + 3,
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, F_NEXT, QSIZE + 4)),
        )
        .unwrap();
    table
        .store(
            QSIZE + 4,
            RawDescriptor::from(SplitDescriptor::new(DATA, 512, F_NEXT, QSIZE + 5)),
        )
        .unwrap();
    table
        .store(
            QSIZE + 5,
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, F_WRITE, 0)),
        )
        .unwrap();
    h.publish(QSIZE + 3);
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.add_chain(&[hdr(), status()]);
    h.serve();
    assert_eq!(h.used_idx(), 0, "nothing served");
    assert!(h.interrupt.needs_reset());
    assert_eq!(
        h.disk(),
        original,
        "the out-of-table chain was not executed"
    );
    h.serve();
    assert_eq!(h.used_idx(), 0, "stays stopped until reset");
}

/// A guest that fails the device, resets it and fails it again is counted each time but logged
/// once (FailureLog), so it cannot flood the VMM's log.
#[test]
fn repeated_failures_are_counted_across_resets() {
    let mut h = Harness::new(false, None, false);
    for round in 1..=3u64 {
        h.mem.write_obj(QSIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
        h.serve();
        assert!(h.interrupt.needs_reset());
        assert_eq!(h.block.core().failures.count(), round);
        h.block.reset();
        h.interrupt.clear();
        let q = ready_queue(&h.mem, QSIZE, (DESC_TABLE, AVAIL, USED), false);
        h.mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
        h.block
            .activate(
                h.mem.clone(),
                h.interrupt.clone(),
                vec![q],
                1 << VIRTIO_F_VERSION_1,
            )
            .unwrap();
    }
}

#[test]
fn chain_longer_than_the_queue_is_cut() {
    let mut h = Harness::new(false, None, false);
    // 16 descriptors, the last one still pointing on: virtio-queue stops after QSIZE.
    let table = DescriptorTable::new(&h.mem, GuestAddress(DESC_TABLE), QSIZE);
    for i in 0..QSIZE {
        let d = SplitDescriptor::new(DATA, 512, F_WRITE | F_NEXT, (i + 1) % QSIZE);
        table.store(i, RawDescriptor::from(d)).unwrap();
    }
    h.publish(0);
    h.serve();
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.used(0), (0, 0));
}

#[test]
fn read_only_disk() {
    let mut h = Harness::new(true, None, false);
    assert_ne!(h.block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    let original = h.disk();
    h.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    h.header(VIRTIO_BLK_T_OUT, 0);
    let (len, st) = h.run(&[hdr(), (DATA, 512, 0), status()]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.disk(), original);
    // Reads and flushes still work.
    h.header(VIRTIO_BLK_T_IN, 0);
    let (len, st) = h.run(&[hdr(), (DATA, 512, F_WRITE), status()]);
    assert_eq!((len, st), (513, VIRTIO_BLK_S_OK));
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.run(&[hdr(), status()]), (1, VIRTIO_BLK_S_OK));
}

#[test]
fn avail_index_jump_fails_the_device() {
    let mut h = Harness::new(false, None, false);
    assert_eq!(
        h.block.core().queue_evts[0].read().unwrap(),
        1,
        "activation kicks the event loop"
    );
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.add_chain(&[hdr(), status()]);
    // The driver claims QSIZE + 1 new buffers.
    h.mem.write_obj(QSIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
    h.serve();
    assert_eq!(h.used_idx(), 0);
    assert!(h.interrupt.needs_reset());
    assert_eq!(h.interrupt.status() & 2, 2, "config interrupt");
    // Stays stopped (and quiet) until reset.
    h.mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    h.serve();
    assert_eq!(h.used_idx(), 0);
    h.block.reset();
    assert!(!h.block.is_activated());
    h.serve();
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut h = Harness::new(false, None, true);
    // used_event = 1: the driver wants an interrupt once entry 1 is used, not for entry 0.
    let used_event = AVAIL + 4 + 2 * u64::from(QSIZE);
    h.mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.run(&[hdr(), status()]), (1, VIRTIO_BLK_S_OK));
    assert!(
        h.interrupt.irq_event().read().is_err(),
        "no interrupt for entry 0"
    );
    // The device asks to be notified for the next buffer (avail_event = next avail).
    let avail_event = USED + 4 + 8 * u64::from(QSIZE);
    assert_eq!(h.mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(), 1);
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.run(&[hdr(), status()]), (1, VIRTIO_BLK_S_OK));
    assert_eq!(h.interrupt.irq_event().read().unwrap(), 1);
}

#[test]
fn open_errors() {
    let missing = BlockConfig {
        format: None,
        path: "/nonexistent/x.img".into(),
        read_only: false,
        id: None,
        snapshot: false,
        aio: Aio::Auto,
    };
    let err = Block::new(missing).err().unwrap();
    assert_eq!(
        err.to_string(),
        "cannot open disk image '/nonexistent/x.img': No such file or directory (os error 2)"
    );

    let f = image(2);
    let cfg = |read_only| BlockConfig {
        format: None,
        path: f.as_path().to_path_buf(),
        read_only,
        id: None,
        snapshot: false,
        aio: Aio::Auto,
    };
    let ro1 = Block::new(cfg(true)).unwrap();
    let _ro2 = Block::new(cfg(true)).unwrap();
    let err = Block::new(cfg(false)).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "disk image '{}' is locked: another vmm uses it",
            f.as_path().display()
        )
    );
    drop(ro1);
    drop(_ro2);
    let _rw = Block::new(cfg(false)).unwrap();
    assert!(matches!(
        Block::new(cfg(true)),
        Err(Error::DiskLocked { .. })
    ));
    assert!(matches!(
        Block::new(cfg(false)),
        Err(Error::DiskLocked { .. })
    ));

    let long = BlockConfig {
        format: None,
        id: Some("x".repeat(21)),
        ..cfg(true)
    };
    drop(_rw);
    assert!(matches!(Block::new(long), Err(Error::DiskIdTooLong { .. })));
}

#[test]
fn capacity_and_config_space() {
    let f = TempFile::new().unwrap();
    f.as_file().write_all(&[1u8; 3 * 512 + 100]).unwrap();
    let b = Block::new(BlockConfig {
        format: None,
        path: f.as_path().to_path_buf(),
        read_only: false,
        id: None,
        snapshot: false,
        aio: Aio::Auto,
    })
    .unwrap();
    assert_eq!(b.capacity(), 3, "rounded down");
    assert_eq!(b.device_type(), 2);
    assert_eq!(b.queue_max_sizes(), &[256]);
    let features = b.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        29,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 3);
    let mut seg = [0u8; 4];
    b.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), 254);
    let mut beyond = [0xffu8; 4];
    b.read_config(u64::MAX - 1, &mut beyond);
    assert_eq!(beyond, [0; 4]);
}

/// The whole path: registers → DRIVER_OK → MMIO notify → event loop → used ring + irq.
#[test]
fn through_transport_and_event_loop() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    let file = image(DISK_SECTORS);
    let blk = Arc::new(Mutex::new(
        Block::new(BlockConfig {
            format: None,
            path: file.as_path().to_path_buf(),
            read_only: false,
            id: Some("e2e".into()),
            snapshot: false,
            aio: Aio::Auto,
        })
        .unwrap(),
    ));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let mut t = MmioTransport::new(mem.clone(), blk.clone()).unwrap();
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(blk.clone());
    let irq = t.irq_event().try_clone().unwrap();

    let wr = |t: &mut MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());
    let rd = |t: &mut MmioTransport, off: u64| {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(rd(&mut t, 0x08), 2);
    wr(&mut t, 0x70, 1);
    wr(&mut t, 0x70, 3);
    wr(&mut t, 0x14, 1);
    let hi = rd(&mut t, 0x10);
    assert_eq!(hi & 1, 1, "VERSION_1");
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1);
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, 1 << VIRTIO_BLK_F_FLUSH);
    wr(&mut t, 0x70, 0xb);
    assert_eq!(rd(&mut t, 0x70), 0xb);
    let mut cap = [0u8; 8];
    t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    wr(&mut t, 0x30, 0);
    assert_eq!(rd(&mut t, 0x34), 256);
    wr(&mut t, 0x38, 16);
    wr(&mut t, 0x80, DESC_TABLE as u32);
    wr(&mut t, 0x90, AVAIL as u32);
    wr(&mut t, 0xa0, USED as u32);
    wr(&mut t, 0x44, 1);
    wr(&mut t, 0x70, 0xf);
    assert_eq!(rd(&mut t, 0x70), 0xf);
    assert!(blk.lock().unwrap().is_activated());

    // One GET_ID request, written by hand.
    let table = DescriptorTable::new(&mem, GuestAddress(DESC_TABLE), 16);
    let descs = [
        SplitDescriptor::new(HDR, 16, F_NEXT, 1),
        SplitDescriptor::new(DATA, 20, F_WRITE | F_NEXT, 2),
        SplitDescriptor::new(STATUS, 1, F_WRITE, 0),
    ];
    for (i, d) in descs.into_iter().enumerate() {
        table.store(i as u16, RawDescriptor::from(d)).unwrap();
    }
    let mut raw = [0u8; 16];
    raw[0] = VIRTIO_BLK_T_GET_ID as u8;
    mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    wr(&mut t, 0x50, 0);

    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 1);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(USED + 4)).unwrap(),
        0,
        "head"
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(USED + 8)).unwrap(),
        21,
        "20 id bytes + status"
    );
    let mut id = [0u8; 3];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"e2e");
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(rd(&mut t, 0x60), 1);
    wr(&mut t, 0x64, 1);
    assert_eq!(rd(&mut t, 0x60), 0);

    // Reset through the transport deactivates the device.
    wr(&mut t, 0x70, 0);
    assert!(!blk.lock().unwrap().is_activated());
    // A notification now is consumed and ignored.
    wr(&mut t, 0x50, 0);
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
}

/// Waits (at most 5 s) for a rate limiter's timer to fire.
fn wait_for_timer(fd: std::os::fd::RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "the rate-limit timer never fired");
}

#[test]
fn rate_limited_requests_wait_in_the_ring_then_all_complete() {
    use crate::rate_limiter::{BucketConfig, RateLimitConfig, RateLimiter};
    for event_idx in [false, true] {
        let mut h = Harness::new(false, None, event_idx);
        // 100 KiB/s with a 1 KiB bucket: two 512-byte reads go at once, each next one waits ~5 ms.
        let limits = RateLimitConfig {
            bytes: Some(BucketConfig {
                rate: 100 << 10,
                burst: Some(1024),
            }),
            ops: None,
        };
        h.block.rate_limiter = Some(RateLimiter::new(&limits).unwrap());
        h.header(VIRTIO_BLK_T_IN, 2);
        for i in 0..5u64 {
            h.add_chain(&[hdr(), (DATA + i * 0x1000, 512, F_WRITE), status()]);
        }
        h.serve();
        assert_eq!(h.used_idx(), 2, "the burst goes at once");
        assert!(h.block.throttled);
        // A notification while throttled changes nothing: the request stays in the ring.
        h.serve();
        assert_eq!(h.used_idx(), 2);
        let mut rounds = 0;
        while h.used_idx() < 5 {
            rounds += 1;
            assert!(rounds <= 10, "stuck at {} used", h.used_idx());
            let fd = h.block.rate_limiter().unwrap().timer_fd();
            wait_for_timer(fd);
            h.block.rate_limiter.as_mut().unwrap().timer_fired();
            h.block.throttled = false;
            h.serve();
        }
        // Nothing failed: every request completed with its data, in order.
        for n in 0..5u16 {
            assert_eq!(h.used(n), (u32::from(n) * 3, 513), "used entry {n}");
            let mut got = vec![0u8; 512];
            h.mem
                .read_slice(&mut got, GuestAddress(DATA + u64::from(n) * 0x1000))
                .unwrap();
            assert_eq!(got, image_byte_range(1024, 1536));
        }
        assert_eq!(h.status(), VIRTIO_BLK_S_OK);
        assert!(h.block.rate_limiter().unwrap().throttled_count() >= 2);
        assert!(!h.block.throttled);
        // Each request counted once, however often it waited.
        assert_eq!(h.block.stats().requests, 5);
    }
}

/// One queue notification serves a bounded number of requests, as virtio-net's TX does: a
/// guest that keeps posting from another vCPU must not hold the event loop (and with it every
/// other device, console input and the VM's exit) in one `process_queue` call.
#[test]
fn a_guest_that_keeps_posting_does_not_hold_the_event_loop() {
    use std::sync::atomic::{AtomicBool, Ordering};

    const CHAINS: u16 = QSIZE / 3;
    const POSTS: u16 = 50_000;
    let mut h = Harness::new(false, None, false);
    h.header(VIRTIO_BLK_T_IN, 0);
    let table = DescriptorTable::new(&h.mem, GuestAddress(DESC_TABLE), QSIZE);
    for c in 0..CHAINS {
        let (hdr_at, data_at, st_at) = (3 * c, 3 * c + 1, 3 * c + 2);
        let d = SplitDescriptor::new(HDR, 16, F_NEXT, data_at);
        table.store(hdr_at, RawDescriptor::from(d)).unwrap();
        let d = SplitDescriptor::new(DATA, 512, F_NEXT | F_WRITE, st_at);
        table.store(data_at, RawDescriptor::from(d)).unwrap();
        let d = SplitDescriptor::new(STATUS, 1, F_WRITE, 0);
        table.store(st_at, RawDescriptor::from(d)).unwrap();
    }
    let _ = h.block.core().queue_evts[0].read();
    // The other vCPU: re-posts every chain as soon as the device returns it.
    let mem = h.mem.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let poster = std::thread::spawn(move || {
        let mut avail = 0u16;
        while avail < POSTS && !stopped.load(Ordering::Relaxed) {
            let used: u16 = mem.load(GuestAddress(USED + 2), Ordering::Acquire).unwrap();
            if avail.wrapping_sub(used) >= CHAINS {
                std::hint::spin_loop();
                continue;
            }
            let slot = AVAIL + 4 + 2 * u64::from(avail % QSIZE);
            mem.write_obj(3 * (avail % CHAINS), GuestAddress(slot))
                .unwrap();
            avail += 1;
            mem.store(avail, GuestAddress(AVAIL + 2), Ordering::Release)
                .unwrap();
        }
    });
    while h.mem.read_obj::<u16>(GuestAddress(AVAIL + 2)).unwrap() < CHAINS {
        std::hint::spin_loop();
    }
    h.serve();
    let served = h.used_idx();
    stop.store(true, Ordering::Relaxed);
    poster.join().unwrap();
    assert!(
        served <= QUEUE_SIZE,
        "one notification served {served} requests"
    );
    assert!(!h.interrupt.needs_reset());
}

/// Takes a shared OFD lock on one byte, as QEMU does for its permissions.
fn qemu_lock(file: &std::fs::File, byte: i64) {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is a valid flock.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_RDLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    // SAFETY: fcntl on a descriptor we own, with a live flock.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    assert_eq!(ret, 0);
}

#[test]
fn qemu_locks_are_honoured_and_taken() {
    // No host program starts meanwhile (its child would hold this test's locks for a moment).
    let _alone = crate::test_util::SPAWNING
        .write()
        .unwrap_or_else(|p| p.into_inner());
    let f = image(2);
    let cfg = |read_only| BlockConfig {
        format: None,
        path: f.as_path().to_path_buf(),
        read_only,
        id: None,
        snapshot: false,
        aio: Aio::Auto,
    };
    let other = || std::fs::File::open(f.as_path()).unwrap();
    // (bytes another program holds, writable vmm allowed, read-only vmm allowed)
    for (bytes, rw_ok, ro_ok) in [
        (&[100, 101, 102, 201, 203][..], false, false), // a QEMU writer
        (&[100, 201, 203][..], false, true),            // a reader refusing shared writes
        (&[100][..], true, true),                       // a reader sharing everything
        (&[103][..], false, false),                     // a resizer
        (&[200][..], false, false),                     // refuses consistent reads to others
    ] {
        let holder = other();
        for &b in bytes {
            qemu_lock(&holder, b);
        }
        let rw = Block::new(cfg(false));
        assert_eq!(rw.is_ok(), rw_ok, "writable vmm against {bytes:?}");
        drop(rw);
        let ro = Block::new(cfg(true));
        assert_eq!(ro.is_ok(), ro_ok, "read-only vmm against {bytes:?}");
        if let Err(e) = ro {
            assert!(matches!(e, Error::DiskLocked { .. }), "{e}");
        }
    }
    // What vmm takes, a QEMU-style test sees: a writable disk holds write (101) and refuses
    // shared writes (201); a read-only one refuses shared writes only.
    let held = |byte: i64| {
        let probe = other();
        // SAFETY: all-zero is a valid flock.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = byte;
        fl.l_len = 1;
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor we own, with a live flock it may write.
        let ret = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
        assert_eq!(ret, 0);
        fl.l_type != libc::F_UNLCK as libc::c_short
    };
    let rw = Block::new(cfg(false)).unwrap();
    assert!(held(100) && held(101) && held(201) && held(203));
    drop(rw);
    let ro = Block::new(cfg(true)).unwrap();
    assert!(held(100) && !held(101) && held(201));
    drop(ro);
    assert!(!held(100) && !held(201), "locks go with the device");
}

#[test]
fn images_that_cannot_be_disks() {
    use std::os::unix::fs::PermissionsExt;
    let cfg = |path: &std::path::Path, read_only| BlockConfig {
        format: None,
        path: path.to_path_buf(),
        read_only,
        id: None,
        snapshot: false,
        aio: Aio::Auto,
    };
    let dir = std::env::temp_dir();
    let err = Block::new(cfg(&dir, true)).err().unwrap();
    assert!(
        matches!(
            err,
            Error::DiskNotAFile {
                kind: "a directory",
                ..
            }
        ),
        "{err}"
    );
    let err = Block::new(cfg("/dev/null".as_ref(), true)).err().unwrap();
    assert!(matches!(err, Error::DiskNotAFile { .. }), "{err}");

    let empty = TempFile::new().unwrap();
    let err = Block::new(cfg(empty.as_path(), false)).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "disk image '{0}' is 0 bytes, less than one 512-byte sector; give it a size first, e.g. `truncate -s 64M {0}`",
            empty.as_path().display()
        )
    );

    let f = image(1);
    std::fs::set_permissions(f.as_path(), std::fs::Permissions::from_mode(0o444)).unwrap();
    let err = Block::new(cfg(f.as_path(), false)).err().unwrap();
    assert!(
        matches!(err, Error::DiskModeReadOnly { mode: 0o444, .. }),
        "{err}"
    );
    assert!(Block::new(cfg(f.as_path(), true)).is_ok());
}

// DISCARD and WRITE_ZEROES.

const DISCARD_FEATURES: u64 = (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
const UNMAP: u32 = 1;

/// A writable harness whose driver accepted DISCARD and WRITE_ZEROES, on an image in `dir`.
fn discard_harness(dir: Option<&std::path::Path>) -> Harness {
    Harness::with(
        image_in(DISK_SECTORS, dir),
        false,
        None,
        false,
        DISCARD_FEATURES,
    )
}

/// One DISCARD / WRITE_ZEROES segment: (sector, num_sectors, flags).
type Segment = (u64, u32, u32);

/// Writes segments at DATA; returns the table's length.
fn segments(h: &Harness, segs: &[Segment]) -> u32 {
    let mut raw = Vec::new();
    for &(sector, num, flags) in segs {
        raw.extend_from_slice(&sector.to_le_bytes());
        raw.extend_from_slice(&num.to_le_bytes());
        raw.extend_from_slice(&flags.to_le_bytes());
    }
    h.mem.write_slice(&raw, GuestAddress(DATA)).unwrap();
    raw.len() as u32
}

/// One DISCARD or WRITE_ZEROES request with these segments; returns (used len, status).
fn trim(h: &mut Harness, req_type: u32, segs: &[Segment]) -> (u32, u8) {
    let len = segments(h, segs);
    h.header(req_type, 0);
    h.run(&[hdr(), (DATA, len, 0), status()])
}

/// Allocated 512-byte blocks of the image.
fn blocks(h: &Harness) -> u64 {
    use std::os::unix::fs::MetadataExt;
    h.file.as_file().sync_all().unwrap();
    h.file.as_file().metadata().unwrap().blocks()
}

#[test]
fn discard_and_write_zeroes_are_offered_on_writable_disks_only() {
    let h = Harness::new(false, None, false);
    let features = h.block.avail_features();
    assert_ne!(features & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_ne!(features & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    let field = |off| {
        let mut v = [0u8; 4];
        h.block.read_config(off, &mut v);
        u32::from_le_bytes(v)
    };
    assert_eq!(field(36), MAX_DISCARD_SECTORS);
    assert_eq!(field(40), MAX_DISCARD_SEG);
    assert!(field(44) >= 1, "discard_sector_alignment");
    assert_eq!(field(48), MAX_WRITE_ZEROES_SECTORS);
    assert_eq!(field(52), MAX_WRITE_ZEROES_SEG);
    let mut may_unmap = [0u8; 4];
    h.block.read_config(56, &mut may_unmap);
    assert_eq!(may_unmap, [1, 0, 0, 0]);

    let ro = Harness::new(true, None, false);
    assert_eq!(ro.block.avail_features() & DISCARD_FEATURES, 0);
}

#[test]
fn discard_punches_a_hole_that_reads_back_as_zeroes() {
    let mut h = discard_harness(None);
    let before = blocks(&h);
    assert!(before >= DISK_SECTORS, "image not allocated: {before}");
    // Two segments: sectors 8..16 (a whole 4 KiB block) and sector 1.
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(8, 8, 0), (1, 1, 0)]),
        (1, VIRTIO_BLK_S_OK)
    );
    let after = blocks(&h);
    assert!(after + 8 <= before, "no hole: {before} → {after} blocks");
    let disk = h.disk();
    assert_eq!(disk.len() as u64, DISK_SECTORS * SECTOR_SIZE, "size kept");
    assert!(disk[512..1024].iter().all(|&b| b == 0));
    assert!(disk[8 * 512..].iter().all(|&b| b == 0));
    assert_eq!(disk[..512], image_byte_range(0, 512)[..]);
    assert_eq!(disk[1024..8 * 512], image_byte_range(1024, 8 * 512)[..]);
    // The guest reads zeroes too.
    h.mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
    h.header(VIRTIO_BLK_T_IN, 9);
    assert_eq!(h.run(&[hdr(), (DATA, 512, F_WRITE), status()]), (513, 0));
    let mut got = [0xffu8; 512];
    h.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [0; 512]);
    // No sectors: nothing to do.
    assert_eq!(trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(0, 0, 0)]), (1, 0));
    assert_eq!(h.disk(), disk);
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    let mut h = discard_harness(None);
    let before = blocks(&h);
    // Without unmap: zeroes, the blocks stay allocated.
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 0)]),
        (1, VIRTIO_BLK_S_OK)
    );
    let disk = h.disk();
    assert!(disk[..8 * 512].iter().all(|&b| b == 0));
    assert_eq!(disk[8 * 512..], image_byte_range(8 * 512, 16 * 512)[..]);
    assert_eq!(blocks(&h), before, "ZERO_RANGE deallocated");
    // With unmap: zeroes, and a hole.
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(8, 8, UNMAP)]),
        (1, VIRTIO_BLK_S_OK)
    );
    assert!(h.disk().iter().all(|&b| b == 0));
    let after = blocks(&h);
    assert!(after + 8 <= before, "no hole: {before} → {after} blocks");
}

/// On tmpfs, which cannot zero a range in place, WRITE_ZEROES falls back to writing zeroes.
#[test]
fn write_zeroes_falls_back_to_writing_zeroes() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm: skipped");
        return;
    }
    let mut h = discard_harness(Some(shm));
    // tmpfs refuses ZERO_RANGE: the fallback's pwrite is what zeroes the range.
    let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on the harness's open file; no memory is involved.
    let r = unsafe { libc::fallocate(h.file.as_file().as_raw_fd(), mode, 0, 512) };
    assert_eq!(
        r, -1,
        "tmpfs zeroed a range in place; the fallback is not tested"
    );
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(3, 5, 0)]),
        (1, VIRTIO_BLK_S_OK)
    );
    let disk = h.disk();
    assert_eq!(disk[..3 * 512], image_byte_range(0, 3 * 512)[..]);
    assert!(disk[3 * 512..8 * 512].iter().all(|&b| b == 0));
    assert_eq!(disk[8 * 512..], image_byte_range(8 * 512, 16 * 512)[..]);
    // tmpfs punches holes, though.
    assert_eq!(trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(8, 8, 0)]), (1, 0));
    assert!(h.disk()[8 * 512..].iter().all(|&b| b == 0));
}

#[test]
fn malformed_discard_and_write_zeroes_change_nothing() {
    use super::request::{VIRTIO_BLK_T_DISCARD as D, VIRTIO_BLK_T_WRITE_ZEROES as W};
    const IOERR: u8 = VIRTIO_BLK_S_IOERR;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP;
    let end = DISK_SECTORS;
    let too_many: Vec<_> = (0..=u64::from(MAX_DISCARD_SEG))
        .map(|s| (s % 16, 1, 0))
        .collect();
    let cases: Vec<(&str, u32, Vec<Segment>, u8)> = vec![
        ("discard: unmap flag", D, vec![(0, 1, UNMAP)], UNSUPP),
        ("discard: reserved flag", D, vec![(0, 1, 2)], UNSUPP),
        (
            "write zeroes: reserved flag",
            W,
            vec![(0, 1, 1 << 31)],
            UNSUPP,
        ),
        (
            "a good segment, then a bad flag",
            D,
            vec![(0, 8, 0), (8, 1, 4)],
            UNSUPP,
        ),
        ("past the end", D, vec![(end, 1, 0)], IOERR),
        ("ends past the end", D, vec![(end - 1, 2, 0)], IOERR),
        (
            "write zeroes ends past the end",
            W,
            vec![(1, end as u32, 0)],
            IOERR,
        ),
        (
            "sector * 512 overflows",
            D,
            vec![(u64::MAX / 256, 1, 0)],
            IOERR,
        ),
        (
            "sector + count overflows",
            D,
            vec![(u64::MAX / 512, u32::MAX, 0)],
            IOERR,
        ),
        ("last sector", W, vec![(u64::MAX, 1, UNMAP)], IOERR),
        (
            "more sectors than max_discard_sectors",
            D,
            vec![(0, MAX_DISCARD_SECTORS + 1, 0)],
            IOERR,
        ),
        (
            "more sectors than max_write_zeroes_sectors",
            W,
            vec![(0, MAX_WRITE_ZEROES_SECTORS + 1, 0)],
            IOERR,
        ),
        (
            "a good segment, then one past the end",
            D,
            vec![(0, 8, 0), (end, 1, 0)],
            IOERR,
        ),
        ("more segments than max_discard_seg", D, too_many, IOERR),
        (
            "two write zeroes segments",
            W,
            vec![(0, 1, 0), (2, 1, 0)],
            IOERR,
        ),
    ];
    let mut h = discard_harness(None);
    let original = h.disk();
    let allocated = blocks(&h);
    for (what, req_type, segs, want) in cases {
        assert_eq!(trim(&mut h, req_type, &segs), (1, want), "{what}");
        assert_eq!(h.disk(), original, "{what}: image changed");
        assert_eq!(blocks(&h), allocated, "{what}: blocks freed");
    }

    // Bad tables: lengths not a multiple of 16, none, a device-writable buffer, outside memory.
    segments(&h, &[(0, 8, 0), (8, 8, 0)]);
    for req_type in [D, W] {
        let chains: Vec<(&str, Vec<Desc>)> = vec![
            ("no table", vec![hdr(), status()]),
            ("15 bytes", vec![hdr(), (DATA, 15, 0), status()]),
            ("17 bytes", vec![hdr(), (DATA, 17, 0), status()]),
            (
                "8 + 8 bytes is one segment",
                vec![hdr(), (DATA, 8, 0), (DATA + 8, 4, 0), status()],
            ),
            (
                "device-writable",
                vec![hdr(), (DATA, 16, F_WRITE), status()],
            ),
            ("outside memory", vec![hdr(), (BAD, 16, 0), status()]),
            (
                "ends outside memory",
                vec![hdr(), (MEM_SIZE - 8, 16, 0), status()],
            ),
        ];
        for (what, chain) in chains {
            h.header(req_type, 0);
            assert_eq!(h.run(&chain), (1, IOERR), "{req_type}: {what}");
            assert_eq!(h.disk(), original, "{req_type}: {what}: image changed");
        }
    }
    // A table split over two descriptors is fine.
    h.header(D, 0);
    assert_eq!(
        h.run(&[hdr(), (DATA, 8, 0), (DATA + 8, 8, 0), status()]),
        (1, VIRTIO_BLK_S_OK)
    );
    assert!(h.disk()[..8 * 512].iter().all(|&b| b == 0));
}

#[test]
fn discard_and_write_zeroes_need_the_feature_and_a_writable_disk() {
    use super::request::{VIRTIO_BLK_T_DISCARD as D, VIRTIO_BLK_T_WRITE_ZEROES as W};
    // Not negotiated: UNSUPP, nothing done.
    let mut h = Harness::new(false, None, false);
    let original = h.disk();
    for t in [D, W] {
        assert_eq!(trim(&mut h, t, &[(0, 8, 0)]), (1, VIRTIO_BLK_S_UNSUPP));
    }
    // One negotiated, not the other.
    let file = image(DISK_SECTORS);
    let mut one = Harness::with(file, false, None, false, 1 << VIRTIO_BLK_F_DISCARD);
    assert_eq!(trim(&mut one, W, &[(0, 8, 0)]), (1, VIRTIO_BLK_S_UNSUPP));
    assert_eq!(one.disk(), original);
    assert_eq!(trim(&mut one, D, &[(0, 8, 0)]), (1, VIRTIO_BLK_S_OK));
    // A read-only disk does not offer them; one accepted anyway (a lying transport) gets IOERR.
    let mut ro = Harness::new(true, None, false);
    for t in [D, W] {
        assert_eq!(trim(&mut ro, t, &[(0, 8, 0)]), (1, VIRTIO_BLK_S_UNSUPP));
    }
    let mut ro = Harness::with(image(DISK_SECTORS), true, None, false, DISCARD_FEATURES);
    let original = ro.disk();
    for t in [D, W] {
        assert_eq!(trim(&mut ro, t, &[(0, 8, 0)]), (1, VIRTIO_BLK_S_IOERR));
    }
    assert_eq!(ro.disk(), original);
}

/// A rate-limited disk counts a DISCARD or WRITE_ZEROES as one operation of 16 bytes per
/// segment, not the bytes of the sectors it names.
#[test]
fn a_discard_costs_one_operation_and_its_table() {
    use crate::rate_limiter::{BucketConfig, RateLimitConfig, RateLimiter};
    let mut h = discard_harness(None);
    let limits = RateLimitConfig {
        bytes: Some(BucketConfig {
            rate: 1,
            burst: Some(1000),
        }),
        ops: Some(BucketConfig {
            rate: 1,
            burst: Some(10),
        }),
    };
    h.block.rate_limiter = Some(RateLimiter::new(&limits).unwrap());
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(0, 8, 0), (8, 8, 0)]),
        (1, VIRTIO_BLK_S_OK)
    );
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 16, 0)]),
        (1, VIRTIO_BLK_S_OK)
    );
    let tokens = h.block.rate_limiter().unwrap().buckets().tokens();
    assert_eq!(tokens, (Some(1000 - 48), Some(8)));
}

/// On a disk larger than max_discard_sectors, a segment longer than the config space allows is
/// refused even though it lies inside the disk.
#[test]
fn segments_longer_than_the_config_allows_are_refused() {
    use std::os::unix::fs::FileExt;
    let sectors = u64::from(MAX_DISCARD_SECTORS) + 16;
    let file = TempFile::new().unwrap();
    file.as_file().set_len(sectors * SECTOR_SIZE).unwrap();
    let mark = [0x5au8; 512];
    for sector in [
        0,
        u64::from(MAX_WRITE_ZEROES_SECTORS),
        u64::from(MAX_DISCARD_SECTORS),
    ] {
        file.as_file()
            .write_all_at(&mark, sector * SECTOR_SIZE)
            .unwrap();
    }
    let mut h = Harness::with(file, false, None, false, DISCARD_FEATURES);
    let allocated = blocks(&h);
    let cases = [
        (VIRTIO_BLK_T_DISCARD, MAX_DISCARD_SECTORS + 1),
        (VIRTIO_BLK_T_WRITE_ZEROES, MAX_WRITE_ZEROES_SECTORS + 1),
    ];
    for (req_type, num) in cases {
        assert_eq!(
            trim(&mut h, req_type, &[(0, num, 0)]),
            (1, VIRTIO_BLK_S_IOERR)
        );
        assert_eq!(blocks(&h), allocated, "{req_type}: blocks freed");
    }
    // The most the config allows is fine.
    let cases = [
        (VIRTIO_BLK_T_WRITE_ZEROES, MAX_WRITE_ZEROES_SECTORS),
        (VIRTIO_BLK_T_DISCARD, MAX_DISCARD_SECTORS),
    ];
    for (req_type, num) in cases {
        assert_eq!(trim(&mut h, req_type, &[(0, num, 0)]), (1, VIRTIO_BLK_S_OK));
    }
    let mut got = [0u8; 512];
    let at = u64::from(MAX_DISCARD_SECTORS) * SECTOR_SIZE;
    h.file.as_file().read_exact_at(&mut got, at).unwrap();
    assert_eq!(got, mark, "the sector after the range");
}

/// A loop device over a file, detached when dropped.
struct Loop(String);
impl Loop {
    /// A loop device over `file`, or `None` where losetup cannot make one (not root, no loop
    /// driver).
    fn attach(file: &std::path::Path) -> Option<Loop> {
        let out = crate::test_util::output(
            std::process::Command::new("losetup")
                .args(["--find", "--show"])
                .arg(file),
        )
        .ok()?;
        out.status
            .success()
            .then(|| Loop(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ =
            crate::test_util::output(std::process::Command::new("losetup").args(["-d", &self.0]));
    }
}

/// A block device (a loop device over an allocated file, when losetup works here: root and
/// loop devices): DISCARD goes through BLKDISCARD, which the loop driver turns into a hole in
/// the file; WRITE_ZEROES through fallocate on the device.
#[test]
fn a_block_device_discards_and_zeroes() {
    let file = image(DISK_SECTORS);
    let Some(_loop) = Loop::attach(file.as_path()) else {
        eprintln!("no loop device: skipped");
        return;
    };
    let dev = _loop.0.clone();
    let mut h = Harness::on(file, dev.into(), false, None, false, DISCARD_FEATURES);
    assert!(h.block.disk.block_device);
    let before = blocks(&h);
    assert_eq!(trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(8, 8, 0)]), (1, 0));
    let after = blocks(&h);
    assert!(after + 8 <= before, "no hole: {before} → {after} blocks");
    assert!(h.disk()[8 * 512..].iter().all(|&b| b == 0));
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(1, 2, 0)]),
        (1, VIRTIO_BLK_S_OK)
    );
    // Read back through the device.
    h.mem
        .write_slice(&[0xaa; 1024], GuestAddress(DATA))
        .unwrap();
    h.header(VIRTIO_BLK_T_IN, 1);
    assert_eq!(h.run(&[hdr(), (DATA, 1024, F_WRITE), status()]), (1025, 0));
    let mut got = [0xffu8; 1024];
    h.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [0; 1024]);
    let disk = h.disk();
    assert_eq!(disk[..512], image_byte_range(0, 512)[..]);
    assert!(disk[512..3 * 512].iter().all(|&b| b == 0));
    assert_eq!(
        disk[3 * 512..8 * 512],
        image_byte_range(3 * 512, 8 * 512)[..]
    );
    // Out of range on a device too.
    let end = DISK_SECTORS;
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(end - 1, 2, 0)]),
        (1, 1)
    );
}

// snapshot=on: an overlay in front of the image.

/// A `snapshot=on` harness (DISCARD and WRITE_ZEROES accepted) on an image of mode `mode`.
fn snapshot_harness(mode: u32) -> Harness {
    use std::os::unix::fs::PermissionsExt;
    let file = image(DISK_SECTORS);
    std::fs::set_permissions(file.as_path(), std::fs::Permissions::from_mode(mode)).unwrap();
    let block = Block::new(BlockConfig {
        format: None,
        path: file.as_path().to_path_buf(),
        read_only: false,
        id: None,
        snapshot: true,
        aio: Aio::Auto,
    })
    .unwrap();
    Harness::around(file, block, false, DISCARD_FEATURES)
}

impl Harness {
    /// Reads `sectors` from `sector` through the device (in buffers of 512, then 1536 bytes
    /// when there are more than 3 sectors, to cross runs inside a buffer).
    fn read_sectors(&mut self, sector: u64, sectors: u32) -> Vec<u8> {
        let len = sectors * 512;
        self.mem
            .write_slice(&vec![0xee; len as usize], GuestAddress(DATA))
            .unwrap();
        self.header(VIRTIO_BLK_T_IN, sector);
        let descs: Vec<Desc> = if sectors > 3 {
            vec![
                hdr(),
                (DATA, 512, F_WRITE),
                (DATA + 512, 1536, F_WRITE),
                (DATA + 2048, len - 2048, F_WRITE),
                status(),
            ]
        } else {
            vec![hdr(), (DATA, len, F_WRITE), status()]
        };
        assert_eq!(self.run(&descs), (len + 1, VIRTIO_BLK_S_OK));
        let mut got = vec![0u8; len as usize];
        self.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        got
    }

    fn write_sectors(&mut self, sector: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        self.header(VIRTIO_BLK_T_OUT, sector);
        let (len, st) = self.run(&[hdr(), (DATA, data.len() as u32, 0), status()]);
        assert_eq!((len, st), (1, VIRTIO_BLK_S_OK));
    }
}

/// The image's bytes and modification time.
fn image_and_mtime(h: &Harness) -> (Vec<u8>, std::time::SystemTime) {
    let mtime = std::fs::metadata(h.file.as_path())
        .unwrap()
        .modified()
        .unwrap();
    (h.disk(), mtime)
}

#[test]
fn snapshot_reads_the_image_until_written_then_the_writes() {
    let mut h = snapshot_harness(0o644);
    let before = image_and_mtime(&h);
    let image = image_byte_range(0, DISK_SECTORS * 512);
    assert_eq!(h.read_sectors(0, 16), image);
    // The guest sees a writable disk with DISCARD and WRITE_ZEROES.
    assert_eq!(h.block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(
        h.block.avail_features() & DISCARD_FEATURES,
        DISCARD_FEATURES
    );

    // Sectors 3 and 5..7, written separately: single sectors, runs inside one buffer.
    h.write_sectors(3, &[0x33; 512]);
    h.write_sectors(5, &[0x55; 1024]);
    let mut want = image.clone();
    want[3 * 512..4 * 512].fill(0x33);
    want[5 * 512..7 * 512].fill(0x55);
    assert_eq!(h.read_sectors(0, 16), want);
    assert_eq!(h.read_sectors(4, 1), image[4 * 512..5 * 512]);
    assert_eq!(h.read_sectors(5, 2), want[5 * 512..7 * 512]);
    // A write over part of a written run and part of the image.
    h.write_sectors(6, &[0x66; 1024]);
    want[6 * 512..8 * 512].fill(0x66);
    assert_eq!(h.read_sectors(0, 16), want);
    // FLUSH succeeds.
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.run(&[hdr(), status()]), (1, VIRTIO_BLK_S_OK));

    assert!(image_and_mtime(&h) == before, "the image changed");
}

#[test]
fn snapshot_discard_and_write_zeroes_read_back_zeroes_not_the_image() {
    let mut h = snapshot_harness(0o644);
    let before = image_and_mtime(&h);
    let mut want = image_byte_range(0, DISK_SECTORS * 512);
    h.write_sectors(2, &[0x22; 512]);
    want[2 * 512..3 * 512].fill(0x22);
    // DISCARD of 1..3 (one written, one not), WRITE_ZEROES of 8..10, with unmap of 12..13.
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(1, 2, 0)]),
        (1, VIRTIO_BLK_S_OK)
    );
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(8, 2, 0)]),
        (1, VIRTIO_BLK_S_OK)
    );
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(12, 1, UNMAP)]),
        (1, VIRTIO_BLK_S_OK)
    );
    want[512..3 * 512].fill(0);
    want[8 * 512..10 * 512].fill(0);
    want[12 * 512..13 * 512].fill(0);
    assert_eq!(h.read_sectors(0, 16), want);
    assert!(image_and_mtime(&h) == before, "the image changed");
}

#[test]
fn snapshot_of_an_image_of_mode_0444_needs_no_readonly() {
    let mut h = snapshot_harness(0o444);
    let before = image_and_mtime(&h);
    h.write_sectors(0, &[0x77; 512]);
    assert_eq!(h.read_sectors(0, 1), [0x77; 512]);
    assert!(image_and_mtime(&h) == before, "the image changed");
}

#[test]
fn snapshot_opens_the_image_read_only_and_locks_it_as_a_reader() {
    let h = snapshot_harness(0o644);
    let cfg = |read_only, snapshot| BlockConfig {
        format: None,
        path: h.file.as_path().to_path_buf(),
        read_only,
        id: None,
        snapshot,
        aio: Aio::Auto,
    };
    // Other readers and other snapshots share it; a writer is refused.
    let reader = Block::new(cfg(true, false)).unwrap();
    let other = Block::new(cfg(false, true)).unwrap();
    assert!(matches!(
        Block::new(cfg(false, false)),
        Err(Error::DiskLocked { .. })
    ));
    drop((reader, other));
    // The image's descriptor is read-only.
    // SAFETY: F_GETFL on a valid descriptor.
    let flags = unsafe { libc::fcntl(h.block.disk.file.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
    // While a writer holds the image, a snapshot of it is refused.
    drop(h);
    let f = image(DISK_SECTORS);
    let writer = Block::new(BlockConfig {
        format: None,
        path: f.as_path().to_path_buf(),
        read_only: false,
        id: None,
        snapshot: false,
        aio: Aio::Auto,
    })
    .unwrap();
    let snap = Block::new(BlockConfig {
        format: None,
        path: f.as_path().to_path_buf(),
        read_only: false,
        id: None,
        snapshot: true,
        aio: Aio::Auto,
    });
    assert!(matches!(snap, Err(Error::DiskLocked { .. })));
    drop(writer);
}

#[test]
fn snapshot_overlay_has_no_name_and_is_private() {
    use std::os::unix::fs::MetadataExt;
    let h = snapshot_harness(0o644);
    let overlay = &h.block.disk.overlay.as_ref().unwrap().file;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", overlay.as_raw_fd())).unwrap();
    let link = link.to_string_lossy();
    assert!(link.ends_with(" (deleted)"), "{link}");
    let meta = overlay.metadata().unwrap();
    assert_eq!(meta.nlink(), 0, "{link}");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.len(), DISK_SECTORS * 512, "sized like the image");
    // Beside the image (same file system), as its directory allows it.
    let image = std::fs::metadata(h.file.as_path()).unwrap();
    assert_eq!(meta.dev(), image.dev());
    // O_EXCL: it cannot be linked into the file system.
    let target = std::env::temp_dir().join(format!("vmm-overlay-link-{}", std::process::id()));
    let c_target = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    let c_fd = std::ffi::CString::new(format!("/proc/self/fd/{}", overlay.as_raw_fd())).unwrap();
    // SAFETY: two valid C strings; linkat has no other preconditions.
    let ret = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            c_fd.as_ptr(),
            libc::AT_FDCWD,
            c_target.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    let _ = std::fs::remove_file(&target);
    assert_eq!(ret, -1, "the overlay could be given a name");
}

#[test]
fn snapshot_with_readonly_is_a_read_only_disk() {
    let f = image(DISK_SECTORS);
    let block = Block::new(BlockConfig {
        format: None,
        path: f.as_path().to_path_buf(),
        read_only: true,
        id: None,
        snapshot: true,
        aio: Aio::Auto,
    })
    .unwrap();
    assert!(!block.has_overlay());
    assert_ne!(block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
}

/// A `snapshot=on` block device (a loop device, when losetup works here): the overlay is not
/// made beside the device node (/dev is memory) but in `$TMPDIR` or /var/tmp, discards go to
/// it rather than to BLKDISCARD, and the device's data stays as it was.
#[test]
fn a_snapshot_block_device_overlays_in_the_temporary_directory() {
    let file = image(DISK_SECTORS);
    let Some(_loop) = Loop::attach(file.as_path()) else {
        eprintln!("no loop device: skipped");
        return;
    };
    let dev = _loop.0.clone();
    let block = Block::new(BlockConfig {
        format: None,
        path: dev.into(),
        read_only: false,
        id: None,
        snapshot: true,
        aio: Aio::Auto,
    })
    .unwrap();
    let mut h = Harness::around(file, block, false, DISCARD_FEATURES);
    let overlay = &h.block.disk.overlay.as_ref().unwrap().file;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", overlay.as_raw_fd())).unwrap();
    let tmp = std::env::var_os("TMPDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| std::path::PathBuf::from("/var/tmp"), Into::into);
    assert!(link.starts_with(&tmp), "{}", link.display());
    let before = h.disk();
    assert_eq!(trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(8, 8, 0)]), (1, 0));
    h.write_sectors(1, &[0x11; 512]);
    let mut want = before.clone();
    want[8 * 512..].fill(0);
    want[512..1024].fill(0x11);
    assert_eq!(h.read_sectors(0, 16), want);
    assert_eq!(h.disk(), before, "the device's data changed");
}

// io_uring (`aio=`).

/// A writable harness on a fresh image with `aio`, whose driver also accepted `features`.
fn aio_harness(aio: Aio, features: u64) -> Harness {
    let file = image(DISK_SECTORS);
    let block = Block::new(BlockConfig {
        path: file.as_path().to_path_buf(),
        read_only: false,
        id: None,
        snapshot: false,
        aio,
        format: None,
    })
    .unwrap();
    Harness::around(file, block, false, features)
}

impl Harness {
    /// Request `i` of a batch: its header at HDR + 0x20·i, its status byte at STATUS + i, its
    /// one data buffer at DATA + 0x1000·i. Posts it without serving; returns the head.
    fn post_nth(&mut self, i: u64, req_type: u32, sector: u64, device_writes: bool) -> u16 {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&req_type.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem
            .write_slice(&raw, GuestAddress(HDR + 0x20 * i))
            .unwrap();
        self.mem
            .write_obj(0xffu8, GuestAddress(STATUS + i))
            .unwrap();
        let flags = if device_writes { F_WRITE } else { 0 };
        self.add_chain(&[
            (HDR + 0x20 * i, 16, 0),
            (DATA + 0x1000 * i, 512, flags),
            (STATUS + i, 1, F_WRITE),
        ])
    }

    fn status_nth(&self, i: u64) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS + i)).unwrap()
    }

    fn in_flight(&self) -> usize {
        self.block.uring.as_ref().map_or(0, |r| r.in_flight())
    }

    /// Waits (at most 5 s each) for the ring's completion `EventFd` and lets the device handle
    /// it, as the event loop does, until `used` chains were returned.
    fn complete_until(&mut self, used: u16) {
        let fd = self.block.uring.as_ref().unwrap().event().as_raw_fd();
        let mut rounds = 0;
        while self.used_idx() != used {
            rounds += 1;
            assert!(rounds < 1000, "stuck at {} used", self.used_idx());
            wait_for_timer(fd);
            self.block.complete();
        }
    }
}

#[test]
fn io_uring_is_the_default_where_it_works() {
    let f = image(4);
    let cfg = |aio, snapshot| BlockConfig {
        path: f.as_path().to_path_buf(),
        read_only: false,
        id: None,
        snapshot,
        aio,
        format: None,
    };
    assert!(Block::new(cfg(Aio::Auto, false)).unwrap().uses_io_uring());
    assert!(Block::new(cfg(Aio::IoUring, false))
        .unwrap()
        .uses_io_uring());
    assert!(!Block::new(cfg(Aio::Sync, false)).unwrap().uses_io_uring());
    // An overlay disk is served synchronously; asked for io_uring, it is a clear error.
    assert!(!Block::new(cfg(Aio::Auto, true)).unwrap().uses_io_uring());
    let err = Block::new(cfg(Aio::IoUring, true)).err().unwrap();
    assert!(
        matches!(
            err,
            Error::DiskUringUnsupported {
                option: "a disk with snapshot=on",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&f.as_path().display().to_string()));
    // A read-only disk gets a ring too (reads only, and its flushes are answered at once).
    let ro = Block::new(BlockConfig {
        read_only: true,
        ..cfg(Aio::IoUring, false)
    })
    .unwrap();
    assert!(ro.uses_io_uring());
}

/// Five writes and a flush are in flight together (none is returned by `process_queue`), come
/// back through the completion `EventFd` with one interrupt, and five reads in flight return
/// the data intact.
#[test]
fn requests_in_flight_complete_through_the_eventfd_with_data_intact() {
    let mut h = aio_harness(Aio::IoUring, 0);
    let pattern = |i: u64| -> Vec<u8> { (0..512).map(|b| (b as u64 * 7 + i * 31) as u8).collect() };
    for i in 0..4u64 {
        h.mem
            .write_slice(&pattern(i), GuestAddress(DATA + 0x1000 * i))
            .unwrap();
        h.post_nth(i, VIRTIO_BLK_T_OUT, 2 * i + 1, false);
    }
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&VIRTIO_BLK_T_FLUSH.to_le_bytes());
    h.mem.write_slice(&raw, GuestAddress(HDR + 0x100)).unwrap();
    h.add_chain(&[(HDR + 0x100, 16, 0), (STATUS + 8, 1, F_WRITE)]);
    h.block.process_queue();
    assert_eq!(h.used_idx(), 0, "nothing is returned before its completion");
    assert_eq!(h.in_flight(), 5);
    // All five completed in the kernel: one event returns them all, with one interrupt.
    let mut waited = 0;
    while h.block.uring.as_mut().unwrap().completed() < 5 {
        waited += 1;
        assert!(waited < 5000, "the kernel did not complete them");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    h.complete_until(5);
    assert_eq!(h.in_flight(), 0);
    for i in 0..4u64 {
        assert_eq!(h.status_nth(i), VIRTIO_BLK_S_OK, "write {i}");
    }
    assert_eq!(h.status_nth(8), VIRTIO_BLK_S_OK, "flush");
    assert_eq!(h.interrupt.irq_event().read().unwrap(), 1, "one interrupt");
    let disk = h.disk();
    for i in 0..4u64 {
        let at = ((2 * i + 1) * 512) as usize;
        assert_eq!(disk[at..at + 512], pattern(i)[..], "sector {}", 2 * i + 1);
    }

    // Read them back, each into another request's buffer.
    for i in 0..4u64 {
        h.mem
            .write_slice(&[0u8; 512], GuestAddress(DATA + 0x1000 * i))
            .unwrap();
        h.post_nth(i, VIRTIO_BLK_T_IN, 2 * (3 - i) + 1, true);
    }
    h.block.process_queue();
    assert_eq!(h.in_flight(), 4);
    h.complete_until(9);
    for n in 5..9u16 {
        assert_eq!(h.used(n).1, 513);
    }
    for i in 0..4u64 {
        assert_eq!(h.status_nth(i), VIRTIO_BLK_S_OK);
        let mut got = vec![0u8; 512];
        h.mem
            .read_slice(&mut got, GuestAddress(DATA + 0x1000 * i))
            .unwrap();
        assert_eq!(got, pattern(3 - i), "read {i}");
    }
}

/// A DISCARD (synchronous) posted after a write in the same batch runs after that write has
/// completed: the range reads back as zeroes, not as the write's data.
#[test]
fn a_discard_runs_after_the_writes_in_flight() {
    let mut h = aio_harness(Aio::IoUring, DISCARD_FEATURES);
    h.mem
        .write_slice(&[0x5a; 512], GuestAddress(DATA + 0x1000))
        .unwrap();
    h.post_nth(1, VIRTIO_BLK_T_OUT, 4, false);
    // The segment table at DATA + 0x2000: sector 4, one sector.
    let mut seg = Vec::new();
    seg.extend_from_slice(&4u64.to_le_bytes());
    seg.extend_from_slice(&1u32.to_le_bytes());
    seg.extend_from_slice(&0u32.to_le_bytes());
    h.mem
        .write_slice(&seg, GuestAddress(DATA + 0x2000))
        .unwrap();
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&VIRTIO_BLK_T_WRITE_ZEROES.to_le_bytes());
    h.mem.write_slice(&raw, GuestAddress(HDR + 0x40)).unwrap();
    h.add_chain(&[
        (HDR + 0x40, 16, 0),
        (DATA + 0x2000, 16, 0),
        (STATUS + 2, 1, F_WRITE),
    ]);
    h.serve();
    assert_eq!(h.used_idx(), 2);
    assert_eq!(h.status_nth(1), VIRTIO_BLK_S_OK);
    assert_eq!(h.status_nth(2), VIRTIO_BLK_S_OK);
    assert_eq!(h.disk()[4 * 512..5 * 512], [0u8; 512][..]);
}

/// The driver rewrites a read's descriptors (to an address outside guest memory, and longer)
/// while the read is in flight: the data lands where the descriptor said at submission, and
/// nothing else changes.
#[test]
fn a_descriptor_rewritten_in_flight_changes_nothing() {
    let mut h = aio_harness(Aio::IoUring, 0);
    let head = h.post_nth(0, VIRTIO_BLK_T_IN, 5, true);
    h.block.process_queue();
    assert_eq!(h.in_flight(), 1);
    let table = DescriptorTable::new(&h.mem, GuestAddress(DESC_TABLE), QSIZE);
    let d = SplitDescriptor::new(BAD, 1 << 20, F_NEXT | F_WRITE, head + 2);
    table.store(head + 1, RawDescriptor::from(d)).unwrap();
    h.complete_until(1);
    assert_eq!(h.used(0), (u32::from(head), 513));
    assert_eq!(h.status_nth(0), VIRTIO_BLK_S_OK);
    let mut got = vec![0u8; 512];
    h.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, image_byte_range(5 * 512, 6 * 512));
    assert!(!h.interrupt.needs_reset());
}

/// A driver may post a head again before it got it back: requests in flight are bounded by
/// the ring (QUEUE_SIZE), the rest waits in the available ring until completions free slots.
#[test]
fn requests_in_flight_are_bounded_by_the_ring() {
    let mut h = aio_harness(Aio::IoUring, 0);
    let head = h.post_nth(0, VIRTIO_BLK_T_IN, 0, true);
    h.block.process_queue();
    let mut posted = 1u32;
    // At most a queue's worth ahead of the device: more is a broken ring.
    while !h.block.uring.as_ref().unwrap().stalled {
        for _ in 0..QSIZE {
            h.publish(head);
            posted += 1;
        }
        h.block.process_queue();
        assert!(h.in_flight() <= usize::from(QUEUE_SIZE));
        assert!(posted < 2 * u32::from(QUEUE_SIZE), "never stalled");
    }
    assert_eq!(h.in_flight(), usize::from(QUEUE_SIZE));
    assert!(h.block.uring.as_ref().unwrap().stalled);
    assert_eq!(h.used_idx(), 0);
    // Completions free the slots and the rest is served.
    h.complete_until(QUEUE_SIZE);
    h.block.quiesce();
    assert_eq!(u32::from(h.used_idx()), posted);
    assert_eq!(h.status_nth(0), VIRTIO_BLK_S_OK);
    assert!(!h.interrupt.needs_reset());
}

/// A reset waits for the requests in flight (their reads have landed when it returns), and
/// returns none of them.
#[test]
fn a_reset_waits_for_the_requests_in_flight() {
    let mut h = aio_harness(Aio::IoUring, 0);
    for i in 0..3u64 {
        h.post_nth(i, VIRTIO_BLK_T_IN, i, true);
    }
    h.block.process_queue();
    assert_eq!(h.in_flight(), 3);
    h.block.reset();
    assert_eq!(h.in_flight(), 0);
    assert_eq!(h.used_idx(), 0);
    // No status was written: the buffers are the driver's again.
    assert_eq!(h.status_nth(0), 0xff);
    let mut got = vec![0u8; 512];
    h.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, image_byte_range(0, 512));
}

/// A read that meets the end of the file (shrunk under the device): the short part goes on,
/// then the end of file is an I/O error with the bytes read counted, as on the synchronous
/// path.
#[test]
fn a_read_past_a_shrunk_file_is_an_io_error_on_both_paths() {
    for aio in [Aio::Sync, Aio::IoUring] {
        let mut h = aio_harness(aio, 0);
        assert_eq!(h.block.uses_io_uring(), aio == Aio::IoUring);
        h.file.as_file().set_len(3 * 512).unwrap();
        h.header(VIRTIO_BLK_T_IN, 2);
        let (len, st) = h.run(&[hdr(), (DATA, 1024, F_WRITE), status()]);
        assert_eq!((len, st), (513, VIRTIO_BLK_S_IOERR), "{aio:?}");
        let mut got = vec![0u8; 512];
        h.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, image_byte_range(1024, 1536), "{aio:?}");
    }
}

/// A state saved with requests in flight is refused on restore; after `quiesce` (which waits for
/// them and returns them) it round-trips.
#[test]
fn a_state_needs_the_requests_in_flight_returned_first() {
    use crate::persist::Persist;
    let mut h = aio_harness(Aio::IoUring, 0);
    for i in 0..3u64 {
        h.post_nth(i, VIRTIO_BLK_T_IN, i, true);
    }
    h.block.process_queue();
    assert_eq!(h.in_flight(), 3);
    let state = h.block.save();
    let mut other = aio_harness(Aio::IoUring, 0);
    assert!(other.block.restore(state).is_err());
    h.block.quiesce();
    assert_eq!((h.in_flight(), h.used_idx()), (0, 3));
    let state = h.block.save();
    other.block.restore(state).unwrap();
}
/// On a raw image whose format was detected, the qcow2 magic cannot reach sector 0 through
/// either path (the first sector is checked from a copy, so a vCPU cannot swap it in after the
/// check), and an ordinary write there, head and rest, lands whole.
#[test]
fn neither_path_writes_the_qcow2_magic_to_a_probed_raw_image() {
    for aio in [Aio::Sync, Aio::IoUring] {
        let mut h = aio_harness(aio, 0);
        let before = std::fs::read(h.file.as_path()).unwrap();
        h.mem.write_slice(b"QF", GuestAddress(DATA)).unwrap();
        h.mem
            .write_slice(b"I\xfb", GuestAddress(DATA + 0x1000))
            .unwrap();
        h.header(VIRTIO_BLK_T_OUT, 0);
        let st = h
            .run(&[hdr(), (DATA, 2, 0), (DATA + 0x1000, 1022, 0), status()])
            .1;
        assert_eq!(st, VIRTIO_BLK_S_IOERR, "{aio:?}");
        assert_eq!(std::fs::read(h.file.as_path()).unwrap(), before, "{aio:?}");
        h.mem
            .write_slice(&[0x51; 1024], GuestAddress(DATA))
            .unwrap();
        h.header(VIRTIO_BLK_T_OUT, 0);
        let st = h
            .run(&[hdr(), (DATA, 100, 0), (DATA + 100, 924, 0), status()])
            .1;
        assert_eq!(st, VIRTIO_BLK_S_OK, "{aio:?}");
        let after = std::fs::read(h.file.as_path()).unwrap();
        assert_eq!(after[..1024], [0x51; 1024], "{aio:?}");
        assert_eq!(after[1024..], before[1024..], "{aio:?}");
    }
}

mod qcow2;
