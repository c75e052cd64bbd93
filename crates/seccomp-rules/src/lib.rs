//! The pieces of a seccomp allow-list that every filtered thread shares, whether it is one of the
//! VMM's threads (`vm::seccomp`) or the jail's supervisor (`jail`'s `seccomp` module): the calls
//! every thread makes, the `fcntl` commands, the argument rules (`sendto` only on a connected
//! socket, no executable mappings, `tgkill` only to this process), the compilation of a rule map
//! into a program whose unlisted calls trap, and the report of a trapped call.
//!
//! Each filter builds its map (system call number to rules, any of which allows the call; no rules:
//! always allowed) from these and its own additions. A forbidden call traps; the SIGSYS handler
//! here ([`report_forbidden_calls`]) names the thread and the call (by [`syscall_name`]). Nothing
//! here depends on the VMM or the jail.

mod sigsys;
mod syscall_names;

use std::collections::BTreeMap;

pub use sigsys::{report_forbidden_calls, set_forbidden_call_hint, SigsysError};

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// A filter's rules: system call number to the rules any of which allows it (none: always).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// The system calls every filtered thread makes with any arguments: memory management (glibc's
/// malloc), locks, the return from a signal handler, logging to stderr, thread and process exit.
pub const COMMON: &[i64] = &[
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
];

/// Calls no filter of the VMM's threads or the jail's supervisor allows: opening files, starting
/// processes or threads, tracing. Each of those filters' tests checks it against this list. (A
/// share's server, another process whose work is opening files, has a filter of its own.)
pub const NEVER_ALLOWED: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_execve,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_ptrace,
];

/// Making and connecting sockets: never on a vCPU thread or in the jail's supervisor; on the
/// VMM's event loop only for virtio-vsock's guest connections, and `socket` only for Unix stream
/// sockets ([`unix_stream_socket`]).
pub const SOCKET_CALLS: &[i64] = &[libc::SYS_socket, libc::SYS_connect];

/// `fcntl` commands every filtered thread may use: flags (O_NONBLOCK), close-on-exec, and the
/// debug-build check that a closed fd was open (F_GETFD).
pub const FCNTL_CMDS: &[i32] = &[
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_GETFL,
    libc::F_SETFL,
    libc::F_DUPFD_CLOEXEC,
];

/// The condition that 32-bit argument `arg` compares to `value` with `op`.
pub fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// A rule that holds when all of `conds` hold.
pub fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(conds)
}

/// One rule per allowed value of 32-bit argument `arg`, in the order of `values`. Mind an empty
/// `values`: no rule at all, which a filter reads as "always allowed", not "never".
pub fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    values
        .iter()
        .map(|&v| rule(vec![cond(arg, SeccompCmpOp::Eq, v)?]))
        .collect()
}

/// The rules of `sendto` for send(2) on a connected socket: no destination address (the whole
/// 64-bit pointer, argument 4, is null).
pub fn send_connected() -> Result<Vec<SeccompRule>, BackendError> {
    Ok(vec![rule(vec![SeccompCondition::new(
        4,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::Eq,
        0,
    )?])?])
}

/// The rules of `socket` that allow Unix stream sockets only: `domain == AF_UNIX` and
/// `type & 0xf == SOCK_STREAM` (SOCK_NONBLOCK and SOCK_CLOEXEC may be added), protocol 0.
pub fn unix_stream_socket() -> Result<Vec<SeccompRule>, BackendError> {
    Ok(vec![rule(vec![
        cond(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?,
        cond(1, SeccompCmpOp::MaskedEq(0xf), libc::SOCK_STREAM as u64)?,
        cond(2, SeccompCmpOp::Eq, 0)?,
    ])?])
}

/// The rules of `mmap` and `mprotect` that forbid new code: `prot & PROT_EXEC == 0`.
pub fn no_exec() -> Result<Vec<SeccompRule>, BackendError> {
    Ok(vec![rule(vec![cond(
        2,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])?])
}

/// The rules of `tgkill` to any thread of this process with one of `signals` (one rule each, in
/// order). The pid is checked against the process's own: a filter installed in a forked child is
/// never reused.
pub fn tgkill_self(signals: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    let pid = u64::from(std::process::id());
    signals
        .iter()
        .map(|&sig| {
            rule(vec![
                cond(0, SeccompCmpOp::Eq, pid)?,
                cond(2, SeccompCmpOp::Eq, sig)?,
            ])
        })
        .collect()
}

/// Compiles `rules` for x86_64: the listed calls as their rules allow, every other call traps
/// (SECCOMP_RET_TRAP).
pub fn compile(rules: Rules) -> Result<BpfProgram, BackendError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    BpfProgram::try_from(filter)
}

/// The name of x86_64 system call `nr`, if it has one.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let nr = u32::try_from(nr).ok()?;
    syscall_names::SYSCALL_NAMES
        .binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .map(|i| syscall_names::SYSCALL_NAMES[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_calls_include_none_that_is_never_allowed() {
        for nr in NEVER_ALLOWED.iter().chain(SOCKET_CALLS) {
            assert!(!COMMON.contains(nr), "{nr}");
        }
    }

    #[test]
    fn the_shared_rules_compile() {
        let mut rules: Rules = COMMON.iter().map(|&nr| (nr, Vec::new())).collect();
        let cmds: Vec<u64> = FCNTL_CMDS.iter().map(|&c| c as u64).collect();
        rules.insert(libc::SYS_fcntl, one_of(1, &cmds).unwrap());
        rules.insert(libc::SYS_sendto, send_connected().unwrap());
        rules.insert(libc::SYS_mmap, no_exec().unwrap());
        rules.insert(libc::SYS_mprotect, no_exec().unwrap());
        rules.insert(libc::SYS_socket, unix_stream_socket().unwrap());
        let tgkill = tgkill_self(&[libc::SIGABRT as u64, libc::SIGUSR1 as u64]).unwrap();
        assert_eq!(tgkill.len(), 2);
        rules.insert(libc::SYS_tgkill, tgkill);
        let program = compile(rules).unwrap();
        assert!(!program.is_empty() && program.len() < 4096);
    }

    #[test]
    fn common_has_each_call_once() {
        let mut v = COMMON.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), COMMON.len());
    }

    #[test]
    fn syscall_names_are_sorted_and_known() {
        let names = syscall_names::SYSCALL_NAMES;
        assert!(names.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_name(libc::SYS_openat), Some("openat"));
        assert_eq!(syscall_name(libc::SYS_read), Some("read"));
        assert_eq!(syscall_name(libc::SYS_clone3), Some("clone3"));
        assert_eq!(syscall_name(100_000), None);
        assert_eq!(syscall_name(-1), None);
    }
}
