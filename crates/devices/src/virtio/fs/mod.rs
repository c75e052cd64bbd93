//! virtio-fs (device type 26): a host directory shared with the guest, which mounts it by its tag
//! (`mount -t virtiofs TAG DIR`). The guest's driver speaks FUSE over the queues; this device
//! does not interpret the file operations: it passes each request to a server process (the
//! `share` crate: a passthrough file system, confined to the directory) and each reply back.
//!
//! * `device.rs`: [`Fs`], the [`VirtioDevice`] side: config space (tag, one request queue), the
//!   queues, requests out and replies in;
//! * `event_handler.rs`: the event-loop side (queue notifications, the server's socket);
//! * `persist.rs`: the saved state (refused on restore: the server's open files are not saved);
//! * `wire.rs`: the framing on the socket between the device and its server.
//!
//! The device trusts neither side: a guest request is framed with the length of what the guest
//! really posted and a FUSE `unique` of the device's own (the guest's is put back in the reply),
//! and a reply is checked against the request it answers (its length against the buffers the
//! guest posted for it). A server that breaks the framing, or ends, fails every request in flight
//! and every later one with EIO: the guest sees I/O errors, never a hang.
//!
//! [`VirtioDevice`]: super::VirtioDevice

mod device;
mod event_handler;
mod persist;
pub mod seccomp;
pub mod wire;

pub use device::{Fs, FsStats};
pub use persist::FsState;

/// `VIRTIO_ID_FS`.
pub const VIRTIO_ID_FS: u32 = 26;
/// The size of each queue: with the FUSE headers, the driver fits requests of up to this many
/// pages in a chain.
pub const QUEUE_SIZE: u16 = 256;
/// FORGET and INTERRUPT requests, which get no reply.
pub const HIPRIO_QUEUE: usize = 0;
/// Every other request.
pub const REQUEST_QUEUE: usize = 1;
/// The longest tag (the config space's `tag` field; NUL-padded when shorter).
pub const TAG_LEN: usize = 36;

#[cfg(test)]
mod tests;
