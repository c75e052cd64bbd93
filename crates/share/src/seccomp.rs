//! The server's seccomp filter: the calls of the passthrough file system's operations on the
//! shared tree, as the guest's user, and of the socket to the device. Nothing that starts a
//! process or thread, makes or connects a socket, mounts, or opens by file handle.

use seccomp_rules::{compile, no_exec, one_of, Rules, COMMON, FCNTL_CMDS};
use seccompiler::BackendError;

/// The calls the file operations make with any arguments.
const FILE_CALLS: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_readlinkat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_copy_file_range,
    libc::SYS_flock,
    libc::SYS_dup,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_getrandom,
    libc::SYS_umask,
    libc::SYS_statfs,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_geteuid,
    libc::SYS_getegid,
];

fn rules() -> Result<Rules, BackendError> {
    let mut rules = Rules::new();
    for &nr in COMMON.iter().chain(FILE_CALLS) {
        rules.insert(nr, vec![]);
    }
    let fcntl: Vec<u64> = FCNTL_CMDS
        .iter()
        .chain(&[
            libc::F_GETLK,
            libc::F_SETLK,
            libc::F_SETLKW,
            libc::F_OFD_GETLK,
            libc::F_OFD_SETLK,
            libc::F_OFD_SETLKW,
        ])
        .map(|&c| c as u64)
        .collect();
    rules.insert(libc::SYS_fcntl, one_of(1, &fcntl)?);
    rules.insert(libc::SYS_mmap, no_exec()?);
    rules.insert(libc::SYS_mprotect, no_exec()?);
    Ok(rules)
}

/// Installs the filter on this (single-threaded) process.
pub fn apply() -> Result<(), String> {
    seccomp_rules::report_forbidden_calls("vmm-share").map_err(|e| e.to_string())?;
    let program = rules().and_then(compile).map_err(|e| e.to_string())?;
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())
}

/// Installs the filter of the process that only waits for the server: wait4 and exit.
pub fn apply_waiter() -> Result<(), String> {
    let mut rules = Rules::new();
    for nr in [
        libc::SYS_wait4,
        libc::SYS_exit_group,
        libc::SYS_exit,
        libc::SYS_rt_sigreturn,
        libc::SYS_munmap,
    ] {
        rules.insert(nr, vec![]);
    }
    let program = compile(rules).map_err(|e| e.to_string())?;
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())
}
