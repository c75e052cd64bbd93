//! Locking a disk image so that two VMMs never share a writable one.
//!
//! Two kinds of lock, both taken when the device is built and dropped with the file:
//! * `flock` (exclusive for a writable disk, shared for a read-only one), which older vmm
//!   processes take and test;
//! * open-file-description (OFD) byte-range locks on the bytes QEMU uses for its block
//!   permissions, so that QEMU (and qemu-img, qemu-nbd, …) and vmm see each other. Byte
//!   `100 + i` is held (a shared lock) by a user that has permission `i`, byte `200 + i` by a
//!   user that does not let others have permission `i`; the permissions are bits 0 (consistent
//!   read), 1 (write), 2 (write without changing the data) and 3 (resize). A new user takes its
//!   own bytes, then tests, for every permission it wants, that nobody holds the
//!   "not shared" byte, and for every permission it does not share, that nobody holds the
//!   "has it" byte. Taking before testing means two users starting at once cannot both miss
//!   each other.
//!
//! A writable vmm disk has consistent read, write and write-unchanged and shares neither write
//! nor resize, so it conflicts with any other writer and with any user that refuses shared
//! writes; a read-only one has consistent read and shares neither write nor resize, so
//! read-only users share the image and a writer is refused.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::Error;

/// The first of the bytes that say "holds permission i".
const PERM_BASE: i64 = 100;
/// The first of the bytes that say "does not share permission i".
const SHARED_BASE: i64 = 200;
/// Permission bits, as QEMU numbers them.
const PERM_CONSISTENT_READ: u32 = 1 << 0;
const PERM_WRITE: u32 = 1 << 1;
const PERM_WRITE_UNCHANGED: u32 = 1 << 2;
const PERM_RESIZE: u32 = 1 << 3;
const PERM_BITS: u32 = 4;

/// What a disk opened read-only or writable wants and refuses to share.
fn permissions(read_only: bool) -> (u32, u32) {
    let unshared = PERM_WRITE | PERM_RESIZE;
    if read_only {
        (PERM_CONSISTENT_READ, unshared)
    } else {
        (
            PERM_CONSISTENT_READ | PERM_WRITE | PERM_WRITE_UNCHANGED,
            unshared,
        )
    }
}

fn perm_name(bit: u32) -> &'static str {
    match bit {
        PERM_CONSISTENT_READ => "consistent read",
        PERM_WRITE => "write",
        PERM_WRITE_UNCHANGED => "write unchanged",
        _ => "resize",
    }
}

/// Locks `file` (the image at `path`) for a read-only or writable disk, or says who holds it.
pub(super) fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), Error> {
    let lock_err = |error| Error::DiskLock {
        path: path.to_path_buf(),
        error,
    };
    let locked = |conflict: String| Error::DiskLocked {
        path: path.to_path_buf(),
        conflict,
        holders: holders(file),
    };

    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a valid, owned file descriptor; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        return Err(if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            locked(if read_only {
                "another vmm writes it".into()
            } else {
                "another vmm uses it".into()
            })
        } else {
            lock_err(error)
        });
    }

    let (perm, unshared) = permissions(read_only);
    for i in 0..PERM_BITS {
        let bit = 1 << i;
        if perm & bit != 0 {
            ofd_lock(file, PERM_BASE + i64::from(i)).map_err(lock_err)?;
        }
        if unshared & bit != 0 {
            ofd_lock(file, SHARED_BASE + i64::from(i)).map_err(lock_err)?;
        }
    }
    for i in 0..PERM_BITS {
        let bit = 1 << i;
        if perm & bit != 0 && ofd_held(file, SHARED_BASE + i64::from(i)).map_err(lock_err)? {
            return Err(locked(format!(
                "another program refuses to share {} access to it (a QEMU image lock)",
                perm_name(bit)
            )));
        }
        if unshared & bit != 0 && ofd_held(file, PERM_BASE + i64::from(i)).map_err(lock_err)? {
            return Err(locked(format!(
                "another program has {} access to it (a QEMU image lock)",
                perm_name(bit)
            )));
        }
    }
    Ok(())
}

fn flock_at(byte: i64, kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is plain data; all-zero is a valid value (l_pid must be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

/// Takes a shared OFD lock on one byte. It only fails if someone holds a write lock there,
/// which QEMU never takes.
fn ofd_lock(file: &File, byte: i64) -> io::Result<()> {
    let fl = flock_at(byte, libc::F_RDLCK);
    // SAFETY: fcntl on a valid, owned descriptor with a pointer to a live, initialised flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on one byte.
fn ofd_held(file: &File, byte: i64) -> io::Result<bool> {
    let mut fl = flock_at(byte, libc::F_WRLCK);
    // SAFETY: fcntl on a valid, owned descriptor with a pointer to a live flock it may write.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Who else has the image open: "PID (COMMAND)" for every other process with a descriptor on
/// the same file, from /proc (the kernel does not say which process holds an OFD lock). Only
/// called once a lock is refused.
fn holders(file: &File) -> String {
    let Ok(meta) = file.metadata() else {
        return String::new();
    };
    let (dev, ino) = (meta.dev(), meta.ino());
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return String::new();
    };
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let open = fds
            .flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino));
        if open {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push(format!("{pid} ({})", comm.trim()));
        }
    }
    found.join(", ")
}
