//! Puts the controlling terminal in raw mode while a guest owns it, and always puts it back: when the
//! guard drops, and from a panic hook (release builds abort on panic, so no destructor would run).

use std::io::IsTerminal;
use std::sync::Mutex;

/// The settings to restore, shared with the panic hook.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Raw mode on stdin for as long as this value lives.
pub struct RawMode(());

impl RawMode {
    /// Switches stdin to raw mode; None (with a warning) if it cannot.
    pub fn enter() -> Option<RawMode> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is a terminal (checked) and `saved` is writable.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            log::warn!(
                "cannot read terminal settings: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the guest's "\n" still returns the carriage on the host.
        raw.c_oflag = saved.c_oflag;
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous_hook(info);
        }));
        // SAFETY: fd 0 is a terminal and `raw` is a valid termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            log::warn!(
                "cannot put the terminal in raw mode: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(RawMode(()))
    }
}

/// Puts back the settings saved by [`RawMode::enter`], once.
fn restore() {
    if let Some(saved) = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take() {
        // SAFETY: restores settings read from the same terminal.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}
