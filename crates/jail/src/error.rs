//! The jail's errors. Each names the thing that went wrong by its value (a directory, ids, a
//! limit, a cgroup controller) and the step, and where there is one the fix in the library's
//! terms. None names a command-line option: a front end adds its own hint (the `vmm` CLI appends
//! e.g. "give one with --jail" to [`JailError::NotADirectory`]).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why the jail could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail directory does not exist or cannot be resolved.
    #[error("cannot use '{}' as the jail's root: {source}", dir.display())]
    DirUnusable {
        /// The directory asked for.
        dir: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The jail directory is not a directory.
    #[error(
        "'{}' is not a directory: the jail needs an empty directory for the VMM's root",
        path.display()
    )]
    NotADirectory {
        /// The path asked for.
        path: PathBuf,
    },
    /// The jail directory is the host's root.
    #[error(
        "'/' as the jail's root would leave the host's files visible: the jail needs an empty \
         directory"
    )]
    HostRoot,
    /// The jail directory could be swapped or seen by others: it must be empty, owned by root and
    /// writable by no one else, on a path without symbolic links.
    #[error(
        "'{}' cannot be the jail's root: {problem}; the jail needs an empty directory owned by \
         root that only root can write (as root: mkdir -m 0755 DIR)",
        dir.display()
    )]
    DirNotSafe {
        /// The directory asked for.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The jailed VMM would run as root, or keep its ids: 0 is root, and 4294967295 is -1, which
    /// set*id() read as "leave unchanged".
    #[error(
        "{kind} {id}: the jailed VMM runs as an unprivileged user and needs ids from 1 to \
         4294967294 (0 is root; 4294967295 is -1, which leaves the id unchanged)"
    )]
    BadId {
        /// Which id: `uid`, `gid`, or `jail id` (the default of both).
        kind: &'static str,
        /// The id asked for.
        id: u32,
    },
    /// After the switch the process's real, effective and saved ids are not all the ones asked
    /// for; the jail stops rather than run the guest with them.
    #[error(
        "the ids did not change as asked: uid {uid} wanted, real/effective/saved {uids:?}; gid \
         {gid} wanted, {gids:?}; {groups} supplementary groups left"
    )]
    IdsNotApplied {
        /// The user id asked for.
        uid: u32,
        /// The group id asked for.
        gid: u32,
        /// getresuid after the switch.
        uids: [u32; 3],
        /// getresgid after the switch.
        gids: [u32; 3],
        /// getgroups after the switch.
        groups: usize,
    },
    /// The VM's cgroup already exists: another VM may be in it.
    #[error(
        "cgroup {} already exists: another VM may be using this id; give another id, or remove \
         the cgroup if no VM runs in it (rmdir it)",
        dir.display()
    )]
    CgroupExists {
        /// The cgroup directory.
        dir: PathBuf,
    },
    /// The supervisor died before the jail closed (the child would outlive it).
    #[error("the jail's supervisor is gone: stopping the jailed VMM")]
    SupervisorGone,
    /// The cgroup memory limit is below the guest's RAM.
    #[error(
        "a memory limit of {limit_mib} MiB is less than the guest's {ram_mib} MiB of RAM plus the \
         VMM's {overhead_mib} MiB: the VMM would be killed once the guest touches its RAM"
    )]
    MemoryLimitTooLow {
        /// The limit asked for, in MiB.
        limit_mib: u64,
        /// The guest's RAM, in MiB.
        ram_mib: u64,
        /// What the VMM needs beyond the guest's RAM ([`crate::MEMORY_OVERHEAD`]), in MiB.
        overhead_mib: u64,
    },
    /// The jail was entered or closed while the process had more than one thread.
    #[error(
        "cannot {step}: the VMM has {threads} threads, and only a single-threaded process can"
    )]
    Threads {
        /// What the jail was doing.
        step: &'static str,
        /// The number of threads.
        threads: usize,
    },
    /// The directory of a socket the VMM bound, cloned for the jailed VMM to connect to sockets
    /// in, does not hold that socket: the directory was swapped or the socket moved since.
    #[error(
        "'{}' does not hold the socket '{name}' the VMM bound there: the directory or the \
         socket was replaced while the jail was set up",
        dir.display()
    )]
    SocketDirChanged {
        /// The socket's directory, as named.
        dir: PathBuf,
        /// The socket's file name.
        name: String,
    },
    /// A path holds a NUL byte, which no system call takes.
    #[error("'{}' contains a NUL byte", path.display())]
    NulInPath {
        /// The path.
        path: PathBuf,
    },
    /// A step failed for want of privileges.
    #[error("jail: cannot {step}: {source}; the jail needs root (CAP_SYS_ADMIN)")]
    NeedRoot {
        /// What the jail was doing, with the path or value.
        step: String,
        /// The system's error (EPERM or EACCES).
        #[source]
        source: io::Error,
    },
    /// No cgroup hierarchy holds a controller the limits need.
    #[error(
        "jail: cannot find the cgroup {controller} controller: no cgroup v1 mount has it and no \
         cgroup2 mount lists it in cgroup.controllers; mount it"
    )]
    ControllerMissing {
        /// The controller (`memory`, `pids`, `cpu`).
        controller: &'static str,
    },
    /// cgroup v2: a cgroup on the way to the VM's has processes, so it cannot give controllers to
    /// its children.
    #[error(
        "jail: cannot write '{value}' to {}: {source} (cgroup v2 lets a cgroup that has \
         processes give no controllers to its children; start the VMM in a cgroup of its own \
         whose parent has no processes (systemd-run --scope, a service, or move that cgroup's \
         processes into a child cgroup))",
        control.display()
    )]
    CgroupBusy {
        /// The `cgroup.subtree_control` file.
        control: PathBuf,
        /// What was to be written (`+memory +pids`).
        value: String,
        /// The system's error (EBUSY).
        #[source]
        source: io::Error,
    },
    /// cgroup v2: a cgroup above does not offer a controller to its children.
    #[error(
        "jail: cannot write '{value}' to {}: {source}; a cgroup above does not offer this \
         controller (see its cgroup.controllers): enable it there",
        control.display()
    )]
    ControllerNotOffered {
        /// The `cgroup.subtree_control` file.
        control: PathBuf,
        /// What was to be written (`+memory +pids +cpu`).
        value: String,
        /// The system's error (ENOENT).
        #[source]
        source: io::Error,
    },
    /// A system call of the jail set-up failed.
    #[error("jail: cannot {step}: {source}")]
    Step {
        /// What the jail was doing, with the path or value.
        step: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The supervisor's seccomp filter could not be built or installed.
    #[error("cannot set up the seccomp filter of the supervisor thread: {0}")]
    Seccomp(String),
}

/// `step` failed with `source`; a permission error says that the jail needs root.
pub(crate) fn step_err(step: impl Into<String>, source: io::Error) -> JailError {
    let step = step.into();
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => JailError::NeedRoot { step, source },
        _ => JailError::Step { step, source },
    }
}

/// The result of a libc call that returns -1 and sets errno on failure.
pub(crate) fn check(
    ret: libc::c_int,
    step: impl FnOnce() -> String,
) -> Result<libc::c_int, JailError> {
    if ret == -1 {
        Err(step_err(step(), io::Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

pub(crate) fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::NulInPath {
        path: path.to_path_buf(),
    })
}
