//! Saved state of the virtio-mmio transport ([`MmioState`]) and of the core every device has
//! ([`CoreState`]); each device folder's `persist.rs` adds what is its own.
//!
//! Restore order: the transport first ([`MmioTransport`]'s restore re-activates the device
//! when the saved transport was activated, with the queues as the driver configured them),
//! then the device, whose core puts back each queue's position.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::{MmioTransport, VirtioCore};
use crate::persist::{Persist, PersistError};

/// Where the device is in one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePosition {
    /// The next available-ring entry the device reads.
    pub next_avail: u16,
    /// The next used-ring entry the device writes.
    pub next_used: u16,
    /// Whether EVENT_IDX notification suppression is on.
    pub event_idx: bool,
}

/// The state every virtio device shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreState {
    /// Whether the driver had started the device.
    pub activated: bool,
    /// The features the driver accepted (0 when not activated).
    pub acked_features: u64,
    /// The device had failed and waits for a reset.
    pub failed: bool,
    /// One per queue when activated, else empty.
    pub queues: Vec<QueuePosition>,
}

impl CoreState {
    /// Checks that every queue's chains taken and not yet returned (`next_avail - next_used`)
    /// are the `held[q]` the device's own state holds: chains are returned in the order they
    /// were taken, and a device holds none but those. A failed device is exempt (the chain it
    /// failed on was taken and never returned; nothing is served until a reset).
    pub(crate) fn check_held(
        &self,
        device: &'static str,
        held: &[usize],
    ) -> Result<(), PersistError> {
        if self.failed {
            return Ok(());
        }
        for (q, (pos, &n)) in self.queues.iter().zip(held).enumerate() {
            let taken = pos.next_avail.wrapping_sub(pos.next_used);
            if usize::from(taken) != n {
                return Err(PersistError::Mismatch {
                    device,
                    why: format!(
                        "queue {q}: {taken} chains taken and not returned, the device holds {n}"
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Persist for VirtioCore {
    const NAME: &'static str = "virtio";
    const STATE_VERSION: u16 = 1;
    type State = CoreState;

    fn save(&self) -> CoreState {
        let active = self.active.as_ref();
        CoreState {
            activated: active.is_some(),
            acked_features: active.map_or(0, |a| a.acked_features),
            failed: self.failed,
            queues: active.map_or_else(Vec::new, |a| {
                a.queues
                    .iter()
                    .map(|q| QueuePosition {
                        next_avail: q.next_avail(),
                        next_used: q.next_used(),
                        event_idx: q.event_idx_enabled(),
                    })
                    .collect()
            }),
        }
    }

    fn restore(&mut self, state: CoreState) -> Result<(), PersistError> {
        let mismatch = |why: String| PersistError::Mismatch {
            device: Self::NAME,
            why,
        };
        let name = self.name().to_string();
        match (&mut self.active, state.activated) {
            (None, false) => {
                if state.failed {
                    return Err(mismatch(format!("{name}: failed, but never activated")));
                }
            }
            (Some(active), true) => {
                // Failing asks the driver for a reset; the transport's state says whether it did.
                if state.failed && !active.interrupt.needs_reset() {
                    return Err(mismatch(format!(
                        "{name}: failed, but the transport shows no DEVICE_NEEDS_RESET"
                    )));
                }
                if active.acked_features != state.acked_features {
                    return Err(mismatch(format!(
                        "{}: saved features {:#x}, the transport activated it with {:#x}",
                        name, state.acked_features, active.acked_features
                    )));
                }
                if active.queues.len() != state.queues.len() {
                    return Err(mismatch(format!(
                        "{}: {} queues saved, the device has {}",
                        name,
                        state.queues.len(),
                        active.queues.len()
                    )));
                }
                let event_idx = active.acked_features & (1 << super::VIRTIO_RING_F_EVENT_IDX) != 0;
                if let Some(q) = state.queues.iter().position(|p| p.event_idx != event_idx) {
                    return Err(mismatch(format!(
                        "{name}: queue {q}: EVENT_IDX {}, the driver {} it",
                        if event_idx { "off" } else { "on" },
                        if event_idx {
                            "accepted"
                        } else {
                            "did not accept"
                        }
                    )));
                }
                for (queue, pos) in active.queues.iter_mut().zip(&state.queues) {
                    queue.set_next_avail(pos.next_avail);
                    queue.set_next_used(pos.next_used);
                    queue.set_event_idx(pos.event_idx);
                }
            }
            (active, saved) => {
                return Err(mismatch(format!(
                    "{}: saved {}activated, the device is {}activated (restore the transport first)",
                    name,
                    if saved { "" } else { "not " },
                    if active.is_some() { "" } else { "not " }
                )));
            }
        }
        self.failed = state.failed;
        Ok(())
    }
}

/// One queue's registers as the driver wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegisters {
    /// QueueNum.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// QueueDesc.
    pub desc_table: u64,
    /// QueueDriver (the available ring).
    pub avail_ring: u64,
    /// QueueDevice (the used ring).
    pub used_ring: u64,
    /// The driver wrote an invalid size or address (activation will be refused).
    pub bad_config: bool,
}

/// The virtio-mmio register file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// Status, without DEVICE_NEEDS_RESET (that is `needs_reset`).
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// DriverFeatures, both words.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// SHMSel.
    pub shm_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// The device asked for a reset.
    pub needs_reset: bool,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Whether DRIVER_OK was accepted and the device activated.
    pub activated: bool,
    /// One per queue.
    pub queues: Vec<QueueRegisters>,
}

impl Persist for MmioTransport {
    const NAME: &'static str = "virtio-mmio";
    const STATE_VERSION: u16 = 1;
    type State = MmioState;

    fn save(&self) -> MmioState {
        MmioState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            shm_sel: self.shm_sel,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            config_generation: 0,
            activated: self.activated,
            queues: self
                .queues
                .iter()
                .zip(&self.queue_bad_config)
                .map(|(q, &bad_config)| QueueRegisters {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    bad_config,
                })
                .collect(),
        }
    }

    /// Resets the transport (and the device), puts the registers back and, if the saved
    /// transport was activated, activates the device again. On error the transport is left
    /// reset.
    fn restore(&mut self, state: MmioState) -> Result<(), PersistError> {
        let mismatch = |why: String| PersistError::Mismatch {
            device: Self::NAME,
            why,
        };
        if state.queues.len() != self.queues.len() {
            return Err(mismatch(format!(
                "device type {}: {} queues saved, the device has {}",
                self.device_type,
                state.queues.len(),
                self.queues.len()
            )));
        }
        if state.acked_features & !self.avail_features != 0 {
            return Err(mismatch(format!(
                "device type {}: saved features {:#x} include some the device does not offer ({:#x})",
                self.device_type, state.acked_features, self.avail_features
            )));
        }
        if state.config_generation != 0 {
            return Err(mismatch(format!(
                "config generation {} (this device's never changes from 0)",
                state.config_generation
            )));
        }
        if let Some(why) = status_problem(&state) {
            return Err(mismatch(format!(
                "device type {}: status {:#x}: {why}",
                self.device_type, state.status
            )));
        }
        self.reset();
        for (i, (queue, regs)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            let set = queue
                .try_set_size(regs.size)
                .and_then(|()| queue.try_set_desc_table_address(GuestAddress(regs.desc_table)))
                .and_then(|()| queue.try_set_avail_ring_address(GuestAddress(regs.avail_ring)))
                .and_then(|()| queue.try_set_used_ring_address(GuestAddress(regs.used_ring)));
            if let Err(e) = set {
                if !regs.bad_config {
                    self.reset();
                    return Err(mismatch(format!("queue {i}: {e}")));
                }
            }
            queue.set_ready(regs.ready);
            self.queue_bad_config[i] = regs.bad_config;
        }
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features;
        self.queue_sel = state.queue_sel;
        self.shm_sel = state.shm_sel;
        if state.activated {
            if let Err(why) = self.activate() {
                self.reset();
                return Err(mismatch(format!("cannot activate the device again: {why}")));
            }
            self.activated = true;
        }
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        Ok(())
    }
}

/// Why a saved Status cannot be one the transport reached, if it cannot: bits are set in the
/// order ACKNOWLEDGE, DRIVER, FEATURES_OK (only with VERSION_1 accepted), DRIVER_OK; FAILED at any
/// time. DRIVER_OK activates the device unless FAILED is set or the device asked for a reset;
/// the device stays activated until Status is reset to 0.
fn status_problem(state: &MmioState) -> Option<&'static str> {
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRIVER,
        VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
        VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK,
    };
    let status = state.status;
    let has = |bit: u32| status & bit != 0;
    if status & !(ACK | DRIVER | FEATURES_OK | DRIVER_OK | FAILED) != 0 {
        return Some("bits the transport never sets");
    }
    if (has(DRIVER) && !has(ACK))
        || (has(FEATURES_OK) && !has(DRIVER))
        || (has(DRIVER_OK) && !has(FEATURES_OK))
    {
        return Some("a bit set without the one before it");
    }
    if has(FEATURES_OK) && state.acked_features & (1 << super::VIRTIO_F_VERSION_1) == 0 {
        return Some("FEATURES_OK without VIRTIO_F_VERSION_1");
    }
    if state.activated && !has(DRIVER_OK) {
        return Some("activated without DRIVER_OK");
    }
    if has(DRIVER_OK) && !state.activated && !has(FAILED) && !state.needs_reset {
        return Some("DRIVER_OK, not activated, and no failure or reset request");
    }
    None
}

#[cfg(test)]
pub(crate) mod test_util {
    //! A minimal driver for persist tests: sets a device up through its transport, posts
    //! chains, reads the used rings.

    use std::sync::{Arc, Mutex};

    use vm_memory::{Bytes, GuestAddress};

    use crate::bus::BusDevice;
    use crate::virtio::{MmioTransport, VirtioDevice};
    use crate::GuestMemoryMmap;

    /// Queue size the driver configures.
    pub(crate) const SIZE: u16 = 16;
    /// Where the data buffers go.
    pub(crate) const DATA: u64 = 0x8_0000;

    fn desc_table(q: usize) -> u64 {
        0x1000 + q as u64 * 0x3000
    }

    /// A driver of one device.
    pub(crate) struct Driver {
        pub(crate) mem: GuestMemoryMmap,
        pub(crate) transport: MmioTransport,
        /// Per queue: the next descriptor slot and the avail index.
        next: Vec<(u16, u16)>,
    }

    impl Driver {
        /// Guest memory, a transport for `device`, features `features` accepted, every queue
        /// ready with [`SIZE`] entries, DRIVER_OK.
        pub(crate) fn new<D: VirtioDevice + 'static>(
            device: Arc<Mutex<D>>,
            features: u64,
        ) -> Driver {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let queues = device.lock().unwrap().queue_max_sizes().len();
            let mut transport = MmioTransport::new(mem.clone(), device).unwrap();
            let mut wr = |offset: u64, value: u32| transport.write(offset, &value.to_le_bytes());
            wr(0x70, 1);
            wr(0x70, 3);
            wr(0x24, 0);
            wr(0x20, features as u32);
            wr(0x24, 1);
            wr(0x20, (features >> 32) as u32);
            wr(0x70, 0xb);
            for q in 0..queues {
                let desc = desc_table(q);
                wr(0x30, q as u32);
                wr(0x38, u32::from(SIZE));
                wr(0x80, desc as u32);
                wr(0x90, (desc + 0x1000) as u32);
                wr(0xa0, (desc + 0x2000) as u32);
                wr(0x44, 1);
            }
            wr(0x70, 0xf);
            assert!(transport.is_activated());
            Driver {
                mem,
                transport,
                next: vec![(0, 0); queues],
            }
        }

        /// Posts one chain of `(address, length, device-writable)` buffers on queue `q`.
        pub(crate) fn post(&mut self, q: usize, bufs: &[(u64, u32, bool)]) {
            let (slot, avail) = &mut self.next[q];
            let head = *slot;
            let table = desc_table(q);
            for (i, &(addr, len, write)) in bufs.iter().enumerate() {
                let at = GuestAddress(table + u64::from(*slot) * 16);
                let last = i + 1 == bufs.len();
                let flags: u16 = if last { 0 } else { 1 } | if write { 2 } else { 0 };
                let next = (*slot + 1) % SIZE;
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&next.to_le_bytes());
                self.mem.write_slice(&d, at).unwrap();
                *slot = next;
            }
            let ring = table + 0x1000;
            let entry = GuestAddress(ring + 4 + u64::from(*avail % SIZE) * 2);
            self.mem.write_obj(head, entry).unwrap();
            *avail = avail.wrapping_add(1);
            self.mem.write_obj(*avail, GuestAddress(ring + 2)).unwrap();
        }

        /// Queue `q`'s used index.
        pub(crate) fn used_idx(&self, q: usize) -> u16 {
            self.mem
                .read_obj(GuestAddress(desc_table(q) + 0x2000 + 2))
                .unwrap()
        }

        /// Queue `q`'s used element `i`: (head, length).
        pub(crate) fn used(&self, q: usize, i: u16) -> (u32, u32) {
            let at = desc_table(q) + 0x2000 + 4 + u64::from(i % SIZE) * 8;
            (
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::test_util::Driver;
    use super::*;
    use crate::persist::test_util::round_trip;
    use crate::virtio::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
    use crate::GuestMemoryMmap;

    /// A device with two queues and nothing of its own.
    struct Bare(VirtioCore);

    impl VirtioDevice for Bare {
        crate::virtio::core_accessors!(0);
    }

    const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);

    fn bare() -> Arc<Mutex<Bare>> {
        let core = VirtioCore::new("bare", 42, FEATURES, &[16, 16], vec![]).unwrap();
        Arc::new(Mutex::new(Bare(core)))
    }

    fn fresh_transport(mem: &GuestMemoryMmap) -> (MmioTransport, Arc<Mutex<Bare>>) {
        let dev = bare();
        (MmioTransport::new(mem.clone(), dev.clone()).unwrap(), dev)
    }

    #[test]
    fn a_fresh_transport_and_core_round_trip() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let (t, dev) = fresh_transport(&mem);
        let (mut t2, dev2) = fresh_transport(&mem);
        let saved = round_trip(&t, &mut t2);
        assert!(!saved.activated);
        assert_eq!(saved.queues.len(), 2);
        let core = round_trip(&dev.lock().unwrap().0, &mut dev2.lock().unwrap().0);
        assert!(!core.activated && core.queues.is_empty());
    }

    #[test]
    fn an_activated_device_is_restored_where_it_was() {
        let dev = bare();
        let mut driver = Driver::new(dev.clone(), FEATURES);
        // The device served three chains on queue 1 and one on queue 0.
        for _ in 0..3 {
            driver.post(1, &[(0x8_0000, 8, false)]);
        }
        driver.post(0, &[(0x8_0000, 8, true)]);
        {
            let mut d = dev.lock().unwrap();
            for q in [1, 1, 1, 0] {
                d.0.pop(q, |_| ()).unwrap();
            }
            d.0.add_used(1, 0, 0);
        }
        driver.transport.interrupt().trigger(1);

        let (mut t2, dev2) = fresh_transport(&driver.mem);
        let regs = round_trip(&driver.transport, &mut t2);
        assert!(regs.activated && t2.is_activated());
        assert_eq!(regs.interrupt_status, 1);
        assert_eq!(regs.queues[1].size, 16);
        let core = round_trip(&dev.lock().unwrap().0, &mut dev2.lock().unwrap().0);
        assert_eq!(core.acked_features, FEATURES);
        assert_eq!(
            core.queues[1],
            QueuePosition {
                next_avail: 3,
                next_used: 1,
                event_idx: true
            }
        );
        assert_eq!(core.queues[0].next_avail, 1);
        // The restored device goes on from there: the next chain is the fourth.
        driver.post(1, &[(0x8_0000, 8, false)]);
        let head = dev2.lock().unwrap().0.pop(1, |c| c.head_index());
        assert_eq!(head, Some(3));
    }

    #[test]
    fn a_state_that_does_not_fit_is_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let (t, _) = fresh_transport(&mem);
        let mut state = t.save();
        state.queues.pop();
        let (mut t2, dev2) = fresh_transport(&mem);
        assert!(t2.restore(state).is_err());
        let mut state = t.save();
        state.acked_features = 1 << 3;
        assert!(t2.restore(state).is_err());
        // An activated core state into a device that is not activated.
        let core = CoreState {
            activated: true,
            acked_features: FEATURES,
            failed: false,
            queues: vec![],
        };
        assert!(dev2.lock().unwrap().0.restore(core).is_err());
    }

    /// The transport turns EVENT_IDX on in the queues exactly when the driver accepted it; a
    /// saved queue that says otherwise would have the device read a `used_event` the driver
    /// does not write (or not write the `avail_event` it reads) and the driver would wait for
    /// ever.
    #[test]
    fn event_idx_against_the_accepted_features_is_refused() {
        let dev = bare();
        let driver = Driver::new(dev.clone(), FEATURES);
        let mut state = dev.lock().unwrap().0.save();
        state.queues[1].event_idx = false;
        assert!(dev.lock().unwrap().0.restore(state).is_err());
        drop(driver);

        let dev = bare();
        let _driver = Driver::new(dev.clone(), 1 << VIRTIO_F_VERSION_1);
        let mut state = dev.lock().unwrap().0.save();
        state.queues[0].event_idx = true;
        assert!(dev.lock().unwrap().0.restore(state).is_err());
    }

    /// `activated` and Status must agree: an activated transport whose Status lacks DRIVER_OK
    /// would let the driver rewrite the queue registers and set DRIVER_OK again, activating the
    /// running device a second time without a reset; unknown Status bits cannot be set either.
    #[test]
    fn a_status_that_disagrees_with_the_activation_is_refused() {
        let dev = bare();
        let driver = Driver::new(dev.clone(), FEATURES);
        let good = driver.transport.save();
        assert_eq!(good.status, 0xf);
        let (mut t2, _dev2) = fresh_transport(&driver.mem);
        let mut bad = Vec::new();
        let mut s = good.clone();
        s.status = 0xb;
        bad.push(s);
        let mut s = good.clone();
        s.status = 0;
        bad.push(s);
        let mut s = good.clone();
        s.status |= 0x10;
        bad.push(s);
        for state in bad {
            let status = state.status;
            assert!(t2.restore(state).is_err(), "status {status:#x}");
            assert!(!t2.is_activated());
        }
        t2.restore(good).unwrap();
        assert!(t2.is_activated());
    }

    /// A failed device has asked for a reset (DEVICE_NEEDS_RESET): one saved as failed while
    /// its transport says no reset was asked for would serve nothing and the driver would never
    /// learn why.
    #[test]
    fn a_failure_the_driver_was_not_told_of_is_refused() {
        let dev = bare();
        let driver = Driver::new(dev.clone(), FEATURES);
        assert!(!driver.transport.interrupt().needs_reset());
        let mut state = dev.lock().unwrap().0.save();
        state.failed = true;
        assert!(dev.lock().unwrap().0.restore(state.clone()).is_err());
        // Not activated: nothing can have failed.
        let idle = bare();
        let mut state = idle.lock().unwrap().0.save();
        state.failed = true;
        assert!(idle.lock().unwrap().0.restore(state).is_err());
    }
}
