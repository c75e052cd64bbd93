//! What the fuzz targets in fuzz/ drive directly (feature `fuzzing`; not for embedders).

use std::fs::File;
use std::path::Path;

use virtio_queue::desc::split::Descriptor;

use crate::virtio::block::format::open_image;
use crate::GuestMemoryMmap;

/// The most bytes one read or write moves (`mem` must hold this much from address 0).
pub const BUFFER: usize = 64 * 1024;

/// One request against a qcow2 image.
#[derive(Clone, Copy, Debug)]
pub enum Qcow2Op {
    /// Read `len` bytes at `offset` into guest memory at 0.
    Read { offset: u64, len: u32 },
    /// Write `len` bytes from guest memory at 0 to `offset`.
    Write { offset: u64, len: u32 },
    /// Free the range.
    Discard { offset: u64, len: u64 },
    /// Zero the range (`unmap`: free it too).
    WriteZeroes { offset: u64, len: u64, unmap: bool },
    /// Write back the metadata, fdatasync.
    Flush,
}

/// Opens `file` (named `path`, a qcow2 image by its header) as the device would, then runs
/// `ops` against it with `mem` as the guest's buffers; the device's own checks (range, data
/// length) are the caller's. Returns the virtual size, or `None` if the image was refused.
pub fn qcow2_ops(
    file: &File,
    path: &Path,
    writable: bool,
    mem: &GuestMemoryMmap,
    ops: &[Qcow2Op],
) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let (mut disk, _) = open_image(file, path, None, writable, (meta.dev(), meta.ino()))
        .ok()
        .flatten()?;
    let size = disk.size();
    let fits = |offset: u64, len: u64| offset.checked_add(len).is_some_and(|end| end <= size);
    for op in ops {
        let _ = match *op {
            Qcow2Op::Read { offset, len } | Qcow2Op::Write { offset, len } => {
                let len = len % (BUFFER as u32 + 1);
                if !fits(offset, u64::from(len)) {
                    continue;
                }
                let buf = [Descriptor::new(0, len, 0, 0)];
                if matches!(op, Qcow2Op::Read { .. }) {
                    disk.read(mem, &buf, offset)
                } else if writable {
                    disk.write(mem, &buf, offset)
                } else {
                    continue;
                }
            }
            Qcow2Op::Discard { offset, len } if writable && fits(offset, len) => {
                disk.discard(offset, len)
            }
            Qcow2Op::WriteZeroes { offset, len, unmap } if writable && fits(offset, len) => {
                disk.write_zeroes(offset, len, unmap)
            }
            Qcow2Op::Flush => disk.flush(),
            _ => continue,
        };
    }
    Some(size)
}
