//! Shared harness of the fuzz targets: a small guest memory, a virtio driver that talks to the
//! real `MmioTransport` through its registers, a builder of split virtqueues from fuzzer input,
//! and the event loop the devices really run on. Nothing here re-implements the code under
//! test: the targets reach the devices only through the transport and the event manager.
//!
//! Not production code: `unwrap()` here only covers the harness's own setup (fds, mmap), never
//! the code under test.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use devices::bus::BusDevice;
use devices::virtio::block::{Aio, Block, BlockConfig};
use devices::virtio::{MmioTransport, VirtioDevice};
use devices::GuestMemoryMmap;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM of every device target: 64 KiB at address 0.
pub const MEM_SIZE: u64 = 0x1_0000;
/// Where structured targets put their rings (queue `q` at `q * RING_STRIDE`).
pub const RING_STRIDE: u64 = 0x2000;
/// Structured targets put buffers at or above this address, so they never alias a ring.
pub const DATA_START: u64 = 0x4000;
/// Largest queue size the structured targets use (one table of 16-byte descriptors fits in
/// 0x1000 with room for the rings).
pub const MAX_QSIZE: u16 = 64;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// virtio-mmio registers (virtio 1.x, 4.2.2).
pub mod reg {
    #![allow(missing_docs)]
    pub const MAGIC: u64 = 0x00;
    pub const DEVICE_FEATURES: u64 = 0x10;
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    pub const DRIVER_FEATURES: u64 = 0x20;
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    pub const QUEUE_SEL: u64 = 0x30;
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    pub const QUEUE_NUM: u64 = 0x38;
    pub const QUEUE_READY: u64 = 0x44;
    pub const QUEUE_NOTIFY: u64 = 0x50;
    pub const INTERRUPT_STATUS: u64 = 0x60;
    pub const INTERRUPT_ACK: u64 = 0x64;
    pub const STATUS: u64 = 0x70;
    pub const QUEUE_DESC_LOW: u64 = 0x80;
    pub const QUEUE_DESC_HIGH: u64 = 0x84;
    pub const QUEUE_DRIVER_LOW: u64 = 0x90;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x94;
    pub const QUEUE_DEVICE_LOW: u64 = 0xa0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0xa4;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status: DRIVER.
pub const STATUS_DRIVER: u32 = 2;
/// Device status: DRIVER_OK.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: FEATURES_OK.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status: DEVICE_NEEDS_RESET.
pub const STATUS_NEEDS_RESET: u32 = 0x40;

/// A fresh guest memory of [`MEM_SIZE`] bytes holding `image` at address 0 (truncated).
pub fn memory(image: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let n = image.len().min(MEM_SIZE as usize);
    mem.write_slice(&image[..n], GuestAddress(0)).unwrap();
    mem
}

/// A disk image for a device target: a memfd (one per process, reused) refilled with
/// [`pattern`] and cut to `len` bytes, and a path that opens it again.
pub fn memfd(len: usize) -> (File, std::path::PathBuf) {
    thread_local! {
        static DISK: (File, Vec<u8>) = {
            let name = std::ffi::CString::new("fuzz-disk").unwrap();
            // SAFETY: memfd_create takes a NUL-terminated name and flags; returns a new fd or -1.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            // SAFETY: `fd` is new and owned by nobody else.
            (unsafe { File::from_raw_fd(fd) }, pattern_slow(1 << 20))
        };
    }
    DISK.with(|(file, pat)| {
        let len = len.min(pat.len());
        file.set_len(len as u64).unwrap();
        let mut f = file.try_clone().unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&pat[..len]).unwrap();
        let path = format!("/proc/self/fd/{}", f.as_raw_fd()).into();
        (f, path)
    })
}

/// Whether the first `len` bytes of `file` still hold what [`memfd`] wrote.
pub fn disk_unchanged(file: &File, len: usize) -> bool {
    thread_local! {
        static PAT: Vec<u8> = pattern_slow(1 << 20);
    }
    let mut now = vec![0u8; len];
    // SAFETY: pread into a buffer of `len` bytes on a valid fd.
    let n = unsafe { libc::pread(file.as_raw_fd(), now.as_mut_ptr().cast(), len, 0) };
    n == len as isize && PAT.with(|p| p.get(..len) == Some(&now[..]))
}

/// Byte `i` is `i / 512 + i % 251`, so sectors differ.
fn pattern_slow(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i / 512) + (i % 251)) as u8).collect()
}

/// An `AF_UNIX` `SOCK_SEQPACKET` pair, non-blocking: a stand-in for a tap that keeps frames.
pub fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
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
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A pipe's read end that yields `data` then end of file.
pub fn input_pipe(data: &[u8]) -> File {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2(2) to fill.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    // SAFETY: both fds were just created by pipe2(2) and are owned by nobody else.
    let (r, mut w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // A pipe holds 64 KiB; callers pass less.
    let _ = w.write_all(&data[..data.len().min(60 << 10)]);
    r
}

/// Reads one 32-bit register.
pub fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Writes one 32-bit register.
pub fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Where one queue's rings are, and its size.
#[derive(Debug, Clone, Copy)]
pub struct QueueLayout {
    /// Queue size (descriptors).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

impl QueueLayout {
    /// The fixed layout of queue `q` in structured targets.
    pub fn standard(q: u64, size: u16) -> Self {
        let base = q * RING_STRIDE;
        QueueLayout {
            size,
            desc: base,
            avail: base + 0x400,
            used: base + 0x1000,
        }
    }
}

/// Drives a transport through the virtio initialisation (3.1.1): ACKNOWLEDGE, DRIVER, the
/// features (`features & offered`), FEATURES_OK, each queue, DRIVER_OK. Returns whether the
/// device came up (the transport may refuse a queue the fuzzer described).
pub fn start(t: &mut MmioTransport, features: u64, queues: &[QueueLayout]) -> bool {
    assert_eq!(rd(t, reg::MAGIC), 0x7472_6976);
    wr(t, reg::STATUS, 0);
    wr(t, reg::STATUS, STATUS_ACKNOWLEDGE);
    wr(t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let mut offered = 0u64;
    for sel in 0..2 {
        wr(t, reg::DEVICE_FEATURES_SEL, sel);
        offered |= u64::from(rd(t, reg::DEVICE_FEATURES)) << (32 * sel);
    }
    let acked = features & offered;
    for sel in 0..2u32 {
        wr(t, reg::DRIVER_FEATURES_SEL, sel);
        wr(t, reg::DRIVER_FEATURES, (acked >> (32 * sel)) as u32);
    }
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    wr(t, reg::STATUS, s);
    if rd(t, reg::STATUS) & STATUS_FEATURES_OK == 0 {
        return false;
    }
    for (i, q) in queues.iter().enumerate() {
        wr(t, reg::QUEUE_SEL, i as u32);
        let max = rd(t, reg::QUEUE_NUM_MAX);
        assert!(max > 0 && max <= 32768, "queue {i}: QueueNumMax {max}");
        wr(t, reg::QUEUE_NUM, u32::from(q.size));
        for (lo, val) in [
            (reg::QUEUE_DESC_LOW, q.desc),
            (reg::QUEUE_DRIVER_LOW, q.avail),
            (reg::QUEUE_DEVICE_LOW, q.used),
        ] {
            wr(t, lo, val as u32);
            wr(t, lo + 4, (val >> 32) as u32);
        }
        wr(t, reg::QUEUE_READY, 1);
    }
    wr(t, reg::STATUS, s | STATUS_DRIVER_OK);
    t.is_activated()
}

/// The event loop a device runs on in the VMM, with that one device subscribed.
pub struct Loop {
    em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
}

impl Loop {
    /// A loop serving `device`.
    pub fn new(device: Arc<Mutex<dyn MutEventSubscriber + Send>>) -> Self {
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(device);
        Loop { em }
    }

    /// Dispatches whatever is ready, up to `rounds` times, without blocking; stops early when
    /// nothing was ready.
    pub fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            match self.em.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// A transport over `device` in `mem`.
pub fn transport<D: VirtioDevice + 'static>(
    mem: &GuestMemoryMmap,
    device: &Arc<Mutex<D>>,
) -> MmioTransport {
    let dev: Arc<Mutex<dyn VirtioDevice>> = device.clone();
    MmioTransport::new(mem.clone(), dev).unwrap()
}

/// One descriptor as the fuzzer describes it.
#[derive(Debug, Clone)]
pub struct Desc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
    /// Extra flag bits (INDIRECT) the fuzzer sets now and then.
    pub extra_flags: u16,
    /// Bytes to put in the buffer first (device-readable buffers), truncated to `len`.
    pub fill: Vec<u8>,
}

/// A buffer address: mostly inside the data area, sometimes straddling the end of RAM or far
/// outside it, never on the rings.
pub fn buffer_addr(u: &mut Unstructured) -> AResult<u64> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => u.arbitrary::<u64>()?.max(MEM_SIZE),
        1 => MEM_SIZE - u64::from(u.int_in_range(0u16..=64)?),
        _ => DATA_START + u64::from(u.int_in_range(0u32..=(MEM_SIZE - DATA_START - 1) as u32)?),
    })
}

/// A buffer length: mostly small, sometimes a sector multiple, sometimes anything.
pub fn buffer_len(u: &mut Unstructured) -> AResult<u32> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => u.arbitrary()?,
        1 | 2 => 512 * u32::from(u.int_in_range(1u8..=8)?),
        _ => u32::from(u.int_in_range(0u16..=600)?),
    })
}

/// One descriptor from the input; `write` as the target suggests, flipped now and then.
pub fn desc(u: &mut Unstructured, write: bool, fill_hint: Option<Vec<u8>>) -> AResult<Desc> {
    let addr = buffer_addr(u)?;
    let len = buffer_len(u)?;
    let write = if u.ratio(1u8, 16)? { !write } else { write };
    let extra_flags = if u.ratio(1u8, 32)? {
        VIRTQ_DESC_F_INDIRECT
    } else {
        0
    };
    let fill = match fill_hint {
        Some(f) => f,
        None if !write => {
            let n = u.int_in_range(0usize..=64)?;
            u.bytes(n.min(u.len()))?.to_vec()
        }
        None => Vec::new(),
    };
    Ok(Desc {
        addr,
        len,
        write,
        extra_flags,
        fill,
    })
}

/// What [`post`] put on a queue, for checking what the device returns.
#[derive(Debug, Default)]
pub struct Posted {
    /// Per head index: the sum of the device-writable lengths of its chain (`u64::MAX` when
    /// the chain has an indirect descriptor).
    pub writable: Vec<(u16, u64)>,
}

/// Writes `chains` into the queue at `q` in `mem` (descriptor table, then the available ring
/// with `avail_idx` = number of chains, `used_event` as given) and zeroes the used ring.
/// Chains beyond the queue's size are dropped.
pub fn post(
    mem: &GuestMemoryMmap,
    q: &QueueLayout,
    chains: &[Vec<Desc>],
    used_event: u16,
) -> Posted {
    let mut posted = Posted::default();
    let mut next = 0u16;
    let mut heads = Vec::new();
    for chain in chains {
        let n = chain.len() as u16;
        if n == 0 || next + n > q.size {
            continue;
        }
        let head = next;
        let mut writable = 0u64;
        for (i, d) in chain.iter().enumerate() {
            let idx = next + i as u16;
            let mut flags = d.extra_flags;
            if d.write {
                flags |= VIRTQ_DESC_F_WRITE;
                writable += u64::from(d.len);
            }
            let last = i + 1 == chain.len();
            if !last {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let at = q.desc + 16 * u64::from(idx);
            let _ = mem.write_obj(d.addr, GuestAddress(at));
            let _ = mem.write_obj(d.len, GuestAddress(at + 8));
            let _ = mem.write_obj(flags, GuestAddress(at + 12));
            let _ = mem.write_obj(if last { 0 } else { idx + 1 }, GuestAddress(at + 14));
            let n = d.fill.len().min(d.len as usize);
            // Out-of-RAM buffers simply stay unfilled.
            let _ = mem.write_slice(&d.fill[..n], GuestAddress(d.addr));
        }
        // An indirect table lives in guest memory: what it holds is not known here.
        if chain
            .iter()
            .any(|d| d.extra_flags & VIRTQ_DESC_F_INDIRECT != 0)
        {
            writable = u64::MAX;
        }
        heads.push(head);
        posted.writable.push((head, writable));
        next += n;
    }
    // Avail ring: flags, idx, ring[size], used_event.
    let _ = mem.write_obj(0u16, GuestAddress(q.avail));
    let _ = mem.write_obj(heads.len() as u16, GuestAddress(q.avail + 2));
    for (i, h) in heads.iter().enumerate() {
        let _ = mem.write_obj(*h, GuestAddress(q.avail + 4 + 2 * i as u64));
    }
    let _ = mem.write_obj(
        used_event,
        GuestAddress(q.avail + 4 + 2 * u64::from(q.size)),
    );
    // Used ring: flags, idx.
    let _ = mem.write_obj(0u32, GuestAddress(q.used));
    posted
}

/// Checks the used ring after the device ran: it returned no more chains than were posted,
/// each head it returned was posted, and it never claims to have written more bytes than the
/// chain's device-writable buffers hold. Returns the number of chains returned.
pub fn check_used(mem: &GuestMemoryMmap, q: &QueueLayout, posted: &Posted) -> u16 {
    let used_idx: u16 = mem.read_obj(GuestAddress(q.used + 2)).unwrap();
    assert!(
        usize::from(used_idx) <= posted.writable.len(),
        "device returned {used_idx} chains, {} were posted",
        posted.writable.len()
    );
    for i in 0..u64::from(used_idx) {
        let at = q.used + 4 + 8 * (i % u64::from(q.size));
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        let Some(&(_, writable)) = posted.writable.iter().find(|(h, _)| u32::from(*h) == id) else {
            panic!("device returned head {id}, which was never posted");
        };
        assert!(
            u64::from(len) <= writable,
            "device claims {len} bytes written to chain {id} with {writable} writable bytes"
        );
    }
    used_idx
}

/// A virtio-blk device on the [`memfd`] disk at `path`, shared with the event loop and the
/// transport.
pub fn block_device(path: PathBuf, read_only: bool, id: Option<String>) -> Arc<Mutex<Block>> {
    let Ok(block) = Block::new(BlockConfig {
        format: None,
        path,
        read_only,
        id,
        snapshot: false,
        aio: Aio::Sync,
    }) else {
        panic!("cannot open the memfd disk");
    };
    Arc::new(Mutex::new(block))
}

/// What no guest may do to a [`memfd`] disk of `len` bytes, whatever it sent: change its size,
/// or write it when it is read-only.
pub fn check_disk(disk: &File, len: usize, read_only: bool) {
    assert_eq!(file_len(disk), len as u64, "the disk image changed size");
    if read_only {
        assert!(disk_unchanged(disk, len), "a read-only disk was written");
    }
}

/// The fd behind a device that a target keeps, e.g. for `fstat`.
pub fn file_len(f: &File) -> u64 {
    // SAFETY: fstat fills a `struct stat` on a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; the fd is owned by `f`.
    assert_eq!(unsafe { libc::fstat(f.as_raw_fd(), &mut st) }, 0);
    st.st_size as u64
}
