//! virtio: the virtio-mmio (version 2) transport and the devices behind it, one folder each.
//!
//! The transport ([`MmioTransport`]) owns the register file, the queue configuration and the
//! [`Interrupt`]; on `DRIVER_OK` it hands the device the guest memory, the interrupt and its
//! configured queues ([`VirtioDevice::activate`]). The device owns one `EventFd` per queue
//! from birth, so it can subscribe to them on the event loop before the driver shows up; the
//! transport keeps duplicates of them for the VM (KVM ioeventfds) and for plain MMIO writes
//! to QueueNotify.
//!
//! What every device has (features, queues and their `EventFd`s, the activation, the fail-once
//! path, the queue-drain loop) is in [`VirtioCore`]; a device folder holds only what is its own:
//! `device.rs` (the device and its [`VirtioDevice`] hooks), `event_handler.rs` (the event-loop
//! side), `persist.rs` (its saved state), plus its own parts (request parsing, the tap, ...).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use log::warn;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, GuestMemoryMmap};

/// Writes [`VirtioDevice::core`] and [`VirtioDevice::core_mut`] inside a device's
/// `impl VirtioDevice`, for a device whose [`VirtioCore`] is the field named `$field`.
macro_rules! core_accessors {
    ($field:tt) => {
        fn core(&self) -> &$crate::virtio::VirtioCore {
            &self.$field
        }

        fn core_mut(&mut self) -> &mut $crate::virtio::VirtioCore {
            &mut self.$field
        }
    };
}
pub(crate) use core_accessors;

pub mod block;
pub(crate) mod buffers;
pub mod console;
mod core;
pub mod fs;
mod mmio;
pub mod net;
pub(crate) mod persist;
pub mod seccomp;
pub mod vsock;

pub use self::core::{Active, Chain, Drained, Step, VirtioCore};
pub use mmio::MmioTransport;
pub use persist::{CoreState, MmioState, QueuePosition, QueueRegisters};

/// Size of one virtio-mmio slot.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register: the VM registers each queue's `EventFd` as an
/// ioeventfd at `base + NOTIFY_REG_OFFSET` with datamatch = queue index (u32).
pub const NOTIFY_REG_OFFSET: u64 = 0x50;

pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
pub use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// A virtio device model, independent of the transport.
///
/// A device implements [`VirtioDevice::core`] and [`VirtioDevice::core_mut`] (the
/// `core_accessors!` macro writes them); the hooks have defaults, the rest comes from its
/// [`VirtioCore`].
pub trait VirtioDevice: Send {
    /// The state every device shares.
    fn core(&self) -> &VirtioCore;
    /// The state every device shares.
    fn core_mut(&mut self) -> &mut VirtioCore;

    /// Reads the device-specific configuration space. Bytes beyond its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(self.core().config_space(), offset, data);
    }

    /// Writes the device-specific configuration space (by default read-only: ignored).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.core().ignore_config_write(offset, data.len());
    }
    /// Device-specific set-up at DRIVER_OK, before the core is activated, with the features
    /// the driver accepted; an error refuses the activation.
    fn on_activate(&mut self, _acked_features: u64) -> Result<(), Error> {
        Ok(())
    }
    /// Device-specific part of a reset, after the core's.
    fn on_reset(&mut self) {}

    /// The virtio device type (1 = net, 2 = block, 3 = console, ...).
    fn device_type(&self) -> u32 {
        self.core().device_type()
    }
    /// The maximum size of each queue, in queue order (a power of two, at most 32768).
    fn queue_max_sizes(&self) -> &[u16] {
        self.core().queue_max_sizes()
    }
    /// The feature bits the device offers.
    fn avail_features(&self) -> u64 {
        self.core().avail_features()
    }
    /// One `EventFd` per queue, in queue order, signalled when the driver notifies it.
    fn queue_events(&self) -> &[EventFd] {
        self.core().queue_events()
    }
    /// Starts the device when the driver sets DRIVER_OK.
    ///
    /// `queues` has one entry per queue, configured and checked by the transport (queues the
    /// driver did not make ready are passed as they are, not ready); `acked_features` is what
    /// the driver accepted, a subset of [`VirtioDevice::avail_features`].
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), Error> {
        self.on_activate(acked_features)?;
        self.core_mut()
            .activate(mem, interrupt, queues, acked_features)
    }
    /// Stops the device and drops what `activate` gave it (the driver wrote 0 to Status).
    fn reset(&mut self) {
        self.core_mut().reset();
        self.on_reset();
    }
}

/// The interrupt state shared by a transport and its device.
///
/// The device raises an interrupt by setting a bit in the status word and signalling the
/// irqfd `EventFd`; the driver reads InterruptStatus and clears bits with InterruptACK.
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irq: EventFd,
}

impl Interrupt {
    /// A new interrupt with its irqfd `EventFd`.
    pub fn new() -> Result<Self, Error> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|error| Error::EventFd {
            what: "virtio interrupt",
            error,
        })?;
        Ok(Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq,
        })
    }

    /// Sets `bits` in the interrupt status and signals the irqfd.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            warn!("virtio: cannot signal interrupt: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The device failed: sets DEVICE_NEEDS_RESET in the device status and notifies the
    /// driver with a configuration-change interrupt.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.trigger(VIRTIO_MMIO_INT_CONFIG);
    }

    /// Whether the device has asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The irqfd `EventFd`.
    pub fn irq_event(&self) -> &EventFd {
        &self.irq
    }

    /// Puts back a saved InterruptStatus and DEVICE_NEEDS_RESET (no irqfd signal: the
    /// interrupt controller's own state says whether the line is pending).
    pub(crate) fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Back to the power-on state (device reset).
    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// A device's failures (the driver broke the queue protocol) over its whole life, resets
/// included: a guest that fails the device, resets it and fails it again in a loop gets one
/// error line, not one per round.
#[derive(Default)]
pub(crate) struct FailureLog {
    count: u64,
}

impl FailureLog {
    /// Logs failure `why` of `device`: the first at error level, later ones at debug level.
    pub(crate) fn record(&mut self, device: &str, why: &str) {
        self.count += 1;
        if self.count == 1 {
            log::error!("{device}: {why}; device needs reset (later failures at debug level)");
        } else {
            log::debug!(
                "{device}: {why}; device needs reset (failure {})",
                self.count
            );
        }
    }

    /// How many failures were recorded.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.count
    }
}

/// Copies `data.len()` bytes of a device's config space from `offset`; bytes past its end read as 0
/// (a guest may read any offset and width).
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
