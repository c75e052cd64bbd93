//! The virtio-blk device: the image file, the feature set, the config space, the queue.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use log::{debug, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Disk};
use super::{
    BlockConfig, ID_BYTES, QUEUE_SIZE, SECTOR_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_ID_BLOCK,
};
use crate::rate_limiter::RateLimiter;
use crate::virtio::{
    Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_VRING, VIRTIO_RING_F_EVENT_IDX,
};
use crate::{Error, GuestMemoryMmap};

/// What the device holds between DRIVER_OK and reset.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue: Queue,
}

/// A virtio-blk device backed by a raw image file.
///
/// One queue of [`QUEUE_SIZE`]; features VERSION_1, EVENT_IDX, FLUSH, SEG_MAX (and RO for a
/// read-only disk). Requests are served on the event loop when the queue's `EventFd` fires
/// (see the `MutEventSubscriber` impl).
pub struct Block {
    config: BlockConfig,
    pub(super) disk: Disk,
    avail_features: u64,
    config_space: Vec<u8>,
    queue_max_sizes: [u16; 1],
    pub(super) queue_evts: [EventFd; 1],
    active: Option<Active>,
    /// The driver broke the queue protocol: no more processing until reset.
    failed: bool,
    /// Every failure since creation (log once, count the rest).
    pub(super) failures: crate::virtio::FailureLog,
    /// Bytes/s and requests/s limits; its timer is watched by the event handler.
    pub(super) rate_limiter: Option<RateLimiter>,
    /// A request waits at the head of the queue for the rate limiter's timer.
    pub(super) throttled: bool,
}

impl Block {
    /// Opens and locks the image: read-only → `O_RDONLY` + `flock(LOCK_SH | LOCK_NB)`,
    /// read-write → `O_RDWR` + `flock(LOCK_EX | LOCK_NB)`.
    pub fn new(config: BlockConfig) -> Result<Self, Error> {
        let path = &config.path;
        let mut file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(path)
            .map_err(|error| Error::DiskOpen {
                path: path.clone(),
                error,
            })?;
        lock(&file, &config)?;

        // Seeking works for block devices too, where the metadata length is 0.
        let size_err = |error| Error::DiskSize {
            path: path.clone(),
            error,
        };
        let bytes = file.seek(SeekFrom::End(0)).map_err(size_err)?;
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            warn!(
                "disk image '{}': size {bytes} is not a multiple of {SECTOR_SIZE}; the last {} bytes are not visible to the guest",
                path.display(),
                bytes % SECTOR_SIZE
            );
        }
        let sectors = bytes / SECTOR_SIZE;

        let id = match &config.id {
            Some(id) => {
                if id.len() > ID_BYTES {
                    return Err(Error::DiskIdTooLong { id: id.clone() });
                }
                id.clone()
            }
            None => {
                let meta = file.metadata().map_err(size_err)?;
                default_id(meta.dev(), meta.ino())
            }
        };
        let mut id_bytes = [0u8; ID_BYTES];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());

        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX);
        if config.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }

        // struct virtio_blk_config: capacity (le64), size_max (le32), seg_max (le32).
        let mut config_space = Vec::with_capacity(16);
        config_space.extend_from_slice(&sectors.to_le_bytes());
        config_space.extend_from_slice(&0u32.to_le_bytes());
        config_space.extend_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());

        let queue_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|error| Error::EventFd {
            what: "virtio-blk queue",
            error,
        })?;

        Ok(Block {
            disk: Disk {
                file,
                size: sectors * SECTOR_SIZE,
                read_only: config.read_only,
                id: id_bytes,
            },
            config,
            avail_features,
            config_space,
            queue_max_sizes: [QUEUE_SIZE],
            queue_evts: [queue_evt],
            active: None,
            failed: false,
            failures: Default::default(),
            rate_limiter: None,
            throttled: false,
        })
    }

    /// Throttles the disk: each request waits (at the head of the queue, not popped) until the
    /// limiter has tokens for its data bytes and one operation. Set it before the device is
    /// added to the event loop, which then watches the limiter's timer.
    pub fn with_rate_limiter(mut self, limiter: Option<RateLimiter>) -> Self {
        self.rate_limiter = limiter;
        self
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

    /// Whether the driver has started the device.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// The driver broke the queue protocol: log once, ask for a reset, stop processing.
    fn fail(&mut self, why: &str) {
        if !self.failed {
            let name = format!("virtio-blk '{}'", self.config.path.display());
            self.failures.record(&name, why);
            self.failed = true;
            if let Some(active) = &self.active {
                active.interrupt.set_needs_reset();
            }
        }
    }

    /// Serves every available request, then interrupts the driver if it wants to know.
    pub(super) fn process_queue(&mut self) {
        if self.failed {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queue;
        if !queue.ready() {
            return;
        }
        let event_idx = queue.event_idx_enabled();
        let mut used_any = false;
        let mut failure = None;
        'outer: loop {
            if event_idx {
                if let Err(e) = queue.disable_notification(mem) {
                    failure = Some(format!("cannot update avail_event: {e}"));
                    break;
                }
            }
            loop {
                let chain = match queue.iter(mem) {
                    Ok(mut iter) => iter.next(),
                    Err(e) => {
                        failure = Some(format!("bad available ring: {e}"));
                        break 'outer;
                    }
                };
                let Some(chain) = chain else { break };
                if let Some(limiter) = self.rate_limiter.as_mut() {
                    if !limiter.try_consume(request::data_len(&chain), 1) {
                        // Leave the request in the ring; the limiter's timer brings us back.
                        queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                        self.throttled = true;
                        break 'outer;
                    }
                }
                let head = chain.head_index();
                if head >= queue.size() {
                    // The chain could never be returned: do not serve it, ask for a reset.
                    failure = Some(format!(
                        "available ring names descriptor {head}, beyond the queue size {}",
                        queue.size()
                    ));
                    break 'outer;
                }
                let len = request::process(&self.disk, mem, chain);
                if let Err(e) = queue.add_used(mem, head, len) {
                    failure = Some(format!("cannot return chain {head}: {e}"));
                    break 'outer;
                }
                used_any = true;
            }
            if !event_idx {
                break;
            }
            match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    failure = Some(format!("cannot update avail_event: {e}"));
                    break;
                }
            }
        }
        if used_any {
            match queue.needs_notification(mem) {
                Ok(false) => {}
                Ok(true) | Err(_) => active.interrupt.trigger(VIRTIO_MMIO_INT_VRING),
            }
        }
        if let Some(why) = failure {
            self.fail(&why);
        }
    }
}

/// A serial derived from the image's device and inode numbers: stable across runs.
fn default_id(dev: u64, ino: u64) -> String {
    let mut id = format!("{dev:x}-{ino:x}");
    id.truncate(ID_BYTES);
    id
}

fn lock(file: &File, config: &BlockConfig) -> Result<(), Error> {
    let op = if config.read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a valid, owned file descriptor; no memory is involved.
    let ret = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if ret == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(Error::DiskLocked {
            path: config.path.clone(),
        })
    } else {
        Err(Error::DiskLock {
            path: config.path.clone(),
            error,
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "virtio-blk: ignored {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), Error> {
        let queue = queues
            .into_iter()
            .next()
            .ok_or_else(|| Error::Activate("virtio-blk needs one queue".into()))?;
        self.failed = false;
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
        });
        // Requests queued before DRIVER_OK may have had their notification dropped: have the
        // event loop look at the queue once (not here, on the vCPU thread).
        if let Err(e) = self.queue_evts[0].write(1) {
            warn!("virtio-blk: cannot kick the queue: {e}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.failed = false;
        self.throttled = false;
    }
}
