//! `aio=io_uring`: the reads, writes and flushes of a raw image in flight at once.
//!
//! The ring is set up while the device is built, before any seccomp filter goes on, disabled
//! (`IORING_SETUP_R_DISABLED`) until it is locked down: the image is its only registered file,
//! an `EventFd` is registered for completions (`IORING_REGISTER_EVENTFD`), and restrictions
//! (`IORING_REGISTER_RESTRICTIONS`) admit only READV, WRITEV and FSYNC on that registered file
//! (`IOSQE_FIXED_FILE` required, `IOSQE_IO_DRAIN` the only other flag) and no further
//! `io_uring_register` at all. Once the guest runs, the only call is `io_uring_enter`: whoever
//! took over the VMM can use this ring for nothing but I/O on the image (seccomp cannot look
//! inside a ring, the restrictions can), and cannot make another ring (`io_uring_setup` is in no
//! filter).
//!
//! A request ([`IoRequest`]) has been checked as the synchronous path checks it: its iovecs are
//! built from the copied descriptors, through the guest memory map (a buffer that spans two
//! regions is two iovecs), so they point into the VMM's mapping of guest RAM whatever the driver
//! writes into its descriptor table afterwards. Each request in flight keeps its iovecs (boxed,
//! never moved) and a clone of the guest memory (the mappings stay while any clone lives) until
//! its completion has been reaped, and nothing drops the ring with requests in flight: a reset,
//! a DISCARD or WRITE_ZEROES, [`super::Block::quiesce`] and drop all wait for them.
//!
//! At most [`QUEUE_SIZE`] requests are in flight (the ring's size): a driver that posts more
//! (it may reuse heads it has not got back) finds the rest left in its ring until completions
//! free slots. Completions are reaped on the event loop when the `EventFd` fires, and the driver
//! is interrupted once per batch.
//!
//! Ordering: a FLUSH is an FSYNC (DATASYNC) with `IOSQE_IO_DRAIN`, so it starts only after every
//! request submitted before it has completed, and those after it wait for it. DISCARD and
//! WRITE_ZEROES stay synchronous (fallocate) and are run only once no request is in flight.
//! Reads and writes in flight together are not ordered among themselves, as on any virtio-blk
//! device (a driver waits for a write's completion before it relies on it).
//!
//! A short read or write goes on from where it stopped (a new SQE for the rest); EINTR and
//! EAGAIN are retried; an end of file or any other error is VIRTIO_BLK_S_IOERR.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use io_uring::{opcode, register::Restriction, squeue, types, IoUring};
use log::{debug, warn};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, IoOp, IoRequest, ReqError, VIRTIO_BLK_S_OK};
use super::QUEUE_SIZE;
use crate::GuestMemoryMmap;

/// Largest number of iovecs one READV/WRITEV takes (IOV_MAX); the rest goes on as a short
/// transfer does.
const IOV_MAX: usize = 1024;

/// The ring could not be set up: which step, and the OS error.
#[derive(Debug)]
pub(crate) struct SetupError {
    pub(crate) step: &'static str,
    pub(crate) error: io::Error,
}

/// One request in flight.
struct InFlight {
    head: u16,
    op: IoOp,
    /// The buffers; `iov[first..]` (the first trimmed by what moved) are still to transfer.
    iov: Box<[libc::iovec]>,
    first: usize,
    /// File offset of the next byte.
    offset: u64,
    /// Bytes moved so far, of `len`.
    done: u64,
    len: u64,
    status: GuestAddress,
    /// Keeps the guest memory mapped while the kernel may use the iovecs.
    mem: GuestMemoryMmap,
}

// SAFETY: the raw pointers in `iov` point into the guest memory mapping that `mem` keeps alive;
// they are only handed to the kernel and never dereferenced here, so moving an `InFlight` to
// another thread (with the device) is sound.
unsafe impl Send for InFlight {}

/// The ring of one disk, its completion `EventFd` and its requests in flight.
pub(crate) struct Uring {
    ring: IoUring,
    event: EventFd,
    /// Requests in flight by slot (the SQE's user data).
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Chains completed and not yet returned: (head, used length).
    pub(crate) done: Vec<(u16, u32)>,
    /// A chain was left in the ring because every slot was taken: serve the queue again once
    /// completions free some.
    pub(crate) stalled: bool,
}

impl Uring {
    /// Sets up a ring of [`QUEUE_SIZE`] entries for the image `file` (opened from `path`,
    /// `writable` or not) and locks it down (see the module documentation).
    ///
    /// The ring gets a second open file description of the image, not `file`'s: a ring lets go of
    /// its registered files some time after it is closed (the kernel tears it down in the
    /// background), and `file`'s description carries the image's locks, which must go when the
    /// device does. The reopened file must be the same inode as `file`.
    pub(crate) fn new(file: &File, path: &Path, writable: bool) -> Result<Self, SetupError> {
        let step = |step| move |error| SetupError { step, error };
        let reopened = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .map_err(step("reopening the image"))?;
        let (a, b) = (
            file.metadata().map_err(step("reopening the image"))?,
            reopened.metadata().map_err(step("reopening the image"))?,
        );
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return Err(SetupError {
                step: "reopening the image",
                error: io::Error::other("the path now names another file"),
            });
        }
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(u32::from(QUEUE_SIZE))
            .map_err(step("io_uring_setup"))?;
        let event = EventFd::new(libc::EFD_NONBLOCK).map_err(step("eventfd"))?;
        let submitter = ring.submitter();
        submitter
            .register_files(&[reopened.as_raw_fd()])
            .map_err(step("registering the image with the ring"))?;
        submitter
            .register_eventfd(event.as_raw_fd())
            .map_err(step("registering the completion eventfd"))?;
        let mut restrictions = [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_flags_required(squeue::Flags::FIXED_FILE.bits()),
            Restriction::sqe_flags_allowed(squeue::Flags::IO_DRAIN.bits()),
        ];
        submitter
            .register_restrictions(&mut restrictions)
            .map_err(step("restricting the ring"))?;
        submitter
            .register_enable_rings()
            .map_err(step("enabling the ring"))?;
        let entries = ring.params().sq_entries() as usize;
        Ok(Uring {
            ring,
            event,
            slots: (0..entries).map(|_| None).collect(),
            free: (0..entries).rev().collect(),
            done: Vec::new(),
            stalled: false,
        })
    }

    /// The `EventFd` that fires when completions are there.
    pub(crate) fn event(&self) -> &EventFd {
        &self.event
    }

    /// Whether another request can be taken.
    pub(crate) fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Requests in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Starts `req` (checked by [`request::prepare`]); `Some(used length)` when it ended here
    /// (a buffer the memory map cannot describe, or no room: an I/O error to the guest).
    pub(crate) fn start(&mut self, req: IoRequest, mem: &GuestMemoryMmap) -> Option<u32> {
        let fail = |e: ReqError| Some(request::finish(req.head, mem, req.status, Err((e, 0))));
        let Some(slot) = self.free.pop() else {
            return fail(ReqError::Io("no free slot in the ring".into()));
        };
        let mut iov = Vec::with_capacity(req.data.len());
        for d in &req.data {
            let Ok(slices) = mem
                .get_slices(d.addr(), d.len() as usize)
                .collect::<Result<Vec<_>, _>>()
            else {
                self.free.push(slot);
                return fail(ReqError::DataAddress(d.addr(), d.len()));
            };
            for slice in slices {
                iov.push(libc::iovec {
                    // A plain mmap region: the pointer stays valid while the mapping does.
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        self.slots[slot] = Some(InFlight {
            head: req.head,
            op: req.op,
            iov: iov.into_boxed_slice(),
            first: 0,
            offset: req.offset,
            done: 0,
            len: req.len,
            status: req.status,
            mem: mem.clone(),
        });
        if let Err(e) = self.push(slot) {
            self.slots[slot] = None;
            self.free.push(slot);
            return fail(e);
        }
        None
    }

    /// Queues the SQE for (the rest of) slot `slot`'s request.
    fn push(&mut self, slot: usize) -> Result<(), ReqError> {
        let Some(f) = self.slots.get(slot).and_then(Option::as_ref) else {
            return Err(ReqError::Io(format!("slot {slot} is empty")));
        };
        let image = types::Fixed(0);
        let rest = &f.iov[f.first..];
        let count = rest.len().min(IOV_MAX) as u32;
        let entry = match f.op {
            IoOp::Read => opcode::Readv::new(image, rest.as_ptr(), count)
                .offset(f.offset)
                .build(),
            IoOp::Write => opcode::Writev::new(image, rest.as_ptr(), count)
                .offset(f.offset)
                .build(),
            IoOp::Flush => opcode::Fsync::new(image)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        }
        .user_data(slot as u64);
        // SAFETY: the iovecs live in the boxed slice of slot `slot`, which is neither moved nor
        // freed until this request's completion has been reaped (`end`), and each describes guest
        // RAM that `f.mem`, kept as long, keeps mapped; the registered file stays open in the
        // ring. The kernel reads the iovecs and the buffers only until it completes the SQE.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| ReqError::Io("submission queue full".into()))
    }

    /// Hands the queued SQEs to the kernel, retrying on EINTR.
    pub(crate) fn submit(&mut self) {
        while !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The SQEs stay queued; the next completion or notification submits them.
                    warn!("virtio-blk: io_uring_enter: {e}");
                    return;
                }
            }
        }
    }

    /// Reaps every completion there is (consuming the `EventFd`'s count): a request that is
    /// done goes to [`Uring::done`] (its status byte written) unless `deliver` is false (a reset:
    /// the driver gave up its buffers, nothing is written); one that moved only part of its
    /// bytes goes on. Returns whether any request ended.
    pub(crate) fn reap(&mut self, deliver: bool) -> bool {
        // Non-blocking: an error only means no count was pending.
        let _ = self.event.read();
        let mut ended = false;
        loop {
            let cqes: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            if cqes.is_empty() {
                break;
            }
            for (user_data, res) in cqes {
                ended |= self.complete(user_data as usize, res, deliver);
            }
        }
        self.submit();
        ended
    }

    /// One completion of slot `slot` with result `res`; true if its request ended.
    fn complete(&mut self, slot: usize, res: i32, deliver: bool) -> bool {
        let Some(f) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            warn!("virtio-blk: completion for empty io_uring slot {slot}");
            return false;
        };
        let written = |f: &InFlight| match f.op {
            IoOp::Read => u32::try_from(f.done).unwrap_or(u32::MAX),
            _ => 0,
        };
        let result = if res < 0 {
            let err = io::Error::from_raw_os_error(-res);
            if matches!(-res, libc::EINTR | libc::EAGAIN) {
                return self.retry(slot, deliver);
            }
            Err((ReqError::Io(err.to_string()), written(f)))
        } else if f.op == IoOp::Flush {
            Ok((VIRTIO_BLK_S_OK, 0))
        } else if res == 0 {
            Err((
                ReqError::Io(format!(
                    "end of file at {} with {} of {} bytes moved",
                    f.offset, f.done, f.len
                )),
                written(f),
            ))
        } else {
            // 0 < res <= the bytes asked for: skip the buffers it filled, trim the one it
            // stopped in.
            let n = res as usize;
            f.done += n as u64;
            f.offset += n as u64;
            super::request::skip_iovecs(&mut f.iov, &mut f.first, n);
            if f.done < f.len {
                return self.retry(slot, deliver);
            }
            Ok((VIRTIO_BLK_S_OK, written(f)))
        };
        self.end(slot, result, deliver);
        true
    }

    /// Queues the rest of slot `slot`'s request again; true if that failed and it ended.
    fn retry(&mut self, slot: usize, deliver: bool) -> bool {
        match self.push(slot) {
            Ok(()) => false,
            Err(e) => {
                self.end(slot, Err((e, 0)), deliver);
                true
            }
        }
    }

    /// Ends slot `slot`'s request with `result`: writes its status and records it in
    /// [`Uring::done`] (if `deliver`), and frees the slot.
    fn end(&mut self, slot: usize, result: Result<(u8, u32), (ReqError, u32)>, deliver: bool) {
        let Some(f) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        if deliver {
            let len = request::finish(f.head, &f.mem, f.status, result);
            self.done.push((f.head, len));
        }
    }

    /// Waits until no request is in flight, reaping as [`Uring::reap`] does. If the kernel
    /// refuses to wait, the requests still in flight are leaked with their memory clones, so
    /// that no mapping they use goes away.
    pub(crate) fn wait_idle(&mut self, deliver: bool) {
        while self.in_flight() > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(
                        "virtio-blk: cannot wait for {} io_uring requests: {e}; their buffers stay mapped",
                        self.in_flight()
                    );
                    for slot in self.slots.iter_mut() {
                        if let Some(f) = slot.take() {
                            std::mem::forget(f);
                        }
                    }
                    self.free = (0..self.slots.len()).collect();
                    return;
                }
            }
            self.reap(deliver);
        }
        debug!("virtio-blk: no io_uring request in flight");
    }
}

#[cfg(test)]
impl Uring {
    /// Completions posted by the kernel and not reaped yet.
    pub(crate) fn completed(&mut self) -> usize {
        self.ring.completion().len()
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        self.wait_idle(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    /// The restrictions hold: an operation other than READV/WRITEV/FSYNC, or one on a file
    /// descriptor rather than the registered image, fails with EACCES; io_uring_register is
    /// refused.
    #[test]
    fn the_ring_does_nothing_but_io_on_the_image() {
        let file = TempFile::new().unwrap();
        file.as_file().set_len(4096).unwrap();
        let mut uring = Uring::new(file.as_file(), file.as_path(), true).unwrap();
        let path = c"/etc/passwd";
        let mut buf = [0u8; 16];
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        let entries = [
            opcode::Nop::new().build(),
            opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build(),
            // READV on descriptor 0 (not the registered image).
            opcode::Readv::new(types::Fd(0), iov.as_ptr(), 1).build(),
            // READV on the image, with a flag that is not allowed.
            opcode::Readv::new(types::Fixed(0), iov.as_ptr(), 1)
                .build()
                .flags(squeue::Flags::IO_LINK),
            // The one that is allowed.
            opcode::Readv::new(types::Fixed(0), iov.as_ptr(), 1).build(),
        ];
        let mut results = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            // SAFETY: the path, the iovec and the buffer outlive the wait below.
            unsafe { uring.ring.submission().push(&e.clone().user_data(i as u64)) }.unwrap();
            uring.ring.submit_and_wait(1).unwrap();
            results.extend(uring.ring.completion().map(|c| (c.user_data(), c.result())));
        }
        let eacces = -libc::EACCES;
        assert_eq!(
            results,
            [(0, eacces), (1, eacces), (2, eacces), (3, eacces), (4, 16)]
        );
        let err = uring.ring.submitter().register_files_sparse(4).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    }
}
