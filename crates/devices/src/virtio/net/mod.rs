//! virtio-net (device type 1) over a tap device.
//!
//! * `device.rs`: [`Net`], the [`VirtioDevice`] side and the RX/TX queue processing;
//! * `tap.rs`: [`Tap`], opening a tap with a vnet header, offloads, frame I/O;
//! * `event_handler.rs`: the event-loop side (queue notifications, tap readiness);
//! * `persist.rs`: the saved state (RX chains held, the frame waiting for them).
//!
//! Queue 0 is RX (tap → guest), queue 1 is TX (guest → tap). Frames cross the tap with the
//! 12-byte `virtio_net_hdr_v1` in front, so the checksum and segmentation offloads the guest
//! negotiated pass through; a TX header is checked first against the negotiated features and the
//! frame (`check_tx_header`), and a frame whose header does not fit is dropped and counted.
//!
//! [`VirtioDevice`]: super::VirtioDevice

mod device;
mod event_handler;
mod persist;
pub mod seccomp;
mod tap;

pub use device::{Net, NetStats};
pub use persist::{HeldChain, NetState};

pub use tap::{Tap, MAX_NAME_LEN, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};

pub use virtio_bindings::virtio_ids::VIRTIO_ID_NET;

/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The RX queue's index.
pub const RX_QUEUE: usize = 0;
/// The TX queue's index.
pub const TX_QUEUE: usize = 1;
/// Length of `virtio_net_hdr_v1` (with `num_buffers`), what VERSION_1 devices always use.
pub const VNET_HDR_LEN: usize =
    std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>();
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Largest frame the device moves: a 64 KiB TSO/GSO frame plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65550;
/// Room for one frame with its header, the size of the RX bounce buffer.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

pub use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};
pub use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
};

/// How to build one NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap device on the host.
    pub tap: String,
    /// The guest's MAC address; by default [`mac_from_name`] of the tap name.
    pub mac: Option<[u8; 6]>,
    /// Create the tap if it does not exist (TUNSETIFF), and bring it up.
    pub create: bool,
}

/// A stable, locally administered unicast MAC address derived from `name` (FNV-1a): the same tap
/// name gives the same guest MAC on every boot.
pub fn mac_from_name(name: &str) -> [u8; 6] {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let b = hash.to_le_bytes();
    // Locally administered (bit 1 set), unicast (bit 0 clear).
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests;
