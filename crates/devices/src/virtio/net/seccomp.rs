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
/// set (TUNSETOFFLOAD) at activation, when the driver sets DRIVER_OK (a register write, on a vCPU
/// thread).
pub const TAP: Syscalls = Syscalls {
    name: "virtio-net tap",
    vcpu: &[SyscallRule::Ioctl(libc::TUNSETOFFLOAD)],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_writev),
    ],
};
