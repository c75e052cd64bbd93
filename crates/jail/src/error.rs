//! The jail's errors: each names the step and, where there is one, the fix.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The hint for steps that need privileges.
pub(crate) const NEED_ROOT: &str =
    "the jail needs root (CAP_SYS_ADMIN); run vmm as root, or without --jail";

/// Why the jail could not be set up. Each names the step and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail directory or an option is unusable.
    #[error("--jail: {0}")]
    Config(String),
    /// A system call of the jail set-up failed.
    #[error("jail: cannot {step}: {source}{}", hint_text(hint))]
    Step {
        /// What the jail was doing, with the path or value.
        step: String,
        /// The system's error.
        #[source]
        source: io::Error,
        /// What to do about it ("" if nothing useful can be said).
        hint: &'static str,
    },
    /// The supervisor's seccomp filter could not be built or installed.
    #[error("cannot set up the seccomp filter of the supervisor thread: {0} (--seccomp off runs the VMM unconfined)")]
    Seccomp(String),
}

fn hint_text(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}

pub(crate) fn step_err(step: impl Into<String>, source: io::Error) -> JailError {
    let hint = match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => NEED_ROOT,
        _ => "",
    };
    JailError::Step {
        step: step.into(),
        source,
        hint,
    }
}

/// The result of a libc call that returns -1 and sets errno on failure.
pub(crate) fn check(
    ret: libc::c_int,
    step: impl FnOnce() -> String,
) -> Result<libc::c_int, JailError> {
    if ret == -1 {
        Err(step_err(step(), io::Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

pub(crate) fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Config(format!("'{}' contains a NUL byte", path.display())))
}
