//! The supervisor: the original process, outside the jail, waits for the jailed VMM and cleans up
//! after it.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;

use crate::cgroup::Cgroup;
use crate::{JailError, SocketSpec};

/// The parent: holds nothing but the cgroup paths; waits for the jailed VMM.
#[derive(Debug)]
pub struct Supervisor {
    pub(crate) child: libc::pid_t,
    pub(crate) signals: libc::sigset_t,
    pub(crate) termios: Option<libc::termios>,
    pub(crate) cgroup: Cgroup,
    pub(crate) sockets: Vec<SocketSpec>,
    pub(crate) seccomp: bool,
    /// How long after a SIGTERM the jailed VMM may take (its guest's shutdown) before SIGKILL.
    pub(crate) shutdown_timeout: std::time::Duration,
    /// The write end of the jailed VMM's lifeline: closed when the supervisor dies, however.
    pub(crate) _alive: OwnedFd,
}

impl Supervisor {
    /// The jailed VMM's pid (in the caller's pid namespace).
    pub fn child_pid(&self) -> u32 {
        self.child as u32
    }

    /// Waits for the jailed VMM, passing SIGTERM on (the VMM asks its guest to power off, a second
    /// SIGTERM stops it; if the VMM has not ended [`SHUTDOWN_MARGIN`] after its own shutdown
    /// timeout, the supervisor kills it), turning SIGINT, SIGHUP and SIGQUIT into SIGKILL of it and
    /// passing SIGWINCH on (the jailed VMM has no controlling terminal), then restores the
    /// terminal, removes the cgroup and the socket files, and returns the exit status to use: the
    /// child's, or 128 + the signal that ended it (or that was turned into SIGKILL).
    ///
    /// With seccomp on, the supervisor first confines itself to what this needs (waiting, signals,
    /// the terminal, removing files and directories): it stays root outside the jail. A forbidden
    /// call is reported by the SIGSYS handler of `seccomp-rules`, which names the supervisor as it
    /// names the VMM's threads (and ends with the hint the embedder set there, if any). If the
    /// filter cannot be installed, the jailed VMM is stopped and its status returned; `hint` gives
    /// what the caller appends to the filter's error in the log (the CLI's option hint, or "").
    pub fn wait(self, hint: impl FnOnce(&JailError) -> String) -> u8 {
        if self.seccomp {
            let confined =
                crate::seccomp::confine(self.child).map_err(|e| format!("{e}{}", hint(&e)));
            if let Err(e) = confined {
                log::error!("{e}; stopping the jailed VMM");
                // SAFETY: kill has no memory-safety preconditions; the child is ours and unreaped.
                unsafe { libc::kill(self.child, libc::SIGKILL) };
            }
        }
        let mut forwarded = None;
        let mut term_deadline: Option<std::time::Instant> = None;
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
            let sig = match term_deadline {
                // SAFETY: the set and the out buffer are valid; these signals are blocked here.
                None => unsafe { libc::sigwaitinfo(&self.signals, &mut info) },
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    let timeout = libc::timespec {
                        tv_sec: left.as_secs() as libc::time_t,
                        tv_nsec: left.subsec_nanos() as libc::c_long,
                    };
                    // SAFETY: the set, the out buffer and the timeout are valid; these signals
                    // are blocked in this thread.
                    let sig = unsafe { libc::sigtimedwait(&self.signals, &mut info, &timeout) };
                    if sig < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                        log::warn!("the jailed VMM did not stop after SIGTERM; killing it");
                        forwarded = Some(libc::SIGTERM);
                        // SAFETY: kill has no memory-safety preconditions; the child is ours.
                        unsafe { libc::kill(self.child, libc::SIGKILL) };
                        term_deadline = None;
                    }
                    sig
                }
            };
            if sig == libc::SIGTERM {
                // The jailed VMM presses its guest's power button (a second one stops it).
                // SAFETY: kill has no memory-safety preconditions; the child is ours and unreaped.
                unsafe { libc::kill(self.child, libc::SIGTERM) };
                term_deadline.get_or_insert_with(|| {
                    std::time::Instant::now() + self.shutdown_timeout + SHUTDOWN_MARGIN
                });
            } else if sig == libc::SIGWINCH {
                // The jailed VMM has no controlling terminal: pass the terminal's resize on.
                // SAFETY: kill has no memory-safety preconditions; the child is ours and unreaped.
                unsafe { libc::kill(self.child, libc::SIGWINCH) };
            } else if sig > 0 && sig != libc::SIGCHLD {
                forwarded.get_or_insert(sig);
                // SAFETY: kill has no memory-safety preconditions; the child is ours and unreaped.
                unsafe { libc::kill(self.child, libc::SIGKILL) };
            }
        };
        if let Some(t) = &self.termios {
            // SAFETY: `t` is the terminal state read from fd 0 before the fork.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
        for socket in &self.sockets {
            remove_if_same(socket);
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

/// How much longer than the VMM's own shutdown timeout the supervisor waits after a SIGTERM
/// before it kills the jailed VMM (which may not have installed its SIGTERM handler yet).
pub const SHUTDOWN_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Removes a socket file the VMM made, only if the path still names that socket (the same
/// device and inode): a file that was there before, or was put there since, is left alone.
fn remove_if_same(socket: &SocketSpec) {
    let Ok(path) = std::ffi::CString::new(socket.path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` writable; newfstatat (lstat) is in the
    // supervisor's filter.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_newfstatat,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut st as *mut libc::stat,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret == 0
        && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
        && st.st_dev == socket.dev
        && st.st_ino == socket.ino
    {
        let _ = fs::remove_file(&socket.path);
    }
}

pub(crate) fn supervised_signals() -> libc::sigset_t {
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
            libc::SIGWINCH,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// The terminal mode of stdin, if it is a terminal, to restore after the jailed VMM exits.
pub(crate) fn saved_termios() -> Option<libc::termios> {
    // SAFETY: a zeroed termios is a valid out buffer for tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: isatty and tcgetattr on fd 0 with a valid buffer.
    (unsafe { libc::isatty(0) == 1 && libc::tcgetattr(0, &mut t) == 0 }).then_some(t)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixListener;

    use super::*;

    /// The supervisor removes the VMM's socket, and nothing that took its path.
    #[test]
    fn only_the_vmms_own_socket_is_removed() {
        let path = std::env::temp_dir().join(format!("vmm-jail-sock-{}", std::process::id()));
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        let spec = SocketSpec {
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            fd: std::os::fd::AsRawFd::as_raw_fd(&listener),
        };
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"precious").unwrap();
        remove_if_same(&spec);
        assert_eq!(fs::read(&path).unwrap(), b"precious");
        fs::remove_file(&path).unwrap();

        let _listener = UnixListener::bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        let spec = SocketSpec {
            dev: meta.dev(),
            ino: meta.ino(),
            ..spec
        };
        remove_if_same(&spec);
        assert!(!path.exists());
    }
}
