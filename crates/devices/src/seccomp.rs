//! What each device asks of the host kernel once the guest runs, declared next to the code that
//! makes the calls, so that the VMM's seccomp filters can be assembled from it.
//!
//! A device (or backend) states, per thread it runs on, the system calls it makes and, where the
//! filter checks an argument, the value it passes: an `ioctl` request, an `fcntl` command. The
//! declarations are plain data ([`Syscalls`], [`SyscallRule`]); the `vm` crate turns the union of
//! [`ALL`] and what the VMM core needs (KVM_RUN, epoll, memory management, signals, thread exit)
//! into one filter per kind of thread.
//!
//! Only the calls made while the guest runs count: whatever a device does while it is built (open
//! its file, create its eventfds, configure the tap) happens before any filter goes on.
//!
//! Threads ([`Thread`]): a device's register handlers run on the vCPU threads (port I/O and MMIO
//! exits; for a virtio device, its activation when the driver sets DRIVER_OK); its queue work,
//! timers and backend input run on the event-loop thread.

/// A kind of thread a device's code runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thread {
    /// A vCPU thread: port I/O and MMIO register handlers.
    Vcpu,
    /// The thread running the event loop: queue notifications, timers, backend input.
    EventLoop,
}

/// One system call a device makes, with the argument the filter checks, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallRule {
    /// System call `nr` (a `libc::SYS_*` number), whatever its arguments.
    Any(i64),
    /// `ioctl(fd, request, ...)` with this request number.
    Ioctl(u64),
    /// `fcntl(fd, cmd, ...)` with this command.
    Fcntl(i32),
    /// `send(2)` on a connected socket: `sendto` without a destination address.
    SendConnected,
    /// `socket(AF_UNIX, SOCK_STREAM [| SOCK_NONBLOCK | SOCK_CLOEXEC], 0)`: a Unix stream socket,
    /// no other family or type.
    UnixStreamSocket,
}

/// The system calls of one device or backend, per thread.
#[derive(Clone, Copy, Debug)]
pub struct Syscalls {
    /// What makes them (a device, a backend), for test messages.
    pub name: &'static str,
    /// Those made on the vCPU threads.
    pub vcpu: &'static [SyscallRule],
    /// Those made on the event-loop thread.
    pub event_loop: &'static [SyscallRule],
}

impl Syscalls {
    /// The calls made on `thread`.
    pub fn on(&self, thread: Thread) -> &'static [SyscallRule] {
        match thread {
            Thread::Vcpu => self.vcpu,
            Thread::EventLoop => self.event_loop,
        }
    }
}

/// Every device and backend type's declaration. The filters admit all of them whatever the VM's
/// configuration: a filter depends on the kind of thread only.
pub const ALL: &[&Syscalls] = &[
    &crate::legacy::SERIAL_SYSCALLS,
    &crate::legacy::I8042_SYSCALLS,
    &crate::legacy::BOOT_TIMER_SYSCALLS,
    &crate::legacy::ACPI_PM_SYSCALLS,
    &crate::legacy::PVPANIC_SYSCALLS,
    &crate::legacy::EXIT_DEVICE_SYSCALLS,
    &crate::legacy::IOAPIC_SYSCALLS,
    &crate::legacy::PIT_SYSCALLS,
    &crate::virtio::seccomp::MMIO_TRANSPORT,
    &crate::virtio::block::seccomp::BLOCK,
    &crate::virtio::block::seccomp::FILE_BACKEND,
    &crate::virtio::block::seccomp::URING_BACKEND,
    &crate::virtio::net::seccomp::NET,
    &crate::virtio::net::seccomp::TAP,
    &crate::virtio::console::seccomp::CONSOLE,
    &crate::virtio::fs::seccomp::FS,
    &crate::virtio::vsock::seccomp::VSOCK,
    &crate::chardev::STDIO_SYSCALLS,
    &crate::chardev::FILE_SYSCALLS,
    &crate::chardev::PTY_SYSCALLS,
    &crate::chardev::SOCKET_SYSCALLS,
    &crate::rate_limiter::SYSCALLS,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate names: {names:?}");
    }

    #[test]
    fn rules_name_real_calls() {
        for s in ALL {
            for thread in [Thread::Vcpu, Thread::EventLoop] {
                for rule in s.on(thread) {
                    if let SyscallRule::Any(nr) = rule {
                        assert!((0..1024).contains(nr), "{}: {nr}", s.name);
                        // Calls whose arguments the filter checks are declared with them (or,
                        // for memory mappings and signals, left to the VMM core).
                        let checked = [
                            libc::SYS_ioctl,
                            libc::SYS_fcntl,
                            libc::SYS_sendto,
                            libc::SYS_mmap,
                            libc::SYS_mprotect,
                            libc::SYS_tgkill,
                            libc::SYS_kill,
                            libc::SYS_socket,
                        ];
                        assert!(
                            !checked.contains(nr),
                            "{}: {nr} without its argument",
                            s.name
                        );
                    }
                }
            }
        }
    }
}
