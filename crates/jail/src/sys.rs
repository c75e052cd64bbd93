//! Kernel structures and constants of the mount and capability system calls that libc does not
//! carry, for the jail and for a share's server (the `share` crate), which confine themselves
//! the same way.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// `OPEN_TREE_CLONE` (open_tree(2)).
pub const OPEN_TREE_CLONE: u32 = 1;
/// `AT_RECURSIVE` (open_tree(2), mount_setattr(2)).
pub const AT_RECURSIVE: u32 = 0x8000;
/// `MOVE_MOUNT_F_EMPTY_PATH` (move_mount(2)).
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
/// `MOVE_MOUNT_T_EMPTY_PATH` (move_mount(2)).
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
/// `MOUNT_ATTR_RDONLY`.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID`.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
/// `MOUNT_ATTR_NOEXEC`.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// struct open_how (linux/openat2.h).
#[repr(C)]
pub struct OpenHow {
    /// open(2)'s flags.
    pub flags: u64,
    /// open(2)'s mode.
    pub mode: u64,
    /// RESOLVE_* flags.
    pub resolve: u64,
}

/// struct mount_attr (linux/mount.h), version 0.
#[repr(C)]
#[derive(Default)]
pub struct MountAttr {
    /// Attributes to set.
    pub attr_set: u64,
    /// Attributes to clear.
    pub attr_clr: u64,
    /// Propagation type.
    pub propagation: u64,
    /// A user namespace's descriptor (MOUNT_ATTR_IDMAP).
    pub userns_fd: u64,
}

/// `_LINUX_CAPABILITY_VERSION_3` (capget(2), capset(2)).
pub const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// struct __user_cap_header_struct.
#[repr(C)]
pub struct CapHeader {
    /// [`LINUX_CAPABILITY_VERSION_3`].
    pub version: u32,
    /// 0: this thread.
    pub pid: libc::c_int,
}

/// struct __user_cap_data_struct: one of the two of version 3 (capabilities 0–31, 32–63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct CapData {
    /// The effective set.
    pub effective: u32,
    /// The permitted set.
    pub permitted: u32,
    /// The inheritable set.
    pub inheritable: u32,
}

/// Mounts the detached mount `tree` (from open_tree) onto the directory `dir`, makes it the
/// root (pivot_root(".", "."): the old root ends up stacked on the new one) and detaches the old
/// root; the working directory is then the new `/`. Every step goes through descriptors. An
/// error names the step that failed.
pub fn pivot_onto(tree: &OwnedFd, dir: RawFd) -> Result<(), (&'static str, io::Error)> {
    let step = |what: &'static str, ret: i64| match ret {
        0.. => Ok(()),
        _ => Err((what, io::Error::last_os_error())),
    };
    step(
        "move_mount",
        // SAFETY: both descriptors are the caller's; empty C strings with the EMPTY_PATH flags.
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                dir,
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        },
    )?;
    // SAFETY: a descriptor the caller owns.
    let ret = unsafe { libc::fchdir(tree.as_raw_fd()) };
    step("fchdir", i64::from(ret))?;
    // SAFETY: both paths are valid C strings.
    step("pivot_root", unsafe {
        libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr())
    })?;
    // SAFETY: the path is a valid C string.
    let ret = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
    step("umount2", i64::from(ret))?;
    // SAFETY: the path is a valid C string.
    let ret = unsafe { libc::chdir(c"/".as_ptr()) };
    step("chdir", i64::from(ret))
}
