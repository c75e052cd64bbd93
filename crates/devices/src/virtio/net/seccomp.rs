//! The system calls of virtio-net and its tap once the guest runs.

use crate::seccomp::{SyscallRule, Syscalls};

/// The device: its queue eventfds and interrupt, on the event loop; its activation on a vCPU thread
/// (DRIVER_OK) may kick a queue.
pub const NET: Syscalls = Syscalls {
    name: "virtio-net",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
    ],
};

/// The tap: frames read one at a time and written with `writev` on the event loop; its offloads
/// set (TUNSETOFFLOAD) when the guest acknowledges the features, a register write on a vCPU thread,
/// and again on the event loop if a reset comes from there.
pub const TAP: Syscalls = Syscalls {
    name: "virtio-net tap",
    vcpu: &[SyscallRule::Ioctl(libc::TUNSETOFFLOAD)],
    event_loop: &[
        SyscallRule::Ioctl(libc::TUNSETOFFLOAD),
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_writev),
    ],
};
