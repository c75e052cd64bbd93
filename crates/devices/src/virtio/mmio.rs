//! The virtio-mmio transport, version 2 ("modern"), as a [`BusDevice`] in one 4 KiB slot.

use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, warn};
use virtio_bindings::{virtio_config as config, virtio_mmio as mmio};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::bus::BusDevice;
use crate::{Error, GuestMemoryMmap};

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
/// Our vendor id ("vmm\0").
const VENDOR_ID: u32 = 0x006d_6d76;

// Register offsets.
const REG_MAGIC: u64 = mmio::VIRTIO_MMIO_MAGIC_VALUE as u64;
const REG_VERSION: u64 = mmio::VIRTIO_MMIO_VERSION as u64;
const REG_DEVICE_ID: u64 = mmio::VIRTIO_MMIO_DEVICE_ID as u64;
const REG_VENDOR_ID: u64 = mmio::VIRTIO_MMIO_VENDOR_ID as u64;
const REG_DEVICE_FEATURES: u64 = mmio::VIRTIO_MMIO_DEVICE_FEATURES as u64;
const REG_DEVICE_FEATURES_SEL: u64 = mmio::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
const REG_DRIVER_FEATURES: u64 = mmio::VIRTIO_MMIO_DRIVER_FEATURES as u64;
const REG_DRIVER_FEATURES_SEL: u64 = mmio::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
const REG_QUEUE_SEL: u64 = mmio::VIRTIO_MMIO_QUEUE_SEL as u64;
const REG_QUEUE_NUM_MAX: u64 = mmio::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
const REG_QUEUE_NUM: u64 = mmio::VIRTIO_MMIO_QUEUE_NUM as u64;
const REG_QUEUE_READY: u64 = mmio::VIRTIO_MMIO_QUEUE_READY as u64;
const REG_QUEUE_NOTIFY: u64 = super::NOTIFY_REG_OFFSET;
const REG_INTERRUPT_STATUS: u64 = mmio::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
const REG_INTERRUPT_ACK: u64 = mmio::VIRTIO_MMIO_INTERRUPT_ACK as u64;
const REG_STATUS: u64 = mmio::VIRTIO_MMIO_STATUS as u64;
const REG_QUEUE_DESC_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
const REG_QUEUE_DESC_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
const REG_QUEUE_DRIVER_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
const REG_QUEUE_DRIVER_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
const REG_QUEUE_DEVICE_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
const REG_QUEUE_DEVICE_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
const REG_SHM_SEL: u64 = mmio::VIRTIO_MMIO_SHM_SEL as u64;
const REG_SHM_LEN_LOW: u64 = mmio::VIRTIO_MMIO_SHM_LEN_LOW as u64;
const REG_SHM_LEN_HIGH: u64 = mmio::VIRTIO_MMIO_SHM_LEN_HIGH as u64;
const REG_SHM_BASE_LOW: u64 = mmio::VIRTIO_MMIO_SHM_BASE_LOW as u64;
const REG_SHM_BASE_HIGH: u64 = mmio::VIRTIO_MMIO_SHM_BASE_HIGH as u64;
const REG_CONFIG_GENERATION: u64 = mmio::VIRTIO_MMIO_CONFIG_GENERATION as u64;
const CONFIG_SPACE: u64 = mmio::VIRTIO_MMIO_CONFIG as u64;

// Device status bits.
const STATUS_ACKNOWLEDGE: u32 = config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
const STATUS_DRIVER: u32 = config::VIRTIO_CONFIG_S_DRIVER;
const STATUS_DRIVER_OK: u32 = config::VIRTIO_CONFIG_S_DRIVER_OK;
const STATUS_FEATURES_OK: u32 = config::VIRTIO_CONFIG_S_FEATURES_OK;
const STATUS_NEEDS_RESET: u32 = config::VIRTIO_CONFIG_S_NEEDS_RESET;
const STATUS_FAILED: u32 = config::VIRTIO_CONFIG_S_FAILED;

/// Which half of a 64-bit queue address a register holds.
#[derive(Clone, Copy)]
enum Half {
    Low,
    High,
}

/// Which ring a queue address register configures.
#[derive(Clone, Copy)]
enum Ring {
    Desc,
    Driver,
    Device,
}

/// The virtio-mmio (version 2) register file of one device.
///
/// [`MmioTransport::irq_event`] and [`MmioTransport::queue_events`] return references to
/// `EventFd`s the transport keeps for the transport's whole life: the VM registers them with
/// KVM (irqfd, ioeventfds); they are never replaced, not even by a device reset.
pub struct MmioTransport {
    pub(super) mem: GuestMemoryMmap,
    pub(super) device: Arc<Mutex<dyn VirtioDevice>>,
    pub(super) interrupt: Arc<Interrupt>,
    /// Duplicates of the device's queue `EventFd`s.
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) queues: Vec<Queue>,
    /// Per queue: the driver wrote an invalid size or a misaligned address.
    pub(super) queue_bad_config: Vec<bool>,
    pub(super) device_type: u32,
    pub(super) avail_features: u64,
    pub(super) device_features_sel: u32,
    pub(super) driver_features_sel: u32,
    pub(super) acked_features: u64,
    pub(super) queue_sel: u32,
    pub(super) shm_sel: u32,
    pub(super) status: u32,
    pub(super) activated: bool,
    pub(super) setup_error_logged: bool,
}

impl MmioTransport {
    /// A transport for `device`, whose queues live in `mem`.
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>) -> Result<Self, Error> {
        let interrupt = Arc::new(Interrupt::new()?);
        let (device_type, avail_features, queues, queue_evts) = {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            let queues = dev
                .queue_max_sizes()
                .iter()
                .map(|&size| Queue::new(size).map_err(|error| Error::Queue { size, error }))
                .collect::<Result<Vec<_>, _>>()?;
            let evts = dev
                .queue_events()
                .iter()
                .map(|e| {
                    e.try_clone().map_err(|error| Error::EventFd {
                        what: "virtio queue",
                        error,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if evts.len() != queues.len() {
                return Err(Error::Activate(format!(
                    "device has {} queues but {} queue events",
                    queues.len(),
                    evts.len()
                )));
            }
            (dev.device_type(), dev.avail_features(), queues, evts)
        };
        Ok(MmioTransport {
            mem,
            device,
            interrupt,
            queue_bad_config: vec![false; queues.len()],
            queue_evts,
            queues,
            device_type,
            avail_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            status: 0,
            activated: false,
            setup_error_logged: false,
        })
    }

    /// The device's interrupt `EventFd` (borrowed): the VM registers it as an irqfd on the
    /// slot's IRQ.
    pub fn irq_event(&self) -> &EventFd {
        self.interrupt.irq_event()
    }

    /// One `EventFd` per queue, in queue order (borrowed; duplicates of the device's own), for
    /// KVM ioeventfds at `base + NOTIFY_REG_OFFSET` with datamatch = queue index.
    pub fn queue_events(&self) -> Vec<&EventFd> {
        self.queue_evts.iter().collect()
    }

    /// The interrupt shared with the device.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | STATUS_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Whether the device has been activated (DRIVER_OK accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    pub(super) fn lock_device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// Logs a driver setup error once per transport, at warn level; later ones at debug.
    fn setup_error(&mut self, msg: &str) {
        if self.setup_error_logged {
            debug!("virtio-mmio (type {}): {msg}", self.device_type);
        } else {
            warn!(
                "virtio-mmio (type {}): {msg} (further errors at debug level)",
                self.device_type
            );
            self.setup_error_logged = true;
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: their length reads as -1.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            // The configuration space never changes on its own.
            REG_CONFIG_GENERATION => 0,
            _ => {
                debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => self.write_queue_num(value),
            REG_QUEUE_READY => self.write_queue_ready(value),
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            REG_QUEUE_DESC_LOW => self.write_queue_addr(Ring::Desc, Half::Low, value),
            REG_QUEUE_DESC_HIGH => self.write_queue_addr(Ring::Desc, Half::High, value),
            REG_QUEUE_DRIVER_LOW => self.write_queue_addr(Ring::Driver, Half::Low, value),
            REG_QUEUE_DRIVER_HIGH => self.write_queue_addr(Ring::Driver, Half::High, value),
            REG_QUEUE_DEVICE_LOW => self.write_queue_addr(Ring::Device, Half::Low, value),
            REG_QUEUE_DEVICE_HIGH => self.write_queue_addr(Ring::Device, Half::High, value),
            REG_SHM_SEL => self.shm_sel = value,
            _ => {
                debug!("virtio-mmio: write {value:#x} to read-only or unknown register {offset:#x}")
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are negotiated between DRIVER and FEATURES_OK only.
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            debug!(
                "virtio-mmio: driver features written in status {:#x}",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            sel => debug!("virtio-mmio: driver features word {sel} ignored"),
        }
    }

    /// Queue registers may be written after FEATURES_OK and before DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        let allowed = self.status & STATUS_FEATURES_OK != 0
            && self.status & (STATUS_DRIVER_OK | STATUS_FAILED) == 0
            && !self.interrupt.needs_reset();
        if !allowed {
            debug!(
                "virtio-mmio: queue register written in status {:#x}",
                self.status
            );
        }
        allowed
    }

    fn write_queue_num(&mut self, value: u32) {
        if !self.queue_config_allowed() {
            return;
        }
        let sel = self.queue_sel as usize;
        let Some(queue) = self.queues.get_mut(sel) else {
            debug!("virtio-mmio: QueueNum for missing queue {sel}");
            return;
        };
        let ok = u16::try_from(value)
            .ok()
            .is_some_and(|size| queue.try_set_size(size).is_ok());
        if !ok {
            self.queue_bad_config[sel] = true;
            self.setup_error(&format!("queue {sel}: invalid size {value}"));
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        if !self.queue_config_allowed() {
            return;
        }
        let sel = self.queue_sel as usize;
        match self.queues.get_mut(sel) {
            Some(queue) => queue.set_ready(value == 1),
            None => debug!("virtio-mmio: QueueReady for missing queue {sel}"),
        }
    }

    fn write_queue_addr(&mut self, ring: Ring, half: Half, value: u32) {
        if !self.queue_config_allowed() {
            return;
        }
        let sel = self.queue_sel as usize;
        let Some(queue) = self.queues.get_mut(sel) else {
            debug!("virtio-mmio: queue address for missing queue {sel}");
            return;
        };
        let old = match ring {
            Ring::Desc => queue.desc_table(),
            Ring::Driver => queue.avail_ring(),
            Ring::Device => queue.used_ring(),
        };
        let new = match half {
            Half::Low => (old & !0xffff_ffff) | u64::from(value),
            Half::High => (old & 0xffff_ffff) | (u64::from(value) << 32),
        };
        let addr = GuestAddress(new);
        let res = match ring {
            Ring::Desc => queue.try_set_desc_table_address(addr),
            Ring::Driver => queue.try_set_avail_ring_address(addr),
            Ring::Device => queue.try_set_used_ring_address(addr),
        };
        if let Err(e) = res {
            self.queue_bad_config[sel] = true;
            self.setup_error(&format!("queue {sel}: {e} ({new:#x})"));
        }
    }

    fn notify(&self, value: u32) {
        match self.queue_evts.get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    warn!("virtio-mmio: cannot signal queue {value}: {e}");
                }
            }
            None => debug!("virtio-mmio: notify for missing queue {value}"),
        }
    }

    /// The Status state machine (virtio 1.x, 2.1 and 3.1.1): bits are only ever added, in
    /// the order ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK; FAILED at any time; 0 resets.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & self.status != self.status {
            debug!(
                "virtio-mmio: status {value:#x} clears bits of {:#x}; ignored",
                self.status
            );
            return;
        }
        let new = value & !self.status;
        if new & STATUS_ACKNOWLEDGE != 0 {
            self.status |= STATUS_ACKNOWLEDGE;
        }
        if new & STATUS_DRIVER != 0 {
            if self.status & STATUS_ACKNOWLEDGE != 0 {
                self.status |= STATUS_DRIVER;
            } else {
                debug!("virtio-mmio: DRIVER without ACKNOWLEDGE; ignored");
            }
        }
        if new & STATUS_FEATURES_OK != 0 {
            self.features_ok();
        }
        if new & STATUS_DRIVER_OK != 0 {
            self.driver_ok();
        }
        if new & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
        }
        let unknown = new
            & !(STATUS_ACKNOWLEDGE
                | STATUS_DRIVER
                | STATUS_FEATURES_OK
                | STATUS_DRIVER_OK
                | STATUS_FAILED);
        if unknown != 0 {
            debug!("virtio-mmio: status bits {unknown:#x} ignored");
        }
    }

    /// FEATURES_OK is accepted only after DRIVER, if the driver acked nothing the device did
    /// not offer, and VIRTIO_F_VERSION_1 (this is a modern transport). When refused, the
    /// bit stays clear and the driver sees that when it reads Status back.
    fn features_ok(&mut self) {
        if self.status & STATUS_DRIVER == 0 {
            debug!("virtio-mmio: FEATURES_OK without DRIVER; ignored");
            return;
        }
        let unknown = self.acked_features & !self.avail_features;
        if unknown != 0 {
            self.setup_error(&format!(
                "driver accepted features {unknown:#x} the device did not offer; FEATURES_OK refused"
            ));
            return;
        }
        if self.acked_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            self.setup_error("driver did not accept VIRTIO_F_VERSION_1; FEATURES_OK refused");
            return;
        }
        self.status |= STATUS_FEATURES_OK;
    }

    /// DRIVER_OK: activate the device if every ready queue is valid, else DEVICE_NEEDS_RESET.
    fn driver_ok(&mut self) {
        if self.status & STATUS_FEATURES_OK == 0 {
            debug!("virtio-mmio: DRIVER_OK without FEATURES_OK; ignored");
            return;
        }
        self.status |= STATUS_DRIVER_OK;
        if self.interrupt.needs_reset() || self.status & STATUS_FAILED != 0 {
            return;
        }
        match self.activate() {
            Ok(()) => self.activated = true,
            Err(msg) => {
                self.setup_error(&format!("cannot activate device: {msg}"));
                self.interrupt.set_needs_reset();
            }
        }
    }

    pub(super) fn activate(&mut self) -> Result<(), String> {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() {
                if self.queue_bad_config[i] {
                    return Err(format!("queue {i} was given an invalid size or address"));
                }
                if !q.is_valid(&self.mem) {
                    return Err(format!("queue {i} is not valid in guest memory"));
                }
            }
            let mut copy = Queue::try_from(q.state()).map_err(|e| format!("queue {i}: {e}"))?;
            copy.set_event_idx(event_idx);
            queues.push(copy);
        }
        let mem = self.mem.clone();
        let interrupt = self.interrupt.clone();
        let acked = self.acked_features;
        self.lock_device()
            .activate(mem, interrupt, queues, acked)
            .map_err(|e| e.to_string())
    }

    /// Device reset: back to the power-on state; the `EventFd`s stay.
    pub(super) fn reset(&mut self) {
        if self.activated {
            self.lock_device().reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_bad_config.fill(false);
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.status = 0;
        self.interrupt.clear();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.lock_device().read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            debug!(
                "virtio-mmio: ignored {}-byte read at {offset:#x}",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.lock_device().write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(
                "virtio-mmio: ignored {}-byte write at {offset:#x}",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            debug!("virtio-mmio: ignored misaligned write at {offset:#x}");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.activated {
            self.lock_device().reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{VirtioCore, VIRTIO_MMIO_INT_VRING};
    use vm_memory::GuestAddress;

    /// A device that records what the transport does to it.
    struct Fake {
        core: VirtioCore,
        activated: Option<(Vec<Queue>, u64)>,
        resets: u32,
    }

    impl VirtioDevice for Fake {
        fn core(&self) -> &VirtioCore {
            &self.core
        }
        fn core_mut(&mut self) -> &mut VirtioCore {
            &mut self.core
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0xc0 + offset as u8 + i as u8;
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            _interrupt: Arc<Interrupt>,
            queues: Vec<Queue>,
            acked_features: u64,
        ) -> Result<(), Error> {
            self.activated = Some((queues, acked_features));
            Ok(())
        }
        fn reset(&mut self) {
            self.activated = None;
            self.resets += 1;
        }
    }

    fn fake() -> Fake {
        let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | 0b101;
        Fake {
            core: VirtioCore::new("fake", 42, features, &[16, 8], vec![]).unwrap(),
            activated: None,
            resets: 0,
        }
    }

    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

    fn setup() -> (MmioTransport, Arc<Mutex<Fake>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let fake = Arc::new(Mutex::new(fake()));
        let t = MmioTransport::new(mem, fake.clone()).unwrap();
        (t, fake)
    }

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
    fn negotiate(t: &mut MmioTransport, features: u64) {
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, REG_DRIVER_FEATURES_SEL, 0);
        wr(t, REG_DRIVER_FEATURES, features as u32);
        wr(t, REG_DRIVER_FEATURES_SEL, 1);
        wr(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, desc: u64, avail: u64, used: u64) {
        wr(t, REG_QUEUE_SEL, sel);
        wr(t, REG_QUEUE_NUM, size);
        wr(t, REG_QUEUE_DESC_LOW, desc as u32);
        wr(t, REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        wr(t, REG_QUEUE_DRIVER_LOW, avail as u32);
        wr(t, REG_QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        wr(t, REG_QUEUE_DEVICE_LOW, used as u32);
        wr(t, REG_QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        wr(t, REG_QUEUE_READY, 1);
    }

    const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn identity_registers() {
        let (mut t, _) = setup();
        assert_eq!(rd(&mut t, REG_MAGIC), 0x7472_6976);
        assert_eq!(rd(&mut t, REG_VERSION), 2);
        assert_eq!(rd(&mut t, REG_DEVICE_ID), 42);
        assert_eq!(rd(&mut t, REG_VENDOR_ID), VENDOR_ID);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), (1 << 29) | 0b101);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 1);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 0);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 16);
        wr(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 8);
        wr(&mut t, REG_QUEUE_SEL, 2);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
        assert_eq!(rd(&mut t, REG_CONFIG_GENERATION), 0);
        assert_eq!(rd(&mut t, REG_SHM_LEN_LOW), u32::MAX);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        // Config space: any width, passed through to the device.
        let mut b = [0u8; 2];
        t.read(CONFIG_SPACE + 3, &mut b);
        assert_eq!(b, [0xc3, 0xc4]);
    }

    #[test]
    fn odd_sized_and_misaligned_accesses_are_ignored() {
        let (mut t, _) = setup();
        let mut b = [0xffu8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        t.read(REG_MAGIC + 1, &mut b);
        assert_eq!(b, [0; 4]);
        let mut b = [0xffu8; 8];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0; 8]);
        t.write(REG_STATUS, &[1]);
        t.write(REG_STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        t.write(REG_STATUS + 2, &[1, 0, 0, 0]);
        t.write(REG_STATUS, &[]);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        // Unknown and read-only registers.
        wr(&mut t, REG_MAGIC, 5);
        wr(&mut t, 0xf0, 5);
        assert_eq!(rd(&mut t, 0xf0), 0);
        assert_eq!(rd(&mut t, REG_MAGIC), MAGIC_VALUE);
    }

    #[test]
    fn full_setup_activates_device() {
        let (mut t, fake) = setup();
        let features = VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX) | 1;
        negotiate(&mut t, features);
        assert_eq!(
            rd(&mut t, REG_STATUS),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
        );
        setup_queue(&mut t, 0, 8, 0x1000, 0x2000, 0x3000);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
        // Queue 1 is left unready: fine.
        wr(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(rd(&mut t, REG_STATUS), ALL_OK);
        assert!(t.is_activated());
        {
            let f = fake.lock().unwrap();
            let (queues, acked) = f.activated.as_ref().unwrap();
            assert_eq!(*acked, features);
            assert_eq!(queues.len(), 2);
            let q = &queues[0];
            assert!(q.ready());
            assert_eq!(q.size(), 8);
            assert_eq!(q.desc_table(), 0x1000);
            assert_eq!(q.avail_ring(), 0x2000);
            assert_eq!(q.used_ring(), 0x3000);
            assert!(q.event_idx_enabled());
            assert!(!queues[1].ready());
        }
        // Queue configuration is frozen after DRIVER_OK; features too.
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, REG_DRIVER_FEATURES, 0);
        assert_eq!(t.acked_features, features);

        // Reset: status 0, device reset, queues back to defaults.
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        assert!(!t.is_activated());
        assert_eq!(fake.lock().unwrap().resets, 1);
        assert!(fake.lock().unwrap().activated.is_none());
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
        assert_eq!(t.queues[0].size(), 16);
        assert_eq!(t.queues[0].desc_table(), 0);
        assert_eq!(t.acked_features, 0);
    }

    #[test]
    fn status_order_is_enforced() {
        let (mut t, fake) = setup();
        // DRIVER without ACKNOWLEDGE.
        wr(&mut t, REG_STATUS, STATUS_DRIVER);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        // Features before DRIVER are ignored.
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        assert_eq!(t.acked_features, 0);
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // Queue setup before FEATURES_OK is ignored.
        wr(&mut t, REG_QUEUE_NUM, 4);
        assert_eq!(t.queues[0].size(), 16);
        // DRIVER_OK without FEATURES_OK.
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert_eq!(rd(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // Clearing a bit (other than by writing 0) is ignored.
        wr(&mut t, REG_STATUS, STATUS_DRIVER);
        assert_eq!(rd(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        assert!(fake.lock().unwrap().activated.is_none());
        // FAILED is accepted any time.
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED,
        );
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_FAILED, 0);
    }

    #[test]
    fn features_not_offered_are_refused() {
        let (mut t, _) = setup();
        negotiate(&mut t, VERSION_1 | (1 << 3));
        assert_eq!(rd(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // Without VERSION_1.
        wr(&mut t, REG_STATUS, 0);
        negotiate(&mut t, 1);
        assert_eq!(rd(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // The driver may retry with a good set.
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn invalid_queue_sets_needs_reset() {
        // Rings outside guest memory.
        let (mut t, fake) = setup();
        negotiate(&mut t, VERSION_1);
        setup_queue(&mut t, 0, 16, 0x1000, 0x2000, 0x10_0000_0000);
        wr(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(rd(&mut t, REG_STATUS), ALL_OK | STATUS_NEEDS_RESET);
        assert!(!t.is_activated());
        assert!(fake.lock().unwrap().activated.is_none());
        // The driver was told through a config interrupt.
        assert_ne!(rd(&mut t, REG_INTERRUPT_STATUS) & 2, 0);
        // Reset clears it; a good setup then works.
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
        negotiate(&mut t, VERSION_1);
        setup_queue(&mut t, 0, 16, 0x1000, 0x2000, 0x3000);
        wr(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(rd(&mut t, REG_STATUS), ALL_OK);

        // A misaligned ring or a bad size.
        for (size, desc) in [(16, 0x1008), (3, 0x1000), (32, 0x1000), (0x10010, 0x1000)] {
            let (mut t, _) = setup();
            negotiate(&mut t, VERSION_1);
            setup_queue(&mut t, 0, size, desc, 0x2000, 0x3000);
            wr(&mut t, REG_STATUS, ALL_OK);
            assert_eq!(
                rd(&mut t, REG_STATUS),
                ALL_OK | STATUS_NEEDS_RESET,
                "size {size} desc {desc:#x}"
            );
        }
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, _) = setup();
        let irq = t.irq_event().try_clone().unwrap();
        t.interrupt().trigger(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.read().unwrap(), 1);
        t.interrupt().trigger(2);
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 3);
        wr(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 2);
        wr(&mut t, REG_INTERRUPT_ACK, 2);
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn queue_notify_signals_the_queue_event() {
        let (mut t, fake) = setup();
        assert_eq!(t.queue_events().len(), 2);
        wr(&mut t, REG_QUEUE_NOTIFY, 1);
        let f = fake.lock().unwrap();
        assert!(f.queue_events()[0].read().is_err());
        assert_eq!(f.queue_events()[1].read().unwrap(), 1);
        drop(f);
        // Out of range: ignored.
        wr(&mut t, REG_QUEUE_NOTIFY, 7);
    }
}
