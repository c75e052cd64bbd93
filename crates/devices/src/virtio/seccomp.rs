//! The system calls of the virtio-mmio transport ([`super::MmioTransport`]) once the guest runs;
//! each device's own are in its folder's `seccomp.rs`.

use crate::seccomp::{SyscallRule, Syscalls};

/// The transport's register handlers run on the vCPU threads: a configuration change or a reset
/// writes the interrupt eventfd, and DRIVER_OK activates the device (whose calls the device
/// declares). Queue notifications reach the event loop through ioeventfds, without a call here.
pub const MMIO_TRANSPORT: Syscalls = Syscalls {
    name: "virtio-mmio transport",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[],
};
