//! The saved state of a virtio-blk device.
//!
//! The device keeps no request of its own between events: a request the rate limiter holds back
//! stays in the available ring (un-popped), so the core's queue position is the whole state. The
//! capacity is saved to refuse a restore onto another image size.
//!
//! With io_uring, requests in flight are held by the device between events: whoever saves the
//! state calls [`Block::quiesce`] first (the VM is paused then, so no new request comes), which
//! waits for them and returns them to the driver. `save` itself takes `&self` and cannot wait: a
//! state saved with requests in flight has the queue's next available entry ahead of its next
//! used one, and restore refuses it (`check_held`), rather than lose those requests.
//!
//! A `snapshot=on` disk cannot be saved: what the guest wrote lives only in the process's
//! anonymous overlay, which no state carries, so a restored guest would find the image's old
//! data where it believes its own writes are. Its state says so (`overlay`), and restore refuses
//! it. The state of a plain disk may be restored onto a `snapshot=on` disk of the same image: the
//! guest finds the image as it was saved, and its new writes are thrown away (many VMs restored
//! from one snapshot, each with its own writes).

use serde::{Deserialize, Serialize};

use super::Block;
use crate::persist::{Persist, PersistError};
use crate::virtio::{CoreState, VirtioDevice};

/// What a virtio-blk device saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Activation, accepted features, queue position.
    pub core: CoreState,
    /// Capacity in 512-byte sectors the guest saw.
    pub capacity: u64,
    /// Saved from a `snapshot=on` disk: the guest's writes are not in the state (refused on
    /// restore).
    pub overlay: bool,
}

impl Persist for Block {
    const NAME: &'static str = "virtio-blk";
    const STATE_VERSION: u16 = 2;
    type State = BlockState;

    fn prepare_save(&mut self) {
        self.quiesce()
    }

    fn save(&self) -> BlockState {
        BlockState {
            core: VirtioDevice::core(self).save(),
            capacity: self.capacity(),
            overlay: self.has_overlay(),
        }
    }

    fn restore(&mut self, state: BlockState) -> Result<(), PersistError> {
        // A new throw-away overlay over the saved image is fine (the guest sees the image as
        // it was saved: the template case); the overlay of the saved disk is gone.
        if state.overlay {
            return Err(PersistError::Mismatch {
                device: Self::NAME,
                why: format!(
                    "'{}': a snapshot=on disk's writes live only in its temporary overlay, which a saved state does not hold",
                    self.config().path.display()
                ),
            });
        }
        if state.capacity != self.capacity() {
            return Err(PersistError::Mismatch {
                device: Self::NAME,
                why: format!(
                    "'{}': saved capacity {} sectors, the image has {}",
                    self.config().path.display(),
                    state.capacity,
                    self.capacity()
                ),
            });
        }
        // A request the rate limiter holds back stays in the ring: none is held.
        state.core.check_held(Self::NAME, &[0])?;
        self.throttled = false;
        VirtioDevice::core_mut(self).restore(state.core)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::persist::test_util::round_trip;
    use crate::virtio::persist::test_util::{Driver, DATA};
    use crate::virtio::{MmioTransport, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID as GET_ID;

    fn block() -> (TempFile, Arc<Mutex<Block>>) {
        let file = TempFile::new().unwrap();
        file.as_file().set_len(8 * 512).unwrap();
        let config = crate::virtio::block::BlockConfig {
            format: None,
            path: file.as_path().to_path_buf(),
            read_only: true,
            id: Some("disk-one".into()),
            snapshot: false,
            aio: crate::virtio::block::Aio::Auto,
        };
        (file, Arc::new(Mutex::new(Block::new(config).unwrap())))
    }

    /// Posts a GET_ID request and lets the device serve it; returns the used index.
    fn get_id(driver: &mut Driver, block: &Arc<Mutex<Block>>, n: u64) -> u16 {
        let hdr = DATA + n * 0x100;
        driver.mem.write_obj(GET_ID, GuestAddress(hdr)).unwrap();
        driver.post(
            0,
            &[
                (hdr, 16, false),
                (hdr + 0x20, 20, true),
                (hdr + 0x40, 1, true),
            ],
        );
        block.lock().unwrap().process_queue();
        let status: u8 = driver.mem.read_obj(GuestAddress(hdr + 0x40)).unwrap();
        assert_eq!(status, 0, "GET_ID request {n} failed");
        let mut id = [0u8; 8];
        driver
            .mem
            .read_slice(&mut id, GuestAddress(hdr + 0x20))
            .unwrap();
        assert_eq!(&id, b"disk-one");
        driver.used_idx(0)
    }

    #[test]
    fn an_idle_device_round_trips() {
        let (_f1, a) = block();
        let (_f2, b) = block();
        let state = round_trip(&*a.lock().unwrap(), &mut *b.lock().unwrap());
        assert!(!state.core.activated);
        assert_eq!(state.capacity, 8);
    }

    #[test]
    fn a_restored_activated_device_keeps_serving_requests() {
        let (_f1, a) = block();
        let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);
        let mut driver = Driver::new(a.clone(), features);
        assert_eq!(get_id(&mut driver, &a, 0), 1);
        assert_eq!(get_id(&mut driver, &a, 1), 2);

        let (_f2, b) = block();
        let mut transport = MmioTransport::new(driver.mem.clone(), b.clone()).unwrap();
        round_trip(&driver.transport, &mut transport);
        let state = round_trip(&*a.lock().unwrap(), &mut *b.lock().unwrap());
        assert_eq!(state.core.queues[0].next_avail, 2);
        driver.transport = transport;

        assert_eq!(get_id(&mut driver, &b, 2), 3);
        assert_eq!(driver.used(0, 2).1, 21);
        assert!(b.lock().unwrap().is_activated());
    }

    /// Between events virtio-blk holds no request: every chain it took was returned, so a
    /// queue's next used entry is its next available one. A state saying otherwise would have
    /// the device return entries the driver never posted (or skip some), and the driver would
    /// see a used ring it cannot make sense of.
    #[test]
    fn requests_taken_and_never_returned_are_refused() {
        let (_f, a) = block();
        let mut driver = Driver::new(a.clone(), 1 << VIRTIO_F_VERSION_1);
        get_id(&mut driver, &a, 0);
        for skew in [1u16, 5, 0xffff] {
            let mut state = a.lock().unwrap().save();
            let q = &mut state.core.queues[0];
            q.next_used = q.next_avail.wrapping_sub(skew);
            let err = a.lock().unwrap().restore(state);
            assert!(
                matches!(err, Err(PersistError::Mismatch { .. })),
                "{skew}: {err:?}"
            );
        }
    }

    #[test]
    fn an_overlay_is_never_saved_but_may_be_restored_onto() {
        let (f, plain) = block();
        let snap = |path: &std::path::Path| {
            Block::new(crate::virtio::block::BlockConfig {
                format: None,
                path: path.to_path_buf(),
                read_only: false,
                id: None,
                snapshot: true,
                aio: crate::virtio::block::Aio::Auto,
            })
            .unwrap()
        };
        let mut a = snap(f.as_path());
        let state = a.save();
        assert!(state.overlay);
        // Onto a plain disk, and onto another overlay disk (a fresh, empty overlay).
        let err = plain.lock().unwrap().restore(state.clone());
        assert!(matches!(err, Err(PersistError::Mismatch { .. })), "{err:?}");
        let err = a.restore(state);
        assert!(matches!(err, Err(PersistError::Mismatch { .. })), "{err:?}");
        // A plain disk's state onto an overlay disk of the same image.
        let plain_state = plain.lock().unwrap().save();
        assert!(!plain_state.overlay);
        a.restore(plain_state).unwrap();
    }

    #[test]
    fn another_image_size_is_refused() {
        let (_f1, a) = block();
        let mut state = a.lock().unwrap().save();
        state.capacity = 9;
        assert!(a.lock().unwrap().restore(state).is_err());
    }
}
