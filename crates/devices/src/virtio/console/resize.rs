//! Terminal size: TIOCGWINSZ, and SIGWINCH turned into an `EventFd` the event loop watches (the
//! signal handler only writes to it).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use vmm_sys_util::eventfd::EventFd;

/// The eventfd the SIGWINCH handler writes to (-1 until installed).
static WINCH_FD: AtomicI32 = AtomicI32::new(-1);
static WINCH_EVENT: OnceLock<io::Result<EventFd>> = OnceLock::new();

extern "C" fn on_sigwinch(_: libc::c_int) {
    let fd = WINCH_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live u64 and the eventfd is
        // never closed (it lives in a static).
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// The size of the terminal on `fd`, as (cols, rows), if it is a terminal with a size.
pub(super) fn terminal_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into `ws`, which is valid and writable.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (ret == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// The size of the VMM's terminal: stdout's, else stdin's.
pub(super) fn stdio_terminal_size() -> Option<(u16, u16)> {
    terminal_size(libc::STDOUT_FILENO).or_else(|| terminal_size(libc::STDIN_FILENO))
}

/// A duplicate of the process-wide SIGWINCH eventfd, installing the handler on first use.
pub(super) fn winch_event() -> io::Result<EventFd> {
    let evt = WINCH_EVENT.get_or_init(|| {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        WINCH_FD.store(evt.as_raw_fd(), Ordering::Relaxed);
        // SAFETY: sigaction is plain data.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_sigwinch as *const () as usize;
        act.sa_flags = libc::SA_RESTART;
        // SAFETY: installs a handler that only does an async-signal-safe write; `act` is valid.
        if unsafe { libc::sigaction(libc::SIGWINCH, &act, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(evt)
    });
    match evt {
        Ok(evt) => evt.try_clone(),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}
