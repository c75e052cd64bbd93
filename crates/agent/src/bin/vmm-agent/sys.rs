//! The system calls the agent makes that std does not wrap: vsock sockets, mounts, reboot.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The host's CID.
pub const HOST_CID: u32 = 2;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd =
        check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket(2) returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A listening vsock stream socket on `port`, any CID.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a valid sockaddr_vm, alive for the call, with its exact size.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    // SAFETY: listen(2) on a socket we own.
    check(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
    Ok(fd)
}

/// Accepts one connection (close-on-exec), as a file to read and write.
pub fn vsock_accept(listener: &OwnedFd) -> io::Result<File> {
    // SAFETY: accept4 on a listening socket we own, without an address buffer.
    let fd = check(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A connection to `cid`:`port`, as a file to read and write.
pub fn vsock_connect(cid: u32, port: u32) -> io::Result<File> {
    let fd = vsock_socket()?;
    let addr = vsock_addr(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm, alive for the call, with its exact size.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    Ok(File::from(fd))
}

/// Shuts the sending side of a socket down (the peer reads the end of the stream).
pub fn shutdown_write(socket: &File) {
    // SAFETY: shutdown(2) on a descriptor we own; failure (not a socket, already closed) is harmless.
    unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_WR) };
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
}

/// mount(2). `source`, `fstype` and `data` may be empty (none).
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (source, target, fstype, data) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    let opt = |c: &CString| {
        if c.as_bytes().is_empty() {
            std::ptr::null()
        } else {
            c.as_ptr()
        }
    };
    // SAFETY: every pointer is a NUL-terminated string alive for the call, or null.
    check(unsafe {
        libc::mount(
            opt(&source),
            target.as_ptr(),
            opt(&fstype),
            flags,
            opt(&data).cast(),
        )
    })?;
    Ok(())
}

/// chroot(2).
pub fn chroot(path: &str) -> io::Result<()> {
    let path = cstr(path)?;
    // SAFETY: a NUL-terminated path alive for the call.
    check(unsafe { libc::chroot(path.as_ptr()) })?;
    Ok(())
}

/// Flushes every file system, then powers the machine off (or resets it).
pub fn power_off(reboot: bool) -> ! {
    let cmd = if reboot {
        libc::RB_AUTOBOOT
    } else {
        libc::RB_POWER_OFF
    };
    // SAFETY: sync(2) and reboot(2) take no pointers; reboot does not return when it works.
    unsafe {
        libc::sync();
        libc::reboot(cmd);
    }
    eprintln!("vmm-agent: reboot(2): {}", io::Error::last_os_error());
    std::process::exit(1);
}

/// Sends `signal` to the process group `pgid`.
pub fn kill_group(pgid: u32, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        if pgid > 1 {
            // SAFETY: kill(2) takes no pointers; a negative pid names the process group.
            unsafe { libc::kill(-pgid, signal) };
        }
    }
}
