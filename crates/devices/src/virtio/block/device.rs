//! The virtio-blk device: the image file (raw or qcow2), the feature set, the config space, the queue.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use log::{debug, warn};

use super::overlay::Overlay;
use super::request::{self, Disk, Negotiated, Prepared};
use super::uring::Uring;
use super::{
    Aio, BlockConfig, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEG, QUEUE_SIZE, SECTOR_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_ID_BLOCK,
};
use crate::rate_limiter::RateLimiter;
use crate::virtio::{Step, VirtioCore, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::Error;

/// A virtio-blk device backed by a raw or qcow2 image file.
///
/// One queue of [`QUEUE_SIZE`]; features VERSION_1, EVENT_IDX, FLUSH, SEG_MAX, and RO for a
/// read-only disk or DISCARD and WRITE_ZEROES for a writable one. Requests are served on the event loop when the queue's `EventFd` fires
/// (see the `MutEventSubscriber` impl).
pub struct Block {
    core: VirtioCore,
    config: BlockConfig,
    pub(super) disk: Disk,
    /// Bytes/s and requests/s limits; its timer is watched by the event handler.
    pub(super) rate_limiter: Option<RateLimiter>,
    /// A request waits at the head of the queue for the rate limiter's timer.
    pub(super) throttled: bool,
    /// `aio=io_uring` (or the default where it works): reads, writes and flushes in flight.
    pub(super) uring: Option<Uring>,
    /// Counters, for the control API's info.
    stats: BlockStats,
}

/// Counters of one disk, for the control API's info.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStats {
    /// Requests taken from the queue to be served (whatever their outcome).
    pub requests: u64,
}
impl Block {
    /// Opens and locks the image: read-only → `O_RDONLY`, read-write → `O_RDWR`, then the
    /// locks of [`super::lock`] (flock and QEMU's byte-range locks). The image must be a regular
    /// file or a block device of at least one sector; a writable disk's file must have a write
    /// bit in its mode (root would write it regardless). A `snapshot` disk (not read-only) opens
    /// and locks its image as a read-only one does, whatever its mode, and writes to an overlay
    /// ([`super::overlay`]).
    pub fn new(config: BlockConfig) -> Result<Self, Error> {
        let path = &config.path;
        let open_err = |error| Error::DiskOpen {
            path: path.clone(),
            error,
        };
        // A read-only disk has nothing to throw away: snapshot=on changes nothing.
        let snapshot = config.snapshot && !config.read_only;
        let image_read_only = config.read_only || snapshot;
        // Before opening: root would open a file of mode 0444 for writing all the same.
        if !image_read_only {
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.is_file() && meta.mode() & 0o222 == 0 {
                    return Err(Error::DiskModeReadOnly {
                        path: path.clone(),
                        mode: meta.mode() & 0o7777,
                    });
                }
            }
        }
        // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        let mut file = OpenOptions::new()
            .read(true)
            .write(!image_read_only)
            // O_NOCTTY: a terminal named by mistake must not become vmm's controlling terminal.
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(open_err)?;
        let size_err = |error| Error::DiskSize {
            path: path.clone(),
            error,
        };
        let meta = file.metadata().map_err(size_err)?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(Error::DiskNotAFile {
                path: path.clone(),
                kind: crate::file_kind(meta.mode()),
            });
        }
        // Back to blocking I/O (no change for files and block devices, but say what we mean).
        // SAFETY: fcntl on a valid, owned descriptor; no memory is involved.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) } != 0 {
            return Err(open_err(std::io::Error::last_os_error()));
        }
        super::lock::lock(&file, path, image_read_only)?;

        // Seeking works for block devices too, where the metadata length is 0.
        let bytes = file.seek(SeekFrom::End(0)).map_err(size_err)?;
        if bytes < SECTOR_SIZE {
            return Err(Error::DiskTooSmall {
                path: path.clone(),
                bytes,
                sector: SECTOR_SIZE,
            });
        }
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            warn!(
                "disk image '{}': size {bytes} is not a multiple of {SECTOR_SIZE}; the last {} bytes are not visible to the guest",
                path.display(),
                bytes % SECTOR_SIZE
            );
        }
        // The format: by the header unless forced. A qcow2 image's disk is its virtual size;
        // it is opened writable unless the disk is read-only or a snapshot's.
        let qcow2 = super::format::open_image(
            &file,
            path,
            config.format,
            !image_read_only,
            (meta.dev(), meta.ino()),
        )?;
        let (bytes, cluster) = match &qcow2 {
            Some((q, cluster)) => (q.size(), Some(*cluster)),
            None => (bytes, None),
        };
        if bytes < SECTOR_SIZE {
            return Err(Error::DiskTooSmall {
                path: path.clone(),
                bytes,
                sector: SECTOR_SIZE,
            });
        }
        if !bytes.is_multiple_of(SECTOR_SIZE) && cluster.is_some() {
            warn!(
                "disk image '{}': virtual size {bytes} is not a multiple of {SECTOR_SIZE}; the last {} bytes are not visible to the guest",
                path.display(),
                bytes % SECTOR_SIZE
            );
        }
        let sectors = bytes / SECTOR_SIZE;
        let overlay = if snapshot {
            Some(Overlay::create(
                path,
                kind.is_file(),
                sectors * SECTOR_SIZE,
            )?)
        } else {
            None
        };

        // An overlay and the qcow2 layer are served synchronously.
        let sync_only = if overlay.is_some() {
            Some("a disk with snapshot=on")
        } else if qcow2.is_some() {
            Some("a qcow2 image")
        } else {
            None
        };
        let uring = match (config.aio, sync_only) {
            (Aio::Sync, _) | (Aio::Auto, Some(_)) => None,
            (Aio::IoUring, Some(option)) => {
                return Err(Error::DiskUringUnsupported {
                    path: path.clone(),
                    option,
                })
            }
            (Aio::Auto, None) => match Uring::new(&file, path, !image_read_only) {
                Ok(ring) => Some(ring),
                Err(e) => {
                    debug!(
                        "disk image '{}': no io_uring ({}: {}); requests are served synchronously",
                        path.display(),
                        e.step,
                        e.error
                    );
                    None
                }
            },
            (Aio::IoUring, None) => Some(Uring::new(&file, path, !image_read_only).map_err(
                |e| Error::DiskUring {
                    path: path.clone(),
                    step: e.step,
                    error: e.error,
                },
            )?),
        };

        let id = match &config.id {
            Some(id) => {
                if id.len() > ID_BYTES {
                    return Err(Error::DiskIdTooLong { id: id.clone() });
                }
                id.clone()
            }
            None => default_id(meta.dev(), meta.ino()),
        };
        let mut id_bytes = [0u8; ID_BYTES];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());

        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX);
        if config.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            avail_features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }

        // struct virtio_blk_config: capacity (le64), size_max (le32), seg_max (le32), then
        // fields of features not offered (geometry, blk_size, topology, writeback, num_queues:
        // zero) up to the DISCARD and WRITE_ZEROES fields at 36..57.
        let mut config_space = Vec::with_capacity(CONFIG_LEN);
        config_space.extend_from_slice(&sectors.to_le_bytes());
        config_space.extend_from_slice(&0u32.to_le_bytes());
        config_space.extend_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        config_space.resize(DISCARD_FIELDS, 0);
        // Discards aligned to the file system's (or device's) block punch whole blocks: the
        // overlay's, on a snapshot disk.
        // A qcow2 image frees whole clusters.
        let blksize = match (&overlay, cluster) {
            (Some(o), _) => o.file.metadata().map_err(size_err)?.blksize(),
            (None, Some(cluster)) => cluster,
            (None, None) => meta.blksize(),
        };
        let alignment = u32::try_from(blksize / SECTOR_SIZE).unwrap_or(1).max(1);
        for field in [
            MAX_DISCARD_SECTORS,
            MAX_DISCARD_SEG,
            alignment,
            MAX_WRITE_ZEROES_SECTORS,
            MAX_WRITE_ZEROES_SEG,
        ] {
            config_space.extend_from_slice(&field.to_le_bytes());
        }
        // write_zeroes_may_unmap: with the unmap flag, a range becomes a hole.
        config_space.push(1);
        config_space.resize(CONFIG_LEN, 0);

        let name = format!("virtio-blk '{}'", path.display());
        Ok(Block {
            core: VirtioCore::new(
                name,
                VIRTIO_ID_BLOCK,
                avail_features,
                &[QUEUE_SIZE],
                config_space,
            )?,
            disk: Disk {
                file,
                size: sectors * SECTOR_SIZE,
                read_only: config.read_only,
                block_device: kind.is_block_device(),
                id: id_bytes,
                overlay,
                probed_raw: config.format.is_none() && cluster.is_none(),
                qcow2: qcow2.map(|(q, _)| q),
            },
            config,
            rate_limiter: None,
            throttled: false,
            stats: BlockStats::default(),
            uring,
        })
    }

    /// Throttles the disk: each request waits (at the head of the queue, not popped) until the
    /// limiter has tokens for its data bytes and one operation. A DISCARD or WRITE_ZEROES is one
    /// operation whose data bytes are its segment table (16 per segment), not the sectors it
    /// names: holes and zeroed ranges are file system metadata work, and the zero-writing
    /// fallback is bounded by `MAX_WRITE_ZEROES_SECTORS` per request. Set it before the device is
    /// added to the event loop, which then watches the limiter's timer.
    pub fn with_rate_limiter(mut self, limiter: Option<RateLimiter>) -> Self {
        self.rate_limiter = limiter;
        self
    }

    /// The counters so far.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// The rate limiter, if any.
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.rate_limiter.as_ref()
    }

    /// The configuration the device was opened with.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size / SECTOR_SIZE
    }

    /// The GET_ID answer (NUL padded to 20 bytes).
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.disk.id
    }

    /// Whether the guest's writes go to a throw-away overlay (`snapshot=on`, not read-only).
    pub fn has_overlay(&self) -> bool {
        self.disk.overlay.is_some()
    }

    /// Whether the driver has started the device.
    pub fn is_activated(&self) -> bool {
        self.core.is_activated()
    }

    /// Whether requests go through io_uring (`aio=io_uring`, or the default where it works).
    pub fn uses_io_uring(&self) -> bool {
        self.uring.is_some()
    }

    /// Waits for every request in flight (io_uring) and returns them to the driver, so that the
    /// queue's position is the whole state again (before its state is saved). Nothing to do on
    /// the synchronous path.
    pub fn quiesce(&mut self) {
        if let Some(ring) = self.uring.as_mut() {
            ring.wait_idle(true);
        }
        self.return_completed();
    }

    /// Serves the available requests, at most [`QUEUE_SIZE`] per call (the core kicks the
    /// queue to come back for the rest after the event loop's other work), then interrupts the
    /// driver if it wants to know. A request the rate limiter refuses stays in the ring; the
    /// limiter's timer brings us back. With io_uring, reads, writes and flushes are submitted
    /// (all at once, after the loop) and returned when they complete (`complete`); a chain that
    /// finds every slot of the ring taken stays in the ring until completions free one.
    pub(super) fn process_queue(&mut self) {
        let Block {
            core,
            disk,
            rate_limiter,
            throttled,
            uring,
            stats,
            ..
        } = self;
        let negotiated = Negotiated {
            discard: core.acked(VIRTIO_BLK_F_DISCARD),
            write_zeroes: core.acked(VIRTIO_BLK_F_WRITE_ZEROES),
        };
        core.drain(0, usize::from(QUEUE_SIZE), |mem, chain| {
            if let Some(ring) = uring.as_mut().filter(|r| !r.has_room()) {
                ring.stalled = true;
                return Step::Unpop;
            }
            if let Some(limiter) = rate_limiter.as_mut() {
                if !limiter.try_consume(request::data_len(&chain), 1) {
                    *throttled = true;
                    return Step::Unpop;
                }
            }
            stats.requests += 1;
            let Some(ring) = uring.as_mut() else {
                return Step::Used(request::process(disk, negotiated, mem, chain));
            };
            match request::prepare(disk, negotiated, mem, chain.clone()) {
                Prepared::Io(req) => match ring.start(req, mem) {
                    None => Step::Held,
                    Some(len) => Step::Used(len),
                },
                Prepared::Done(len) => Step::Used(len),
                Prepared::AfterInFlight => {
                    // Ordered after the writes in flight: those complete first (and are
                    // returned after this loop).
                    ring.wait_idle(true);
                    Step::Used(request::process(disk, negotiated, mem, chain))
                }
            }
        });
        if let Some(ring) = uring.as_mut() {
            ring.submit();
        }
        self.return_completed();
    }

    /// The ring's completion `EventFd` fired: returns what completed, then serves the queue again
    /// if a chain waits for a free slot.
    pub(super) fn complete(&mut self) {
        let Some(ring) = self.uring.as_mut() else {
            return;
        };
        let ended = ring.reap(true);
        let resume = ended && std::mem::take(&mut ring.stalled);
        self.return_completed();
        if resume && !self.throttled {
            self.process_queue();
        }
    }

    /// Returns the chains the ring completed to the driver, then interrupts it once if it wants
    /// to know.
    fn return_completed(&mut self) {
        let Some(ring) = self.uring.as_mut() else {
            return;
        };
        if ring.done.is_empty() {
            return;
        }
        for (head, len) in ring.done.drain(..) {
            self.core.add_used(0, head, len);
        }
        self.core.notify_used(0);
    }
}

/// Offset of `max_discard_sectors` in struct virtio_blk_config.
const DISCARD_FIELDS: usize = 36;
/// Length of the config space: up to `unused1` after `write_zeroes_may_unmap`.
const CONFIG_LEN: usize = 60;

/// A serial derived from the image's device and inode numbers: stable across runs.
fn default_id(dev: u64, ino: u64) -> String {
    let mut id = format!("{dev:x}-{ino:x}");
    id.truncate(ID_BYTES);
    id
}

impl VirtioDevice for Block {
    crate::virtio::core_accessors!(core);

    /// Waits for the requests in flight (their buffers are the driver's again after the reset;
    /// no status is written and nothing is returned).
    fn on_reset(&mut self) {
        self.throttled = false;
        if let Some(ring) = self.uring.as_mut() {
            ring.wait_idle(false);
            ring.done.clear();
            ring.stalled = false;
        }
    }
}
