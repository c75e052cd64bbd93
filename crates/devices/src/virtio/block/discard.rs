//! DISCARD and WRITE_ZEROES (virtio 1.2, 5.2.6): the segment table a driver sends, its checks,
//! and what they do to the image.
//!
//! A request's data is a device-readable table of 16-byte segments (sector le64, num_sectors
//! le32, flags le32: bit 0 is "unmap", the rest reserved). Every segment is checked before any
//! is acted on, so a bad one leaves the image as it was:
//! * the table: a non-zero multiple of 16 bytes, at most the config space's max_*_seg
//!   segments, in guest memory → otherwise IOERR;
//! * flags: a reserved bit, or "unmap" on a DISCARD → UNSUPP (the spec's status for both);
//! * each range: at most max_*_sectors, inside the disk (the end computed without overflow)
//!   → otherwise IOERR.
//!
//! Then, per segment:
//! * DISCARD: a regular file gets `fallocate(PUNCH_HOLE | KEEP_SIZE)`, a block device the
//!   BLKDISCARD ioctl. Discarding is a hint: a file system or device that cannot do it
//!   (EOPNOTSUPP) leaves the data and the request succeeds.
//! * WRITE_ZEROES: `fallocate(ZERO_RANGE | KEEP_SIZE)` (which keeps the blocks allocated), or
//!   `fallocate(PUNCH_HOLE | KEEP_SIZE)` with the unmap flag; on a block device the kernel
//!   turns these into a zero-out without and with unmapping. If the file system or device
//!   refuses (EOPNOTSUPP), zeroes are written with pwrite. Afterwards the range reads as zeroes.
//! * On a qcow2 image both go through its format layer: DISCARD frees the clusters (they read
//!   back as zeroes; a partial cluster is zeroed), WRITE_ZEROES makes zero clusters (freed with
//!   unmap; on a version 2 image, which has none, zeroes are written).
//! * On a `snapshot=on` disk both act on the overlay (a regular file), after marking the ranges
//!   as the overlay's: they read back as zeroes (or, after a DISCARD the overlay's file system
//!   cannot punch, as the guest's own earlier data), never as the image's.

use std::fs::File;
use std::os::fd::AsRawFd;

use log::debug;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemory, Permissions};

use super::request::{check_range, Disk, ReqError};
use super::{
    MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG,
    SECTOR_SIZE,
};
use crate::GuestMemoryMmap;

use virtio_bindings::virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// Size of one segment (struct virtio_blk_discard_write_zeroes).
pub(crate) const SEGMENT_LEN: u32 = 16;

/// `BLKDISCARD`, `_IO(0x12, 119)` in linux/fs.h: discard a byte range `[start, len]` of a
/// block device.
pub(crate) const BLKDISCARD: u64 = 0x1277;

/// Largest pwrite of the zero-writing fallback.
const ZERO_CHUNK: usize = 64 * 1024;

/// Which of the two request types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Discard,
    WriteZeroes,
}

impl Kind {
    fn limits(self) -> (u32, u32) {
        match self {
            Kind::Discard => (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS),
            Kind::WriteZeroes => (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS),
        }
    }
}

/// How a request ends when it is not an I/O error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    /// A flag the device does not support (reserved bits, or unmap on a DISCARD).
    Unsupported(u32),
}

/// One checked segment: a byte range inside the disk.
struct Range {
    offset: u64,
    len: u64,
    unmap: bool,
}

/// Checks the whole segment table of a DISCARD or WRITE_ZEROES request (see the module
/// documentation), then does it.
pub(crate) fn execute(
    disk: &mut Disk,
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
    kind: Kind,
) -> Result<Outcome, ReqError> {
    let (max_seg, max_sectors) = kind.limits();
    let mut total = 0u64;
    for d in data {
        if d.is_write_only() {
            return Err(ReqError::DataDirection);
        }
        if !mem.check_range(d.addr(), d.len() as usize, Permissions::Read) {
            return Err(ReqError::DataAddress(d.addr(), d.len()));
        }
        total += u64::from(d.len());
    }
    let limit = u64::from(max_seg) * u64::from(SEGMENT_LEN);
    if total == 0 || !total.is_multiple_of(u64::from(SEGMENT_LEN)) || total > limit {
        return Err(ReqError::SegmentTable { len: total, limit });
    }
    // At most max_seg * 16 bytes, checked above.
    let mut table = Vec::with_capacity(total as usize);
    for d in data {
        let start = table.len();
        table.resize(start + d.len() as usize, 0);
        mem.read_slice(&mut table[start..], d.addr())
            .map_err(|_| ReqError::DataAddress(d.addr(), d.len()))?;
    }

    let mut ranges = Vec::with_capacity(table.len() / SEGMENT_LEN as usize);
    for seg in table.chunks_exact(SEGMENT_LEN as usize) {
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&seg[..8]);
        let sector = u64::from_le_bytes(sector);
        let num_sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
        let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
        let allowed = match kind {
            Kind::Discard => 0,
            Kind::WriteZeroes => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        };
        if flags & !allowed != 0 {
            return Ok(Outcome::Unsupported(flags));
        }
        if num_sectors > max_sectors {
            return Err(ReqError::TooManySectors {
                num_sectors,
                max: max_sectors,
            });
        }
        let len = u64::from(num_sectors) * SECTOR_SIZE;
        let offset = check_range(disk, sector, len).map_err(|(e, _)| e)?;
        ranges.push(Range {
            offset,
            len,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }

    // An overlay disk: the ranges are the overlay's from now on, so they never read as the
    // image's data again, and are punched or zeroed there (an overlay hole reads as zeroes).
    if let Some(overlay) = &mut disk.overlay {
        for r in &ranges {
            overlay.mark(r.offset, r.len);
        }
    }
    // A qcow2 image (no overlay): clusters freed or zeroed through its format layer.
    if let (Some(qcow2), None) = (&mut disk.qcow2, &disk.overlay) {
        for r in ranges.iter().filter(|r| r.len > 0) {
            let result = match kind {
                Kind::Discard => qcow2.discard(r.offset, r.len),
                Kind::WriteZeroes => qcow2.write_zeroes(r.offset, r.len, r.unmap),
            };
            result.map_err(|e| {
                ReqError::Io(format!("{kind:?} of {} bytes at {}: {e}", r.len, r.offset))
            })?;
        }
        return Ok(Outcome::Done);
    }
    let (file, block_device) = disk.write_target();
    for r in ranges.iter().filter(|r| r.len > 0) {
        let result = match kind {
            Kind::Discard => discard(file, block_device, r),
            Kind::WriteZeroes => write_zeroes(file, r),
        };
        result.map_err(|e| {
            ReqError::Io(format!("{kind:?} of {} bytes at {}: {e}", r.len, r.offset))
        })?;
    }
    Ok(Outcome::Done)
}

/// Discards a range: a hole in a file, BLKDISCARD on a block device; "not supported" is not an
/// error (the data stays, which a discard allows).
fn discard(file: &File, block_device: bool, r: &Range) -> std::io::Result<()> {
    let result = if block_device {
        let range: [u64; 2] = [r.offset, r.len];
        retry(|| {
            // SAFETY: BLKDISCARD reads two u64s (start, length) from the pointer, which points to
            // `range`, alive for the call; the descriptor is valid for the borrow of `file`.
            unsafe { libc::ioctl(file.as_raw_fd(), BLKDISCARD as _, range.as_ptr()) }
        })
    } else {
        fallocate(
            file,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            r,
        )
    };
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            debug!("virtio-blk: discard not supported by the image: {e}");
            Ok(())
        }
        other => other,
    }
}

/// Zeroes a range (see the module documentation).
fn write_zeroes(file: &File, r: &Range) -> std::io::Result<()> {
    let mode = if r.unmap {
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
    } else {
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
    };
    match fallocate(file, mode, r) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            debug!("virtio-blk: fallocate mode {mode:#x} not supported ({e}); writing zeroes");
            pwrite_zeroes(file, r)
        }
        other => other,
    }
}

fn fallocate(file: &File, mode: libc::c_int, r: &Range) -> std::io::Result<()> {
    let offset = libc::off_t::try_from(r.offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = libc::off_t::try_from(r.len)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    retry(|| {
        // SAFETY: fallocate on a valid descriptor (borrowed `file`); no memory is involved.
        unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) }
    })
}

/// Runs a system call returning 0 or -1 until it does not fail with EINTR.
fn retry(mut call: impl FnMut() -> libc::c_int) -> std::io::Result<()> {
    loop {
        if call() == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes zeroes over the range, at most [`ZERO_CHUNK`] bytes per pwrite.
fn pwrite_zeroes(file: &File, r: &Range) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeroes = vec![0u8; ZERO_CHUNK.min(r.len as usize)];
    let mut done = 0u64;
    while done < r.len {
        let n = (r.len - done).min(zeroes.len() as u64) as usize;
        file.write_all_at(&zeroes[..n], r.offset + done)?;
        done += n as u64;
    }
    Ok(())
}
