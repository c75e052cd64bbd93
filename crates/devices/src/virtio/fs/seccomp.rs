//! The system calls of virtio-fs once the guest runs. The server is another process, with a
//! filter of its own (the `share` crate).

use crate::seccomp::{SyscallRule, Syscalls};

/// On the event loop: queue eventfds and the interrupt (read, write), the server's socket (read,
/// write), and when the server is gone or the device dropped: shutting the socket down
/// (shutdown), killing the server through its pidfd (pidfd_send_signal: that process only),
/// waiting for it to end (poll on the pidfd) and reaping it (wait4). epoll_ctl is the
/// event loop's own. Activation, on a vCPU thread, kicks the queues (write).
pub const FS: Syscalls = Syscalls {
    name: "virtio-fs",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
        SyscallRule::Any(libc::SYS_pidfd_send_signal),
        SyscallRule::Any(libc::SYS_wait4),
        SyscallRule::Any(libc::SYS_shutdown),
        SyscallRule::Any(libc::SYS_poll),
    ],
};
