//! The server behind a virtio-fs share: the rust-vmm passthrough file system
//! (`fuse-backend-rs`), in a process of its own, confined to the shared directory.
//!
//! vmm's virtio-fs device (`devices::virtio::fs`) passes the guest's FUSE requests to it over a
//! Unix stream socket and its replies back (framing in `devices::virtio::fs::wire`); guest memory
//! stays private to the VMM. The server is the VMM's own executable started again
//! ([`spawn`]: `/proc/self/exe` with [`SERVER_ARG`]), so nothing else is installed; a program
//! that embeds the `vm` crate and shares directories calls [`server_main`] when its first
//! argument is [`SERVER_ARG`].
//!
//! # Confinement (module `confine`), in this order
//! ```text
//! the shared path resolved once; from then on no symbolic link followed to it (openat2)
//! unshare(CLONE_NEWNS | CLONE_NEWPID) (and CLONE_NEWUSER when not root)
//! fork: the parent waits and passes the status on; the child, pid 1 of its pid namespace,
//!   dies with it (parent-death signal)
//! every mount private; a procfs of its own pid namespace, pid directories only
//!   (subset=pid), where /proc/self/fd (the file system's handle table) is opened
//! a clone of the directory's mount alone (mounts below it are not shared), nosuid, nodev,
//!   noexec (and read-only for readonly=on), mounted on the directory and made `/`
//!   (pivot_root); the old root detached
//! capabilities: only CHOWN, DAC_OVERRIDE, FOWNER, SETGID, SETUID (the file operations as
//!   the guest's user; without FSETID a write clears set-uid bits); no_new_privs
//! seccomp: the calls of the file operations, and nothing that starts a process, makes a
//!   socket or mounts
//! ```
//! A guest's `..` at the top of the share stays there (it is `/`), a symbolic link resolves inside
//! the share if anything follows it (the file system itself never does), and file handles are off
//! (no CAP_DAC_READ_SEARCH, no open_by_handle_at). Set-uid and set-gid bits in a guest's modes are
//! cleared before a request is served (module `serve`), and a write to a set-uid file clears the
//! bit, so a guest cannot leave a set-uid file for the host; device nodes cannot be made (no
//! CAP_MKNOD). The server inherits no descriptor of vmm's but its socket.

mod confine;
mod seccomp;
mod serve;

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

/// The first argument that makes the VMM's executable a share server.
pub const SERVER_ARG: &str = "__vmm-share-server";
/// The descriptor the server finds its socket at.
const SERVER_FD: i32 = 3;
/// How long the server may take to confine itself and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The server's first line when it is ready to serve; otherwise it sends `error: ...`.
const READY_LINE: &str = "ready";

/// Why a share's server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A host call failed while starting the server.
    #[error("share {dir}: cannot {what}: {error}")]
    Host {
        /// The shared directory.
        dir: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The host's error.
        #[source]
        error: io::Error,
    },
    /// The server said why it cannot serve the directory.
    #[error("share {dir}: {why}")]
    Refused {
        /// The shared directory.
        dir: PathBuf,
        /// The server's words.
        why: String,
    },
}

/// A server process, started and confined, and the device's end of its socket.
pub struct Server {
    /// The device's end of the socket.
    pub socket: OwnedFd,
    /// The process.
    pub child: Child,
}

/// Starts a server for `dir` (`readonly`: every write refused) and waits until it is confined
/// and ready, or says why it is not.
pub fn spawn(dir: &Path, readonly: bool) -> Result<Server, ShareError> {
    let host = |what, error| ShareError::Host {
        dir: dir.to_path_buf(),
        what,
        error,
    };
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array on success.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(host("make a socket pair", io::Error::last_os_error()));
    }
    // SAFETY: socketpair returned two new descriptors that nothing else owns.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let theirs_fd = theirs.as_raw_fd();
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("vmm-share")
        .arg(SERVER_ARG)
        .arg(dir)
        .arg(if readonly { "ro" } else { "rw" })
        .arg(log::max_level().to_string())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: dup2 and close_range are async-signal-safe and touch only descriptors; the new
    // descriptor 3 has no close-on-exec flag, so the server finds its socket there, and every
    // other descriptor vmm holds without the flag (eventfds of the VM) is closed.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(theirs_fd, SERVER_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_close_range, SERVER_FD as u32 + 1, u32::MAX, 0u32) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| host("start the server (/proc/self/exe)", e))?;
    drop(theirs);
    match wait_ready(&ours) {
        Ok(()) => Ok(Server {
            socket: ours,
            child,
        }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(match e {
                Ready::Said(why) => ShareError::Refused {
                    dir: dir.to_path_buf(),
                    why,
                },
                Ready::Io(error) => host("hear from the server", error),
            })
        }
    }
}

enum Ready {
    Said(String),
    Io(io::Error),
}

/// Reads the server's first line: [`READY_LINE`], or why it cannot serve.
fn wait_ready(socket: &OwnedFd) -> Result<(), Ready> {
    let timeout = libc::timeval {
        tv_sec: READY_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads a timeval of the size given.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(Ready::Io(io::Error::last_os_error()));
    }
    let mut file = std::fs::File::from(socket.try_clone().map_err(Ready::Io)?);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 1024 {
        match file.read(&mut byte) {
            Ok(0) => {
                return Err(Ready::Said(
                    "the server ended before it was ready (its error is above)".into(),
                ))
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(Ready::Said(format!(
                    "the server did not get ready within {} s",
                    READY_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(Ready::Io(e)),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    if line == READY_LINE {
        return Ok(());
    }
    Err(Ready::Said(
        line.strip_prefix("error: ").unwrap_or(&line).to_string(),
    ))
}

/// The server: `args` are what follows [`SERVER_ARG`] (the directory, `ro` or `rw`, the log
/// level). Confines itself, says it is ready on its socket, then serves until the socket closes.
pub fn server_main(args: &[OsString]) -> ExitCode {
    // SAFETY: descriptor 3 was set up by `spawn` for this process alone.
    let socket = unsafe { OwnedFd::from_raw_fd(SERVER_FD) };
    let (dir, mode, level) = match args {
        [dir, mode, level] => (PathBuf::from(dir), mode.to_str(), level.to_str()),
        _ => {
            eprintln!("error: {SERVER_ARG} takes DIR ro|rw LEVEL; it is started by vmm itself");
            return ExitCode::from(2);
        }
    };
    if let Some(level) = level.and_then(|l| l.parse().ok()) {
        log::set_max_level(level);
    }
    let readonly = mode == Some("ro");
    let say = |line: &str| {
        let mut line = line.replace('\n', " ");
        line.push('\n');
        // SAFETY: writes from a live buffer of the length given.
        unsafe { libc::write(socket.as_raw_fd(), line.as_ptr().cast(), line.len()) };
    };
    let init_pipe = match pipe() {
        Ok(pipe) => pipe,
        Err(e) => {
            say(&format!("error: make a pipe: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let fs = match confine::enter(&dir, readonly) {
        Ok(fs) => fs,
        Err(e) => {
            say(&format!("error: {e}"));
            return ExitCode::FAILURE;
        }
    };
    say(READY_LINE);
    match serve::serve(fs, &socket, &init_pipe) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm-share {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
