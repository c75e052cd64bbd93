//! The host side of vmm's guest agent.
//!
//! * [`vsock`]: connecting to a guest port through vmm's vsock socket (`CONNECT <port>`);
//! * [`Agent`]: the agent client (run a command, write or read a file, shut the guest down);
//! * [`initramfs`]: the initramfs that carries the agent into a guest, built in memory;
//! * [`Sandbox`]: a VM booted with that initramfs, its agent ready (what `vmm run` and
//!   `examples/sandbox.rs` use).
//!
//! [`AGENT_BINARY`] is the agent itself, built static by this crate's build script.

mod client;
pub mod initramfs;
mod sandbox;
mod text;
pub mod vsock;

pub use agent::{Exec, Hello};
pub use client::{Agent, ClientError, CommandStatus, ExecIo, Output};
pub use sandbox::{describe, port_path, Sandbox, SandboxError};
pub use text::{printable, MAX_GUEST_TEXT};

/// The guest agent (`vmm-agent`), a static x86_64 Linux executable.
pub const AGENT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmm-agent"));
