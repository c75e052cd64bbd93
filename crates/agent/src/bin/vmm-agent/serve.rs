//! Connections: the hellos, then one request each, on a thread of its own.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

use agent::{ErrorKind, Frame, Hello, Request, Response, Stream, MAX_DATA, VERSION};

use crate::reaper::Reaper;
use crate::{exec, sys};

/// Accepts connections for ever, each served on its own thread.
pub fn accept_loop(listener: &OwnedFd, reaper: Reaper, hello: Hello) -> ! {
    loop {
        match sys::vsock_accept(listener) {
            Ok(conn) => {
                let (reaper, hello) = (reaper.clone(), hello.clone());
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || serve(conn, &reaper, hello));
                if let Err(e) = spawned {
                    eprintln!("vmm-agent: cannot start a connection's thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("vmm-agent: accept: {e}");
                // EMFILE and the like: give the guest a moment rather than spin.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Sends an error response.
pub fn refuse(conn: &mut File, kind: ErrorKind, message: String) {
    let _ = Frame::Response(Response::Error { kind, message }).write_to(conn);
}

fn serve(mut conn: File, reaper: &Reaper, hello: Hello) {
    // The host speaks first; a peer that does not say hello gets nothing.
    let peer = match Frame::read_from(&mut conn) {
        Ok(Some(Frame::Hello(h))) => h,
        Ok(_) | Err(_) => return,
    };
    if Frame::Hello(hello).write_to(&mut conn).is_err() {
        return;
    }
    if peer.version != VERSION {
        let message = format!(
            "protocol version {} (this agent speaks {VERSION})",
            peer.version
        );
        return refuse(&mut conn, ErrorKind::BadRequest, message);
    }
    let request = match Frame::read_from(&mut conn) {
        Ok(Some(Frame::Request(r))) => r,
        Ok(None) => return,
        Ok(Some(other)) => {
            let message = format!("expected a request, got {}", frame_name(&other));
            return refuse(&mut conn, ErrorKind::BadRequest, message);
        }
        Err(e) => return refuse(&mut conn, ErrorKind::BadRequest, e.to_string()),
    };
    match request {
        Request::Exec(e) => exec::exec(conn, reaper, e),
        Request::WriteFile { path, mode } => write_file(&mut conn, &path, mode),
        Request::ReadFile { path } => read_file(&mut conn, &path),
        Request::Shutdown { reboot } => {
            let _ = Frame::Response(Response::Done { bytes: 0 }).write_to(&mut conn);
            sys::shutdown_write(&conn);
            sys::power_off(reboot);
        }
    }
}

/// A frame's name, for messages.
pub fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "HELLO",
        Frame::Request(_) => "REQUEST",
        Frame::Data(..) => "DATA",
        Frame::Eof(_) => "EOF",
        Frame::Response(_) => "RESPONSE",
    }
}

fn io_kind(e: &std::io::Error) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        _ => ErrorKind::Io,
    }
}

fn write_file(conn: &mut File, path: &str, mode: u32) {
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o7777)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return refuse(conn, io_kind(&e), format!("cannot open {path}: {e}")),
    };
    let mut bytes = 0u64;
    let mut failed = None;
    loop {
        match Frame::read_from(conn) {
            Ok(Some(Frame::Data(Stream::File, data))) => {
                if failed.is_none() {
                    match file.write_all(&data) {
                        Ok(()) => bytes += data.len() as u64,
                        Err(e) => failed = Some(format!("cannot write {path}: {e}")),
                    }
                }
            }
            Ok(Some(Frame::Eof(Stream::File))) => break,
            // The host went away or broke the protocol: what was written stays.
            Ok(None) | Ok(Some(_)) | Err(_) => return,
        }
    }
    if failed.is_none() {
        if let Err(e) = file.sync_all() {
            failed = Some(format!("cannot sync {path}: {e}"));
        }
    }
    match failed {
        Some(message) => refuse(conn, ErrorKind::Io, message),
        None => {
            let _ = Frame::Response(Response::Done { bytes }).write_to(conn);
        }
    }
}

fn read_file(conn: &mut File, path: &str) {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return refuse(conn, io_kind(&e), format!("cannot open {path}: {e}")),
    };
    let mut buf = vec![0u8; MAX_DATA];
    let mut bytes = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if Frame::Data(Stream::File, buf[..n].to_vec())
                    .write_to(conn)
                    .is_err()
                {
                    return;
                }
                bytes += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return refuse(conn, ErrorKind::Io, format!("cannot read {path}: {e}")),
        }
    }
    if Frame::Eof(Stream::File).write_to(conn).is_ok() {
        let _ = Frame::Response(Response::Done { bytes }).write_to(conn);
    }
}
