//! The server's confinement: a mount namespace whose root is the shared directory, the few
//! capabilities the file operations need, no_new_privs, then (module `seccomp`) its filter. The
//! order is in the crate documentation.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use jail::sys::{
    CapData, CapHeader, MountAttr, AT_RECURSIVE, LINUX_CAPABILITY_VERSION_3, MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, OPEN_TREE_CLONE,
};

/// The file system the server serves.
pub type Fs = PassthroughFs<()>;

/// The capabilities the server keeps: to act as the guest's user on its files (set*id, then
/// permission checks as that user), and to change owners and modes as root in the guest may.
/// Not CAP_FSETID: without it the kernel clears a set-uid or set-gid bit when a file is written
/// or truncated, so a guest cannot rewrite a set-uid program and keep the bit.
const KEPT_CAPS: &[u32] = &[
    0, // CAP_CHOWN
    1, // CAP_DAC_OVERRIDE
    3, // CAP_FOWNER
    6, // CAP_SETGID
    7, // CAP_SETUID
];

fn check(ret: i64, what: impl FnOnce() -> String) -> Result<(), String> {
    if ret < 0 {
        return Err(format!("{}: {}", what(), io::Error::last_os_error()));
    }
    Ok(())
}

/// Confines this process to `dir` and returns the file system, ready to serve it. The process
/// forks on the way (module documentation of the crate): the caller's process only waits for
/// the confined one and exits with its status; this returns in the confined one.
pub fn enter(dir: &Path, readonly: bool) -> Result<Fs, String> {
    let shown = dir.display().to_string();
    // Resolved once, here; from then on no symbolic link is followed on the way to it, so a
    // path component swapped for a link meanwhile is refused, not followed.
    let real = std::fs::canonicalize(dir).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTDIR) => format!("{shown} is not a directory"),
        _ => format!("cannot open {shown}: {e}"),
    })?;
    let path = CString::new(real.as_os_str().as_bytes())
        .map_err(|_| format!("{shown}: a path with a NUL byte"))?;
    let before = open_dir(&path, &shown)?;
    own_namespaces()?;
    // Opened again in the new namespace (a descriptor from the old one names a mount that is
    // not this namespace's), and checked to be the same directory.
    let dir_fd = open_dir(&path, &shown)?;
    if identity(&before)? != identity(&dir_fd)? {
        return Err(format!("{shown} was replaced while vmm was sharing it"));
    }
    drop(before);
    become_pid_one()?;
    // The file system's handle table is /proc/self/fd: of a procfs of this pid namespace's own,
    // holding the process directories only (no /proc/sys), this process the only one in it.
    // Its descriptor outlives the pivot; `..` from it reaches nothing of the host's.
    check(
        // SAFETY: valid C strings.
        i64::from(unsafe {
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"subset=pid,hidepid=invisible".as_ptr().cast(),
            )
        }),
        || "mount a procfs of the server's own".into(),
    )?;
    let cfg = Config {
        root_dir: "/".into(),
        do_import: true,
        xattr: false,
        inode_file_handles: false,
        // virtiofsd's cache=auto: a guest's names and attributes go stale after a second, so
        // the host's changes show that soon (fuse-backend-rs defaults to five).
        cache_policy: CachePolicy::Auto,
        entry_timeout: Duration::from_secs(1),
        attr_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let fs = Fs::new(cfg).map_err(|e| format!("set up the passthrough file system: {e}"))?;
    pivot_into(&dir_fd, readonly, &shown)?;
    drop(dir_fd);
    fs.import()
        .map_err(|e| format!("open the shared directory as the root: {e}"))?;
    keep_only_file_capabilities()?;
    crate::seccomp::apply().map_err(|e| format!("install the seccomp filter: {e}"))?;
    Ok(fs)
}

/// Forks into the pid namespace made by [`own_namespaces`]: the parent closes its descriptors
/// (the socket is the child's alone, so vmm sees it close when the child ends), waits for the
/// child and exits with its status; the child, pid 1 there, dies with the parent (and ends by
/// itself when vmm closes the socket).
fn become_pid_one() -> Result<(), String> {
    // SAFETY: fork in a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid > 0 {
        // SAFETY: closes descriptors 3 and up of this process, which nothing uses any more.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if let Err(e) = crate::seccomp::apply_waiter() {
            eprintln!("vmm-share: cannot confine the waiting parent: {e}");
            // SAFETY: kill of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut status = 0;
        // SAFETY: waits for our child with a valid out pointer.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {}
        let code = match (libc::WIFEXITED(status), libc::WIFSIGNALED(status)) {
            (true, _) => libc::WEXITSTATUS(status),
            (_, true) => 128 + libc::WTERMSIG(status),
            _ => 1,
        };
        // SAFETY: ends this process at once (nothing of it needs to run at exit).
        unsafe { libc::_exit(code) };
    }
    check(
        // SAFETY: prctl with integer arguments only.
        i64::from(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }),
        || "set the parent-death signal".into(),
    )?;
    Ok(())
}

/// Opens the directory at `path` (O_PATH), following no symbolic link on the way.
fn open_dir(path: &CString, shown: &str) -> Result<OwnedFd, String> {
    let how = jail::sys::OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: a valid C string and an open_how of the size given; returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how,
            std::mem::size_of::<jail::sys::OpenHow>(),
        )
    } as i32;
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOTDIR) => format!("{shown} is not a directory"),
            Some(libc::ELOOP) => format!("{shown}: a symbolic link appeared on its path"),
            _ => format!("cannot open {shown}: {e}"),
        });
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The device and inode of an open file.
fn identity(fd: &OwnedFd) -> Result<(u64, u64), String> {
    // SAFETY: fstat writes a stat struct; zeroes are a valid one.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(
        // SAFETY: a descriptor we own and a valid out pointer.
        i64::from(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }),
        || "stat the shared directory".into(),
    )?;
    Ok((st.st_dev, st.st_ino))
}

/// A mount namespace of this process's own, every mount in it private, and a pid namespace for
/// its child; as a user without CAP_SYS_ADMIN, in a user namespace of its own too (its uid and
/// gid mapped to 0 there).
fn own_namespaces() -> Result<(), String> {
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID;
    if uid != 0 {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare with flags only.
    check(i64::from(unsafe { libc::unshare(flags) }), || {
        "make a mount and a pid namespace (unshare)".into()
    })?;
    if uid != 0 {
        let write = |file: &str, text: String| {
            std::fs::write(file, text).map_err(|e| format!("write {file}: {e}"))
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    }
    check(
        // SAFETY: valid C strings and null data.
        i64::from(unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        }),
        || "make every mount private".into(),
    )
}

/// Mounts a clone of the mount at `dir` (without the mounts below it: a host's /proc or /dev
/// under a shared / stays out of reach; their mount points are empty directories) on `dir`,
/// nosuid, nodev, noexec and, if `readonly`, read-only, makes it `/` and detaches the old root. Through
/// descriptors: what is shared is the directory opened, whatever happens to its path.
fn pivot_into(dir: &OwnedFd, readonly: bool, shown: &str) -> Result<(), String> {
    // SAFETY: a descriptor we own and an empty C string with AT_EMPTY_PATH; open_tree returns
    // a new descriptor or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::AT_EMPTY_PATH as u32 | libc::O_CLOEXEC as u32,
        )
    };
    check(tree, || format!("clone the mount of {shown} (open_tree)"))?;
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        ..MountAttr::default()
    };
    if readonly {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    check(
        // SAFETY: the descriptor is ours; `attr` is a mount_attr of the size given.
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE,
                &attr,
                std::mem::size_of::<MountAttr>(),
            )
        },
        || {
            format!(
                "make the mount of {shown} nosuid, nodev, noexec{}",
                if readonly { ", read-only" } else { "" }
            )
        },
    )?;
    jail::sys::pivot_onto(&tree, dir.as_raw_fd())
        .map_err(|(what, e)| format!("make {shown} the root ({what}): {e}"))
}

/// Drops every capability but [`KEPT_CAPS`] from the bounding, effective, permitted and
/// inheritable sets, clears the ambient set, and sets no_new_privs.
fn keep_only_file_capabilities() -> Result<(), String> {
    for cap in 0..64 {
        if KEPT_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(format!("drop capability {cap} from the bounding set: {e}"));
        }
    }
    check(
        // SAFETY: prctl with integer arguments only.
        i64::from(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        }),
        || "clear the ambient capabilities".into(),
    )?;
    let mask = KEPT_CAPS.iter().fold(0u32, |m, &c| m | (1 << c));
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: mask,
            permitted: mask,
            inheritable: 0,
        },
        CapData::default(),
    ];
    check(
        // SAFETY: capset reads a version-3 header and two data structs, which is what we pass.
        unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) },
        || "keep only the file capabilities (capset)".into(),
    )?;
    check(
        // SAFETY: prctl with integer arguments only.
        i64::from(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }),
        || "set no_new_privs".into(),
    )
}
