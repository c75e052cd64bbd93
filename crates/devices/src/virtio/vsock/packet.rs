//! The virtio-vsock packet header (virtio 1.2, 5.10.6): its layout, its fields, and the checks a
//! header from the guest must pass before the device acts on it.

use super::{
    HOST_CID, MAX_PKT_LEN, VSOCK_FLAGS_SHUTDOWN_ALL, VSOCK_OP_CREDIT_REQUEST,
    VSOCK_OP_CREDIT_UPDATE, VSOCK_OP_REQUEST, VSOCK_OP_RESPONSE, VSOCK_OP_RST, VSOCK_OP_RW,
    VSOCK_OP_SHUTDOWN, VSOCK_TYPE_STREAM,
};

/// The size of `struct virtio_vsock_hdr` (packed, little endian).
pub const HDR_LEN: usize = 44;

/// `struct virtio_vsock_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// The sender's CID.
    pub src_cid: u64,
    /// The receiver's CID.
    pub dst_cid: u64,
    /// The sender's port.
    pub src_port: u32,
    /// The receiver's port.
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Socket type (1: stream).
    pub type_: u16,
    /// Operation (`VSOCK_OP_*`).
    pub op: u16,
    /// SHUTDOWN flags.
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed of what it received.
    pub fwd_cnt: u32,
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes a header.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A stream packet from the host (`local_port`) to the guest (`guest_cid`, `peer_port`),
    /// without payload or credit (the connection fills those in).
    pub fn to_guest(guest_cid: u64, local_port: u32, peer_port: u32, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: VSOCK_TYPE_STREAM,
            op,
            ..Header::default()
        }
    }
}

/// What is wrong with a header from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Dropped without an answer: it does not come from the guest's own address, or its
    /// length does not fit.
    Drop(String),
    /// Answered with a reset: well addressed, but not something the device does.
    Reset(String),
}

/// Checks a header the guest sent, whose chain holds `room` bytes of payload after it.
pub fn check(h: &Header, guest_cid: u64, room: usize) -> Result<(), Invalid> {
    if h.src_cid != guest_cid {
        return Err(Invalid::Drop(format!(
            "source CID {} is not the guest's ({guest_cid})",
            h.src_cid
        )));
    }
    let len = h.len as usize;
    if len > MAX_PKT_LEN || len > room {
        return Err(Invalid::Drop(format!(
            "payload of {len} bytes (the chain holds {room}, the limit is {MAX_PKT_LEN})"
        )));
    }
    if h.op == VSOCK_OP_RST {
        // Acted on (the connection closes), never answered.
        return Ok(());
    }
    if h.dst_cid != HOST_CID {
        return Err(Invalid::Reset(format!(
            "destination CID {} is not the host's",
            h.dst_cid
        )));
    }
    if h.type_ != VSOCK_TYPE_STREAM {
        return Err(Invalid::Reset(format!("socket type {}", h.type_)));
    }
    match h.op {
        VSOCK_OP_RW => Ok(()),
        VSOCK_OP_SHUTDOWN if h.flags & !VSOCK_FLAGS_SHUTDOWN_ALL == 0 => Ok(()),
        VSOCK_OP_REQUEST | VSOCK_OP_RESPONSE | VSOCK_OP_CREDIT_UPDATE | VSOCK_OP_CREDIT_REQUEST
            if h.flags == 0 =>
        {
            Ok(())
        }
        VSOCK_OP_SHUTDOWN
        | VSOCK_OP_REQUEST
        | VSOCK_OP_RESPONSE
        | VSOCK_OP_CREDIT_UPDATE
        | VSOCK_OP_CREDIT_REQUEST => Err(Invalid::Reset(format!(
            "op {} with flags {:#x}",
            h.op, h.flags
        ))),
        op => Err(Invalid::Reset(format!("unknown op {op}"))),
    }
}
