//! virtio-console (device type 3): one port (no MULTIPORT) on a [`Chardev`] backend.
//!
//! * `device.rs`: [`Console`], the [`VirtioDevice`] side, the transmit and receive paths;
//! * `event_handler.rs`: the event-loop side (queue notifications, the backend's events,
//!   terminal resizes);
//! * `persist.rs`: the saved state (output and input in flight);
//! * `resize.rs`: following the terminal's size.
//!
//! Output from the guest is never dropped while the backend has a reader: when the backend
//! cannot take more, the device stops taking chains from the transmit queue and resumes when
//! the backend is writable again. Host input goes into receive-queue buffers; while the guest
//! has none posted, the device does not read its input at all.
//!
//! [`Chardev`]: crate::chardev::Chardev
//! [`VirtioDevice`]: super::VirtioDevice

mod device;
mod event_handler;
mod persist;

mod resize;
pub mod seccomp;

pub use device::Console;
pub use persist::{ConsoleState, TxChainState};

pub use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;

/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// receiveq of port 0.
pub const RX_QUEUE: usize = 0;
/// transmitq of port 0.
pub const TX_QUEUE: usize = 1;

/// Feature bit: `cols` and `rows` in the config space are valid.
pub const VIRTIO_CONSOLE_F_SIZE: u32 = 0;

#[cfg(test)]
mod tests;
