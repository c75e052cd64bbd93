//! Running a command for the host: its stdin from DATA frames, its stdout and stderr as DATA
//! frames, its status at the end.
//!
//! The command gets a process group of its own. When it exits, what is left of its group is
//! killed and what its pipes hold is sent, so that the answer never waits on a process the
//! command left behind (one that escaped the group with setsid keeps running, unheard). A host
//! that closes the connection before the end kills the group too.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use agent::{ErrorKind, Exec, Frame, Response, Stream, MAX_DATA};

use crate::reaper::{Reaper, Status};
use crate::serve::refuse;
use crate::sys;

/// The environment every command starts from, before the request's own variables.
const DEFAULT_ENV: [(&str, &str); 2] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
];

/// Runs `req` and answers on `conn` (see the module's text).
pub fn exec(mut conn: File, reaper: &Reaper, req: Exec) {
    let Some((program, args)) = req.argv.split_first() else {
        return refuse(&mut conn, ErrorKind::BadRequest, "an empty argv".into());
    };
    let workdir = req.workdir.as_deref().unwrap_or("/");
    match std::fs::metadata(workdir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            let message = format!("working directory {workdir}: not a directory");
            return refuse(&mut conn, ErrorKind::Workdir, message);
        }
        Err(e) => {
            let message = format!("working directory {workdir}: {e}");
            return refuse(&mut conn, ErrorKind::Workdir, message);
        }
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(DEFAULT_ENV)
        .envs(crate::avx::off().then_some(crate::avx::TUNABLES))
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let guard = reaper.lock();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            drop(guard);
            let kind = match (e.kind(), e.raw_os_error()) {
                (std::io::ErrorKind::NotFound, _) => ErrorKind::NotFound,
                (_, Some(libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR))
                | (_, Some(libc::ENOTDIR | libc::ELOOP | libc::ETXTBSY)) => {
                    ErrorKind::NotExecutable
                }
                _ => ErrorKind::Io,
            };
            return refuse(&mut conn, kind, format!("{program}: {e}"));
        }
    };
    let pid = child.id();
    guard.register(pid);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        // Not reached: all three were asked for as pipes.
        sys::kill_group(pid, libc::SIGKILL);
        reaper.wait(pid);
        return refuse(&mut conn, ErrorKind::Io, "no pipes to the command".into());
    };
    let _ = Frame::Response(Response::Started { pid }).write_to(&mut conn);

    let writer = match conn.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            sys::kill_group(pid, libc::SIGKILL);
            reaper.wait(pid);
            return refuse(
                &mut conn,
                ErrorKind::Io,
                format!("cannot share the connection: {e}"),
            );
        }
    };
    let (stop_r, stop_w) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            sys::kill_group(pid, libc::SIGKILL);
            reaper.wait(pid);
            return refuse(&mut conn, ErrorKind::Io, format!("pipe: {e}"));
        }
    };
    let stop_r = Arc::new(stop_r);
    let pumps: Vec<_> = [
        (OwnedFd::from(stdout), Stream::Stdout),
        (OwnedFd::from(stderr), Stream::Stderr),
    ]
    .into_iter()
    .filter_map(|(fd, stream)| {
        let (writer, stop) = (writer.clone(), stop_r.clone());
        std::thread::Builder::new()
            .name("output".into())
            .spawn(move || pump(fd, stream, &writer, stop.as_fd()))
            .ok()
    })
    .collect();

    let finished = Arc::new(AtomicBool::new(false));
    let done = finished.clone();
    // Detached: it ends when the host closes the connection.
    let _ = std::thread::Builder::new()
        .name("input".into())
        .spawn(move || feed(conn, stdin, pid, &done));

    let status = reaper.wait(pid);
    finished.store(true, Ordering::Release);
    sys::kill_group(pid, libc::SIGKILL);
    let _ = (&stop_w).write_all(&[1]);
    for p in pumps {
        let _ = p.join();
    }
    let response = match status {
        Status::Exited(code) => Response::Exited { code },
        Status::Signaled(signal) => Response::Signaled { signal },
    };
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    if Frame::Response(response).write_to(&mut *w).is_ok() {
        sys::shutdown_write(&w);
    }
}

/// The host's frames: stdin for the command; the end of the connection before the command's
/// kills its group.
fn feed(mut conn: File, stdin: std::process::ChildStdin, pid: u32, finished: &AtomicBool) {
    let mut stdin = Some(stdin);
    loop {
        match Frame::read_from(&mut conn) {
            Ok(Some(Frame::Data(Stream::Stdin, bytes))) => {
                if let Some(s) = &mut stdin {
                    if s.write_all(&bytes).is_err() {
                        // The command closed its stdin: the rest is dropped, as a pipe would.
                        stdin = None;
                    }
                }
            }
            Ok(Some(Frame::Eof(Stream::Stdin))) => stdin = None,
            Ok(Some(_)) => {} // nothing else is expected; ignored.
            Ok(None) | Err(_) => {
                if !finished.load(Ordering::Acquire) {
                    sys::kill_group(pid, libc::SIGKILL);
                }
                return;
            }
        }
    }
}

/// Sends what the command writes to `fd` as DATA frames of `stream`, then EOF. Once `stop` is
/// readable (the command ended and its group was killed) it sends only what the pipe holds.
fn pump(fd: OwnedFd, stream: Stream, writer: &Mutex<File>, stop: BorrowedFd<'_>) {
    let mut pipe = File::from(fd);
    let mut buf = vec![0u8; MAX_DATA];
    let mut draining = false;
    let mut drained = 0;
    loop {
        if !draining {
            let mut fds = [
                libc::pollfd {
                    fd: pipe.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfd entries, alive for the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                continue; // EINTR
            }
            if fds[1].revents != 0 {
                // The command ended: read what is there without waiting for more.
                draining = true;
                set_nonblocking(&pipe);
            }
        }
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if draining {
                    // A writer that escaped the group cannot keep the answer waiting.
                    drained += n;
                    if drained > DRAIN_MAX {
                        break;
                    }
                }
                let frame = Frame::Data(stream, buf[..n].to_vec());
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                if frame.write_to(&mut *w).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break, // WouldBlock while draining: all of it was sent.
        }
    }
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    let _ = Frame::Eof(stream).write_to(&mut *w);
}

/// What a pipe may still yield once the command ended: more than its buffer holds.
const DRAIN_MAX: usize = 1 << 20;

fn set_nonblocking(f: &File) {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 with a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}
