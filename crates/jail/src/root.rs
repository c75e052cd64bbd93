//! The jail's root directory: opened once, by a path with no symbolic links, checked through that
//! descriptor, and later mounted and entered through it, never by its path again.
//!
//! Whoever can write a directory on the path could otherwise swap the jail directory (or a
//! symbolic link on the way) between the check and the pivot, which comes after the VM is built,
//! and make /etc the VMM's root. So: `openat2` with RESOLVE_NO_SYMLINKS (a symbolic link anywhere
//! on the path is refused), then the checks on the descriptor (a directory, not the host's root,
//! owned by root, writable by no one else, empty), then `open_tree` / `move_mount` on the
//! descriptor to bind it read-only, and `fchdir` into that mount to pivot.

use crate::sys::{
    MountAttr, OpenHow, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
    OPEN_TREE_CLONE,
};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{check, cstring, step_err, JailError};
use crate::SocketSpec;

/// The jail directory, open.
#[derive(Debug)]
pub(crate) struct JailRoot {
    /// The path as given, for messages only.
    pub(crate) path: PathBuf,
    fd: OwnedFd,
}

impl JailRoot {
    /// Opens `dir` without following symbolic links and checks it can be the jail's root.
    pub(crate) fn open(dir: &Path) -> Result<JailRoot, JailError> {
        let root = JailRoot {
            path: dir.to_path_buf(),
            fd: open_no_symlinks(dir)?,
        };
        root.check()?;
        Ok(root)
    }

    /// In a new mount namespace: the descriptor still names a mount of the namespace it was
    /// opened in, which mount calls refuse. Opens the path again here, the same way, and requires
    /// the very directory checked before (same device and inode: held open, it cannot have been
    /// freed and reused), checked again.
    pub(crate) fn reopen_in_this_namespace(self) -> Result<JailRoot, JailError> {
        let again = JailRoot {
            fd: open_no_symlinks(&self.path)?,
            path: self.path.clone(),
        };
        let id = |root: &JailRoot| {
            fs::metadata(root.proc_path())
                .map(|m| (m.dev(), m.ino()))
                .map_err(|source| JailError::DirUnusable {
                    dir: root.path.clone(),
                    source,
                })
        };
        if id(&again)? != id(&self)? {
            return Err(JailError::DirNotSafe {
                dir: self.path.clone(),
                problem: "it was replaced by another directory while the jail was set up".into(),
            });
        }
        again.check()?;
        Ok(again)
    }
}

/// `openat2` with RESOLVE_NO_SYMLINKS, as a directory.
fn open_no_symlinks(dir: &Path) -> Result<OwnedFd, JailError> {
    let c_dir = cstring(dir)?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // RESOLVE_NO_SYMLINKS refuses a symbolic link anywhere, the last component included
    // (O_NOFOLLOW with O_DIRECTORY would report it as ENOTDIR).
    // SAFETY: a valid C string and open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c_dir.as_ptr(),
            &how,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        let source = io::Error::last_os_error();
        let unsafe_dir = |problem: &str| JailError::DirNotSafe {
            dir: dir.to_path_buf(),
            problem: problem.into(),
        };
        return Err(match source.raw_os_error() {
            Some(libc::ENOTDIR) => JailError::NotADirectory {
                path: dir.to_path_buf(),
            },
            Some(libc::ELOOP) | Some(libc::EXDEV) => unsafe_dir(
                "its path goes through a symbolic link, which whoever owns the link's \
                     directory could point elsewhere; give the directory's real path",
            ),
            _ => JailError::DirUnusable {
                dir: dir.to_path_buf(),
                source,
            },
        });
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl JailRoot {
    fn check(&self) -> Result<(), JailError> {
        let unusable = |source| JailError::DirUnusable {
            dir: self.path.clone(),
            source,
        };
        let not_safe = |problem: String| JailError::DirNotSafe {
            dir: self.path.clone(),
            problem,
        };
        let meta = fs::metadata(self.proc_path()).map_err(unusable)?;
        let host_root = fs::metadata("/").map_err(unusable)?;
        if (meta.dev(), meta.ino()) == (host_root.dev(), host_root.ino()) {
            return Err(JailError::HostRoot);
        }
        if meta.uid() != 0 {
            return Err(not_safe(format!("it belongs to uid {}", meta.uid())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(not_safe(format!(
                "its group or other users can write it (mode {:o})",
                meta.mode() & 0o7777
            )));
        }
        if let Some(entry) = fs::read_dir(self.proc_path()).map_err(unusable)?.next() {
            let name = entry.map_err(unusable)?.file_name();
            return Err(not_safe(format!(
                "it is not empty (it holds '{}')",
                name.to_string_lossy()
            )));
        }
        Ok(())
    }

    /// The directory through this process's descriptor (the magic link names the very directory
    /// opened, whatever happened to its path since).
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Binds the directory read-only (no devices, set-uid or exec) onto itself, makes that mount
    /// `/` and detaches the old root. Every step goes through descriptors; both are closed at the
    /// end, as one of them still reaches the host's tree.
    pub(crate) fn pivot(self) -> Result<(), JailError> {
        let shown = self.path.display().to_string();
        let tree = readonly_tree(self.fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH as u32, &shown)?;
        crate::sys::pivot_onto(&tree, self.fd.as_raw_fd()).map_err(|(what, e)| {
            step_err(format!("make {shown} the root, read-only ({what})"), e)
        })?;
        drop(tree);
        drop(self.fd);
        Ok(())
    }
}

/// A detached clone of the mount at `dirfd`/`path` (`open_tree` with OPEN_TREE_CLONE and
/// `flags`), made read-only, nosuid, nodev and noexec.
fn readonly_tree(
    dirfd: RawFd,
    path: &std::ffi::CStr,
    flags: u32,
    shown: &str,
) -> Result<OwnedFd, JailError> {
    // SAFETY: a descriptor (or AT_FDCWD) and a valid C string; open_tree returns a new
    // descriptor or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dirfd,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | flags,
        )
    };
    check(tree as i32, || {
        format!("clone a mount of {shown} (open_tree)")
    })?;
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        ..MountAttr::default()
    };
    check(
        // SAFETY: the descriptor is ours; `attr` is a mount_attr of the size given.
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr,
                std::mem::size_of::<MountAttr>(),
            ) as i32
        },
        || format!("make the mount of {shown} read-only, nosuid, nodev, noexec"),
    )?;
    Ok(tree)
}

/// The directory of `socket` as a mount of its own (a clone of that directory alone, without the
/// mounts below it), detached: in no mount namespace's tree, so `..` at its top stays there, and
/// a relative symbolic link in it reaches no further. Read-only, nosuid, nodev, noexec (connecting
/// to a socket needs no write access to its file system). Refused unless the directory holds
/// `socket` itself (same device and inode), so that what the VMM reaches is the directory it
/// bound its socket in, whatever happened to the path since. Call in the jail's mount namespace.
pub(crate) fn socket_dir_mount(socket: &SocketSpec) -> Result<OwnedFd, JailError> {
    let dir = match socket.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = socket.path.file_name().unwrap_or_default();
    let changed = || JailError::SocketDirChanged {
        dir: dir.to_path_buf(),
        name: name.to_string_lossy().into_owned(),
    };
    let c_dir = cstring(dir)?;
    let c_name = cstring(Path::new(name))?;
    let shown = dir.display().to_string();
    let tree = readonly_tree(libc::AT_FDCWD, &c_dir, 0, &shown)?;
    // SAFETY: a zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: our descriptor, a valid C string and a writable stat that outlives the call.
    let ret = unsafe {
        libc::fstatat(
            tree.as_raw_fd(),
            c_name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret != 0
        || st.st_mode & libc::S_IFMT != libc::S_IFSOCK
        || (st.st_dev, st.st_ino) != (socket.dev, socket.ino)
    {
        return Err(changed());
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    /// Connects to the Unix socket `name` relative to `dir` in a child process whose working
    /// directory is `dir` (the test process's own must not move): the child's errno, 0 if it
    /// connected.
    fn connect_from(dir: &OwnedFd, name: &std::ffi::CStr) -> i32 {
        // SAFETY: a zeroed sockaddr_un is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, &s) in addr.sun_path.iter_mut().zip(name.to_bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: the child makes only async-signal-safe system calls, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: raw system calls on valid arguments; the child ends with _exit.
            unsafe {
                if libc::fchdir(dir.as_raw_fd()) != 0 {
                    libc::_exit(100);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                let ret = libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len);
                let errno = if ret == 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                libc::_exit(errno);
            }
        }
        let mut status = 0;
        // SAFETY: our child; a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        libc::WEXITSTATUS(status)
    }

    /// The directory of the VMM's socket, as the jailed VMM gets it: the socket's own directory
    /// (another socket's identity is refused), where names resolve and `..`, or a relative
    /// symbolic link through it, goes no further up.
    #[test]
    fn a_socket_directory_mount_reaches_nothing_above_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let base = std::env::temp_dir().join(format!("jail-unit-sockdir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("vsock")).unwrap();
        fs::create_dir_all(base.join("outside")).unwrap();
        let sock = base.join("vsock/v.sock");
        let _vmm = UnixListener::bind(&sock).unwrap();
        let _peer = UnixListener::bind(base.join("vsock/v.sock_1")).unwrap();
        let _out = UnixListener::bind(base.join("outside/x.sock")).unwrap();
        fs::set_permissions(
            base.join("outside/x.sock"),
            fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        std::os::unix::fs::symlink("../outside/x.sock", base.join("vsock/v.sock_2")).unwrap();
        let meta = fs::symlink_metadata(&sock).unwrap();
        let spec = SocketSpec {
            path: sock.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            fd: -1,
        };
        let dir = socket_dir_mount(&spec).unwrap();
        assert_eq!(connect_from(&dir, c"v.sock_1"), 0);
        // The plain directory would reach the outside socket both ways.
        assert_eq!(connect_from(&dir, c"../outside/x.sock"), libc::ENOENT);
        assert_eq!(connect_from(&dir, c"v.sock_2"), libc::ENOENT);
        let plain = fs::File::open(base.join("vsock")).unwrap();
        assert_eq!(connect_from(&plain.into(), c"v.sock_2"), 0);
        // Another socket's identity: refused.
        let other = SocketSpec {
            ino: meta.ino() + 1,
            ..spec
        };
        let e = socket_dir_mount(&other).unwrap_err();
        assert!(matches!(e, JailError::SocketDirChanged { .. }), "{e:?}");
        assert!(e.to_string().contains("'v.sock'"), "{e}");
        drop(dir);
        fs::remove_dir_all(&base).unwrap();
    }
}
