//! An embeddable KVM virtual machine for x86_64 Linux guests.
//!
//! Build a [`VmConfig`], hand it to [`Vm::new`], then [`Vm::run`] it until the guest resets or powers off:
//!
//! ```no_run
//! use vm::{ExitReason, Vm, VmConfig, DiskConfig};
//!
//! let mut config = VmConfig::new("vmlinux");
//! config.vcpus = 2;
//! config.memory_bytes = 256 << 20;
//! config.disks.push("rootfs.ext4".parse::<DiskConfig>()?);
//! let reason: ExitReason = Vm::new(config)?.run()?;
//! println!("guest stopped: {reason:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The boot sequence and the thread model are described in DESIGN.md at the repository's top.

pub mod api;
mod config;
mod device_manager;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod kernel;
mod kvm;
mod kvm_nr;
mod memory;
mod quirks;
pub mod seccomp;
mod snapshot;
mod start;
mod vcpu;
mod vm;

pub use config::{
    name_shares, parse_memory_size, BucketConfig, CharBackend, DiskConfig, FileOptions, Initrd,
    IrqChip, NetConfig, ParseError, RateLimitConfig, SerialOutput, ShareConfig, SocketFile,
    VmConfig, VsockConfig, DEFAULT_CMDLINE, DEFAULT_CONSOLE_CMDLINE, DEFAULT_FILE_MAX,
    DEFAULT_MEMORY_BYTES, DEFAULT_SHUTDOWN_TIMEOUT, ROOT_SHARE_TAG, VSOCK_MAX_CONNS,
};
/// The most bytes a disk image file may come to hold while the guest writes it (a qcow2 image
/// grows; a raw one does not): what a jail's RLIMIT_FSIZE must allow.
pub use devices::virtio::block::growth_bound as disk_growth_bound;
pub use devices::Error as DeviceError;
pub use error::{Error, Result};
pub use seccomp::SeccompMode;
pub use snapshot::{Machine, Snapshot, VMM_VERSION};
pub use start::{mark_process_start, process_start};
pub use vm::{ShutdownRequest, Vm};

/// Why a guest stopped running without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 reset line, the ACPI reset register, or a KVM reset
    /// event).
    Reset,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN): a real machine resets, but no working guest
    /// does this on purpose, so it is reported as a crash.
    TripleFault,
    /// The guest powered off (ACPI sleep state S5, or a KVM shutdown event).
    PowerOff,
    /// The guest kernel reported a panic through pvpanic.
    Panic,
    /// The guest wrote this status to the exit device (`arch::layout::EXIT_DEVICE_PORT`).
    GuestStatus(u8),
    /// The host stopped the VM: a [`ShutdownRequest`] that the guest did not answer by powering
    /// off within [`VmConfig::shutdown_timeout`], a second request, or a request to a VM without
    /// ACPI (which has no power button).
    Stopped,
}
