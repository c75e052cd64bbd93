//! virtio-blk (device type 2) over a raw or qcow2 disk image.
//!
//! * `device.rs`: [`Block`], opening and locking the image, the [`VirtioDevice`] side and
//!   the queue processing loop;
//! * `lock.rs`: the image's locks (flock, and QEMU's byte-range locks);
//! * `request.rs`: parsing and executing one request (descriptor chain) against the image;
//! * `discard.rs`: DISCARD and WRITE_ZEROES (holes and zeroed ranges in the image);
//! * `format.rs`: which format an image is (by its header) and the checks of a qcow2 header;
//! * `qcow2.rs`: qcow2 images and their backing chains (the `imago` crate);
//! * `overlay.rs`: `snapshot=on`, an anonymous temporary file that takes the guest's writes;
//! * `uring.rs`: `aio=io_uring`, reads, writes and flushes of a raw image in flight at once;
//! * `event_handler.rs`: the event-loop side (queue notifications, the rate limiter's timer);
//! * `persist.rs`: the saved state.
//!
//! [`VirtioDevice`]: super::VirtioDevice

use std::path::PathBuf;

mod device;
mod discard;
mod event_handler;
pub(crate) mod format;
mod lock;
mod overlay;
mod persist;
pub(crate) mod qcow2;

mod request;
pub mod seccomp;
mod uring;

pub use device::{Block, BlockStats};
pub use format::{growth_bound, DiskFormat};
pub use persist::BlockState;

pub use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
pub use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

/// The size of the only queue.
pub const QUEUE_SIZE: u16 = 256;
/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Config space `max_discard_sectors`: the most sectors one DISCARD segment may name (1 GiB;
/// a hole is metadata work, but it is done on the event loop).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Config space `max_discard_seg`: the most segments of one DISCARD request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Config space `max_write_zeroes_sectors` (16 MiB: bounds the zero-writing fallback, when
/// the file system cannot zero a range, to one such write per request).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 15;
/// Config space `max_write_zeroes_seg`.
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// How requests reach the image file (`aio=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Aio {
    /// The fastest that works: io_uring when the kernel (and whatever sandbox vmm runs in) lets
    /// the ring be set up and the disk has no overlay, else the synchronous path.
    #[default]
    Auto,
    /// One preadv/pwritev/fdatasync per request on the event loop, each finished before the next.
    Sync,
    /// io_uring: reads, writes and flushes in flight at once, completions on the event loop; an
    /// error at start if the ring cannot be set up or the disk needs the synchronous path.
    IoUring,
}

/// How to open a disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Path of the image file (or block device).
    pub path: PathBuf,
    /// How to read the image: `None` detects it by its header (qcow2 magic and version 2 or
    /// 3, else raw), never by its name; `Some` forces one (`Raw` serves a qcow2 file's bytes as
    /// they are; `Qcow2` on a file that is not one is an error).
    pub format: Option<DiskFormat>,
    /// Open read-only (shared lock) and advertise VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes); by default one derived from
    /// the image's device and inode numbers.
    pub id: Option<String>,
    /// Throw-away writes: the image is opened read-only (and locked as a reader); the guest's
    /// writes go to an anonymous temporary overlay that disappears with the process. Ignored
    /// together with `read_only` (a read-only disk writes nothing).
    pub snapshot: bool,
    /// How requests reach the file (`aio=`).
    pub aio: Aio,
}

#[cfg(test)]
mod tests;
