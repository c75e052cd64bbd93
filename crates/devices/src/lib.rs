//! Device models for the `vmm` virtual machine monitor.
//!
//! * [`bus`]: an address → device map shared by the vCPU threads (port I/O and MMIO buses).
//! * [`chardev`]: console backends (stdio, file, pty, unix socket) shared by the UART and
//!   virtio-console.
//! * [`legacy`]: the COM1 16550A UART, the i8042 (only its CPU-reset command), the boot timer,
//!   and the I/O APIC and 8254 PIT of a split irqchip.
//! * [`persist`]: the [`persist::Persist`] trait through which every device saves and restores
//!   its state for snapshots.
//! * [`rate_limiter`]: token buckets (bytes/s, ops/s) that throttle virtio-blk and virtio-net.
//! * [`seccomp`]: the system calls each device and backend makes once the guest runs, per thread,
//!   from which the VMM assembles its seccomp filters.
//! * [`virtio`]: the virtio-mmio (version 2) transport and one folder per virtio device.
//!
//! A device never sees the VM: it learns about it only through what it is handed (guest
//! memory, `EventFd`s, its backend file).

#![deny(missing_docs)]

use std::io;
use std::path::PathBuf;

pub mod bus;
pub mod chardev;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod legacy;
pub mod persist;
pub mod rate_limiter;
pub mod seccomp;
#[cfg(test)]
mod test_util;
pub mod virtio;

/// The guest memory type used by every device.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// A disarmed `timerfd` whose reads never block. The event loop reads a timer only when epoll says
/// it fired, but re-arming it in between (another event of the same batch, or a vCPU) clears the
/// expiration: such a read must return EAGAIN, not wait for the next one.
pub(crate) fn nonblocking_timer(
    what: &'static str,
) -> Result<vmm_sys_util::timerfd::TimerFd, Error> {
    use std::os::fd::AsRawFd;
    let timer_err = |error| Error::Timer { what, error };
    let timer = vmm_sys_util::timerfd::TimerFd::new().map_err(|e| timer_err(io::Error::from(e)))?;
    // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(timer_err(io::Error::last_os_error()));
    }
    // SAFETY: F_SETFL on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(timer_err(io::Error::last_os_error()));
    }
    Ok(timer)
}

/// What kind of file a `st_mode` names, for errors about a file that is not what was asked for
/// ("is a FIFO", "is a directory").
pub fn file_kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFIFO => "a FIFO (named pipe)",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        _ => "a file of unknown type",
    }
}

/// Errors of the `devices` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bus range of length zero.
    #[error("cannot insert a device at {base:#x}: zero length range")]
    BusZeroLength {
        /// Requested base address.
        base: u64,
    },
    /// A bus range that wraps around the address space.
    #[error("cannot insert a device at {base:#x} with length {len:#x}: range overflows")]
    BusOverflow {
        /// Requested base address.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// A bus range that overlaps an existing device.
    #[error(
        "cannot insert a device at [{base:#x}, {end:#x}): overlaps the device at [{other_base:#x}, {other_end:#x})",
        end = base + len,
        other_end = other_base + other_len
    )]
    BusOverlap {
        /// Requested base address.
        base: u64,
        /// Requested length.
        len: u64,
        /// Base of the device already there.
        other_base: u64,
        /// Length of the device already there.
        other_len: u64,
    },
    /// Creating or duplicating an `EventFd` failed.
    #[error("cannot create eventfd for {what}: {error}")]
    EventFd {
        /// Which event this was for.
        what: &'static str,
        /// The OS error.
        error: io::Error,
    },
    /// Creating or setting up a timerfd failed.
    #[error("cannot create the timerfd for the {what}: {error}")]
    Timer {
        /// Which timer this was for.
        what: &'static str,
        /// The OS error.
        error: io::Error,
    },
    /// Opening a disk image failed.
    #[error("cannot open disk image '{}': {error}", path.display())]
    DiskOpen {
        /// The image path as given.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The disk image is locked by someone else.
    #[error("disk image '{}' is locked: {conflict}{}", path.display(), held_by(holders))]
    DiskLocked {
        /// The image path as given.
        path: PathBuf,
        /// Who conflicts with this disk, and how.
        conflict: String,
        /// The other processes that have the image open ("PID (COMMAND)", comma-separated;
        /// empty if none could be found).
        holders: String,
    },
    /// The disk image is neither a regular file nor a block device.
    #[error("disk image '{}' is {kind}, not a regular file or a block device", path.display())]
    DiskNotAFile {
        /// The image path as given.
        path: PathBuf,
        /// What it is (e.g. "a directory", "a FIFO").
        kind: &'static str,
    },
    /// The disk image is smaller than one sector.
    #[error(
        "disk image '{}' is {bytes} bytes, less than one {sector}-byte sector; give it a size first, e.g. `truncate -s 64M {}`",
        path.display(),
        path.display()
    )]
    DiskTooSmall {
        /// The image path as given.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The sector size.
        sector: u64,
    },
    /// A disk to be opened writable whose file mode allows no one to write it (root could
    /// anyway, bypassing the mode).
    #[error("disk image '{}' is read-only (mode {mode:04o}) but the disk is writable; open it read-only, or make the file writable", path.display())]
    DiskModeReadOnly {
        /// The image path as given.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The image's format is not one vmm serves, or its qcow2 header or backing chain is
    /// refused (hostile, corrupt, or a feature not supported).
    #[error("disk image '{}': {reason}", path.display())]
    DiskFormat {
        /// The image path as given.
        path: PathBuf,
        /// What is wrong, naming the field or the backing file.
        reason: String,
    },
    /// `flock` or `fcntl` locking failed for another reason.
    #[error("cannot lock disk image '{}': {error}", path.display())]
    DiskLock {
        /// The image path as given.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The size or identity of the disk image could not be determined.
    #[error("cannot read size of disk image '{}': {error}", path.display())]
    DiskSize {
        /// The image path as given.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The temporary overlay of a `snapshot=on` disk could not be created or sized.
    #[error("cannot create the temporary overlay of disk image '{}' in {dir}: {error}", path.display())]
    DiskOverlay {
        /// The image path as given.
        path: PathBuf,
        /// The directory tried last (or "memory" when the write map could not be allocated).
        dir: String,
        /// The OS error.
        error: io::Error,
    },
    /// `aio=io_uring` was asked for and the kernel (or the sandbox around vmm) refused to set
    /// up the ring.
    #[error("disk image '{}': aio=io_uring is not available here ({step}: {error})", path.display())]
    DiskUring {
        /// The image path as given.
        path: PathBuf,
        /// The set-up step that failed (io_uring_setup, registering the image or eventfd, ...).
        step: &'static str,
        /// The OS error.
        error: io::Error,
    },
    /// `aio=io_uring` together with an option only the synchronous path serves.
    #[error("disk image '{}': aio=io_uring serves plain raw images; {option} is served synchronously only", path.display())]
    DiskUringUnsupported {
        /// The image path as given.
        path: PathBuf,
        /// What needs the synchronous path (`snapshot=on`, a qcow2 image).
        option: &'static str,
    },
    /// A disk serial (`id=`) longer than virtio-blk allows.
    #[error("disk id '{id}' is too long (at most 20 bytes)")]
    DiskIdTooLong {
        /// The id as given.
        id: String,
    },
    /// A virtio queue could not be created.
    #[error("cannot create virtio queue of size {size}: {error}")]
    Queue {
        /// The requested maximum size.
        size: u16,
        /// The virtio-queue error.
        error: virtio_queue::Error,
    },
    /// A console backend could not be set up.
    #[error("{what}: {error}")]
    Chardev {
        /// What the VMM was doing (names the path).
        what: String,
        /// The OS error.
        error: io::Error,
    },
    /// A socket backend's path is taken by a socket a process listens on.
    #[error("'{path}' is in use: a process listens on that socket (another VMM?)")]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// A socket backend's path is taken by a socket nobody listens on.
    #[error(
        "'{path}' is a socket nobody listens on (left by a VMM that was killed?); it is left \
         alone: remove it if no program uses it"
    )]
    SocketStale {
        /// The socket path.
        path: PathBuf,
    },
    /// A socket backend's path is taken by something else, which is left alone.
    #[error("'{path}' exists ({kind}); it is left alone: choose another path for the socket")]
    PathTaken {
        /// The path.
        path: PathBuf,
        /// What is there.
        kind: String,
    },
    /// A vsock guest CID outside 3 to 2^32 - 2 (0 to 2 name the hypervisor, the loopback and
    /// the host; 2^32 - 1 is "any").
    #[error("vsock guest CID {cid}: a guest's CID is 3 to 4294967294")]
    VsockCid {
        /// The CID asked for.
        cid: u64,
    },
    /// A virtio-fs tag the guest could not mount by.
    #[error("share tag '{tag}': a tag is 1 to 36 bytes, without NUL")]
    FsTag {
        /// The tag asked for.
        tag: String,
    },
    /// The socket to a share's server cannot be set up.
    #[error("cannot make the socket to the share's server non-blocking: {error}")]
    FsSocket {
        /// The host's error.
        error: std::io::Error,
    },
    /// A file backend's path is not a file guest output may go to.
    #[error("'{path}' {why}: guest output goes to a new or existing regular file, or /dev/null")]
    OutputFileRefused {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The device refused activation.
    #[error("cannot activate virtio device: {0}")]
    Activate(String),
    /// A tap name that cannot be an interface name.
    #[error("'{name}' is not a valid tap device name (1 to 15 characters, no '/' or spaces)")]
    TapName {
        /// The name as given.
        name: String,
    },
    /// The tap device does not exist and creating it was not asked for.
    #[error("tap device '{name}' does not exist; create it with 'ip tuntap add {name} mode tap' (then 'ip link set {name} up')")]
    TapMissing {
        /// The name as given.
        name: String,
    },
    /// The tap device is attached to another process.
    #[error("tap device '{name}' is busy (is another vmm using it?)")]
    TapBusy {
        /// The name as given.
        name: String,
    },
    /// An interface of that name exists but is not a tap.
    #[error("'{name}' is not a tap device; use a tap made with 'ip tuntap add NAME mode tap'")]
    TapNotTap {
        /// The name as given.
        name: String,
    },
    /// A tap operation failed.
    #[error("tap device '{name}': cannot {what}: {error}")]
    Tap {
        /// The tap's name.
        name: String,
        /// What the VMM was doing.
        what: &'static str,
        /// The OS error.
        error: io::Error,
    },
}

/// " (open in PID (COMMAND), …)" for [`Error::DiskLocked`], or nothing.
fn held_by(holders: &str) -> String {
    if holders.is_empty() {
        String::new()
    } else {
        format!(" (open in {holders})")
    }
}
