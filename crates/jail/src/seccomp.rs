//! The supervisor's seccomp filter: the system calls it makes while it waits for the jailed VMM
//! and cleans up after it. It stays root outside the jail, so it confines itself to these.
//!
//! A forbidden call traps (SECCOMP_RET_TRAP); the SIGSYS handler of [`seccomp_rules`], which
//! [`confine`] installs, reports it naming the thread `supervisor`, as the VMM's threads are named.
//!
//! The calls every filtered thread makes, the common `fcntl` commands, the argument rules and the
//! compilation come from [`seccomp_rules`], shared with the VMM's own filters; this module adds
//! the supervisor's calls and its `ioctl` and `kill` rules.
//!
//! Argument filters where they matter: `ioctl` only to restore the terminal's mode, `mmap` and
//! `mprotect` never with PROT_EXEC (no new code), `fcntl` by command, `sendto` only without a
//! destination, `kill` only SIGKILL, SIGTERM or SIGWINCH to the jailed VMM, `tgkill` only SIGABRT to this process
//! (abort on panic).

use seccomp_rules::{
    cond, no_exec, one_of, rule, send_connected, tgkill_self, Rules, COMMON, FCNTL_CMDS,
};
use seccompiler::{BackendError, BpfProgram, SeccompCmpOp};

use crate::error::JailError;

/// The system calls the supervisor may make with any arguments on top of
/// [`seccomp_rules::COMMON`] (what every VMM thread makes).
const ALLOWED: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvfrom,
    // Its own: reap the child, wait for signals, sleep while a cgroup is busy, remove socket
    // files (if still the VMM's: lstat first) and cgroup directories.
    libc::SYS_wait4,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_unlink,
    libc::SYS_rmdir,
];

/// The rules: syscall number to the rules (any of which allows it; none: always). `child` is the
/// only process the supervisor may kill.
fn rules(child: libc::pid_t) -> Result<Rules, BackendError> {
    let mut map = Rules::new();
    for &nr in COMMON.iter().chain(ALLOWED) {
        map.insert(nr, Vec::new());
    }
    // The terminal's mode restored after the jailed VMM ends.
    map.insert(
        libc::SYS_ioctl,
        vec![rule(vec![cond(1, SeccompCmpOp::Eq, libc::TCSETS)?])?],
    );
    let fcntl_cmds: Vec<u64> = FCNTL_CMDS.iter().map(|&c| c as u64).collect();
    map.insert(libc::SYS_fcntl, one_of(1, &fcntl_cmds)?);
    // send(2) on a connected socket: sendto with no destination address.
    map.insert(libc::SYS_sendto, send_connected()?);
    map.insert(libc::SYS_mmap, no_exec()?);
    map.insert(libc::SYS_mprotect, no_exec()?);
    // kill(the jailed VMM, SIGKILL, SIGTERM or SIGWINCH) only: SIGTERM asks the VMM to shut its
    // guest down, SIGWINCH passes a terminal resize on.
    let kill_child = |sig: libc::c_int| {
        rule(vec![
            cond(0, SeccompCmpOp::Eq, child as u64)?,
            cond(1, SeccompCmpOp::Eq, sig as u64)?,
        ])
    };
    map.insert(
        libc::SYS_kill,
        vec![
            kill_child(libc::SIGKILL)?,
            kill_child(libc::SIGTERM)?,
            kill_child(libc::SIGWINCH)?,
        ],
    );
    // tgkill(this process, any thread, SIGABRT).
    map.insert(libc::SYS_tgkill, tgkill_self(&[libc::SIGABRT as u64])?);
    Ok(map)
}

/// Compiles the supervisor's filter, which may kill `child`: the allow-list, everything else
/// traps.
fn compile(child: libc::pid_t) -> Result<BpfProgram, JailError> {
    rules(child)
        .and_then(seccomp_rules::compile)
        .map_err(|e| JailError::Seccomp(e.to_string()))
}

/// Confines the calling process's only thread to the supervisor's allow-list, which may kill
/// `child` (with SIGKILL, SIGTERM or SIGWINCH) and no other process. A forbidden call is reported by the SIGSYS handler
/// of [`seccomp_rules`], installed here first.
pub(crate) fn confine(child: libc::pid_t) -> Result<(), JailError> {
    seccomp_rules::report_forbidden_calls("supervisor")
        .map_err(|e| JailError::Seccomp(e.to_string()))?;
    let program = compile(child)?;
    seccompiler::apply_filter(&program).map_err(|e| JailError::Seccomp(e.to_string()))?;
    log::debug!("seccomp: filter of kind 'supervisor' on thread 'supervisor'");
    provoke_for_tests();
    Ok(())
}

/// Debug builds only: with `VMM_SECCOMP_TEST_FORBIDDEN=supervisor`, the supervisor makes a
/// forbidden call (opens a host file) right after its filter went on, as the VMM's threads do
/// for their kinds, so that the report can be checked.
#[cfg(debug_assertions)]
fn provoke_for_tests() {
    if std::env::var("VMM_SECCOMP_TEST_FORBIDDEN").is_ok_and(|v| v == "supervisor") {
        // SAFETY: openat with a valid C string; the filter traps it before the kernel runs it.
        unsafe { libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
    }
}

#[cfg(not(debug_assertions))]
fn provoke_for_tests() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_allows_only_the_supervisors_calls() {
        let program = compile(42).unwrap();
        assert!(!program.is_empty());
        // seccomp programs are limited to 4096 instructions.
        assert!(program.len() < 4096, "{} instructions", program.len());
        let rules = rules(42).unwrap();
        for nr in [
            libc::SYS_wait4,
            libc::SYS_rt_sigtimedwait,
            libc::SYS_rmdir,
            libc::SYS_kill,
            libc::SYS_ioctl,
        ] {
            assert!(rules.contains_key(&nr), "{nr}");
        }
        let event_loop_only = [libc::SYS_epoll_wait, libc::SYS_pwrite64, libc::SYS_accept4];
        for &nr in seccomp_rules::NEVER_ALLOWED
            .iter()
            .chain(seccomp_rules::SOCKET_CALLS)
            .chain(&event_loop_only)
        {
            assert!(!rules.contains_key(&nr), "{nr}");
        }
        // One ioctl (TCSETS), three kills (the child, SIGKILL, SIGTERM or SIGWINCH).
        assert_eq!(rules[&libc::SYS_ioctl].len(), 1);
        assert_eq!(rules[&libc::SYS_kill].len(), 3);
    }
}
