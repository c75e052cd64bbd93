//! The host sockets of virtio-vsock: accepting host programs on the listening socket, connecting
//! to `PATH_<port>` for the guest, and non-blocking sends and receives on a connection.

use std::ffi::OsString;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The socket a guest connection to host port `port` reaches: `PATH_<port>`.
pub(super) fn port_path(path: &Path, port: u32) -> PathBuf {
    let mut p = OsString::from(path.as_os_str());
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Accepts one host program, non-blocking and close-on-exec; `None` when nobody waits.
pub(super) fn accept(listener: &UnixListener) -> io::Result<Option<UnixStream>> {
    // SAFETY: accept4 on a listening socket we own, without an address buffer.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: accept4 returned a new descriptor nobody else owns.
    Ok(Some(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) })))
}

/// Connects a new non-blocking stream socket to the Unix socket at `path`. A listener whose
/// backlog is full (EAGAIN) counts as a refusal: the device does not wait.
pub(super) fn connect(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long for sockaddr_un",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) returned a new descriptor nobody else owns.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes, alive for the call.
    let ret = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// send(2) without blocking and without SIGPIPE; `Interrupted` reads as `WouldBlock`.
pub(super) fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send from a valid buffer on a socket we own.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Err(ErrorKind::WouldBlock.into());
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// recv(2) without blocking; `Interrupted` reads as `WouldBlock`.
pub(super) fn recv(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv into a valid, writable buffer of `buf.len()` bytes on a socket we own.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Err(ErrorKind::WouldBlock.into());
        }
        return Err(e);
    }
    Ok(n as usize)
}
