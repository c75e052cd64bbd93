//! Closing the jail in the jailed VMM: the new root, the host name, rlimits, and dropping every
//! privilege.

use crate::sys::{CapData, CapHeader, LINUX_CAPABILITY_VERSION_3};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};

use crate::cgroup::Cgroup;
use crate::error::{check, step_err, JailError};
use crate::root::JailRoot;
use crate::EXTRA_FDS;

/// The jailed VMM between the fork and the lock-down.
#[derive(Debug)]
pub struct Jailed {
    /// The jail directory, open since `Jail::new`: mounted and entered through this descriptor.
    pub(crate) root: JailRoot,
    /// The directory the VMM connects to sockets in by name ([`crate::VmSpec::connect_beside`]):
    /// a detached mount, made the working directory after the pivot.
    pub(crate) connect_dir: Option<OwnedFd>,
    /// [`crate::VmSpec::extra_fds`].
    pub(crate) extra_fds: u64,
    /// The read end of the pipe whose write end only the supervisor holds.
    pub(crate) alive: OwnedFd,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) fsize: Option<u64>,
    pub(crate) nproc: u64,
    /// Kept so its Drop runs here (a no-op in the child: only the creating process removes it).
    pub(crate) _cgroup: Cgroup,
}

impl Jailed {
    /// Closes the jail: from here on the process sees only the jail directory (read-only), runs as
    /// the jail's uid and gid with no capabilities and no_new_privs, under rlimits. Call after
    /// building the VM (`vm::Vm::new`) and before running it (`vm::Vm::run`), while the process
    /// is single-threaded.
    pub fn lock_down(self) -> Result<(), JailError> {
        let threads = settled_thread_count();
        if threads != 1 {
            return Err(JailError::Threads {
                step: "close the jail",
                threads,
            });
        }
        // Counted while /proc is still visible.
        let open_fds = highest_fd().saturating_add(1);
        let shown = self.root.path.display().to_string();
        self.root.pivot()?;
        if let Some(dir) = self.connect_dir {
            // The only relative paths the jailed VMM uses from here on are names in this
            // directory. Its descriptor stays open for the process's life: the detached mount
            // then stays as it is (closing the last descriptor of a detached mount unmounts it).
            // SAFETY: a descriptor we own.
            check(unsafe { libc::fchdir(dir.as_raw_fd()) }, || {
                "enter the directory of the sockets the VMM connects to".into()
            })?;
            let _kept = dir.into_raw_fd();
        }
        // SAFETY: the name is a valid buffer of the given length.
        check(unsafe { libc::sethostname(c"vmm".as_ptr(), 3) }, || {
            "set the host name".into()
        })?;
        let nofile = open_fds + EXTRA_FDS + self.extra_fds;
        set_rlimit(libc::RLIMIT_NOFILE, nofile, "RLIMIT_NOFILE")?;
        set_rlimit(libc::RLIMIT_NPROC, self.nproc, "RLIMIT_NPROC")?;
        // RLIMIT_FSIZE caps every write to a regular file, stdout and stderr redirected to a file
        // included, where guest output legitimately grows without bound; then it is left alone.
        // (An output file given to a console has its own cap, which the limit covers.) A write
        // past the limit must fail with EFBIG rather than kill the VMM with SIGXFSZ.
        match self.fsize {
            Some(fsize) if !is_regular_file(1) && !is_regular_file(2) => {
                // SAFETY: SIG_IGN for a signal that has no handler of ours.
                if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
                    return Err(step_err("ignore SIGXFSZ", io::Error::last_os_error()));
                }
                set_rlimit(libc::RLIMIT_FSIZE, fsize, "RLIMIT_FSIZE")?
            }
            _ => log::info!("jail: RLIMIT_FSIZE not set: guest output goes to a regular file"),
        }
        set_rlimit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
        drop_privileges(self.uid, self.gid)?;
        // Changing credentials cleared the parent-death signal: set it again, then check that the
        // supervisor did not die in between.
        set_parent_death_signal()?;
        if supervisor_gone(&self.alive) {
            return Err(JailError::SupervisorGone);
        }
        drop(self.alive);
        log::info!(
            "jail closed: root {shown}, uid {} gid {}, no capabilities",
            self.uid,
            self.gid
        );
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
    check(
        // SAFETY: prctl with integer arguments only.
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
    check_ids(uid, gid)?;
    // Leaving uid 0 already emptied the effective and permitted sets; the inheritable set is
    // emptied here, and all three are then checked.
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let empty = [CapData::default(); 2];
    check(
        // SAFETY: capset reads a version-3 header and two data structs, which is what we pass.
        unsafe { libc::syscall(libc::SYS_capset, &header, empty.as_ptr()) as i32 },
        || "empty the capability sets".into(),
    )?;
    let mut now = [CapData::default(); 2];
    check(
        // SAFETY: capget writes two data structs for a version-3 header.
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
    check(
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        || "set no_new_privs".into(),
    )?;
    Ok(())
}

/// Fails unless the real, effective and saved ids are all `uid` and `gid` and no supplementary
/// group is left: set*id() can succeed and change nothing (an id of -1).
fn check_ids(uid: u32, gid: u32) -> Result<(), JailError> {
    let (mut uids, mut gids) = ([u32::MAX; 3], [u32::MAX; 3]);
    // SAFETY: three valid out pointers each.
    let ret = unsafe {
        libc::getresuid(&mut uids[0], &mut uids[1], &mut uids[2])
            | libc::getresgid(&mut gids[0], &mut gids[1], &mut gids[2])
    };
    check(ret, || "read back the ids".into())?;
    // SAFETY: a size of 0 only counts the groups; the pointer is not written.
    let groups = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    check(groups, || "read back the supplementary groups".into())?;
    if uids != [uid; 3] || gids != [gid; 3] || groups != 0 || uid == 0 || gid == 0 {
        return Err(JailError::IdsNotApplied {
            uid,
            gid,
            uids,
            gids,
            groups: groups as usize,
        });
    }
    Ok(())
}

/// The jailed VMM dies with its supervisor (e.g. when that is SIGKILLed).
pub(crate) fn set_parent_death_signal() -> Result<(), JailError> {
    check(
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        || "set the parent-death signal".into(),
    )?;
    Ok(())
}

/// Whether the write end of `alive` (held by the supervisor alone) is closed: it died.
pub(crate) fn supervisor_gone(alive: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; no wait.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    // Nothing is ever written: any event (POLLHUP, POLLERR) or a failure means it is gone.
    ready != 0
}

fn is_regular_file(fd: libc::c_int) -> bool {
    // SAFETY: a zeroed stat is a valid out buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd number with a valid buffer; a closed fd only fails.
    (unsafe { libc::fstat(fd, &mut st) } == 0) && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
}

/// [`crate::thread_count`], after giving a thread that was just joined (`Vm::new`'s prep thread)
/// up to 100 ms to leave: the join returns when the thread has released its memory, and it stays
/// listed in /proc/self/task until the rest of its exit completes, microseconds later.
fn settled_thread_count() -> usize {
    for _ in 0..1000 {
        let threads = crate::thread_count();
        if threads == 1 {
            return 1;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    crate::thread_count()
}

fn highest_fd() -> u64 {
    fs::read_dir("/proc/self/fd").map_or(1024, |d| {
        d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(2)
    })
}
