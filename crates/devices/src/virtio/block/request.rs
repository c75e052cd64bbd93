//! One virtio-blk request: parse the descriptor chain, do the I/O, write the status byte.
//!
//! Layout (virtio 1.x, 5.2.6): a device-readable header descriptor (type u32, reserved u32,
//! sector u64), zero or more data descriptors (device-writable for IN and GET_ID,
//! device-readable for OUT), and a device-writable status descriptor (one byte).
//! DISCARD and WRITE_ZEROES (a table of 16-byte segments as data) are in `discard.rs`.
//! Anything else gets `VIRTIO_BLK_S_IOERR` if the status byte can be written; if it cannot,
//! the chain goes back to the driver with a used length of 0.

use std::fs::File;
use std::os::fd::AsRawFd;

use log::debug;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::{Bitmap, BitmapSlice};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, Permissions, ReadVolatile, VolatileMemoryError,
    VolatileSlice, WriteVolatile,
};

use virtio_bindings::virtio_blk;

use super::discard::{self, Kind, Outcome};
use super::overlay::Overlay;
use super::qcow2::Qcow2Disk;
use super::{ID_BYTES, SECTOR_SIZE};
use crate::GuestMemoryMmap;

/// Request types.
pub(crate) use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};

// Status values: the status byte of a request.
pub(crate) const VIRTIO_BLK_S_OK: u8 = virtio_blk::VIRTIO_BLK_S_OK as u8;
pub(crate) const VIRTIO_BLK_S_IOERR: u8 = virtio_blk::VIRTIO_BLK_S_IOERR as u8;
pub(crate) const VIRTIO_BLK_S_UNSUPP: u8 = virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

/// Size of the request header.
const HEADER_LEN: u32 = 16;

/// The backing image of a block device, as requests see it.
pub(crate) struct Disk {
    pub(crate) file: File,
    /// Usable size in bytes (a multiple of the sector size).
    pub(crate) size: u64,
    pub(crate) read_only: bool,
    /// A block device rather than a regular file (discards go through BLKDISCARD).
    pub(crate) block_device: bool,
    /// GET_ID answer, NUL padded.
    pub(crate) id: [u8; ID_BYTES],
    /// `snapshot=on`: the guest's writes go here, and `file` (opened read-only) is never
    /// written.
    pub(crate) overlay: Option<Overlay>,
    /// A qcow2 image: requests go through its format layer, never straight to `file`.
    pub(crate) qcow2: Option<Qcow2Disk>,
    /// A raw image whose format was detected (not forced with `format=raw`): the guest may
    /// not write the qcow2 magic into its first sector.
    pub(crate) probed_raw: bool,
}

impl Disk {
    /// The file writes, discards and zeroes go to, and whether it is a block device.
    pub(crate) fn write_target(&self) -> (&File, bool) {
        match &self.overlay {
            Some(overlay) => (&overlay.file, false),
            None => (&self.file, self.block_device),
        }
    }
}

/// A file seen through positioned I/O (pread/pwrite) from a moving offset: no shared file
/// position, so no seek races.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl FileAt<'_> {
    /// Runs positioned I/O of `len` bytes from the current offset until done, end of file (a 0 return)
    /// or an error, retrying on EINTR. `op(done, offset)` transfers bytes `done..len` at `offset`, as
    /// pread/pwrite do, and returns the syscall's result. Returns the bytes transferred.
    fn transfer(
        &mut self,
        len: usize,
        mut op: impl FnMut(usize, libc::off_t) -> isize,
    ) -> std::io::Result<usize> {
        let mut done = 0usize;
        while done < len {
            let offset = libc::off_t::try_from(self.offset)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            let n = op(done, offset);
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                break;
            }
            // n > 0 and at most the requested length.
            done += n as usize;
            self.offset += n as u64;
        }
        Ok(done)
    }
}

impl ReadVolatile for FileAt<'_> {
    /// Fills as much of `buf` as the file holds (short only at end of file).
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard_mut();
        let base = guard.as_ptr();
        let len = buf.len();
        let fd = self.file.as_raw_fd();
        let result = self.transfer(len, |done, offset| {
            // SAFETY: `fd` is valid for the borrow of `self.file`; `base + done` points into the
            // guest memory described by `buf`, valid for writes of `len - done` bytes while `guard`
            // lives (VolatileSlice invariant).
            unsafe { libc::pread(fd, base.add(done).cast(), len - done, offset) }
        });
        match result {
            Ok(done) => {
                buf.bitmap().mark_dirty(0, done);
                Ok(done)
            }
            Err(err) => {
                // Part of the buffer may have been written.
                buf.bitmap().mark_dirty(0, len);
                Err(VolatileMemoryError::IOError(err))
            }
        }
    }
}

impl WriteVolatile for FileAt<'_> {
    /// Writes all of `buf` unless the file refuses more.
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard();
        let base = guard.as_ptr();
        let len = buf.len();
        let fd = self.file.as_raw_fd();
        self.transfer(len, |done, offset| {
            // SAFETY: `fd` is valid for the borrow of `self.file`; `base + done` points into the
            // guest memory described by `buf`, valid for reads of `len - done` bytes while `guard`
            // lives (VolatileSlice invariant).
            unsafe { libc::pwrite(fd, base.add(done).cast(), len - done, offset) }
        })
        .map_err(VolatileMemoryError::IOError)
    }
}

/// Largest number of buffers one preadv/pwritev takes (IOV_MAX).
const IOV_MAX: usize = 1024;

/// Moves every data buffer of a request to or from the file at `offset` with preadv/pwritev,
/// one system call per request rather than one per buffer (a 1 MiB request in 4 KiB pages: 24
/// against 115 µs to read here, 40 against 330 µs to write). A short transfer goes on where it
/// stopped; EINTR is retried; an end of file before `data` is full is an error. A buffer that
/// spans two guest memory regions is two iovecs. Returns `None` when a buffer is not in guest
/// memory (the caller then goes buffer by buffer and reports it), else the bytes moved and the
/// error that stopped it, if any.
fn transfer_vectored(
    file: &File,
    offset: u64,
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
    into_guest: bool,
) -> Option<(usize, std::io::Result<()>)> {
    let slices = data
        .iter()
        .flat_map(|d| vm_memory::GuestMemoryBackend::get_slices(mem, d.addr(), d.len() as usize))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
    let mut iov: Vec<libc::iovec> = guards
        .iter()
        .zip(&slices)
        .map(|(guard, slice)| libc::iovec {
            iov_base: guard.as_ptr().cast(),
            iov_len: slice.len(),
        })
        .collect();
    let total: usize = iov.iter().map(|v| v.iov_len).sum();
    let fd = file.as_raw_fd();
    let (mut done, mut first) = (0usize, 0usize);
    let result = loop {
        if done >= total {
            break Ok(());
        }
        let Ok(at) = libc::off_t::try_from(offset.saturating_add(done as u64)) else {
            break Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let rest = &iov[first..];
        let count = rest.len().min(IOV_MAX) as libc::c_int;
        // SAFETY: `fd` is valid for the borrow of `file`; each iovec describes guest memory of a
        // VolatileSlice whose pointer guard in `guards` outlives this call, valid for reads and
        // writes of its length; `rest` holds at least `count` iovecs.
        let n = unsafe {
            if into_guest {
                libc::preadv(fd, rest.as_ptr(), count, at)
            } else {
                libc::pwritev(fd, rest.as_ptr(), count, at)
            }
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break Err(err);
        }
        if n == 0 {
            break Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        // 0 < n <= the bytes left.
        done += n as usize;
        skip_iovecs(&mut iov, &mut first, n as usize);
    };
    if into_guest {
        for slice in &slices {
            slice.bitmap().mark_dirty(0, slice.len());
        }
    }
    Some((done, result))
}

/// The request types that need a feature, and whether the driver accepted it: one not
/// negotiated is answered UNSUPP.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Negotiated {
    pub(crate) discard: bool,
    pub(crate) write_zeroes: bool,
}

/// Why a request failed (logged at debug level; the guest sees IOERR).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReqError {
    #[error("no header or no status descriptor")]
    NoData,
    #[error("header descriptor is device-writable or shorter than {HEADER_LEN} bytes")]
    HeaderDescriptor,
    #[error("header is outside guest memory")]
    HeaderRead,
    #[error("data descriptor with the wrong direction")]
    DataDirection,
    #[error("data length {0} is not a non-zero multiple of {SECTOR_SIZE}")]
    DataLength(u64),
    #[error("data buffer {addr:#x}+{len:#x} is outside guest memory", addr = .0.0, len = .1)]
    DataAddress(GuestAddress, u32),
    #[error("{len} bytes at sector {sector} are beyond the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("segment table of {len} bytes: not a non-zero multiple of 16 of at most {limit}")]
    SegmentTable { len: u64, limit: u64 },
    #[error("segment of {num_sectors} sectors: more than the {max} the config space allows")]
    TooManySectors { num_sectors: u32, max: u32 },
    #[error("write of the qcow2 magic to sector 0 of a raw image whose format was detected")]
    ProbedRawMagic,
    #[error("I/O error: {0}")]
    Io(String),
}

/// What a request costs a rate limiter: the bytes of its data descriptors (all but the first,
/// the header, and the last, the status), whatever their direction. Nothing is checked here;
/// a lying chain only costs its own guest more.
pub(crate) fn data_len(chain: &DescriptorChain<&GuestMemoryMmap>) -> u64 {
    let lens: Vec<u64> = chain.clone().map(|d| u64::from(d.len())).collect();
    match lens.len() {
        0..=2 => 0,
        n => lens[1..n - 1].iter().sum(),
    }
}

/// Processes one descriptor chain; returns the used length (bytes written to guest memory).
pub(crate) fn process(
    disk: &mut Disk,
    negotiated: Negotiated,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let head = chain.head_index();
    let Some(descs) = descriptors(chain) else {
        return 0;
    };
    let result = execute(disk, negotiated, mem, &descs);
    finish(head, mem, descs[descs.len() - 1].addr(), result)
}

/// The chain's descriptors, if it ends in a usable status descriptor (else logged: the chain
/// goes back with a used length of 0).
fn descriptors(chain: DescriptorChain<&GuestMemoryMmap>) -> Option<Vec<Descriptor>> {
    let head = chain.head_index();
    // virtio-queue bounds the walk (at most queue-size descriptors, no loops, < 4 GiB total)
    // and stops early on an unreadable descriptor or indirect table.
    let descs: Vec<Descriptor> = chain.collect();
    let Some(status) = descs.last() else {
        debug!("virtio-blk: chain {head}: no readable descriptor");
        return None;
    };
    if status.has_next() {
        debug!("virtio-blk: chain {head}: truncated (loop, too long or unreadable descriptor)");
        return None;
    }
    if !status.is_write_only() || status.len() < 1 {
        debug!("virtio-blk: chain {head}: unusable status descriptor");
        return None;
    }
    Some(descs)
}

/// Writes the status byte of chain `head` at `status` for `result`; returns the used length
/// (the data bytes written to guest memory and the status byte, or 0 if it cannot be written).
pub(crate) fn finish(
    head: u16,
    mem: &GuestMemoryMmap,
    status: GuestAddress,
    result: Result<(u8, u32), (ReqError, u32)>,
) -> u32 {
    let (code, data_len) = match result {
        Ok(r) => r,
        Err((e, written)) => {
            debug!("virtio-blk: chain {head}: {e}");
            (VIRTIO_BLK_S_IOERR, written)
        }
    };
    match mem.write_obj(code, status) {
        Ok(()) => data_len.saturating_add(1),
        Err(e) => {
            debug!("virtio-blk: chain {head}: cannot write status: {e}");
            0
        }
    }
}

/// What an asynchronous backend does for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoOp {
    /// Into the guest's buffers.
    Read,
    /// From the guest's buffers.
    Write,
    /// Make every completed write durable.
    Flush,
}

/// A read, write or flush checked exactly as [`process`] checks it (status descriptor,
/// header, data directions, guest addresses, length, range), for an asynchronous backend.
pub(crate) struct IoRequest {
    pub(crate) head: u16,
    pub(crate) op: IoOp,
    /// Byte offset in the image (0 for a flush).
    pub(crate) offset: u64,
    /// The data descriptors, copied: a driver rewriting its table later changes nothing here.
    pub(crate) data: Vec<Descriptor>,
    /// Total bytes of `data`.
    pub(crate) len: u64,
    /// Where the status byte goes.
    pub(crate) status: GuestAddress,
}

/// How [`prepare`] left a chain.
pub(crate) enum Prepared {
    /// To be done asynchronously.
    Io(IoRequest),
    /// Done (or refused) here: return it with this used length.
    Done(u32),
    /// DISCARD or WRITE_ZEROES: run it with [`process`] once the requests in flight are done,
    /// so that it is ordered after earlier writes to the same range.
    AfterInFlight,
}

/// Checks a chain for an asynchronous backend: a read, a write or (on a writable disk) a
/// flush becomes an [`IoRequest`]; DISCARD and WRITE_ZEROES wait for [`process`]; anything
/// else (GET_ID, unsupported types, any request that fails a check) is answered here as
/// [`process`] answers it. Disks with an overlay are never served asynchronously.
pub(crate) fn prepare(
    disk: &mut Disk,
    negotiated: Negotiated,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Prepared {
    let head = chain.head_index();
    let Some(descs) = descriptors(chain) else {
        return Prepared::Done(0);
    };
    let status = descs[descs.len() - 1].addr();
    let checked = header(mem, &descs).and_then(|(req_type, sector, data)| {
        let io = |op, offset, len| {
            Ok(Some(IoRequest {
                head,
                op,
                offset,
                data: data.to_vec(),
                len,
                status,
            }))
        };
        match req_type {
            VIRTIO_BLK_T_IN if disk.overlay.is_none() => {
                let len = check_data(mem, data, true, Permissions::Write)?;
                io(IoOp::Read, check_range(disk, sector, len)?, len)
            }
            VIRTIO_BLK_T_OUT if disk.overlay.is_none() && !disk.read_only => {
                let len = check_data(mem, data, false, Permissions::Read)?;
                let offset = check_range(disk, sector, len)?;
                // The first sector of a probed raw image is checked from a copy ([`process`]).
                if disk.probed_raw && offset == 0 {
                    return Ok(None);
                }
                io(IoOp::Write, offset, len)
            }
            VIRTIO_BLK_T_FLUSH if disk.overlay.is_none() && !disk.read_only => {
                io(IoOp::Flush, 0, 0)
            }
            _ => Ok(None),
        }
    });
    match checked {
        Ok(Some(request)) => Prepared::Io(request),
        Err(e) => Prepared::Done(finish(head, mem, status, Err(e))),
        Ok(None) => {
            let req_type = header(mem, &descs).map(|(t, _, _)| t);
            if matches!(
                req_type,
                Ok(VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES)
            ) {
                return Prepared::AfterInFlight;
            }
            let result = execute(disk, negotiated, mem, &descs);
            Prepared::Done(finish(head, mem, status, result))
        }
    }
}

/// A write at offset 0 of a raw image whose format was detected: the first sector is copied
/// out of guest memory once, checked for the qcow2 magic (which would make the next open read
/// the image as qcow2, with a backing file the guest names) and written from that copy, so a
/// vCPU cannot change it between the check and the write; the rest goes straight to the file.
fn write_probed_raw_head(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
    len: u64,
) -> Result<(u8, u32), (ReqError, u32)> {
    let io = |e: String| (ReqError::Io(e), 0);
    let head_len = len.min(SECTOR_SIZE);
    let mut head = vec![0u8; head_len as usize];
    let mut at = 0usize;
    for d in data {
        if at == head.len() {
            break;
        }
        let n = (head.len() - at).min(d.len() as usize);
        mem.read_slice(&mut head[at..at + n], d.addr())
            .map_err(|e| io(e.to_string()))?;
        at += n;
    }
    if head.starts_with(&super::format::QCOW2_MAGIC) {
        return Err((ReqError::ProbedRawMagic, 0));
    }
    use std::os::unix::fs::FileExt;
    disk.file
        .write_all_at(&head, 0)
        .map_err(|e| io(e.to_string()))?;
    if len > head_len {
        let rest = sub_buffers(data, head_len, len - head_len);
        write(&disk.file, head_len, mem, &rest)?;
    }
    Ok((VIRTIO_BLK_S_OK, 0))
}

/// The request type, the sector and the data descriptors (everything between the header and
/// the status descriptor) of a chain that ends in a status descriptor.
fn header<'a>(
    mem: &GuestMemoryMmap,
    descs: &'a [Descriptor],
) -> Result<(u32, u64, &'a [Descriptor]), (ReqError, u32)> {
    let (header, rest) = descs
        .split_first()
        .filter(|(_, rest)| !rest.is_empty())
        .ok_or((ReqError::NoData, 0))?;
    if header.is_write_only() || header.len() < HEADER_LEN {
        return Err((ReqError::HeaderDescriptor, 0));
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr())
        .map_err(|_| (ReqError::HeaderRead, 0))?;
    let req_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes([
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
    ]);
    Ok((req_type, sector, &rest[..rest.len() - 1]))
}

/// Runs the request; returns the status code and the number of data bytes written to guest
/// memory, or an error with the number of bytes written before it.
fn execute(
    disk: &mut Disk,
    negotiated: Negotiated,
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
) -> Result<(u8, u32), (ReqError, u32)> {
    let (req_type, sector, data) = header(mem, descs)?;

    match req_type {
        VIRTIO_BLK_T_IN => {
            let len = check_data(mem, data, true, Permissions::Write)?;
            let offset = check_range(disk, sector, len)?;
            let Some(overlay) = &disk.overlay else {
                return read_image(disk, offset, mem, data).map(|n| (VIRTIO_BLK_S_OK, n));
            };
            // Each run from where it is, into the part of the buffers it covers.
            let mut written = 0u32;
            for run in overlay.runs(offset, len) {
                let part = sub_buffers(data, run.offset - offset, run.len);
                written += if run.in_overlay {
                    read(&overlay.file, run.offset, mem, &part)
                } else {
                    read_image(disk, run.offset, mem, &part)
                }
                .map_err(|(e, n)| (e, written.saturating_add(n)))?;
            }
            Ok((VIRTIO_BLK_S_OK, written))
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return Err((ReqError::ReadOnly, 0));
            }
            let len = check_data(mem, data, false, Permissions::Read)?;
            let offset = check_range(disk, sector, len)?;
            // Marked before writing: after a failed write the sectors read back as whatever
            // reached the overlay (or zeroes), as a failed write to any disk leaves them.
            if let Some(overlay) = &mut disk.overlay {
                overlay.mark(offset, len);
            }
            if disk.probed_raw && disk.overlay.is_none() && offset == 0 {
                return write_probed_raw_head(disk, mem, data, len);
            }
            if let (Some(qcow2), None) = (&disk.qcow2, &disk.overlay) {
                return qcow2
                    .write(mem, data, offset)
                    .map(|()| (VIRTIO_BLK_S_OK, 0))
                    .map_err(|e| (ReqError::Io(e.to_string()), 0));
            }
            let (target, _) = disk.write_target();
            write(target, offset, mem, data)?;
            Ok((VIRTIO_BLK_S_OK, 0))
        }
        VIRTIO_BLK_T_FLUSH => {
            // An overlay's data is thrown away at exit: making it durable would only cost time.
            if let (Some(qcow2), None) = (&disk.qcow2, &disk.overlay) {
                // The metadata imago caches is written back first, then fdatasync.
                qcow2
                    .flush()
                    .map_err(|e| (ReqError::Io(e.to_string()), 0))?;
            } else if !disk.read_only && disk.overlay.is_none() {
                disk.file
                    .sync_data()
                    .map_err(|e| (ReqError::Io(e.to_string()), 0))?;
            }
            Ok((VIRTIO_BLK_S_OK, 0))
        }
        VIRTIO_BLK_T_GET_ID => {
            if data.is_empty() || data.iter().any(|d| !d.is_write_only()) {
                return Err((ReqError::DataDirection, 0));
            }
            let mut written = 0usize;
            for d in data {
                if written == ID_BYTES {
                    break;
                }
                let n = (ID_BYTES - written).min(d.len() as usize);
                mem.write_slice(&disk.id[written..written + n], d.addr())
                    .map_err(|_| (ReqError::DataAddress(d.addr(), d.len()), written as u32))?;
                written += n;
            }
            Ok((VIRTIO_BLK_S_OK, written as u32))
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let (kind, offered) = if req_type == VIRTIO_BLK_T_DISCARD {
                (Kind::Discard, negotiated.discard)
            } else {
                (Kind::WriteZeroes, negotiated.write_zeroes)
            };
            if !offered {
                debug!("virtio-blk: {kind:?} without the feature");
                return Ok((VIRTIO_BLK_S_UNSUPP, 0));
            }
            if disk.read_only {
                return Err((ReqError::ReadOnly, 0));
            }
            match discard::execute(disk, mem, data, kind) {
                Ok(Outcome::Done) => Ok((VIRTIO_BLK_S_OK, 0)),
                Ok(Outcome::Unsupported(flags)) => {
                    debug!("virtio-blk: {kind:?} with unsupported flags {flags:#x}");
                    Ok((VIRTIO_BLK_S_UNSUPP, 0))
                }
                Err(e) => Err((e, 0)),
            }
        }
        other => {
            debug!("virtio-blk: unsupported request type {other}");
            Ok((VIRTIO_BLK_S_UNSUPP, 0))
        }
    }
}

/// Reads the image (through its format) at `offset` into the request's buffers; returns the
/// bytes written to guest memory, or the error with the bytes written before it.
fn read_image(
    disk: &Disk,
    offset: u64,
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
) -> Result<u32, (ReqError, u32)> {
    let Some(qcow2) = &disk.qcow2 else {
        return read(&disk.file, offset, mem, data);
    };
    // All or nothing: imago reports no partial count.
    let len: u64 = data.iter().map(|d| u64::from(d.len())).sum();
    qcow2
        .read(mem, data, offset)
        .map(|()| u32::try_from(len).unwrap_or(u32::MAX))
        .map_err(|e| (ReqError::Io(e.to_string()), 0))
}

/// Reads the file at `offset` into the request's buffers; returns the bytes written to guest
/// memory, or the error with the bytes written before it.
fn read(
    file: &File,
    offset: u64,
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
) -> Result<u32, (ReqError, u32)> {
    if let Some((done, result)) = transfer_vectored(file, offset, mem, data, true) {
        let done = u32::try_from(done).unwrap_or(u32::MAX);
        return result
            .map(|()| done)
            .map_err(|e| (ReqError::Io(e.to_string()), done));
    }
    let mut file = FileAt { file, offset };
    let mut written = 0u32;
    for d in data {
        mem.read_exact_volatile_from(d.addr(), &mut file, d.len() as usize)
            .map_err(|e| (ReqError::Io(e.to_string()), written))?;
        written += d.len();
    }
    Ok(written)
}

/// Moves past the first `n` bytes of `iov[*first..]` after a partial transfer: the iovecs they
/// filled are skipped (`*first` moves on) and the one they end in is trimmed. Stops at the end
/// of `iov`.
pub(super) fn skip_iovecs(iov: &mut [libc::iovec], first: &mut usize, mut n: usize) {
    while n > 0 && *first < iov.len() {
        let v = &mut iov[*first];
        if n >= v.iov_len {
            n -= v.iov_len;
            *first += 1;
        } else {
            v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
            v.iov_len -= n;
            n = 0;
        }
    }
}

/// Writes the request's buffers to the file at `offset`.
fn write(
    file: &File,
    offset: u64,
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
) -> Result<(), (ReqError, u32)> {
    let io = |e: String| (ReqError::Io(e), 0);
    if let Some((_, result)) = transfer_vectored(file, offset, mem, data, false) {
        return result.map_err(|e| io(e.to_string()));
    }
    let mut file = FileAt { file, offset };
    for d in data {
        mem.write_all_volatile_to(d.addr(), &mut file, d.len() as usize)
            .map_err(|e| io(e.to_string()))?;
    }
    Ok(())
}

/// The part of the buffers `data` (in order, one byte stream) from byte `skip`, `len` bytes
/// long, as descriptors of the same direction.
fn sub_buffers(data: &[Descriptor], skip: u64, len: u64) -> Vec<Descriptor> {
    let mut out = Vec::new();
    let (mut at, end) = (0u64, skip + len);
    for d in data {
        let (start, stop) = (at, at + u64::from(d.len()));
        at = stop;
        if stop <= skip || start >= end {
            continue;
        }
        let from = skip.max(start);
        let to = end.min(stop);
        // `to - from` is at most the descriptor's u32 length.
        out.push(Descriptor::new(
            d.addr().0 + (from - start),
            (to - from) as u32,
            d.flags(),
            0,
        ));
    }
    out
}

/// Checks the data descriptors of a read or write: direction, guest addresses, and a total
/// length that is a non-zero multiple of the sector size. Returns the total length.
fn check_data(
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
    device_writes: bool,
    access: Permissions,
) -> Result<u64, (ReqError, u32)> {
    let mut total = 0u64;
    for d in data {
        if d.is_write_only() != device_writes {
            return Err((ReqError::DataDirection, 0));
        }
        if !mem.check_range(d.addr(), d.len() as usize, access) {
            return Err((ReqError::DataAddress(d.addr(), d.len()), 0));
        }
        total += u64::from(d.len());
    }
    if total == 0 || !total.is_multiple_of(SECTOR_SIZE) {
        return Err((ReqError::DataLength(total), 0));
    }
    Ok(total)
}

/// Checks that `len` bytes from `sector` lie inside the disk; returns the byte offset.
pub(crate) fn check_range(disk: &Disk, sector: u64, len: u64) -> Result<u64, (ReqError, u32)> {
    sector
        .checked_mul(SECTOR_SIZE)
        .filter(|start| start.checked_add(len).is_some_and(|end| end <= disk.size))
        .ok_or((ReqError::OutOfRange { sector, len }, 0))
}

#[cfg(test)]
mod vectored_tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};
    use vmm_sys_util::tempfile::TempFile;

    /// Two regions that meet at 0x10_0000, so a buffer can span both.
    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x10_0000), 0x10_0000),
        ])
        .unwrap()
    }

    fn desc(addr: u64, len: u32, write: bool) -> Descriptor {
        Descriptor::new(addr, len, if write { 2 } else { 0 }, 0)
    }

    #[test]
    fn buffers_across_regions_in_one_call_each_way() {
        let mem = two_regions();
        let file = TempFile::new().unwrap();
        let pattern: Vec<u8> = (0..4608u32).map(|i| (i * 13 % 251) as u8).collect();
        mem.write_slice(&pattern[..100], GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(&pattern[100..4196], GuestAddress(0x10_0000 - 0x800))
            .unwrap();
        mem.write_slice(&pattern[4196..], GuestAddress(0x18_0000))
            .unwrap();
        let out = [
            desc(0x1000, 100, false),
            desc(0x10_0000 - 0x800, 4096, false),
            desc(0x18_0000, 412, false),
        ];
        let (done, result) = transfer_vectored(file.as_file(), 512, &mem, &out, false).unwrap();
        result.unwrap();
        assert_eq!(done, 4608);
        let mut on_disk = Vec::new();
        let mut f = file.as_file();
        f.seek(SeekFrom::Start(512)).unwrap();
        f.read_to_end(&mut on_disk).unwrap();
        assert_eq!(on_disk, pattern);

        // Back into other buffers, one of them across the boundary too.
        let inn = [desc(0x10_0000 - 0x10, 4000, true), desc(0x4000, 608, true)];
        let (done, result) = transfer_vectored(file.as_file(), 512, &mem, &inn, true).unwrap();
        result.unwrap();
        assert_eq!(done, 4608);
        let mut got = vec![0u8; 4000];
        mem.read_slice(&mut got, GuestAddress(0x10_0000 - 0x10))
            .unwrap();
        assert_eq!(got, pattern[..4000]);
        let mut got = vec![0u8; 608];
        mem.read_slice(&mut got, GuestAddress(0x4000)).unwrap();
        assert_eq!(got, pattern[4000..]);

        // Past the end of the file: what is there, then an error.
        let (done, result) = transfer_vectored(file.as_file(), 4096, &mem, &inn, true).unwrap();
        assert_eq!(done, 512 + 4608 - 4096);
        assert_eq!(
            result.unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
        // A buffer outside guest memory: left to the per-buffer path.
        assert!(
            transfer_vectored(file.as_file(), 0, &mem, &[desc(0x30_0000, 512, true)], true)
                .is_none()
        );
    }
}
