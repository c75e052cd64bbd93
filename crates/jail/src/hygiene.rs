//! What the jailed VMM must not inherit from whoever started it: open descriptors, environment
//! variables, a permissive umask, a blocked signal mask. The child drops them right after the
//! fork, before it opens anything.

use std::fs;
use std::io;
use std::os::fd::RawFd;

use crate::error::{check, step_err, JailError};

/// Debug builds keep this variable: the tests use it to make a jailed thread call what its
/// seccomp filter forbids (crates/vm/src/seccomp.rs). Release builds keep nothing.
#[cfg(debug_assertions)]
const KEPT_FOR_TESTS: &[&str] = &["VMM_SECCOMP_TEST_FORBIDDEN"];
#[cfg(not(debug_assertions))]
const KEPT_FOR_TESTS: &[&str] = &[];

/// Closes every descriptor but 0, 1, 2 and `keep` (a descriptor the parent handed in, such as the
/// host's `/`, a secret or a directory to `openat` past the pivot, would otherwise survive into
/// the jail). Then makes sure 0, 1 and 2 are open, on /dev/null if they were closed, so that no
/// file the VMM opens later (a disk image) lands on them and receives its log lines.
pub(crate) fn close_inherited_fds(keep: &[RawFd]) -> Result<(), JailError> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    let mut first: u32 = 3;
    for fd in keep {
        let fd = fd as u32;
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close_range(first, u32::MAX)?;
    for fd in 0..=2 {
        // SAFETY: F_GETFD on a descriptor number only reads its flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a valid C string; the descriptor is owned by no Rust object (it was closed).
            let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            check(null, || {
                "open /dev/null for a closed standard descriptor".into()
            })?;
            if null != fd {
                // SAFETY: both descriptors are open and `fd` was closed; `null` is ours to close.
                let ret = unsafe { libc::dup2(null, fd) };
                // SAFETY: as above.
                unsafe { libc::close(null) };
                check(ret, || format!("open /dev/null as descriptor {fd}"))?;
            }
        }
    }
    Ok(())
}

fn close_range(first: u32, last: u32) -> Result<(), JailError> {
    // SAFETY: the caller owns every descriptor in the range except those it keeps, which are
    // outside it; no Rust object refers to the ones closed (see `Jail::fork`).
    let ret = unsafe { libc::close_range(first, last, 0) };
    check(ret, || {
        format!("close the inherited descriptors {first} to {last}")
    })?;
    Ok(())
}

/// Empties the environment (HOME, TMPDIR, LD_*, secrets of the caller) and wipes the initial
/// environment block, which /proc/PID/environ shows and the process's memory still holds.
pub(crate) fn clear_environment() -> Result<(), JailError> {
    let kept: Vec<(&str, std::ffi::OsString)> = KEPT_FOR_TESTS
        .iter()
        .filter_map(|&name| Some((name, std::env::var_os(name)?)))
        .collect();
    // SAFETY: single-threaded (checked by `Jail::fork`); nothing holds a pointer from getenv.
    check(unsafe { libc::clearenv() }, || {
        "clear the environment".into()
    })?;
    wipe_initial_environment();
    for (name, value) in kept {
        std::env::set_var(name, value);
    }
    Ok(())
}

/// Zeroes the strings the kernel put on the stack at exec (env_start..env_end of
/// /proc/self/stat), which /proc/PID/environ shows, and where the process may, makes the range
/// empty.
fn wipe_initial_environment() {
    let Some((start, end)) = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| env_range(&s))
    else {
        log::warn!("jail: cannot find the initial environment in /proc/self/stat");
        return;
    };
    if end > start {
        // SAFETY: [start, end) is this process's initial environment block, mapped and writable
        // on the main stack; after clearenv nothing refers to it (glibc's environ no longer
        // points there and the standard library reads variables through getenv).
        unsafe { std::ptr::write_bytes(start as *mut u8, 0, (end - start) as usize) };
    }
    // SAFETY: prctl with integer arguments; PR_SET_MM_ENV_END only moves the recorded end.
    let ret = unsafe { libc::prctl(PR_SET_MM, PR_SET_MM_ENV_END, start, 0, 0) };
    // Without CAP_SYS_RESOURCE it stays, all zeroes.
    if ret == -1 {
        log::debug!(
            "jail: cannot empty /proc/self/environ's range: {}",
            io::Error::last_os_error()
        );
    }
}

const PR_SET_MM: libc::c_int = 35;
const PR_SET_MM_ENV_END: libc::c_ulong = 11;

/// (env_start, env_end) from a /proc/PID/stat text: fields 50 and 51, counted after the command
/// name, which may itself hold spaces and parentheses.
fn env_range(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    Some((fields.get(47)?.parse().ok()?, fields.get(48)?.parse().ok()?))
}

/// Files and sockets the VMM creates (a console's socket or output file) are its own: an
/// inherited umask of 0 would make a console socket anyone's to connect to.
pub(crate) fn restrict_umask() {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
}

/// An empty signal mask: a caller that blocked signals (SIGTERM, the vCPU kick) must not pass
/// that on to the VMM's threads, which inherit the mask of the thread that spawns them.
pub(crate) fn unblock_all_signals() -> Result<(), JailError> {
    // SAFETY: sigemptyset initialises the set.
    let empty = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    };
    // SAFETY: a valid set; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(step_err(
            "unblock every signal",
            io::Error::from_raw_os_error(ret),
        ));
    }
    Ok(())
}

/// A session of its own, with no controlling terminal: in the caller's session, a VMM whose stdin
/// is the caller's terminal could push input into the caller's shell (TIOCSTI) and signal its
/// process group. Reading and writing the terminal, and setting its mode, still work; the
/// supervisor, which stays in the caller's session, forwards SIGWINCH.
pub(crate) fn leave_the_session() -> Result<(), JailError> {
    // SAFETY: setsid has no preconditions; a forked child is never a process group leader.
    check(unsafe { libc::setsid() }, || {
        "leave the caller's session (setsid)".into()
    })?;
    Ok(())
}

/// The normal scheduling policy: a real-time one (SCHED_FIFO, SCHED_RR), which the caller may pass
/// on, would let the guest's vCPUs, which inherit it, starve the host's other tasks whatever the
/// cgroup's CPU quota (which limits normal tasks only).
pub(crate) fn normal_scheduling() -> Result<(), JailError> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid sched_param for SCHED_OTHER; this thread only.
    let ret = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
    check(ret, || "set the normal scheduling policy".into())?;
    Ok(())
}

/// Replaces a standard descriptor (0, 1, 2) that names a directory with /dev/null: the caller's
/// `< /` would otherwise hand the jailed VMM a way to `openat` past the pivot.
pub(crate) fn standard_fds_not_directories() -> Result<(), JailError> {
    for fd in 0..=2 {
        // SAFETY: a zeroed stat is a valid out buffer; fstat only reads the descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            continue;
        }
        // SAFETY: a valid C string.
        let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        check(null, || "open /dev/null".into())?;
        // SAFETY: both descriptors are open; `null` is ours to close; no Rust object owns `fd`.
        let ret = unsafe { libc::dup2(null, fd) };
        // SAFETY: as above.
        unsafe { libc::close(null) };
        check(ret, || format!("replace the directory on descriptor {fd}"))?;
    }
    Ok(())
}

/// Joins a new, empty session keyring: the caller's (with whatever keys it holds: Kerberos,
/// ecryptfs, cifs) stays out of the jail.
pub(crate) fn leave_the_callers_keyrings() -> Result<(), JailError> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: a NULL name asks for a new anonymous session keyring; no memory is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if ret < 0 {
        // A kernel without keys has no keyring to leak.
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(step_err("join a new session keyring", e));
        }
    }
    Ok(())
}

/// The normal CPU and I/O priorities (nice 0, best-effort I/O), and no way back to higher ones
/// (RLIMIT_NICE and RLIMIT_RTPRIO 0): a guest's work must not run ahead of the host's because
/// whoever started vmm was itself favoured (`nice -n -15`, `ionice -c1`).
pub(crate) fn normal_priorities() -> Result<(), JailError> {
    // SAFETY: setpriority on this process with a plain value.
    let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
    check(ret, || "set nice 0".into())?;
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: ioprio_set on this process with the default best-effort level (4).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 4,
        )
    };
    check(ret as libc::c_int, || {
        "set the best-effort I/O class".into()
    })?;
    for (resource, name) in [
        (libc::RLIMIT_NICE, "RLIMIT_NICE"),
        (libc::RLIMIT_RTPRIO, "RLIMIT_RTPRIO"),
    ] {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid rlimit for this process.
        let ret = unsafe { libc::setrlimit(resource, &zero) };
        check(ret, || format!("set {name} to 0"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_range_is_read_after_the_command_name() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[47] = "140000".into();
        fields[48] = "140100".into();
        let stat = format!("12 (a) b (c) {}", fields.join(" "));
        assert_eq!(env_range(&stat), Some((140000, 140100)));
        assert_eq!(env_range("12 (short) R 1"), None);
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        let (start, end) = env_range(&own).unwrap();
        assert!(start > 0 && end >= start, "{start} {end}");
    }
}
