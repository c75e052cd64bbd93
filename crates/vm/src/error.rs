//! The VM crate's errors. Each names the thing that went wrong, by its value (a path, a size, a
//! count, a capability), and where there is one the fix in the library's terms. None names a
//! command-line option: a front end adds its own hint (the `vmm` CLI appends e.g. "use --irqchip
//! kernel" to [`Error::IrqchipUnsupported`]).

use std::io;
use std::path::PathBuf;

/// Everything that can stop a VM from being built or from running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// The KVM API version is not the stable one.
    #[error("/dev/kvm speaks KVM API version {0}, this VMM needs version 12")]
    KvmApiVersion(i32),
    /// A KVM capability the VMM depends on is missing.
    #[error("KVM on this host lacks the {0} capability, which this VMM needs")]
    KvmCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM: cannot {what}: {source}")]
    Kvm {
        /// What the VMM was doing.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The serial port and the virtio console both read stdin.
    #[error("the serial port and the virtio console are both on stdio, and only one of them can read stdin")]
    StdinTwice,
    /// The serial port and the virtio console were given the same file or socket.
    #[error(
        "the serial port and the virtio console both use '{path}': two files would overwrite \
         each other, and a socket has one listener"
    )]
    SameBackendPath {
        /// The path given twice.
        path: std::path::PathBuf,
    },
    /// A snapshot could not be taken (the VM goes on, paused as it was).
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A snapshot's files are missing, unreadable, truncated, corrupted or of another format.
    #[error(transparent)]
    SnapshotFile(#[from] snapshot::Error),
    /// A snapshot was taken by another build of vmm, whose saved state this one cannot read.
    #[error("'{dir}' was taken by vmm {found}; this is vmm {expected}, which restores only its own snapshots")]
    SnapshotVersion {
        /// The snapshot directory.
        dir: PathBuf,
        /// The version that took it.
        found: String,
        /// This build's version.
        expected: String,
    },
    /// What the restore was asked for does not fit the snapshot (a disk of another size, a
    /// different number of devices).
    #[error("cannot restore '{dir}': {why}")]
    RestoreMismatch {
        /// The snapshot directory.
        dir: PathBuf,
        /// What does not fit, naming the values.
        why: String,
    },
    /// A device's saved state could not be put back.
    #[error("cannot restore '{dir}': {source}")]
    RestoreDevice {
        /// The snapshot directory.
        dir: PathBuf,
        /// The device's error.
        #[source]
        source: devices::persist::PersistError,
    },
    /// More vCPUs than the host (or the MP table) allows, or none.
    #[error("{asked} vCPUs: this host runs 1 to {max} vCPUs per VM")]
    VcpuCount {
        /// The number asked for.
        asked: u8,
        /// The most this host runs.
        max: usize,
    },
    /// Less guest memory than any guest needs.
    #[error("{bytes} bytes of guest memory is too small: a guest needs at least 1 MiB")]
    MemoryTooSmall {
        /// The size asked for.
        bytes: u64,
    },
    /// More guest memory than the host has RAM.
    #[error(
        "{} of guest memory is more than this host's {} of RAM",
        crate::memory::human_size(*asked),
        crate::memory::human_size(*host)
    )]
    MemoryExceedsHost {
        /// The size asked for, in bytes.
        asked: u64,
        /// The host's RAM, in bytes.
        host: u64,
    },
    /// The irqchip asked for needs a capability this host's KVM lacks.
    #[error("{irqchip} irqchip: KVM on this host lacks {cap}")]
    IrqchipUnsupported {
        /// The irqchip (`split`).
        irqchip: &'static str,
        /// The missing capability.
        cap: &'static str,
    },
    /// More virtio devices than there are virtio-mmio slots (one IRQ each).
    #[error("too many virtio devices: at most {max} fit")]
    TooManyVirtioDevices {
        /// The number of slots.
        max: u32,
    },
    /// Guest memory could not be mapped.
    #[error("cannot map {mib} MiB of guest memory: {reason}")]
    GuestMemory {
        /// The size asked for.
        mib: u64,
        /// Why it failed.
        reason: String,
    },
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel '{path}': {source}")]
    KernelOpen {
        /// The kernel path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The kernel file is not a kernel image this VMM can boot.
    #[error("'{path}' is not a bootable kernel: {reason}")]
    KernelFormat {
        /// The kernel path.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The initrd file could not be opened or read.
    #[error("cannot read initrd '{path}': {source}")]
    InitrdOpen {
        /// The initrd path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The initrd is not a regular file.
    #[error("initrd '{}' is {kind}, not a regular file", path.display())]
    InitrdNotAFile {
        /// The initrd path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The kernel does not fit in guest memory.
    #[error(
        "kernel '{}' loads up to {end:#x}, beyond the guest's {}: it needs at least {} MiB of guest memory",
        path.display(),
        crate::memory::human_size(*memory),
        needs_mib
    )]
    KernelTooLarge {
        /// The kernel path.
        path: PathBuf,
        /// The first guest address after the image.
        end: u64,
        /// The guest memory size.
        memory: u64,
        /// The least memory that holds it, in MiB.
        needs_mib: u64,
    },
    /// Two disks are the same file (or block device).
    #[error(
        "disk images '{}' and '{}' are the same file (device {dev:#x}, inode {ino}): one image can back one disk only",
        first.display(),
        second.display()
    )]
    DiskTwice {
        /// The first disk's path.
        first: PathBuf,
        /// The later disk's path.
        second: PathBuf,
        /// The device number the file is on (for a block device, its own device number).
        dev: u64,
        /// Its inode (0 for a block device).
        ino: u64,
    },
    /// The initrd does not fit in guest memory.
    #[error("initrd '{path}' ({size} bytes) does not fit in guest memory")]
    InitrdTooLarge {
        /// The initrd path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The kernel command line is longer than the kernel accepts.
    #[error("the kernel command line is {len} bytes but this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length including what the VMM appends.
        len: usize,
        /// The kernel's limit (without the terminating NUL).
        max: usize,
    },
    /// The kernel command line is malformed.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// A disk could not be set up (the device's message names the image).
    #[error("{source}")]
    Disk {
        /// The disk image path.
        path: PathBuf,
        /// The device's error.
        #[source]
        source: devices::Error,
    },
    /// A NIC could not be set up (the device's message names the tap).
    #[error("{source}")]
    Net {
        /// The tap device's name.
        tap: String,
        /// The device's error.
        #[source]
        source: devices::Error,
    },
    /// Two shares have the same tag.
    #[error("two shares are tagged '{tag}'")]
    ShareTagTwice {
        /// The tag.
        tag: String,
    },
    /// A share's server could not be started (its message names the directory).
    #[error("{source}")]
    Share {
        /// The share's tag.
        tag: String,
        /// The server's error.
        #[source]
        source: share::ShareError,
    },
    /// A device could not be created or wired.
    #[error("device {what}: {source}")]
    Device {
        /// Which device.
        what: &'static str,
        /// The device's error.
        #[source]
        source: devices::Error,
    },
    /// x86 setup (memory layout, boot tables, vCPU registers) failed.
    #[error("{what}: {source}")]
    Arch {
        /// What the VMM was setting up.
        what: &'static str,
        /// The arch crate's error.
        #[source]
        source: arch::Error,
    },
    /// The event loop failed.
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A vCPU's KVM_RUN failed.
    #[error("vCPU {vcpu}: KVM_RUN failed: {source}")]
    VcpuRun {
        /// The vCPU index.
        vcpu: u8,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM could not handle something the guest did (e.g. an instruction it cannot emulate).
    #[error("vCPU {vcpu}: KVM internal error, suberror {suberror} ({}); guest state: {state}", internal_error_name(*.suberror))]
    VcpuInternalError {
        /// The vCPU index.
        vcpu: u8,
        /// KVM's suberror code.
        suberror: u32,
        /// Registers at the time of the error.
        state: String,
    },
    /// The guest stopped in a way the VMM does not handle.
    #[error("vCPU {vcpu}: unexpected exit {exit}; guest state: {state}")]
    VcpuUnexpectedExit {
        /// The vCPU index.
        vcpu: u8,
        /// What KVM reported.
        exit: String,
        /// Registers at the time of the exit.
        state: String,
    },
    /// A VMM thread other than a vCPU's panicked (a bug in the VMM).
    #[error("the {0} thread panicked")]
    ThreadPanicked(&'static str),
    /// A vCPU thread panicked (a bug in the VMM).
    #[error("vCPU {0} thread panicked")]
    VcpuPanicked(u8),
    /// A seccomp filter could not be built or installed.
    #[error("cannot set up the seccomp filter of the {thread} thread: {reason}")]
    Seccomp {
        /// The thread kind (`vmm`, `vcpu`).
        thread: &'static str,
        /// What failed.
        reason: String,
    },
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure: an instruction KVM cannot emulate",
        2 => "simultaneous exception",
        3 => "delivery event via PCI",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// `what` failed in a KVM ioctl.
pub(crate) fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// `what` failed in the arch crate.
pub(crate) fn arch_err(what: &'static str) -> impl Fn(arch::Error) -> Error {
    move |source| Error::Arch { what, source }
}

/// Shorthand for the crate's results.
pub type Result<T> = std::result::Result<T, Error>;
