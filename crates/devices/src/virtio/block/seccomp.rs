//! The system calls of virtio-blk and its file backend once the guest runs.

use crate::seccomp::{SyscallRule, Syscalls};

/// The device: activation (on a vCPU thread, at DRIVER_OK) kicks its queue eventfd so the event loop
/// looks at requests queued before; the event loop reads that eventfd and writes the interrupt.
pub const BLOCK: Syscalls = Syscalls {
    name: "virtio-blk",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
    ],
};

/// The backing file, served on the event loop: one preadv/pwritev per request (pread/pwrite for a
/// single buffer), and fdatasync for a flush. DISCARD and WRITE_ZEROES: fallocate (holes and
/// zeroed ranges, in a file or a block device), BLKDISCARD (a discard on a block device), pwrite
/// (zeroes where fallocate cannot). (Its size is read while the device is built.) A qcow2 image
/// and its backing files (the imago crate, through our own storage in qcow2.rs) use the same
/// calls: preadv/pwritev for data and tables, pwrite for zeroes, fallocate for freed and
/// zeroed clusters, fdatasync for a flush; every file is opened before the guest runs.
pub const FILE_BACKEND: Syscalls = Syscalls {
    name: "virtio-blk file backend",
    vcpu: &[],
    event_loop: &[
        SyscallRule::Any(libc::SYS_pread64),
        SyscallRule::Any(libc::SYS_pwrite64),
        SyscallRule::Any(libc::SYS_preadv),
        SyscallRule::Any(libc::SYS_pwritev),
        SyscallRule::Any(libc::SYS_fdatasync),
        SyscallRule::Any(libc::SYS_fallocate),
        SyscallRule::Ioctl(super::discard::BLKDISCARD),
    ],
};

/// The io_uring backend (`aio=io_uring`), whose ring is set up, registered and locked down while
/// the device is built: on the event loop, io_uring_enter submits requests and waits for those in
/// flight before a DISCARD or WRITE_ZEROES (the completion eventfd is read with `read`, above); on
/// a vCPU thread, a reset by the driver (a write to the status register) waits for them with
/// io_uring_enter too. io_uring_setup and io_uring_register are in no filter.
pub const URING_BACKEND: Syscalls = Syscalls {
    name: "virtio-blk io_uring backend",
    vcpu: &[SyscallRule::Any(libc::SYS_io_uring_enter)],
    event_loop: &[SyscallRule::Any(libc::SYS_io_uring_enter)],
};
