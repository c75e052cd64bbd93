//! The system calls of virtio-console once the guest runs (its backend's are declared in
//! [`crate::chardev`]).

use crate::seccomp::{SyscallRule, Syscalls};

/// On the event loop: queue eventfds and the interrupt, the SIGWINCH eventfd, and the terminal's size
/// (TIOCGWINSZ) when it changes. Activation, on a vCPU thread, may kick a queue.
pub const CONSOLE: Syscalls = Syscalls {
    name: "virtio-console",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
        SyscallRule::Ioctl(libc::TIOCGWINSZ),
    ],
};
