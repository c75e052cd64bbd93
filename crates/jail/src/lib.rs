//! The jail: run the VMM in its own namespaces, cgroup and empty root, as an unprivileged user
//! with no capabilities, so that a guest that breaks out of KVM into the VMM holds nothing worth
//! having.
//!
//! The `vmm` CLI composes it with the `vm` crate, which knows nothing of namespaces or cgroups:
//! the jail is told what it needs of the VM as plain values ([`VmSpec`]) and declares the system
//! calls of its supervisor itself (module `seccomp`).
//!
//! # Order, and why
//! ```text
//! vmm (root, host namespaces)
//!   Jail::new     check the ids; open DIR once (no symbolic links) and check it; draw an id;
//!                 remove cgroups of dead supervisors; create and configure vmm-<id> (v1 and/or v2)
//!   Jail::fork    block SIGINT/TERM/HUP/QUIT/CHLD; unshare(CLONE_NEWPID); lifeline pipe; fork
//!   ├─ parent = Supervisor: waits; passes SIGTERM on (SIGKILL if the child has not ended its
//!   │   shutdown timeout later), turns SIGINT/HUP/QUIT into SIGKILL of it and passes SIGWINCH on; restores the terminal; removes the cgroup(s) and socket files; exits
//!   │   with the child's status
//!   └─ child (pid 1 of the new pid namespace): parent-death signal, lifeline checked; close every
//!       inherited descriptor but 0-2; empty the environment and signal mask; setsid; umask 077;
//!       normal scheduling; join the cgroup(s); unshare mount, ipc, uts and (unless a tap is used)
//!       net namespaces; make every mount private; reopen DIR in the new namespace (same inode);
//!       clone the directory of VmSpec::connect_beside's socket as a detached read-only mount
//!       (checked to hold that socket)                                            -> Jailed
//!        vm::Vm::new      opens /dev/kvm, kernel, initrd, disks, taps, ptys, sockets; creates the
//!                         VM (its fd belongs to this process's mm) and loads the guest
//!        Jailed::lock_down  bind DIR read-only through its descriptor, pivot_root into it, drop
//!                         the old root; fchdir into the socket directory's mount; hostname; rlimits; bounding set, setgroups, setresgid,
//!                         setresuid (checked with getresuid/getresgid), capabilities,
//!                         no_new_privs, parent-death signal, lifeline checked
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
//! - A pid-namespace init ignores signals it has no handler for, even SIGTERM from outside: the
//!   VMM handles SIGTERM (its guest's power button), so the supervisor passes SIGTERM on, and
//!   kills the child itself if it has not ended [`supervisor::SHUTDOWN_MARGIN`] after its own
//!   shutdown timeout; other termination signals become SIGKILL of the child (the VMM keeps no
//!   state a clean exit would save: disk writes are pwrite()s to the image). It restores the
//!   terminal mode it saved before the fork.

mod cgroup;
mod error;
mod hygiene;
mod lockdown;
mod root;
mod seccomp;
mod supervisor;
pub mod sys;

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use cgroup::{Cgroup, CgroupHost, Limits};
pub use error::JailError;
use error::{check, step_err};
pub use lockdown::Jailed;
use lockdown::{set_parent_death_signal, supervisor_gone};
use root::JailRoot;
pub use supervisor::Supervisor;
use supervisor::{saved_termios, supervised_signals};

/// Without a given id, the jail draws one at random from `ID_BASE` to 2^31 - 2 (getrandom): an id
/// no account uses (above the usual /etc/subuid ranges, below 2^31). It names the cgroup
/// `vmm-<id>` and is the default uid and gid. Creating that cgroup (mkdir, which fails if it
/// exists) decides that no live VM has it; on a collision the jail draws again. Pids are no such
/// id: two VMMs in different pid namespaces can have the same pid. A shared id such as `nobody`
/// would let RLIMIT_NPROC, which counts every task of a uid on the host, add up the threads of
/// all jailed VMs (the tenth VM could not start its vCPUs), and would give two compromised VMMs
/// the same identity.
pub const ID_BASE: u32 = 2_000_000_000;
/// How many random ids are drawn before the jail gives up (each taken one is a live VM's).
const ID_DRAWS: usize = 16;
/// The default cgroup memory limit is the guest's RAM plus this: the VMM's own memory, page
/// tables, KVM's per-VM and per-vCPU kernel memory and the page cache of disk I/O, which
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

/// What the user asked for: the jail directory, and the ids and limits if not the defaults.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The directory that becomes the VMM's root, bound read-only: an existing empty directory
    /// owned by root that no one else can write, on a path without symbolic links.
    pub dir: PathBuf,
    /// The jail's id: its cgroup is `vmm-<id>`, which must not exist yet; the default uid and
    /// gid. Default: drawn at random (see [`ID_BASE`]).
    pub id: Option<u32>,
    /// The user id to run as (1 to 4294967294); default the jail's id.
    pub uid: Option<u32>,
    /// The group id to run as (1 to 4294967294); default the jail's id.
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
            id: None,
            uid: None,
            gid: None,
            memory_limit: None,
            cpu_quota: None,
        }
    }
}

/// What the jail needs to know of the VM it will hold, as plain values (the CLI takes them from
/// the VM's configuration): the default limits follow from them, and they decide what stays
/// reachable from inside.
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    /// Guest RAM in bytes; the default memory limit is this plus [`MEMORY_OVERHEAD`].
    pub memory_bytes: u64,
    /// The number of vCPUs; the default CPU quota is this plus one core, the task limits this plus
    /// [`EXTRA_TASKS`].
    pub vcpus: u8,
    /// The most bytes each disk image file may hold while the guest writes it (a raw image's
    /// size: writes never grow it; a qcow2 image's bound, `vm::disk_growth_bound`): RLIMIT_FSIZE
    /// is the largest, 1 without disks.
    pub disk_sizes: Vec<u64>,
    /// The size cap of a console's or the serial port's output file, if one writes to a file:
    /// RLIMIT_FSIZE is then the larger of it and the largest disk.
    pub output_file_max: Option<u64>,
    /// Socket files the VMM created (console backends, bound before the fork); the supervisor
    /// removes each at the end (the jailed VMM cannot reach them) if it is still that socket.
    pub sockets: Vec<SocketSpec>,
    /// A socket (also in `sockets`) beside which the jailed VMM connects to other sockets by
    /// name (virtio-vsock's `PATH_<port>`). Its directory, and nothing above it, stays
    /// reachable: in the new mount namespace the jail clones that directory as a mount of its
    /// own, detached from every tree (so `..` at its top goes nowhere), read-only, nosuid,
    /// nodev, noexec, checks that it holds this very socket, and makes it the VMM's working
    /// directory at lock-down. What the VMM may connect to there is then up to the sockets'
    /// modes: it runs as the jail's uid and gid.
    pub connect_beside: Option<SocketSpec>,
    /// Descriptors the VMM may open at run time beyond [`EXTRA_FDS`] (virtio-vsock's host
    /// sockets): RLIMIT_NOFILE grows by as many.
    pub extra_fds: u64,
    /// Whether the VM uses host tap devices: the VMM then keeps the host's net namespace.
    pub host_network: bool,
    /// Whether seccomp filters are on: the supervisor then confines itself with its own too.
    pub seccomp: bool,
    /// How long the VMM gives its guest to power off after SIGTERM. The supervisor passes SIGTERM
    /// on, and stops the jailed VMM itself if it has not ended this long (plus a margin) after
    /// the first one.
    pub shutdown_timeout: std::time::Duration,
}

/// A socket file the VMM created: its path and the identity of its inode when it was bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    /// Where it was bound.
    pub path: PathBuf,
    /// Its device number (st_dev).
    pub dev: u64,
    /// Its inode number (st_ino).
    pub ino: u64,
    /// The listening descriptor, bound before the fork: the jailed VMM keeps it open (it is the
    /// one descriptor from before the fork that is the VMM's own).
    pub fd: std::os::fd::RawFd,
}

/// A jail, checked and with its cgroup made, ready to fork.
#[derive(Debug)]
pub struct Jail {
    root: JailRoot,
    id: u32,
    uid: u32,
    gid: u32,
    new_netns: bool,
    cgroup: Cgroup,
    /// RLIMIT_FSIZE: the largest disk bound (`VmSpec::disk_sizes`) or output file cap.
    fsize: Option<u64>,
    nproc: u64,
    /// Socket files the VMM created; the supervisor removes them (the jailed VMM cannot reach them).
    sockets: Vec<SocketSpec>,
    /// [`VmSpec::connect_beside`].
    connect_beside: Option<SocketSpec>,
    /// [`VmSpec::extra_fds`].
    extra_fds: u64,
    /// Whether the supervisor filters itself ([`VmSpec::seccomp`]).
    seccomp: bool,
    /// [`VmSpec::shutdown_timeout`].
    shutdown_timeout: std::time::Duration,
}

impl Jail {
    /// Checks the ids, limits and jail directory (opened here, once, and used through that
    /// descriptor from then on), then creates the cgroup `vmm-<id>` with its limits, derived from
    /// `vm` unless `config` overrides them. Needs root.
    pub fn new(config: &JailConfig, vm: &VmSpec) -> Result<Jail, JailError> {
        for (kind, id) in [("uid", config.uid), ("gid", config.gid)] {
            check_id(kind, id)?;
        }
        if config.uid.is_none() || config.gid.is_none() {
            check_id("jail id", config.id)?;
        }
        let limits = Limits::new(config, vm)?;
        let root = JailRoot::open(&config.dir)?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(JailError::NeedRoot {
                step: "set up namespaces, a cgroup and a new root".into(),
                source: io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        let mut fsize = Some(1);
        for &len in &vm.disk_sizes {
            fsize = fsize.map(|f: u64| f.max(len));
        }
        if let Some(max) = vm.output_file_max {
            fsize = fsize.map(|f| f.max(max));
        }
        let host = CgroupHost::current();
        let (id, cgroup) = match config.id {
            Some(id) => (id, Cgroup::create(&host, &format!("vmm-{id}"), &limits)?),
            None => {
                let mut draws = 0;
                loop {
                    let id = random_id()?;
                    draws += 1;
                    match Cgroup::create(&host, &format!("vmm-{id}"), &limits) {
                        Ok(cgroup) => break (id, cgroup),
                        Err(JailError::CgroupExists { dir }) if draws < ID_DRAWS => {
                            log::debug!("jail: {} exists, drawing another id", dir.display());
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        };
        log::info!("jail: id {id}, cgroup vmm-{id}");
        Ok(Jail {
            root,
            id,
            uid: config.uid.unwrap_or(id),
            gid: config.gid.unwrap_or(id),
            new_netns: !vm.host_network,
            cgroup,
            fsize,
            nproc: limits.pids,
            sockets: vm.sockets.clone(),
            connect_beside: vm.connect_beside.clone(),
            extra_fds: vm.extra_fds,
            seccomp: vm.seccomp,
            shutdown_timeout: vm.shutdown_timeout,
        })
    }

    /// The jail's id: the cgroup's name is `vmm-<id>`.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The cgroup directories made for this VM (one per hierarchy: several on cgroup v1).
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.cgroup.dirs
    }

    /// Creates the pid namespace and forks. The parent gets a [`Supervisor`] to wait with; the
    /// child, pid 1 of the new namespace, has joined the cgroup and entered its own mount, ipc, uts
    /// and (without taps) net namespaces, and gets [`Jailed`]: build the VM, then
    /// [`Jailed::lock_down`], then run it. Call while the process is single-threaded.
    ///
    /// The child starts clean: it dies with the supervisor (parent-death signal, and a pipe only
    /// the supervisor holds open, checked after setting it), it closes every descriptor but 0, 1
    /// and 2 (opened on /dev/null if they were closed), empties its environment and its signal
    /// mask, leaves the caller's session, sets the umask to 077 and the normal scheduling policy. So the caller must hold no descriptor it means to use in
    /// the child: open files after the fork (as `vm::Vm::new` does).
    pub fn fork(self) -> Result<Forked, JailError> {
        let threads = thread_count();
        if threads > 1 {
            return Err(JailError::Threads {
                step: "enter the jail",
                threads,
            });
        }
        let signals = supervised_signals();
        // SAFETY: an all-zero sigset_t is a valid value to be overwritten by pthread_sigmask.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        check(
            // SAFETY: both sets are valid; blocking signals in this (only) thread.
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, &mut old_mask) },
            || "block signals".into(),
        )?;
        // An ignored SIGCHLD, which a caller passes on through exec, makes the kernel reap the
        // child itself and send no SIGCHLD: the supervisor would wait for ever. The supervised
        // signals, blocked now and taken with sigwaitinfo, get their default action back (SIGHUP
        // excepted: `nohup` ignores it on purpose).
        for sig in [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGQUIT] {
            // SAFETY: SIG_DFL is a valid disposition for these signals, so this cannot fail.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
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
        let (alive_read, alive_write) = match lifeline() {
            Ok(pipe) => pipe,
            Err(e) => {
                restore_mask(&old_mask);
                return Err(e);
            }
        };
        // SAFETY: the process is single-threaded (checked above), so the child may run any code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            restore_mask(&old_mask);
            return Err(step_err("fork the jailed VMM", io::Error::last_os_error()));
        }
        if pid > 0 {
            drop(alive_read);
            return Ok(Forked::Supervisor(Supervisor {
                child: pid,
                signals,
                termios,
                cgroup: self.cgroup,
                sockets: self.sockets,
                seccomp: self.seccomp,
                shutdown_timeout: self.shutdown_timeout,
                _alive: alive_write,
            }));
        }
        // The child. First tie its life to the supervisor's: the parent-death signal, then the
        // check that the supervisor did not die before it was set (the child is pid 1 of its
        // namespace, so getppid() says 0 whoever the parent is; the pipe's write end, which only
        // the supervisor now holds, tells).
        drop(alive_write);
        set_parent_death_signal()?;
        if supervisor_gone(&alive_read) {
            return Err(JailError::SupervisorGone);
        }
        // Then drop what the caller handed down. No Rust object of this crate refers to a
        // descriptor closed here but the write end, dropped above.
        let mut keep = vec![alive_read.as_raw_fd(), self.root.raw_fd()];
        keep.extend(self.sockets.iter().map(|s| s.fd));
        hygiene::close_inherited_fds(&keep)?;
        hygiene::standard_fds_not_directories()?;
        hygiene::leave_the_callers_keyrings()?;
        hygiene::unblock_all_signals()?;
        hygiene::leave_the_session()?;
        hygiene::clear_environment()?;
        hygiene::restrict_umask();
        hygiene::normal_scheduling()?;
        hygiene::normal_priorities()?;
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
        check(
            // SAFETY: the path is a valid C string; the other arguments may be null for MS_PRIVATE.
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
        let root = self.root.reopen_in_this_namespace()?;
        // A mount's clone can only be made of a mount of this namespace: made here, after the
        // unshare, and checked to be the directory of the socket bound before the fork.
        let connect_dir = match &self.connect_beside {
            Some(socket) => Some(root::socket_dir_mount(socket)?),
            None => None,
        };
        Ok(Forked::Jailed(Jailed {
            root,
            connect_dir,
            extra_fds: self.extra_fds,
            alive: alive_read,
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

/// 1 to 4294967294: 0 is root, and 4294967295 ((uid_t)-1) tells set*id() to leave an id as it
/// is, so the VMM would stay root.
fn check_id(kind: &'static str, id: Option<u32>) -> Result<(), JailError> {
    match id {
        Some(id @ (0 | u32::MAX)) => Err(JailError::BadId { kind, id }),
        _ => Ok(()),
    }
}

/// A random id from [`ID_BASE`] to 2^31 - 2.
fn random_id() -> Result<u32, JailError> {
    let mut bytes = [0u8; 4];
    // SAFETY: the buffer is valid for 4 bytes.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 4 {
        return Err(step_err(
            "draw a random jail id (getrandom)",
            io::Error::last_os_error(),
        ));
    }
    Ok(ID_BASE + u32::from_ne_bytes(bytes) % (i32::MAX as u32 - ID_BASE))
}

/// A pipe whose write end only the supervisor keeps: the child sees POLLHUP on the read end once
/// the supervisor is gone.
fn lifeline() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(ret, || "create the supervisor's lifeline pipe".into())?;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn thread_count() -> usize {
    fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output file keeps RLIMIT_FSIZE: the larger of the largest disk and the file's cap.
    #[test]
    fn an_output_file_keeps_the_file_size_limit_at_its_cap() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let mut vm = VmSpec {
            memory_bytes: 128 << 20,
            vcpus: 1,
            disk_sizes: vec![4 << 20],
            output_file_max: Some(1 << 30),
            ..VmSpec::default()
        };
        // A directory the jail accepts: empty, root's, mode 0755.
        let dir = std::env::temp_dir().join(format!("vmm-jail-fsize-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let jail = Jail::new(&JailConfig::new(&dir), &vm).unwrap();
        assert_eq!(jail.fsize, Some(1 << 30));
        drop(jail);
        vm.output_file_max = Some(1 << 20);
        let jail = Jail::new(&JailConfig::new(&dir), &vm).unwrap();
        assert_eq!(jail.fsize, Some(4 << 20));
        drop(jail);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn bad_directories_and_ids_are_refused_before_anything_is_made() {
        let vm = VmSpec {
            memory_bytes: 128 << 20,
            vcpus: 1,
            ..VmSpec::default()
        };
        let e = Jail::new(&JailConfig::new("/nonexistent/jail"), &vm).unwrap_err();
        assert!(matches!(e, JailError::DirUnusable { .. }), "{e:?}");
        assert!(e.to_string().contains("'/nonexistent/jail'"), "{e}");
        assert!(e.to_string().contains("No such file or directory"), "{e}");
        let e = Jail::new(&JailConfig::new("/etc/hostname"), &vm).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("'/etc/hostname' is not a directory"),
            "{e}"
        );
        let e = Jail::new(&JailConfig::new("/"), &vm).unwrap_err();
        assert!(matches!(e, JailError::HostRoot), "{e:?}");
        assert!(e.to_string().contains("host's files"), "{e}");
        for (uid, gid, kind, id) in [
            (Some(0), Some(7), "uid", 0),
            (Some(7), Some(u32::MAX), "gid", u32::MAX),
            (Some(u32::MAX), None, "uid", u32::MAX),
        ] {
            let mut c = JailConfig::new("/nonexistent/jail");
            c.uid = uid;
            c.gid = gid;
            let e = Jail::new(&c, &vm).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "{kind} {id}: the jailed VMM runs as an unprivileged user and needs ids from \
                     1 to 4294967294 (0 is root; 4294967295 is -1, which leaves the id unchanged)"
                )
            );
        }
        // A given jail id is the default uid and gid: the same range.
        let mut c = JailConfig::new("/nonexistent/jail");
        c.id = Some(u32::MAX);
        c.uid = Some(7);
        let e = Jail::new(&c, &vm).unwrap_err();
        assert!(e.to_string().starts_with("jail id 4294967295:"), "{e}");
    }

    #[test]
    fn directories_others_could_swap_or_see_are_refused() {
        let vm = VmSpec {
            memory_bytes: 128 << 20,
            vcpus: 1,
            ..VmSpec::default()
        };
        let base = std::env::temp_dir().join(format!("jail-unit-dirs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let refused = |dir: &std::path::Path, want: &str| {
            let e = Jail::new(&JailConfig::new(dir), &vm).unwrap_err();
            assert!(matches!(e, JailError::DirNotSafe { .. }), "{e:?}");
            assert!(e.to_string().contains(want), "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("'{}' cannot be the jail's root", dir.display())),
                "{e}"
            );
        };
        // Not empty: the host's /etc and /proc.
        refused(std::path::Path::new("/etc"), "it is not empty");
        refused(std::path::Path::new("/proc"), "it is not empty");
        // A symbolic link, to /etc or to a good directory alike.
        let good = base.join("good");
        fs::create_dir(&good).unwrap();
        std::os::unix::fs::symlink("/etc", base.join("to-etc")).unwrap();
        std::os::unix::fs::symlink(&good, base.join("to-good")).unwrap();
        refused(&base.join("to-etc"), "symbolic link");
        refused(&base.join("to-good"), "symbolic link");
        // A symbolic link on the way.
        std::os::unix::fs::symlink(&base, base.join("up")).unwrap();
        refused(&base.join("up/good"), "symbolic link");
        // Writable by others, or someone else's.
        use std::os::unix::fs::PermissionsExt;
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        refused(&open, "mode 1777");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = base.join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(1000), None).unwrap();
            refused(&theirs, "belongs to uid 1000");
        }
        fs::remove_dir_all(&base).unwrap();
    }
}
