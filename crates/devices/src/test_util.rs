//! What the unit tests of several devices share: an output sink they can look at, a driver that
//! posts descriptor chains on one split virtqueue in guest memory, and a guest thread that keeps
//! re-posting the same chains while the device serves.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::DescriptorTable;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemoryMmap;

/// A `Write` whose bytes the test can look at.
#[derive(Clone, Default)]
pub(crate) struct SharedBuf(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// VIRTQ_DESC_F_NEXT.
const F_NEXT: u16 = 1;

/// The driver's side of one split virtqueue: descriptor table, available and used rings at fixed
/// guest addresses. Chains take consecutive descriptors, wrapping to 0 when the table is full.
pub(crate) struct RingDriver {
    /// Guest addresses of the descriptor table, the available ring and the used ring.
    pub(crate) desc: u64,
    pub(crate) avail: u64,
    pub(crate) used: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl RingDriver {
    pub(crate) fn new(desc: u64, avail: u64, used: u64, size: u16) -> Self {
        RingDriver {
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Writes `descs` (address, length, flags; NEXT is added but on the last) as one chain and
    /// publishes it in the available ring. Returns its head.
    pub(crate) fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> u16 {
        if usize::from(self.next_desc) + descs.len() > usize::from(self.size) {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        let table = DescriptorTable::new(mem, GuestAddress(self.desc), self.size);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = head + i as u16;
            let flags = if i + 1 == descs.len() {
                flags
            } else {
                flags | F_NEXT
            };
            table
                .store(
                    idx,
                    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, idx + 1)),
                )
                .unwrap();
        }
        self.next_desc += descs.len() as u16;
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// The next chain starts at descriptor 0 again, whether or not its old chain was returned
    /// (a driver that breaks the rules).
    pub(crate) fn rewind(&mut self) {
        self.next_desc = 0;
    }

    /// The used ring's index.
    pub(crate) fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used entry `n` (its ring position modulo the size): (head, length written).
    pub(crate) fn used(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let base = self.used + 4 + 8 * u64::from(n % self.size);
        (
            mem.read_obj(GuestAddress(base)).unwrap(),
            mem.read_obj(GuestAddress(base + 4)).unwrap(),
        )
    }
}

/// A guest on another thread that keeps the avail ring of a `qsize`-entry queue full: it posts
/// head `i % qsize` again as soon as the device has used it, until `posts` heads are posted or
/// the test sets the returned flag. The descriptor table is the test's; `avail` and `used` are
/// the rings' guest addresses.
pub(crate) fn spawn_reposter(
    mem: GuestMemoryMmap,
    avail: u64,
    used: u64,
    qsize: u16,
    posts: u16,
) -> (Arc<AtomicBool>, JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let poster = std::thread::spawn(move || {
        let mut idx = 0u16;
        while idx < posts && !stopped.load(Ordering::Relaxed) {
            let done: u16 = mem.load(GuestAddress(used + 2), Ordering::Acquire).unwrap();
            if idx.wrapping_sub(done) >= qsize {
                std::hint::spin_loop();
                continue;
            }
            let slot = avail + 4 + 2 * u64::from(idx % qsize);
            mem.write_obj(idx % qsize, GuestAddress(slot)).unwrap();
            idx += 1;
            mem.store(idx, GuestAddress(avail + 2), Ordering::Release)
                .unwrap();
        }
    });
    (stop, poster)
}

/// A ready split queue of `size` entries whose descriptor table, avail and used rings are at
/// `rings` in `mem` (checked valid there), as a driver leaves it at DRIVER_OK.
pub(crate) fn ready_queue(
    mem: &GuestMemoryMmap,
    size: u16,
    rings: (u64, u64, u64),
    event_idx: bool,
) -> Queue {
    let (desc, avail, used) = rings;
    let mut q = Queue::new(size).unwrap();
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

/// Held (shared) while a test runs a host program, and exclusively by tests that watch which
/// process holds a lock: a child briefly holds copies of every descriptor of the test process
/// (between its fork and its exec closing them), and with them their open file descriptions'
/// OFD locks.
pub(crate) static SPAWNING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Runs `cmd` to its end, its output collected, under [`SPAWNING`].
pub(crate) fn output(cmd: &mut std::process::Command) -> std::io::Result<std::process::Output> {
    let _shared = SPAWNING.read().unwrap_or_else(|p| p.into_inner());
    cmd.output()
}
