//! The jail: run the VMM in its own namespaces, cgroup and empty root, as an unprivileged user
//! with no capabilities, so that a guest that breaks out of KVM into the VMM holds nothing worth
//! having.
//!
//! # Order, and why
//! ```text
//! vmm (root, host namespaces)
//!   Jail::new     check DIR and ids; create and configure the cgroup(s) vmm-<pid> (v1 and/or v2)
//!   Jail::fork    block SIGINT/TERM/HUP/QUIT/CHLD; unshare(CLONE_NEWPID); fork
//!   ├─ parent = Supervisor: waits; turns SIGINT/TERM/HUP/QUIT into SIGKILL of the child; restores
//!   │   the terminal; removes the cgroup(s) and socket files; exits with the child's status
//!   └─ child (pid 1 of the new pid namespace): join the cgroup(s); unshare mount, ipc, uts and
//!       (unless a tap is used) net namespaces; make every mount private          -> Jailed
//!        Vm::new(config)  opens /dev/kvm, kernel, initrd, disks, taps, ptys, sockets; creates the
//!                         VM (its fd belongs to this process's mm) and loads the guest
//!        Jailed::lock_down  bind DIR read-only, pivot_root into it, drop the old root; hostname;
//!                         rlimits; bounding set, setgroups, setresgid, setresuid, capabilities,
//!                         no_new_privs, parent-death signal
//!        (seccomp goes on here, in Vm::run, before the first KVM_RUN)
//!        Vm::run
//! ```
//! - The guest is built *before* the pivot, with the host's view of the file system, rather than
//!   from resources opened by the parent: every file, tap and socket is then opened by the same
//!   code as without a jail, and nothing guest-controlled has run yet. The KVM VM fd is bound to
//!   the mm of the process that creates it, so it is created after the fork, in the child.
//! - `unshare(CLONE_NEWNS)` and capability drops are per thread: the child is single-threaded from
//!   the fork until `Vm::run` spawns the vCPUs (lock_down checks /proc/self/task before pivoting).
//! - The cgroup is joined before any guest memory is touched, so the memory is charged to it.
//! - A pid-namespace init ignores signals it has no handler for, even SIGTERM from outside; the
//!   supervisor therefore turns a termination request into SIGKILL of the child (the VMM keeps no
//!   state a clean exit would save: disk writes are pwrite()s to the image), and restores the
//!   terminal mode it saved before the fork.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::{CharBackend, VmConfig};

/// Without `--uid`/`--gid` the jailed VMM runs as uid = gid = this plus the supervisor's pid: an
/// id no account uses (above the usual /etc/subuid ranges, below 2^31) and unique among running
/// VMs, since live pids are. A shared id such as `nobody` would let RLIMIT_NPROC, which counts
/// every task of a uid on the host, add up the threads of all jailed VMs (the tenth VM could not
/// start its vCPUs), and would give two compromised VMMs the same identity.
pub const ID_BASE: u32 = 2_000_000_000;
/// The default cgroup memory limit is the guest's RAM plus this: the VMM's own memory (~3 MiB),
/// page tables, KVM's per-VM and per-vCPU kernel memory and the page cache of disk I/O, which
/// cgroups charge to the VM too. Generous on purpose: hitting it kills the VM.
pub const MEMORY_OVERHEAD: u64 = 128 << 20;
/// Tasks (processes and threads) allowed beyond one per vCPU: the event-loop thread and room for
/// helper threads. Used for the pids limit and RLIMIT_NPROC.
pub const EXTRA_TASKS: u64 = 16;
/// File descriptors allowed beyond those open when the jail closes (socket clients, a refused
/// second client, timers).
pub const EXTRA_FDS: u64 = 64;
/// The CFS period used for a CPU quota: 100 ms, the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;
/// The hint for steps that need privileges.
const NEED_ROOT: &str = "the jail needs root (CAP_SYS_ADMIN); run vmm as root, or without --jail";

/// What the user asked for with `--jail DIR` and its companion options.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The directory that becomes the VMM's root. It must exist; it is bound read-only.
    pub dir: PathBuf,
    /// The user id to run as (not 0); default [`ID_BASE`] + the supervisor's pid.
    pub uid: Option<u32>,
    /// The group id to run as (not 0); default [`ID_BASE`] + the supervisor's pid.
    pub gid: Option<u32>,
    /// The cgroup memory limit in bytes; default guest RAM + [`MEMORY_OVERHEAD`].
    pub memory_limit: Option<u64>,
    /// The CPU quota in cores (`1.5` = 150 ms per 100 ms); default vCPUs + 1; `0` for none.
    pub cpu_quota: Option<f64>,
}

impl JailConfig {
    /// A jail in `dir` with the default ids and limits.
    pub fn new(dir: impl Into<PathBuf>) -> JailConfig {
        JailConfig {
            dir: dir.into(),
            uid: None,
            gid: None,
            memory_limit: None,
            cpu_quota: None,
        }
    }
}

/// Why the jail could not be set up. Each names the step and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail directory or an option is unusable.
    #[error("--jail: {0}")]
    Config(String),
    /// A system call of the jail set-up failed.
    #[error("jail: cannot {step}: {source}{}", hint_text(hint))]
    Step {
        /// What the jail was doing, with the path or value.
        step: String,
        /// The system's error.
        #[source]
        source: io::Error,
        /// What to do about it ("" if nothing useful can be said).
        hint: &'static str,
    },
}

fn hint_text(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}

fn step_err(step: impl Into<String>, source: io::Error) -> JailError {
    let hint = match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => NEED_ROOT,
        _ => "",
    };
    JailError::Step {
        step: step.into(),
        source,
        hint,
    }
}

/// The result of a libc call that returns -1 and sets errno on failure.
fn check(ret: libc::c_int, step: impl FnOnce() -> String) -> Result<libc::c_int, JailError> {
    if ret == -1 {
        Err(step_err(step(), io::Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Config(format!("'{}' contains a NUL byte", path.display())))
}

/// A jail, checked and with its cgroup made, ready to fork.
#[derive(Debug)]
pub struct Jail {
    dir: PathBuf,
    uid: u32,
    gid: u32,
    new_netns: bool,
    cgroup: Cgroup,
    /// RLIMIT_FSIZE: the largest disk (writes never grow an image); `None` when a console or serial
    /// writes to a file, which grows.
    fsize: Option<u64>,
    nproc: u64,
    /// Socket files the VMM creates; the supervisor removes them (the jailed VMM cannot reach them).
    sockets: Vec<PathBuf>,
}

impl Jail {
    /// Checks the jail directory and ids, then creates the cgroup `vmm-<pid>` with its limits,
    /// derived from `vm` unless `config` overrides them. Needs root.
    pub fn new(config: &JailConfig, vm: &VmConfig) -> Result<Jail, JailError> {
        let dir = match fs::metadata(&config.dir) {
            Ok(m) if m.is_dir() => fs::canonicalize(&config.dir).map_err(|e| {
                JailError::Config(format!("cannot resolve '{}': {e}", config.dir.display()))
            })?,
            Ok(_) => {
                return Err(JailError::Config(format!(
                    "'{}' is not a directory; give an empty directory to become the VMM's root",
                    config.dir.display()
                )))
            }
            Err(e) => {
                return Err(JailError::Config(format!(
                    "'{}': {e}; create an empty directory to become the VMM's root",
                    config.dir.display()
                )))
            }
        };
        if dir == Path::new("/") {
            return Err(JailError::Config(
                "'/' would leave the host's files visible; give an empty directory".into(),
            ));
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let default_id = ID_BASE.saturating_add(pid.unsigned_abs());
        let (uid, gid) = (
            config.uid.unwrap_or(default_id),
            config.gid.unwrap_or(default_id),
        );
        if uid == 0 || gid == 0 {
            return Err(JailError::Config(format!(
                "--uid {uid} --gid {gid}: the jailed VMM runs as an unprivileged user; give non-zero ids"
            )));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(JailError::Step {
                step: "set up namespaces, a cgroup and a new root".into(),
                source: io::Error::from_raw_os_error(libc::EPERM),
                hint: NEED_ROOT,
            });
        }
        let memory = config
            .memory_limit
            .unwrap_or(vm.memory_bytes.saturating_add(MEMORY_OVERHEAD));
        if memory < vm.memory_bytes {
            return Err(JailError::Config(format!(
                "--memory-limit {} MiB is less than the guest's --memory {} MiB; the VMM would be \
                 killed once the guest touches its RAM; give at least --memory plus {} MiB",
                memory >> 20,
                vm.memory_bytes >> 20,
                MEMORY_OVERHEAD >> 20
            )));
        }
        let cpus = config
            .cpu_quota
            .unwrap_or(f64::from(vm.vcpus) + 1.0)
            .max(0.0);
        let tasks = u64::from(vm.vcpus) + EXTRA_TASKS;
        let mut fsize = Some(1);
        for disk in &vm.disks {
            // A disk that cannot be read fails later with its own message, from Vm::new.
            let len = fs::metadata(&disk.path).map(|m| m.len()).unwrap_or(0);
            fsize = fsize.map(|f: u64| f.max(len));
        }
        let mut sockets = Vec::new();
        for backend in [&vm.serial, &vm.console] {
            match backend {
                CharBackend::File(_) => fsize = None,
                CharBackend::Socket(path) => sockets.push(path.clone()),
                _ => {}
            }
        }
        let cgroup = Cgroup::create(
            &format!("vmm-{pid}"),
            &Limits {
                memory,
                cpu_quota_us: (cpus > 0.0)
                    .then(|| ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)),
                pids: tasks,
            },
        )?;
        Ok(Jail {
            dir,
            uid,
            gid,
            new_netns: vm.nets.is_empty(),
            cgroup,
            fsize,
            nproc: tasks,
            sockets,
        })
    }

    /// The cgroup directories made for this VM (one per hierarchy: several on cgroup v1).
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.cgroup.dirs
    }

    /// Creates the pid namespace and forks. The parent gets a [`Supervisor`] to wait with; the
    /// child, pid 1 of the new namespace, has joined the cgroup and entered its own mount, ipc, uts
    /// and (without taps) net namespaces, and gets [`Jailed`]: build the VM, then
    /// [`Jailed::lock_down`], then run it. Call while the process is single-threaded.
    pub fn fork(self) -> Result<Forked, JailError> {
        let threads = thread_count();
        if threads > 1 {
            return Err(JailError::Config(format!(
                "the VMM has {threads} threads; the jail must be entered before any is started"
            )));
        }
        let signals = supervised_signals();
        // SAFETY: an all-zero sigset_t is a valid value to be overwritten by pthread_sigmask.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid; blocking signals in this (only) thread.
        check(
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, &mut old_mask) },
            || "block signals".into(),
        )?;
        let restore_mask = |old: &libc::sigset_t| {
            // SAFETY: `old` is the mask saved above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
        };
        // SAFETY: unshare has no memory-safety preconditions.
        if let Err(e) = check(unsafe { libc::unshare(libc::CLONE_NEWPID) }, || {
            "create a pid namespace (unshare CLONE_NEWPID)".into()
        }) {
            restore_mask(&old_mask);
            return Err(e);
        }
        let termios = saved_termios();
        // SAFETY: the process is single-threaded (checked above), so the child may run any code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            restore_mask(&old_mask);
            return Err(step_err("fork the jailed VMM", io::Error::last_os_error()));
        }
        if pid > 0 {
            return Ok(Forked::Supervisor(Supervisor {
                child: pid,
                signals,
                termios,
                cgroup: self.cgroup,
                sockets: self.sockets,
            }));
        }
        // The child.
        restore_mask(&old_mask);
        set_parent_death_signal()?;
        self.cgroup.join()?;
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        if self.new_netns {
            flags |= libc::CLONE_NEWNET;
        }
        // SAFETY: unshare has no memory-safety preconditions.
        check(unsafe { libc::unshare(flags) }, || {
            format!(
                "create mount, ipc, uts{} namespaces",
                if self.new_netns { " and net" } else { "" }
            )
        })?;
        // Nothing the jail mounts may propagate back to the host.
        // SAFETY: the path is a valid C string; the other arguments may be null for MS_PRIVATE.
        check(
            unsafe {
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            },
            || "make the mounts private".into(),
        )?;
        Ok(Forked::Jailed(Jailed {
            dir: self.dir,
            uid: self.uid,
            gid: self.gid,
            fsize: self.fsize,
            nproc: self.nproc,
            _cgroup: self.cgroup,
        }))
    }
}

/// Which side of [`Jail::fork`] this is.
#[derive(Debug)]
pub enum Forked {
    /// The original process: wait for the jailed VMM and exit with its status.
    Supervisor(Supervisor),
    /// The jailed VMM: build the VM, [`Jailed::lock_down`], run it.
    Jailed(Jailed),
}

/// The parent: holds nothing but the cgroup paths; waits for the jailed VMM.
#[derive(Debug)]
pub struct Supervisor {
    child: libc::pid_t,
    signals: libc::sigset_t,
    termios: Option<libc::termios>,
    cgroup: Cgroup,
    sockets: Vec<PathBuf>,
}

impl Supervisor {
    /// The jailed VMM's pid (in the caller's pid namespace).
    pub fn child_pid(&self) -> u32 {
        self.child as u32
    }

    /// Waits for the jailed VMM, turning SIGINT, SIGTERM, SIGHUP and SIGQUIT into SIGKILL of it,
    /// then restores the terminal, removes the cgroup and the socket files, and returns the exit
    /// status to use: the child's, or 128 + the signal that ended it (or that was forwarded).
    pub fn wait(self) -> u8 {
        let mut forwarded = None;
        let status = loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out pointer.
            let ret = unsafe { libc::waitpid(self.child, &mut status, libc::WNOHANG) };
            if ret == self.child {
                break Some(status);
            }
            if ret < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break None;
            }
            // SAFETY: a zeroed siginfo_t is a valid out buffer.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: the set and the out buffer are valid; these signals are blocked in this thread.
            let sig = unsafe { libc::sigwaitinfo(&self.signals, &mut info) };
            if sig > 0 && sig != libc::SIGCHLD {
                forwarded.get_or_insert(sig);
                // SAFETY: kill has no memory-safety preconditions; the child is ours and unreaped.
                unsafe { libc::kill(self.child, libc::SIGKILL) };
            }
        };
        if let Some(t) = &self.termios {
            // SAFETY: `t` is the terminal state read from fd 0 before the fork.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
        for path in &self.sockets {
            let _ = fs::remove_file(path);
        }
        self.cgroup.remove();
        match (forwarded, status) {
            (Some(sig), _) => 128 + sig as u8,
            (None, Some(s)) if libc::WIFEXITED(s) => libc::WEXITSTATUS(s) as u8,
            (None, Some(s)) if libc::WIFSIGNALED(s) => 128 + libc::WTERMSIG(s) as u8,
            _ => 1,
        }
    }
}

/// The jailed VMM between the fork and the lock-down.
#[derive(Debug)]
pub struct Jailed {
    dir: PathBuf,
    uid: u32,
    gid: u32,
    fsize: Option<u64>,
    nproc: u64,
    /// Kept so its Drop runs here (a no-op in the child: only the creating process removes it).
    _cgroup: Cgroup,
}

impl Jailed {
    /// Closes the jail: from here on the process sees only the jail directory (read-only), runs as
    /// the jail's uid and gid with no capabilities and no_new_privs, under rlimits. Call after
    /// [`crate::Vm::new`] and before [`crate::Vm::run`], while the process is single-threaded.
    pub fn lock_down(self) -> Result<(), JailError> {
        let threads = thread_count();
        if threads != 1 {
            return Err(JailError::Config(format!(
                "{threads} threads are running; the jail can only be closed while the VMM has one"
            )));
        }
        // Counted while /proc is still visible.
        let open_fds = highest_fd().saturating_add(1);
        self.pivot()?;
        // SAFETY: the name is a valid buffer of the given length.
        check(unsafe { libc::sethostname(c"vmm".as_ptr(), 3) }, || {
            "set the host name".into()
        })?;
        set_rlimit(libc::RLIMIT_NOFILE, open_fds + EXTRA_FDS, "RLIMIT_NOFILE")?;
        set_rlimit(libc::RLIMIT_NPROC, self.nproc, "RLIMIT_NPROC")?;
        // RLIMIT_FSIZE caps every write to a regular file, stdout and stderr redirected to a file
        // included, where guest output legitimately grows without bound; then it is left alone.
        match self.fsize {
            Some(fsize) if !is_regular_file(1) && !is_regular_file(2) => {
                set_rlimit(libc::RLIMIT_FSIZE, fsize, "RLIMIT_FSIZE")?
            }
            _ => log::info!("jail: RLIMIT_FSIZE not set: guest output goes to a regular file"),
        }
        set_rlimit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
        drop_privileges(self.uid, self.gid)?;
        // Changing credentials cleared the parent-death signal.
        set_parent_death_signal()?;
        log::info!(
            "jail closed: root {}, uid {} gid {}, no capabilities",
            self.dir.display(),
            self.uid,
            self.gid
        );
        Ok(())
    }

    /// Binds the jail directory read-only (no devices, set-uid or exec) and makes it `/`; the old
    /// root is detached.
    fn pivot(&self) -> Result<(), JailError> {
        let dir = cstring(&self.dir)?;
        let shown = self.dir.display();
        // SAFETY: `dir` is a valid C string; null fs type and data are allowed for a bind.
        check(
            unsafe {
                libc::mount(
                    dir.as_ptr(),
                    dir.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            },
            || format!("bind-mount {shown} onto itself"),
        )?;
        let ro = libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC;
        // SAFETY: as above.
        check(
            unsafe {
                libc::mount(
                    std::ptr::null(),
                    dir.as_ptr(),
                    std::ptr::null(),
                    ro,
                    std::ptr::null(),
                )
            },
            || format!("remount {shown} read-only"),
        )?;
        // SAFETY: `dir` is a valid C string.
        check(unsafe { libc::chdir(dir.as_ptr()) }, || {
            format!("enter {shown}")
        })?;
        // pivot_root(".", "."): the old root ends up stacked on the new one, and is detached next.
        // SAFETY: both paths are valid C strings.
        check(
            unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32 },
            || format!("pivot_root into {shown}"),
        )?;
        // SAFETY: the path is a valid C string.
        check(
            unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) },
            || "detach the old root".into(),
        )?;
        // SAFETY: the path is a valid C string.
        check(unsafe { libc::chdir(c"/".as_ptr()) }, || {
            "enter the new root".into()
        })?;
        Ok(())
    }
}

fn set_rlimit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    name: &str,
) -> Result<(), JailError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit.
    check(unsafe { libc::setrlimit(resource, &limit) }, || {
        format!("set {name} to {value}")
    })?;
    Ok(())
}

/// Empties the bounding and ambient sets, switches to `uid`/`gid` with no supplementary groups,
/// empties the effective, permitted and inheritable sets, sets no_new_privs.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret == -1 {
            let e = io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(step_err(
                format!("drop capability {cap} from the bounding set"),
                e,
            ));
        }
    }
    // SAFETY: prctl with integer arguments only.
    check(
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        },
        || "clear the ambient capabilities".into(),
    )?;
    // SAFETY: an empty list; the pointer is not read.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, || {
        "drop the supplementary groups".into()
    })?;
    // SAFETY: plain id arguments. glibc applies set*id to every thread; there is only one.
    check(unsafe { libc::setresgid(gid, gid, gid) }, || {
        format!("switch to gid {gid}")
    })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) }, || {
        format!("switch to uid {uid}")
    })?;
    // Leaving uid 0 already emptied the effective and permitted sets; the inheritable set is
    // emptied here, and all three are then checked.
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let empty = [CapData::default(); 2];
    // SAFETY: capset reads a version-3 header and two data structs, which is what we pass.
    check(
        unsafe { libc::syscall(libc::SYS_capset, &header, empty.as_ptr()) as i32 },
        || "empty the capability sets".into(),
    )?;
    let mut now = [CapData::default(); 2];
    // SAFETY: capget writes two data structs for a version-3 header.
    check(
        unsafe { libc::syscall(libc::SYS_capget, &header, now.as_mut_ptr()) as i32 },
        || "read back the capability sets".into(),
    )?;
    if now
        .iter()
        .any(|d| d.effective | d.permitted | d.inheritable != 0)
    {
        return Err(step_err(
            "empty the capability sets",
            io::Error::other("capabilities remain after capset"),
        ));
    }
    // SAFETY: prctl with integer arguments only.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        || "set no_new_privs".into(),
    )?;
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The jailed VMM dies with its supervisor (e.g. when that is SIGKILLed).
fn set_parent_death_signal() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        || "set the parent-death signal".into(),
    )?;
    Ok(())
}

fn supervised_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGCHLD,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// The terminal mode of stdin, if it is a terminal, to restore after the jailed VMM exits.
fn saved_termios() -> Option<libc::termios> {
    // SAFETY: a zeroed termios is a valid out buffer for tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: isatty and tcgetattr on fd 0 with a valid buffer.
    (unsafe { libc::isatty(0) == 1 && libc::tcgetattr(0, &mut t) == 0 }).then_some(t)
}

fn is_regular_file(fd: libc::c_int) -> bool {
    // SAFETY: a zeroed stat is a valid out buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd number with a valid buffer; a closed fd only fails.
    (unsafe { libc::fstat(fd, &mut st) } == 0) && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
}

fn thread_count() -> usize {
    fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

fn highest_fd() -> u64 {
    fs::read_dir("/proc/self/fd").map_or(1024, |d| {
        d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(2)
    })
}

/// Limits written into the cgroup.
struct Limits {
    memory: u64,
    /// CPU time per [`CPU_PERIOD_US`]; `None` for no quota.
    cpu_quota_us: Option<u64>,
    pids: u64,
}

/// The VM's cgroup: one directory per hierarchy that holds a controller it uses (cgroup v1 mounts
/// one hierarchy per controller, v2 one for all; hybrid hosts mix them).
#[derive(Debug)]
pub(crate) struct Cgroup {
    dirs: Vec<PathBuf>,
    /// Only this process removes the directories (not the forked child).
    owner: libc::pid_t,
}

/// A mounted cgroup hierarchy.
#[derive(Debug)]
struct Hierarchy {
    mount: PathBuf,
    /// The cgroup path the mount shows as its root (not `/` inside a cgroup namespace's parent).
    root: String,
    v2: bool,
    controllers: Vec<String>,
}

/// The cgroup hierarchies from /proc/self/mountinfo.
fn hierarchies() -> Vec<Hierarchy> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let mount = PathBuf::from(left[4].replace("\\040", " "));
        let root = left[3].to_string();
        match right[0] {
            "cgroup" => out.push(Hierarchy {
                mount,
                root,
                v2: false,
                controllers: right[2].split(',').map(str::to_string).collect(),
            }),
            "cgroup2" => {
                let controllers = fs::read_to_string(mount.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                out.push(Hierarchy {
                    mount,
                    root,
                    v2: true,
                    controllers,
                })
            }
            _ => {}
        }
    }
    out
}

/// This process's cgroup path in the hierarchy holding `controller` (v1) or in the v2 one.
fn own_cgroup(h: &Hierarchy, controller: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if h.v2 {
            id == "0" && ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })
}

/// `path` (a cgroup path) as a directory under the hierarchy's mount.
fn cgroup_dir(h: &Hierarchy, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(h.root.trim_end_matches('/'))
        .unwrap_or(path)
        .trim_start_matches('/');
    h.mount.join(rel)
}

fn write_file(path: &Path, value: &str) -> Result<(), JailError> {
    fs::write(path, value)
        .map_err(|e| step_err(format!("write '{value}' to {}", path.display()), e))
}

impl Cgroup {
    /// Makes `name` in every hierarchy that holds memory, pids or (with a quota) cpu, and writes the
    /// limits. v1: under this process's own cgroup. v2: beside this process's own cgroup (v2 lets a
    /// cgroup with processes have no children with controllers), or under the root if that is ours.
    fn create(name: &str, limits: &Limits) -> Result<Cgroup, JailError> {
        let hierarchies = hierarchies();
        let mut wanted = vec!["memory", "pids"];
        if limits.cpu_quota_us.is_some() {
            wanted.push("cpu");
        }
        let mut cgroup = Cgroup {
            dirs: Vec::new(),
            // SAFETY: getpid has no preconditions.
            owner: unsafe { libc::getpid() },
        };
        // Each controller's hierarchy: a v1 mount that has it, else the v2 mount if it offers it.
        let mut plan: Vec<(usize, Vec<&str>)> = Vec::new();
        for controller in wanted {
            let found = hierarchies
                .iter()
                .position(|h| !h.v2 && h.controllers.iter().any(|c| c == controller))
                .or_else(|| {
                    hierarchies
                        .iter()
                        .position(|h| h.v2 && h.controllers.iter().any(|c| c == controller))
                });
            let Some(index) = found else {
                return Err(JailError::Step {
                    step: format!("find the cgroup {controller} controller"),
                    source: io::Error::from_raw_os_error(libc::ENOENT),
                    hint: if controller == "cpu" {
                        "no cgroup v1 mount has it and no cgroup2 mount lists it in cgroup.controllers; mount it, or give --cpu-quota 0"
                    } else {
                        "no cgroup v1 mount has it and no cgroup2 mount lists it in cgroup.controllers; mount it, or run without --jail"
                    },
                });
            };
            match plan.iter_mut().find(|(i, _)| *i == index) {
                Some((_, list)) => list.push(controller),
                None => plan.push((index, vec![controller])),
            }
        }
        for (index, controllers) in plan {
            let h = &hierarchies[index];
            let own = own_cgroup(h, controllers[0]).unwrap_or_else(|| "/".into());
            let parent = if h.v2 {
                let own_dir = cgroup_dir(h, &own);
                let parent = if own_dir == h.mount {
                    own_dir
                } else {
                    own_dir.parent().map_or(own_dir.clone(), Path::to_path_buf)
                };
                let enabled =
                    fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
                let missing: Vec<String> = controllers
                    .iter()
                    .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
                    .map(|c| format!("+{c}"))
                    .collect();
                if !missing.is_empty() {
                    write_file(&parent.join("cgroup.subtree_control"), &missing.join(" "))?;
                }
                parent
            } else {
                cgroup_dir(h, &own)
            };
            let dir = parent.join(name);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(step_err(format!("create cgroup {}", dir.display()), e));
                }
            }
            cgroup.dirs.push(dir.clone());
            for controller in controllers {
                match (controller, h.v2) {
                    ("memory", false) => write_file(
                        &dir.join("memory.limit_in_bytes"),
                        &limits.memory.to_string(),
                    )?,
                    ("memory", true) => {
                        write_file(&dir.join("memory.max"), &limits.memory.to_string())?
                    }
                    ("pids", _) => write_file(&dir.join("pids.max"), &limits.pids.to_string())?,
                    ("cpu", false) => {
                        if let Some(quota) = limits.cpu_quota_us {
                            write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                            write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                        }
                    }
                    ("cpu", true) => {
                        if let Some(quota) = limits.cpu_quota_us {
                            write_file(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(cgroup)
    }

    /// Moves the calling process into every directory of the cgroup.
    fn join(&self) -> Result<(), JailError> {
        for dir in &self.dirs {
            // "0" is the writing process, whatever its pid namespace.
            write_file(&dir.join("cgroup.procs"), "0")?;
        }
        Ok(())
    }

    /// Removes the directories (once the VM's processes are gone). Failures are logged.
    fn remove(mut self) {
        for dir in std::mem::take(&mut self.dirs) {
            remove_cgroup_dir(&dir);
        }
    }
}

fn remove_cgroup_dir(dir: &Path) {
    // A cgroup whose last task just exited can be busy for a moment.
    for attempt in 0..100 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 99 => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                log::warn!("cannot remove cgroup {}: {e}", dir.display());
                return;
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } == self.owner {
            for dir in std::mem::take(&mut self.dirs) {
                remove_cgroup_dir(&dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_dir_strips_the_mount_root() {
        let h = Hierarchy {
            mount: "/sys/fs/cgroup/memory".into(),
            root: "/".into(),
            v2: false,
            controllers: vec!["memory".into()],
        };
        assert_eq!(
            cgroup_dir(&h, "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
        assert_eq!(cgroup_dir(&h, "/"), PathBuf::from("/sys/fs/cgroup/memory"));
        let h = Hierarchy {
            root: "/lxc/c1".into(),
            ..h
        };
        assert_eq!(
            cgroup_dir(&h, "/lxc/c1/x"),
            PathBuf::from("/sys/fs/cgroup/memory/x")
        );
    }

    #[test]
    fn bad_directories_and_ids_are_refused_before_anything_is_made() {
        let vm = VmConfig::new("k");
        let e = Jail::new(&JailConfig::new("/nonexistent/jail"), &vm).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/jail"), "{e}");
        let e = Jail::new(&JailConfig::new("/etc/hostname"), &vm).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = Jail::new(&JailConfig::new("/"), &vm).unwrap_err();
        assert!(e.to_string().contains("host's files"), "{e}");
        let mut c = JailConfig::new("/tmp");
        c.uid = Some(0);
        let e = Jail::new(&c, &vm).unwrap_err();
        assert!(e.to_string().contains("non-zero"), "{e}");
    }
}
