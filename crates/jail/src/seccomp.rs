//! The supervisor's seccomp filter: the system calls it makes while it waits for the jailed VMM
//! and cleans up after it. It stays root outside the jail, so it confines itself to these.
//!
//! A forbidden call traps (SECCOMP_RET_TRAP); the SIGSYS handler the caller installed (see
//! [`crate::Supervisor::wait`]) reports it.
//!
//! Argument filters where they matter: `ioctl` only to restore the terminal's mode, `mmap` and
//! `mprotect` never with PROT_EXEC (no new code), `fcntl` by command, `sendto` only without a
//! destination, `kill` only SIGKILL to the jailed VMM, `tgkill` only SIGABRT to this process
//! (abort on panic).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::JailError;

/// The system calls the supervisor may make with any arguments.
const ALLOWED: &[i64] = &[
    // Memory management (glibc's malloc), locks, the return from a signal handler, logging to
    // stderr, process exit: what every VMM thread makes.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvfrom,
    // Its own: reap the child, wait for signals, sleep while a cgroup is busy, remove socket
    // files and cgroup directories.
    libc::SYS_wait4,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_unlink,
    libc::SYS_rmdir,
];

/// `fcntl` commands: flags, close-on-exec, and the debug-build check that a closed fd was open
/// (F_GETFD).
const FCNTL_CMDS: &[i32] = &[
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_GETFL,
    libc::F_SETFL,
    libc::F_DUPFD_CLOEXEC,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

/// The rules: syscall number to the rules (any of which allows it; none: always). `child` is the
/// only process the supervisor may kill.
fn rules(child: libc::pid_t) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in ALLOWED {
        map.insert(nr, Vec::new());
    }
    // The terminal's mode restored after the jailed VMM ends.
    map.insert(
        libc::SYS_ioctl,
        vec![rule(vec![cond(1, SeccompCmpOp::Eq, libc::TCSETS)?])?],
    );
    map.insert(
        libc::SYS_fcntl,
        FCNTL_CMDS
            .iter()
            .map(|&c| rule(vec![cond(1, SeccompCmpOp::Eq, c as u64)?]))
            .collect::<Result<_, _>>()?,
    );
    // send(2) on a connected socket: sendto with no destination address.
    map.insert(
        libc::SYS_sendto,
        vec![rule(vec![SeccompCondition::new(
            4,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::Eq,
            0,
        )
        .map_err(|e| e.to_string())?])?],
    );
    // No executable mappings: prot & PROT_EXEC == 0.
    let no_exec = || -> Result<Vec<SeccompRule>, String> {
        Ok(vec![rule(vec![cond(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    map.insert(libc::SYS_mmap, no_exec()?);
    map.insert(libc::SYS_mprotect, no_exec()?);
    // kill(the jailed VMM, SIGKILL) only.
    map.insert(
        libc::SYS_kill,
        vec![rule(vec![
            cond(0, SeccompCmpOp::Eq, child as u64)?,
            cond(1, SeccompCmpOp::Eq, libc::SIGKILL as u64)?,
        ])?],
    );
    // tgkill(this process, any thread, SIGABRT). The pid is checked with the process's own: a
    // filter installed in a forked child is never reused.
    map.insert(
        libc::SYS_tgkill,
        vec![rule(vec![
            cond(0, SeccompCmpOp::Eq, u64::from(std::process::id()))?,
            cond(2, SeccompCmpOp::Eq, libc::SIGABRT as u64)?,
        ])?],
    );
    Ok(map)
}

/// Compiles the supervisor's filter, which may kill `child`: the allow-list, everything else
/// traps.
fn compile(child: libc::pid_t) -> Result<BpfProgram, JailError> {
    let filter = SeccompFilter::new(
        rules(child).map_err(JailError::Seccomp)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| JailError::Seccomp(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| JailError::Seccomp(e.to_string()))
}

/// Confines the calling process's only thread to the supervisor's allow-list, which may kill
/// `child` (with SIGKILL) and no other process.
pub(crate) fn confine(child: libc::pid_t) -> Result<(), JailError> {
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
        for nr in [
            libc::SYS_openat,
            libc::SYS_open,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_ptrace,
            libc::SYS_epoll_wait,
            libc::SYS_pwrite64,
            libc::SYS_accept4,
        ] {
            assert!(!rules.contains_key(&nr), "{nr}");
        }
        // One ioctl (TCSETS), one kill (the child, SIGKILL).
        assert_eq!(rules[&libc::SYS_ioctl].len(), 1);
        assert_eq!(rules[&libc::SYS_kill].len(), 1);
    }
}
