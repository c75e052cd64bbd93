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
//!   Jail::new     check DIR and ids; create and configure the cgroup(s) vmm-<pid> (v1 and/or v2)
//!   Jail::fork    block SIGINT/TERM/HUP/QUIT/CHLD; unshare(CLONE_NEWPID); fork
//!   ├─ parent = Supervisor: waits; turns SIGINT/TERM/HUP/QUIT into SIGKILL of the child; restores
//!   │   the terminal; removes the cgroup(s) and socket files; exits with the child's status
//!   └─ child (pid 1 of the new pid namespace): join the cgroup(s); unshare mount, ipc, uts and
//!       (unless a tap is used) net namespaces; make every mount private          -> Jailed
//!        vm::Vm::new      opens /dev/kvm, kernel, initrd, disks, taps, ptys, sockets; creates the
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

mod cgroup;
mod error;
mod lockdown;
mod seccomp;
mod supervisor;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cgroup::{Cgroup, CgroupHost, Limits};
pub use error::JailError;
use error::{check, step_err};
use lockdown::set_parent_death_signal;
pub use lockdown::Jailed;
pub use supervisor::Supervisor;
use supervisor::{saved_termios, supervised_signals};

/// Without a given uid and gid the jailed VMM runs as uid = gid = this plus the supervisor's pid:
/// an id no account uses (above the usual /etc/subuid ranges, below 2^31) and unique among
/// running VMs, since live pids are. A shared id such as `nobody` would let RLIMIT_NPROC, which
/// counts every task of a uid on the host, add up the threads of all jailed VMs (the tenth VM
/// could not start its vCPUs), and would give two compromised VMMs the same identity.
pub const ID_BASE: u32 = 2_000_000_000;
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
    /// The size in bytes of each disk image: RLIMIT_FSIZE is the largest (writes never grow an
    /// image), 1 without disks.
    pub disk_sizes: Vec<u64>,
    /// The size cap of a console's or the serial port's output file, if one writes to a file:
    /// RLIMIT_FSIZE is then the larger of it and the largest disk.
    pub output_file_max: Option<u64>,
    /// Socket files the VMM created (console backends, bound before the fork); the supervisor
    /// removes each at the end (the jailed VMM cannot reach them) if it is still that socket.
    pub sockets: Vec<SocketSpec>,
    /// Whether the VM uses host tap devices: the VMM then keeps the host's net namespace.
    pub host_network: bool,
    /// Whether seccomp filters are on: the supervisor then confines itself with its own too.
    pub seccomp: bool,
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
}

/// A jail, checked and with its cgroup made, ready to fork.
#[derive(Debug)]
pub struct Jail {
    dir: PathBuf,
    uid: u32,
    gid: u32,
    new_netns: bool,
    cgroup: Cgroup,
    /// RLIMIT_FSIZE: the largest disk (writes never grow an image) or output file cap.
    fsize: Option<u64>,
    nproc: u64,
    /// Socket files the VMM created; the supervisor removes them (the jailed VMM cannot reach them).
    sockets: Vec<SocketSpec>,
    /// Whether the supervisor filters itself ([`VmSpec::seccomp`]).
    seccomp: bool,
}

impl Jail {
    /// Checks the jail directory and ids, then creates the cgroup `vmm-<pid>` with its limits,
    /// derived from `vm` unless `config` overrides them. Needs root.
    pub fn new(config: &JailConfig, vm: &VmSpec) -> Result<Jail, JailError> {
        let unusable = |source| JailError::DirUnusable {
            dir: config.dir.clone(),
            source,
        };
        let dir = match fs::metadata(&config.dir) {
            Ok(m) if m.is_dir() => fs::canonicalize(&config.dir).map_err(unusable)?,
            Ok(_) => {
                return Err(JailError::NotADirectory {
                    path: config.dir.clone(),
                })
            }
            Err(e) => return Err(unusable(e)),
        };
        if dir == Path::new("/") {
            return Err(JailError::HostRoot);
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let default_id = ID_BASE.saturating_add(pid.unsigned_abs());
        let (uid, gid) = (
            config.uid.unwrap_or(default_id),
            config.gid.unwrap_or(default_id),
        );
        if uid == 0 || gid == 0 {
            return Err(JailError::RootIds { uid, gid });
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(JailError::NeedRoot {
                step: "set up namespaces, a cgroup and a new root".into(),
                source: io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        let limits = Limits::new(config, vm)?;
        let mut fsize = Some(1);
        for &len in &vm.disk_sizes {
            fsize = fsize.map(|f: u64| f.max(len));
        }
        if let Some(max) = vm.output_file_max {
            fsize = fsize.map(|f| f.max(max));
        }
        let cgroup = Cgroup::create(&CgroupHost::current(), &format!("vmm-{pid}"), &limits)?;
        Ok(Jail {
            dir,
            uid,
            gid,
            new_netns: !vm.host_network,
            cgroup,
            fsize,
            nproc: limits.pids,
            sockets: vm.sockets.clone(),
            seccomp: vm.seccomp,
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
                seccomp: self.seccomp,
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
        let jail = Jail::new(&JailConfig::new("/tmp"), &vm).unwrap();
        assert_eq!(jail.fsize, Some(1 << 30));
        drop(jail);
        vm.output_file_max = Some(1 << 20);
        let jail = Jail::new(&JailConfig::new("/tmp"), &vm).unwrap();
        assert_eq!(jail.fsize, Some(4 << 20));
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
        let mut c = JailConfig::new("/tmp");
        c.uid = Some(0);
        c.gid = Some(7);
        let e = Jail::new(&c, &vm).unwrap_err();
        assert_eq!(
            e.to_string(),
            "uid 0, gid 7: the jailed VMM runs as an unprivileged user and needs non-zero ids"
        );
    }
}
