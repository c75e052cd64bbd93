//! The system calls of virtio-vsock once the guest runs.

use crate::seccomp::{SyscallRule, Syscalls};

/// On the event loop: queue eventfds and the interrupt (read, write); host programs accepted
/// (accept4) and their sockets read and written (recvfrom, send on the connected socket),
/// half-closed (shutdown) and closed; guest connections to `PATH_<port>` (socket, for AF_UNIX
/// stream sockets only, and connect); the time limit on a program's `CONNECT` line (its timerfd
/// read, and re-armed with timerfd_settime); the listening socket's file removed at the end if it
/// is still ours (newfstatat, unlink). epoll_ctl is the event loop's own. Activation, on a vCPU
/// thread, kicks the queues (write).
pub const VSOCK: Syscalls = Syscalls {
    name: "virtio-vsock",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
        SyscallRule::Any(libc::SYS_accept4),
        SyscallRule::Any(libc::SYS_recvfrom),
        SyscallRule::SendConnected,
        SyscallRule::Any(libc::SYS_shutdown),
        SyscallRule::Any(libc::SYS_close),
        SyscallRule::UnixStreamSocket,
        SyscallRule::Any(libc::SYS_connect),
        SyscallRule::Any(libc::SYS_newfstatat),
        SyscallRule::Any(libc::SYS_unlink),
        SyscallRule::Any(libc::SYS_timerfd_settime),
    ],
};
