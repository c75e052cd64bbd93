//! The framing between the virtio-fs device and its server, over a Unix stream socket.
//!
//! Device to server: a [`RequestFrame`] header, then the FUSE request, whose in-header (`len`,
//! `unique`) the device has rewritten. Server to device: the FUSE reply as is; its out-header's
//! `len` delimits it. The server writes at most [`RequestFrame::reply_room`] bytes: the room the
//! guest posted for the reply.

/// The FUSE in-header's size (`fuse_in_header`).
pub const IN_HEADER_LEN: usize = 40;
/// The FUSE out-header's size (`fuse_out_header`).
pub const OUT_HEADER_LEN: usize = 16;
/// The largest payload of a request or reply: 1 MiB of data (twice the reads and writes the
/// server agrees to at INIT), with room for the headers and a READDIRPLUS page's entries.
pub const MAX_PAYLOAD: usize = (1 << 20) + 4096;
/// `FUSE_FORGET` and `FUSE_BATCH_FORGET`: no reply.
pub const OP_FORGET: u32 = 2;
/// See [`OP_FORGET`].
pub const OP_BATCH_FORGET: u32 = 42;
/// `FUSE_INTERRUPT`: no reply on virtio-fs (the device serves requests in order).
pub const OP_INTERRUPT: u32 = 36;

/// What precedes each request on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFrame {
    /// The request's length in bytes (its in-header included).
    pub len: u32,
    /// The room for the reply, in bytes.
    pub reply_room: u32,
}

impl RequestFrame {
    /// The frame header's size.
    pub const LEN: usize = 8;

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0; Self::LEN];
        b[..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..].copy_from_slice(&self.reply_room.to_le_bytes());
        b
    }

    /// Reads a header.
    pub fn from_bytes(b: [u8; Self::LEN]) -> Self {
        RequestFrame {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            reply_room: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Whether a request with `opcode` gets a reply.
pub fn expects_reply(opcode: u32) -> bool {
    !matches!(opcode, OP_FORGET | OP_BATCH_FORGET | OP_INTERRUPT)
}

/// The bytes of an error reply (`-errno`) to request `unique`.
pub fn error_reply(unique: u64, errno: i32) -> [u8; OUT_HEADER_LEN] {
    let mut b = [0; OUT_HEADER_LEN];
    b[..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_le_bytes());
    b[4..8].copy_from_slice(&(-errno).to_le_bytes());
    b[8..].copy_from_slice(&unique.to_le_bytes());
    b
}
