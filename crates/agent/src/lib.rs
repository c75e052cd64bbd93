//! The wire protocol between vmm's guest agent (`vmm-agent`, this crate's binary) and the host.
//!
//! The protocol is written down in PROTOCOL.md beside this crate's Cargo.toml. In short: one
//! request per vsock connection; every message is a frame (a little-endian `u32` length, a kind
//! byte, a body); control messages are JSON, data travels as raw bytes in DATA frames of at most
//! [`MAX_DATA`] bytes. Both ends refuse a frame longer than [`MAX_FRAME`] before allocating it.

mod protocol;

pub use protocol::*;
