//! virtio-vsock (device type 19): stream sockets between the guest and host programs, over host
//! Unix sockets, in the scheme Firecracker documents.
//!
//! * `device.rs`: [`Vsock`], the [`VirtioDevice`] side, the transmit and receive queues;
//! * `event_handler.rs`: the event-loop side (queue notifications, the listening socket, each
//!   connection's host socket);
//! * `persist.rs`: the saved state (the queues; connections are not saved);
//! * `packet.rs`: the packet header and the checks a guest's header must pass;
//! * `muxer.rs`: the connections, keyed by (host port, guest port), and the packets owed to the
//!   guest; `connection.rs`: one connection's state and credit;
//! * `unix.rs`: the host sockets (the listener at PATH, connecting to `PATH_<port>`).
//!
//! Host to guest: a program connects to PATH, writes `CONNECT <port>\n`, and once the guest
//! accepts reads `OK <host port>\n`; then the socket is a byte stream to the guest's listener.
//! Guest to host: a connection to CID 2, port P, is a connection to the Unix socket `PATH_P`.
//!
//! Flow control is the credit scheme of the specification both ways: the device reads a host
//! socket only while the guest has credit and a receive buffer (straight into that buffer), and
//! holds at most [`CONN_BUF`] bytes of guest output per connection; a guest that sends beyond its
//! credit finds the transmit queue stopped until the host socket takes the bytes. No byte is
//! dropped while both ends live.
//!
//! [`VirtioDevice`]: super::VirtioDevice

mod connection;
mod device;
mod event_handler;
mod muxer;
pub mod packet;
mod persist;
pub mod seccomp;
mod unix;

pub use device::Vsock;
pub use persist::VsockState;

pub use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Packets to the guest.
pub const RX_QUEUE: usize = 0;
/// Packets from the guest.
pub const TX_QUEUE: usize = 1;
/// Events to the guest (the device sends none).
pub const EVENT_QUEUE: usize = 2;
/// The event the device sends when the guest's connections are gone (after a restore).
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The largest payload of one packet, either way.
pub const MAX_PKT_LEN: usize = 64 << 10;
/// Guest output the device holds per connection at most (its `buf_alloc`).
pub const CONN_BUF: u32 = 64 << 10;
/// Connections (and host programs that have not yet said where to) at once; beyond, a guest
/// request is reset and a host program is closed.
pub const MAX_CONNS: usize = 1024;
/// The first port handed to host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;
/// The longest `CONNECT <port>\n` line.
pub const CONNECT_LINE_MAX: usize = 32;
/// How long a host program has to send its whole `CONNECT <port>\n` line; then it is closed and
/// its slot among the [`MAX_CONNS`] freed.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `VIRTIO_VSOCK_TYPE_STREAM`.
pub const VSOCK_TYPE_STREAM: u16 = 1;
/// Packet operations (`VIRTIO_VSOCK_OP_*`).
pub const VSOCK_OP_REQUEST: u16 = 1;
/// The connection is accepted.
pub const VSOCK_OP_RESPONSE: u16 = 2;
/// The connection is reset (or refused).
pub const VSOCK_OP_RST: u16 = 3;
/// The sender stops receiving and/or sending (flags).
pub const VSOCK_OP_SHUTDOWN: u16 = 4;
/// Payload.
pub const VSOCK_OP_RW: u16 = 5;
/// The sender's credit (`buf_alloc`, `fwd_cnt`).
pub const VSOCK_OP_CREDIT_UPDATE: u16 = 6;
/// Asks the peer for a credit update.
pub const VSOCK_OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flag: the sender receives no more.
pub const VSOCK_FLAGS_SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender sends no more.
pub const VSOCK_FLAGS_SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const VSOCK_FLAGS_SHUTDOWN_ALL: u32 = 3;

#[cfg(test)]
mod tests;
