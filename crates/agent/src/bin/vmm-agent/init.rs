//! PID 1's preparations in the initramfs `vmm run` builds: the kernel's file systems, the root
//! file system the command line names, a loopback interface, a host name.

use std::io;

use crate::sys::{self, mount};

/// Where the root file system is mounted before it becomes `/`.
const NEW_ROOT: &str = "/newroot";

/// Where a read-only virtiofs root is mounted, below the overlay that makes it writable.
const LOWER: &str = "/.vmm/lower";
/// The tmpfs that takes the writes to such a root (`upper` and `work` in it).
const UPPER: &str = "/.vmm/upper";

/// The root file system as the kernel command line describes it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RootSpec {
    /// `root=`: a /dev path, or a virtio-fs tag with `rootfstype=virtiofs`.
    pub device: Option<String>,
    /// `rootfstype=`.
    pub fstype: Option<String>,
    /// `rootflags=`.
    pub flags: String,
    /// `ro` (the last of `ro` and `rw` wins; the kernel's default is ro).
    pub read_only: bool,
    /// `vmm.share=TAG:DIR`: virtio-fs shares to mount at DIR once the root is `/`.
    pub shares: Vec<(String, String)>,
    /// `vmm.init=PATH`: after the mounts, become the guest's own init at PATH instead of
    /// serving as the agent.
    pub init: Option<String>,
}

impl RootSpec {
    /// Parses a kernel command line.
    pub fn parse(cmdline: &str) -> RootSpec {
        let mut spec = RootSpec {
            read_only: true,
            ..RootSpec::default()
        };
        for word in cmdline.split_whitespace() {
            if word == "--" {
                break;
            }
            match word.split_once('=') {
                Some(("root", v)) => spec.device = Some(v.to_string()),
                Some(("rootfstype", v)) => spec.fstype = Some(v.to_string()),
                Some(("rootflags", v)) => spec.flags = v.to_string(),
                Some(("vmm.share", v)) => {
                    if let Some((tag, dir)) = v.split_once(':') {
                        spec.shares.push((tag.to_string(), dir.to_string()));
                    }
                }
                Some(("vmm.init", v)) => spec.init = Some(v.to_string()),
                None if word == "ro" => spec.read_only = true,
                None if word == "rw" => spec.read_only = false,
                _ => {}
            }
        }
        spec
    }
}

/// Mounts what the guest needs and switches to the root file system, then mounts the shares. An
/// error says what failed; the agent then serves from the initramfs. Returns the guest's own
/// init to become, if the command line names one.
pub fn prepare() -> Result<Option<String>, String> {
    let step = |what: &str, r: io::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    step("mount /proc", mount("proc", "/proc", "proc", 0, ""))?;
    step("mount /sys", mount("sysfs", "/sys", "sysfs", 0, ""))?;
    step("mount /dev", mount("devtmpfs", "/dev", "devtmpfs", 0, ""))?;
    console_stdio();
    loopback_up();
    // SAFETY: sethostname with a valid buffer and its length.
    unsafe { libc::sethostname(b"vmm".as_ptr().cast(), 3) };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let spec = RootSpec::parse(&cmdline);
    let Some(device) = &spec.device else {
        extra_mounts(false);
        mount_shares(&spec.shares);
        return Ok(spec.init);
    };
    let writable = if spec.fstype.as_deref() == Some("virtiofs") {
        mount_shared_root(device, &spec)?;
        true
    } else {
        mount_root(device, &spec)?;
        !spec.read_only
    };
    step("switch to the root file system", switch_root())?;
    extra_mounts(!writable);
    mount_shares(&spec.shares);
    Ok(spec.init)
}

/// The root file system from the virtio-fs share tagged `tag`. Read-only (`ro`), it is the lower
/// layer of an overlay whose writes go to a tmpfs: the guest can write anywhere, nothing reaches
/// the host.
fn mount_shared_root(tag: &str, spec: &RootSpec) -> Result<(), String> {
    let step = |what: String, r: io::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    for dir in [NEW_ROOT, LOWER, UPPER] {
        step(format!("mkdir {dir}"), std::fs::create_dir_all(dir))?;
    }
    if !spec.read_only {
        return step(
            format!("mount the shared root '{tag}'"),
            mount(tag, NEW_ROOT, "virtiofs", 0, &spec.flags),
        );
    }
    step(
        format!("mount the shared root '{tag}'"),
        mount(tag, LOWER, "virtiofs", libc::MS_RDONLY, &spec.flags),
    )?;
    step(
        format!("mount a tmpfs on {UPPER}"),
        mount("tmpfs", UPPER, "tmpfs", 0, "mode=0755"),
    )?;
    for dir in ["upper", "work"] {
        step(
            format!("mkdir {UPPER}/{dir}"),
            std::fs::create_dir_all(format!("{UPPER}/{dir}")),
        )?;
    }
    let data = format!("lowerdir={LOWER},upperdir={UPPER}/upper,workdir={UPPER}/work");
    step(
        "mount the overlay over the shared root".into(),
        mount("overlay", NEW_ROOT, "overlay", 0, &data),
    )
}

/// Mounts each `vmm.share=TAG:DIR` (DIR made if missing). Failures are reported and skipped.
fn mount_shares(shares: &[(String, String)]) {
    for (tag, dir) in shares {
        let r = std::fs::create_dir_all(dir).and_then(|()| mount(tag, dir, "virtiofs", 0, ""));
        if let Err(e) = r {
            eprintln!("vmm-agent: mount share '{tag}' on {dir}: {e}");
        }
    }
}

/// Standard input, output and error on the console, for messages (the kernel starts PID 1 with
/// none when the initramfs has no /dev/console).
fn console_stdio() {
    use std::os::fd::AsRawFd;
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

fn mount_root(device: &str, spec: &RootSpec) -> Result<(), String> {
    if !device.starts_with("/dev/") {
        return Err(format!(
            "root={device}: the agent mounts a /dev path only (e.g. root=/dev/vda)"
        ));
    }
    std::fs::create_dir_all(NEW_ROOT).map_err(|e| format!("mkdir {NEW_ROOT}: {e}"))?;
    let flags = if spec.read_only { libc::MS_RDONLY } else { 0 };
    let types: Vec<String> = match &spec.fstype {
        Some(t) => vec![t.clone()],
        // ext4 first (the common case, and its driver also registers ext3 and ext2, which are
        // listed first and fail slowly on an ext4 image), then every other block-device file
        // system the kernel has.
        None => std::iter::once("ext4".to_string())
            .chain(
                std::fs::read_to_string("/proc/filesystems")
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| !l.starts_with("nodev"))
                    .map(|l| l.trim().to_string())
                    .filter(|t| !t.is_empty() && t != "ext4"),
            )
            .collect(),
    };
    let mut last = None;
    for t in &types {
        match mount(device, NEW_ROOT, t, flags, &spec.flags) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(format!("{t}: {e}")),
        }
    }
    Err(format!(
        "cannot mount the root file system {device} ({})",
        last.unwrap_or_else(|| "the kernel has no block file system".into())
    ))
}

/// Moves /dev, /proc and /sys into the new root and makes it `/` (what switch_root does, minus
/// deleting the initramfs: the agent's binary lives there).
fn switch_root() -> io::Result<()> {
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{dir}");
        if std::path::Path::new(&target).is_dir() {
            mount(dir, &target, "", libc::MS_MOVE, "")?;
        }
    }
    std::env::set_current_dir(NEW_ROOT)?;
    mount(".", "/", "", libc::MS_MOVE, "")?;
    sys::chroot(".")?;
    std::env::set_current_dir("/")
}

/// /dev/pts, /dev/shm, and a /tmp that can be written when the root cannot. Failures are
/// reported and skipped: the command may not need them.
fn extra_mounts(read_only_root: bool) {
    let mut mounts = vec![
        ("devpts", "/dev/pts", "devpts", "mode=0620,ptmxmode=0666"),
        ("tmpfs", "/dev/shm", "tmpfs", "mode=1777"),
    ];
    if read_only_root {
        mounts.push(("tmpfs", "/tmp", "tmpfs", "mode=1777"));
    }
    for (source, target, fstype, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(source, target, fstype, libc::MS_NOSUID, data) {
            eprintln!("vmm-agent: mount {target}: {e}");
        }
    }
}

/// Brings the loopback interface up.
fn loopback_up() {
    // SAFETY: socket(2) with constant arguments; checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: ifreq is plain data; zeroes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS with a valid ifreq naming "lo"; the union member used is
    // the flags, which both calls read and write.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_comes_from_the_command_line() {
        let spec = RootSpec::parse("console=ttyS0 root=/dev/vda rw rootfstype=ext4 quiet");
        assert_eq!(spec.device.as_deref(), Some("/dev/vda"));
        assert_eq!(spec.fstype.as_deref(), Some("ext4"));
        assert!(!spec.read_only);
        let spec = RootSpec::parse("root=/dev/vdb rw ro rootflags=noatime");
        assert!(spec.read_only);
        assert_eq!(spec.flags, "noatime");
        // The kernel's default is read-only; what follows `--` is init's.
        let spec = RootSpec::parse("quiet -- root=/dev/vdc rw");
        assert_eq!(
            spec,
            RootSpec {
                read_only: true,
                ..RootSpec::default()
            }
        );
    }
}
