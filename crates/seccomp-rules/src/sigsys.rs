//! The report of a forbidden call: a SIGSYS handler that writes one line naming the thread and the
//! system call to stderr and ends the process with status 1, e.g. `vmm: seccomp: thread 'vcpu0'
//! made a forbidden system call: openat (257); stopping.` followed by the embedder's hint.
//!
//! Every filtered thread calls [`report_forbidden_calls`] with its name right before its filter
//! goes on (the VMM's threads in `vm::seccomp`, the jail's supervisor in `jail`).

use std::cell::Cell;
use std::sync::{Once, OnceLock};

use vmm_sys_util::signal::register_signal_handler;

use crate::syscall_name;

/// The SIGSYS handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the SIGSYS handler: {0}")]
pub struct SigsysError(vmm_sys_util::errno::Error);

thread_local! {
    /// This thread's name for the SIGSYS message (NUL-padded; set when its filter goes on).
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// Installs the SIGSYS handler (once per process) and names the calling thread `thread` (up to 16
/// bytes) in its message. Call it right before the thread's filter goes on.
pub fn report_forbidden_calls(thread: &str) -> Result<(), SigsysError> {
    install_sigsys_handler()?;
    let mut name = [0u8; 16];
    let n = thread.len().min(name.len());
    name[..n].copy_from_slice(&thread.as_bytes()[..n]);
    THREAD_NAME.with(|t| t.set(name));
    Ok(())
}

/// Installs the SIGSYS handler once per process.
fn install_sigsys_handler() -> Result<(), SigsysError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(libc::SIGSYS, on_sigsys).map_err(SigsysError);
    });
    result
}

/// A fixed buffer to format the SIGSYS line without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// What the SIGSYS line adds after "stopping." ([`set_forbidden_call_hint`]).
static FORBIDDEN_CALL_HINT: OnceLock<&'static str> = OnceLock::new();

/// Sets, once for the process, a sentence the SIGSYS line ends with: the embedder's advice (the
/// CLI names its `--seccomp off`). Without one the line ends at "stopping.".
pub fn set_forbidden_call_hint(hint: &'static str) {
    let _ = FORBIDDEN_CALL_HINT.set(hint);
}

/// Formats the SIGSYS line for a forbidden call `nr` made by `thread`, ending with `hint`.
fn sigsys_line(thread: &[u8], nr: i64, hint: Option<&str>) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"vmm: seccomp: thread '");
    let n = thread.iter().position(|&b| b == 0).unwrap_or(thread.len());
    line.push(if n == 0 { b"?" } else { &thread[..n] });
    line.push(b"' made a forbidden system call: ");
    line.push(syscall_name(nr).unwrap_or("unknown").as_bytes());
    line.push(b" (");
    if nr < 0 {
        line.push(b"-");
    }
    line.push_num(nr.unsigned_abs());
    line.push(b"); stopping.");
    if let Some(hint) = hint {
        line.push(b" ");
        line.push(hint.as_bytes());
    }
    line.push(b"\n");
    line
}

/// `si_code` of a SIGSYS sent by seccomp.
const SYS_SECCOMP: i32 = 1;

/// The SIGSYS handler: async-signal-safe (no allocation, no locks): formats into a stack buffer,
/// writes it to stderr and exits with status 1. write(2) and exit_group(2) are in every filter.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // For SYS_SECCOMP, the union after the three ints (and padding) is {void *call_addr; int
    // syscall; unsigned arch}: the system call number is the int at byte 24 on x86_64.
    let nr = if code == SYS_SECCOMP {
        // SAFETY: siginfo_t is 128 bytes; offset 24 is inside it and 4-aligned.
        i64::from(unsafe { *(info as *const u8).add(24).cast::<i32>() })
    } else {
        -1
    };
    // OnceLock::get is one atomic load: safe in a signal handler.
    let hint = FORBIDDEN_CALL_HINT.get().copied();
    let line = sigsys_line(&THREAD_NAME.with(Cell::get), nr, hint);
    // SAFETY: writes a valid buffer to stderr, then ends the process; both are async-signal-safe.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigsys_line_names_thread_and_call() {
        let mut name = [0u8; 16];
        name[..5].copy_from_slice(b"vcpu0");
        let line = sigsys_line(&name, 257, Some("Ask for help."));
        assert_eq!(
            std::str::from_utf8(&line.buf[..line.len]).unwrap(),
            "vmm: seccomp: thread 'vcpu0' made a forbidden system call: openat (257); stopping. \
             Ask for help.\n"
        );
        let line = sigsys_line(&name, 257, None);
        assert!(std::str::from_utf8(&line.buf[..line.len])
            .unwrap()
            .ends_with("(257); stopping.\n"));
        let line = sigsys_line(&[0; 16], 9999, None);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(
            text.contains("thread '?'") && text.contains("unknown (9999)"),
            "{text}"
        );
    }
}
