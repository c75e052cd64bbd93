//! The server's confinement: a mount namespace whose root is the shared directory, the few
//! capabilities the file operations need, no_new_privs, then (module `seccomp`) its filter. The
//! order is in the crate documentation.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

/// The file system the server serves.
pub type Fs = PassthroughFs<()>;

const OPEN_TREE_CLONE: u32 = 1;
const AT_RECURSIVE: u32 = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The capabilities the server keeps: to act as the guest's user on its files (set*id, then
/// permission checks as that user), and to change owners and modes as root in the guest may.
const KEPT_CAPS: &[u32] = &[
    0, // CAP_CHOWN
    1, // CAP_DAC_OVERRIDE
    3, // CAP_FOWNER
    4, // CAP_FSETID
    6, // CAP_SETGID
    7, // CAP_SETUID
];

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(ret: i64, what: impl FnOnce() -> String) -> Result<(), String> {
    if ret < 0 {
        return Err(format!("{}: {}", what(), io::Error::last_os_error()));
    }
    Ok(())
}

/// Confines this process to `dir` and returns the file system, ready to serve it.
pub fn enter(dir: &Path, readonly: bool) -> Result<Fs, String> {
    let shown = dir.display().to_string();
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{shown}: a path with a NUL byte"))?;
    let before = open_dir(&path, &shown)?;
    own_mount_namespace()?;
    // Opened again in the new namespace (a descriptor from the old one names a mount that is
    // not this namespace's), and checked to be the same directory.
    let dir_fd = open_dir(&path, &shown)?;
    if identity(&before)? != identity(&dir_fd)? {
        return Err(format!("{shown} was replaced while vmm was sharing it"));
    }
    drop(before);
    // The file system opens /proc/self/fd now, while /proc is in reach.
    let cfg = Config {
        root_dir: "/".into(),
        do_import: true,
        xattr: false,
        inode_file_handles: false,
        cache_policy: CachePolicy::Auto,
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

/// Opens the directory at `path` (O_PATH).
fn open_dir(path: &CString, shown: &str) -> Result<OwnedFd, String> {
    // SAFETY: a valid C string; open returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOTDIR) => format!("{shown} is not a directory"),
            _ => format!("cannot open {shown}: {e}"),
        });
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
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

/// A mount namespace of this process's own, every mount in it private; as a user without
/// CAP_SYS_ADMIN, in a user namespace of its own too (its uid and gid mapped to 0 there).
fn own_mount_namespace() -> Result<(), String> {
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut flags = libc::CLONE_NEWNS;
    if uid != 0 {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare with flags only.
    check(i64::from(unsafe { libc::unshare(flags) }), || {
        "make a mount namespace (unshare)".into()
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
    check(
        // SAFETY: both descriptors are ours; empty C strings with the EMPTY_PATH flags.
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                dir.as_raw_fd(),
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        },
        || format!("mount {shown} onto itself (move_mount)"),
    )?;
    // SAFETY: a descriptor we own.
    check(i64::from(unsafe { libc::fchdir(tree.as_raw_fd()) }), || {
        format!("enter {shown}")
    })?;
    check(
        // SAFETY: both paths are valid C strings.
        unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) },
        || format!("make {shown} the root (pivot_root)"),
    )?;
    check(
        // SAFETY: the path is a valid C string.
        i64::from(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) }),
        || "detach the old root".into(),
    )?;
    // SAFETY: the path is a valid C string.
    check(i64::from(unsafe { libc::chdir(c"/".as_ptr()) }), || {
        "enter the new root".into()
    })
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
