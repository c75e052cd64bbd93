//! The VM's cgroup, on cgroup v1, v2 and hybrid hosts: where to make it, its limits, joining
//! and removing it.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{step_err, JailError};
use crate::{JailConfig, VmSpec, CPU_PERIOD_US, EXTRA_TASKS, MEMORY_OVERHEAD};

/// Limits written into the cgroup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    memory: u64,
    /// CPU time per [`CPU_PERIOD_US`]; `None` for no quota.
    cpu_quota_us: Option<u64>,
    pub(crate) pids: u64,
}

impl Limits {
    /// The limits for `vm`: guest RAM + [`MEMORY_OVERHEAD`], vCPUs + 1 cores and vCPUs +
    /// [`EXTRA_TASKS`] tasks, unless `config` overrides the first two.
    pub(crate) fn new(config: &JailConfig, vm: &VmSpec) -> Result<Limits, JailError> {
        let memory = config
            .memory_limit
            .unwrap_or(vm.memory_bytes.saturating_add(MEMORY_OVERHEAD));
        if memory < vm.memory_bytes {
            return Err(JailError::MemoryLimitTooLow {
                limit_mib: memory >> 20,
                ram_mib: vm.memory_bytes >> 20,
                overhead_mib: MEMORY_OVERHEAD >> 20,
            });
        }
        let cpus = config
            .cpu_quota
            .unwrap_or(f64::from(vm.vcpus) + 1.0)
            .max(0.0);
        Ok(Limits {
            memory,
            cpu_quota_us: (cpus > 0.0).then(|| ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)),
            pids: u64::from(vm.vcpus) + EXTRA_TASKS,
        })
    }
}

/// The VM's cgroup: one directory per hierarchy that holds a controller it uses (cgroup v1 mounts
/// one hierarchy per controller, v2 one for all; hybrid hosts mix them).
#[derive(Debug)]
pub(crate) struct Cgroup {
    pub(crate) dirs: Vec<PathBuf>,
    /// Only this process removes the directories (not the forked child).
    owner: libc::pid_t,
}

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq)]
struct Hierarchy {
    mount: PathBuf,
    /// The cgroup path the mount shows as its root (not `/` inside a cgroup namespace's parent).
    root: String,
    v2: bool,
    /// v1: the mount's options (its controllers among them); v2: cgroup.controllers of its root.
    controllers: Vec<String>,
}

/// What the cgroup code reads of the host: /proc/self/mountinfo, /proc/self/cgroup and the file
/// system they describe, seen under `fs_root` (`/`; in the tests, a directory laid out like a
/// host). Everything below takes it as input, so the v1, v2 and hybrid paths run anywhere.
#[derive(Debug)]
pub(crate) struct CgroupHost {
    fs_root: PathBuf,
    mountinfo: String,
    proc_cgroup: String,
}

impl CgroupHost {
    /// This host, as this process sees it.
    pub(crate) fn current() -> CgroupHost {
        CgroupHost {
            fs_root: PathBuf::from("/"),
            mountinfo: fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            proc_cgroup: fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        }
    }

    /// The cgroup hierarchies, their mounts under `fs_root`, v2 controllers read from the mount.
    fn hierarchies(&self) -> Vec<Hierarchy> {
        parse_mountinfo(&self.mountinfo)
            .into_iter()
            .map(|mut h| {
                h.mount = self
                    .fs_root
                    .join(h.mount.strip_prefix("/").unwrap_or(&h.mount));
                if h.v2 {
                    h.controllers = fs::read_to_string(h.mount.join("cgroup.controllers"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_string)
                        .collect();
                }
                h
            })
            .collect()
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts in a /proc/PID/mountinfo text: v1 with their options (controllers among
/// them), v2 with no controllers yet (those are in its cgroup.controllers, not in the text).
fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in text.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let v2 = match right[0] {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        out.push(Hierarchy {
            mount: PathBuf::from(unescape_mountinfo(left[4])),
            root: unescape_mountinfo(left[3]),
            v2,
            controllers: if v2 {
                Vec::new()
            } else {
                right[2].split(',').map(str::to_string).collect()
            },
        });
    }
    out
}

/// This process's cgroup path, from a /proc/PID/cgroup text, in the hierarchy holding
/// `controller` (v1) or in the v2 one (the `0::PATH` line).
fn own_cgroup(proc_cgroup: &str, h: &Hierarchy, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if h.v2 {
            id == "0" && ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })
}

/// `path` (a cgroup path) as a directory under the hierarchy's mount.
fn cgroup_dir(h: &Hierarchy, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(h.root.trim_end_matches('/'))
        .unwrap_or(path)
        .trim_start_matches('/');
    h.mount.join(rel)
}

fn write_file(path: &Path, value: &str) -> Result<(), JailError> {
    fs::write(path, value)
        .map_err(|e| step_err(format!("write '{value}' to {}", path.display()), e))
}

/// cgroup v2: the directory to make the VM's cgroup in, with `controllers` enabled for its
/// children, given this process's own cgroup `own`.
///
/// v2 lets a non-root cgroup give domain controllers (memory, pids, cpu) to its children only
/// while it has no processes of its own ("no internal processes"; the write fails with EBUSY).
/// Our own cgroup has at least us, so the VM's cgroup goes *beside* it (a systemd scope's parent
/// is a slice, which holds no processes), or under the mount's root when that is our cgroup (the
/// real root is exempt from the rule). A controller reaches the parent only if every cgroup from
/// the mount's root down enables it, so each is enabled top-down where missing; a cgroup on the
/// way that has processes stops this with an error naming it, before anything is written.
fn v2_parent(h: &Hierarchy, own: &str, controllers: &[&str]) -> Result<PathBuf, JailError> {
    let own_dir = cgroup_dir(h, own);
    let parent = match own_dir.parent() {
        Some(p) if own_dir != h.mount && p.starts_with(&h.mount) => p.to_path_buf(),
        _ => h.mount.clone(),
    };
    // The mount's root first, then each cgroup down to `parent`.
    let mut chain = vec![h.mount.clone()];
    if let Ok(rel) = parent.strip_prefix(&h.mount) {
        for part in rel.components() {
            let next = chain[chain.len() - 1].join(part);
            chain.push(next);
        }
    }
    let mut writes = Vec::new();
    for dir in &chain {
        let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        let missing: Vec<String> = controllers
            .iter()
            .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let control = dir.join("cgroup.subtree_control");
        let value = missing.join(" ");
        // Only the real root lacks cgroup.type; a cgroup namespace's root has one and is bound by
        // the rule like any other.
        let is_root = !dir.join("cgroup.type").exists();
        let busy = fs::read_to_string(dir.join("cgroup.procs"))
            .map(|procs| !procs.trim().is_empty())
            .unwrap_or(false);
        if busy && !is_root {
            return Err(JailError::CgroupBusy {
                control,
                value,
                source: io::Error::from_raw_os_error(libc::EBUSY),
            });
        }
        writes.push((control, value));
    }
    for (control, value) in writes {
        if let Err(source) = fs::write(&control, &value) {
            return Err(match source.raw_os_error() {
                Some(libc::EBUSY) => JailError::CgroupBusy {
                    control,
                    value,
                    source,
                },
                Some(libc::ENOENT) => JailError::ControllerNotOffered {
                    control,
                    value,
                    source,
                },
                _ => step_err(format!("write '{value}' to {}", control.display()), source),
            });
        }
    }
    Ok(parent)
}

impl Cgroup {
    /// Makes `name` in every hierarchy of `host` that holds memory, pids or (with a quota) cpu,
    /// and writes the limits. v1: under this process's own cgroup. v2: see [`v2_parent`].
    pub(crate) fn create(
        host: &CgroupHost,
        name: &str,
        limits: &Limits,
    ) -> Result<Cgroup, JailError> {
        let hierarchies = host.hierarchies();
        let mut wanted = vec!["memory", "pids"];
        if limits.cpu_quota_us.is_some() {
            wanted.push("cpu");
        }
        let mut cgroup = Cgroup {
            dirs: Vec::new(),
            // SAFETY: getpid has no preconditions.
            owner: unsafe { libc::getpid() },
        };
        // Each controller's hierarchy: a v1 mount that has it, else the v2 mount if it offers it.
        let mut plan: Vec<(usize, Vec<&str>)> = Vec::new();
        for controller in wanted {
            let found = hierarchies
                .iter()
                .position(|h| !h.v2 && h.controllers.iter().any(|c| c == controller))
                .or_else(|| {
                    hierarchies
                        .iter()
                        .position(|h| h.v2 && h.controllers.iter().any(|c| c == controller))
                });
            let Some(index) = found else {
                return Err(JailError::ControllerMissing { controller });
            };
            match plan.iter_mut().find(|(i, _)| *i == index) {
                Some((_, list)) => list.push(controller),
                None => plan.push((index, vec![controller])),
            }
        }
        for (index, controllers) in plan {
            let h = &hierarchies[index];
            let own =
                own_cgroup(&host.proc_cgroup, h, controllers[0]).unwrap_or_else(|| "/".into());
            let parent = if h.v2 {
                v2_parent(h, &own, &controllers)?
            } else {
                cgroup_dir(h, &own)
            };
            remove_stale(&parent);
            let dir = parent.join(name);
            // mkdir decides: an existing cgroup is another VM's (or one it left), never reused.
            // Mode 0755 whatever the umask the caller passed on (0 would let anyone make cgroups
            // in it, which would also keep it from being removed).
            match fs::DirBuilder::new().mode(0o755).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(JailError::CgroupExists { dir });
                }
                Err(e) => {
                    return Err(step_err(format!("create cgroup {}", dir.display()), e));
                }
            }
            cgroup.dirs.push(dir.clone());
            record_supervisor(&dir);
            for controller in controllers {
                match (controller, h.v2) {
                    ("memory", false) => write_file(
                        &dir.join("memory.limit_in_bytes"),
                        &limits.memory.to_string(),
                    )?,
                    ("memory", true) => {
                        write_file(&dir.join("memory.max"), &limits.memory.to_string())?
                    }
                    ("pids", _) => write_file(&dir.join("pids.max"), &limits.pids.to_string())?,
                    ("cpu", false) => {
                        if let Some(quota) = limits.cpu_quota_us {
                            write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                            write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                        }
                    }
                    ("cpu", true) => {
                        if let Some(quota) = limits.cpu_quota_us {
                            write_file(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(cgroup)
    }

    /// Moves the calling process into every directory of the cgroup.
    pub(crate) fn join(&self) -> Result<(), JailError> {
        for dir in &self.dirs {
            // "0" is the writing process, whatever its pid namespace.
            write_file(&dir.join("cgroup.procs"), "0")?;
        }
        Ok(())
    }

    /// Removes the directories (once the VM's processes are gone). Failures are logged.
    pub(crate) fn remove(mut self) {
        for dir in std::mem::take(&mut self.dirs) {
            remove_cgroup_dir(&dir);
        }
    }
}

/// The extended attribute of a VM's cgroup that names its supervisor: its pid namespace, pid and
/// start time (clock ticks after boot, field 22 of /proc/PID/stat), so that a later VMM can tell
/// whether the supervisor still runs, even if its pid was reused.
const SUPERVISOR_XATTR: &std::ffi::CStr = c"trusted.vmm.supervisor";

/// This process as [`SUPERVISOR_XATTR`] records it.
fn supervisor_record() -> Option<String> {
    let ns = fs::read_link("/proc/self/ns/pid").ok()?;
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    Some(format!("{} {pid} {}", ns.display(), start_time(pid)?))
}

/// The start time of `pid`, field 22 of /proc/PID/stat.
fn start_time(pid: libc::pid_t) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a cgroup's record names a supervisor that is gone: one of this pid namespace whose pid
/// is not running, or runs a process started at another time. A record of another namespace,
/// or none, says nothing.
fn supervisor_gone(record: &str, own: &str) -> bool {
    let mut fields = record.split(' ');
    let (Some(ns), Some(pid), Some(start)) = (fields.next(), fields.next(), fields.next()) else {
        return false;
    };
    let own_ns = own.split(' ').next();
    match (pid.parse(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) if Some(ns) == own_ns => start_time(pid) != Some(start),
        _ => false,
    }
}

fn record_supervisor(dir: &Path) {
    let Some(record) = supervisor_record() else {
        return;
    };
    let Ok(path) = crate::error::cstring(dir) else {
        return;
    };
    // SAFETY: valid C strings and a buffer of the given length.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            SUPERVISOR_XATTR.as_ptr(),
            record.as_ptr().cast(),
            record.len(),
            0,
        )
    };
    if ret == -1 {
        log::debug!(
            "cannot record the supervisor on cgroup {}: {}; a VMM killed with SIGKILL leaves it \
             for removal by hand",
            dir.display(),
            io::Error::last_os_error()
        );
    }
}

/// Removes the `vmm-*` cgroups in `parent` whose supervisor is gone (killed with SIGKILL, which
/// leaves no chance to clean up; its jailed VMM died with it). A cgroup that still has processes
/// cannot be removed (EBUSY) and is left.
fn remove_stale(parent: &Path) {
    let (Some(own), Ok(entries)) = (supervisor_record(), fs::read_dir(parent)) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("vmm-") {
            continue;
        }
        let dir = entry.path();
        let Ok(path) = crate::error::cstring(&dir) else {
            continue;
        };
        let mut buf = [0u8; 128];
        // SAFETY: valid C strings and a buffer of the given length.
        let len = unsafe {
            libc::getxattr(
                path.as_ptr(),
                SUPERVISOR_XATTR.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let Some(record) = usize::try_from(len)
            .ok()
            .and_then(|len| std::str::from_utf8(&buf[..len]).ok())
        else {
            continue;
        };
        if supervisor_gone(record, &own) {
            match fs::remove_dir(&dir) {
                Ok(()) => log::info!(
                    "removed cgroup {}, left by a VMM that is gone",
                    dir.display()
                ),
                Err(e) => log::debug!("cgroup {} is left: {e}", dir.display()),
            }
        }
    }
}

fn remove_cgroup_dir(dir: &Path) {
    // A cgroup whose last task just exited can be busy for a moment.
    for attempt in 0..100 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 99 => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                log::warn!("cannot remove cgroup {}: {e}", dir.display());
                return;
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } == self.owner {
            for dir in std::mem::take(&mut self.dirs) {
                remove_cgroup_dir(&dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_dir_strips_the_mount_root() {
        let h = Hierarchy {
            mount: "/sys/fs/cgroup/memory".into(),
            root: "/".into(),
            v2: false,
            controllers: vec!["memory".into()],
        };
        assert_eq!(
            cgroup_dir(&h, "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
        assert_eq!(cgroup_dir(&h, "/"), PathBuf::from("/sys/fs/cgroup/memory"));
        let h = Hierarchy {
            root: "/lxc/c1".into(),
            ..h
        };
        assert_eq!(
            cgroup_dir(&h, "/lxc/c1/x"),
            PathBuf::from("/sys/fs/cgroup/memory/x")
        );
    }

    // ---- cgroups: the v1, hybrid and v2 paths against directories laid out like hosts ----

    /// `/proc/self/mountinfo` of this development host: v1 controllers, an empty cgroup2 beside.
    const MOUNTINFO_HYBRID_HERE: &str = "\
23 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    /// `/proc/self/cgroup` of a process of this host.
    const CGROUP_HYBRID_HERE: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/70ddda8b13c0daf59495f666e3263b07
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";
    /// A v1-only host (CentOS 7 style: controllers co-mounted, no cgroup2).
    const MOUNTINFO_V1: &str = "\
18 61 0:17 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
29 24 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
33 24 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
61 1 253:0 / / rw,relatime shared:1 - xfs /dev/mapper/centos-root rw,attr2,inode64,noquota
";
    const CGROUP_V1: &str = "\
11:pids:/user.slice/user-0.slice/session-1.scope
4:memory:/user.slice/user-0.slice/session-1.scope
3:cpu,cpuacct:/user.slice/user-0.slice/session-1.scope
1:name=systemd:/user.slice/user-0.slice/session-1.scope
";
    /// A v2-only host (Debian 12 / Ubuntu 22.04 and later), vmm started from a login shell.
    const MOUNTINFO_V2: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
28 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
";
    const CGROUP_V2: &str = "0::/user.slice/user-0.slice/session-1.scope\n";
    /// A hybrid host (Ubuntu 20.04 style) whose cpu controller is not bound to v1, so the
    /// cgroup2 mount offers it.
    const MOUNTINFO_HYBRID_V2_CPU: &str = "\
25 22 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
33 25 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
36 25 0:33 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,pids
";
    const CGROUP_HYBRID_V2_CPU: &str = "\
12:pids:/user.slice/user-0.slice/session-1.scope
4:memory:/user.slice/user-0.slice/session-1.scope
1:name=systemd:/user.slice/user-0.slice/session-1.scope
0::/user.slice/user-0.slice/session-1.scope
";

    /// A directory standing in for a host's `/`, removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(tag: &str) -> FakeRoot {
            let dir =
                std::env::temp_dir().join(format!("vmm-cgroup-test-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            FakeRoot(dir)
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.0.join(rel.trim_start_matches('/'))
        }

        /// Writes `text` to `rel` (a path as on the host), making its directories.
        fn put(&self, rel: &str, text: &str) {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        /// A cgroup directory as cgroupfs shows it; `procs` "" for none. The real root (no
        /// `cgroup.type`) when `root`.
        fn cgroup(&self, rel: &str, root: bool, controllers: &str, subtree: &str, procs: &str) {
            self.put(&format!("{rel}/cgroup.controllers"), controllers);
            self.put(&format!("{rel}/cgroup.subtree_control"), subtree);
            self.put(&format!("{rel}/cgroup.procs"), procs);
            if !root {
                self.put(&format!("{rel}/cgroup.type"), "domain\n");
            }
        }

        fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
        }

        fn files(&self, rel: &str) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(self.path(rel))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }

        fn host(&self, mountinfo: &str, proc_cgroup: &str) -> CgroupHost {
            CgroupHost {
                fs_root: self.0.clone(),
                mountinfo: mountinfo.into(),
                proc_cgroup: proc_cgroup.into(),
            }
        }

        /// Removes the files the code wrote into `dirs` (cgroupfs removes a cgroup with its files;
        /// a plain directory must be empty), then the cgroup, and checks that the dirs are gone.
        fn remove(&self, cgroup: Cgroup) {
            let dirs = cgroup.dirs.clone();
            for dir in &dirs {
                for e in fs::read_dir(dir).unwrap() {
                    fs::remove_file(e.unwrap().path()).unwrap();
                }
            }
            cgroup.remove();
            for dir in dirs {
                assert!(!dir.exists(), "{} was not removed", dir.display());
            }
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn vm(memory_mib: u64, vcpus: u8) -> VmSpec {
        VmSpec {
            memory_bytes: memory_mib << 20,
            vcpus,
            ..VmSpec::default()
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mountinfo_of_v1_hybrid_and_v2_hosts() {
        let v1 = parse_mountinfo(MOUNTINFO_V1);
        let mounts: Vec<_> = v1.iter().map(|h| h.mount.clone()).collect();
        assert_eq!(
            mounts,
            ["systemd", "cpu,cpuacct", "memory", "pids"]
                .map(|m| PathBuf::from("/sys/fs/cgroup").join(m))
        );
        assert!(v1.iter().all(|h| !h.v2 && h.root == "/"));
        assert!(v1[1].controllers.contains(&"cpu".to_string()));
        assert!(v1[1].controllers.contains(&"cpuacct".to_string()));
        assert!(v1[0].controllers.contains(&"name=systemd".to_string()));

        let here = parse_mountinfo(MOUNTINFO_HYBRID_HERE);
        assert_eq!(here.len(), 10, "the tmpfs and sysfs are not cgroups");
        let unified = here.last().unwrap();
        assert_eq!(
            unified,
            &Hierarchy {
                mount: "/sys/fs/cgroup/unified".into(),
                root: "/".into(),
                v2: true,
                controllers: Vec::new(),
            }
        );
        assert_eq!(here[3].mount, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(here[3].controllers, strings(&["rw", "memory"]));

        let v2 = parse_mountinfo(MOUNTINFO_V2);
        assert_eq!(
            v2,
            [Hierarchy {
                mount: "/sys/fs/cgroup".into(),
                root: "/".into(),
                v2: true,
                controllers: Vec::new(),
            }]
        );

        // A mount point with a space, a cgroup namespace's root, a bad line.
        let odd = parse_mountinfo(
            "50 1 0:40 /lxc/c1 /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n\
             garbage\n51 1 0:41 / /x rw - cgroup\n",
        );
        assert_eq!(odd.len(), 1);
        assert_eq!(odd[0].mount, PathBuf::from("/mnt/my cg"));
        assert_eq!(odd[0].root, "/lxc/c1");
        assert_eq!(unescape_mountinfo("a\\134b\\011c\\"), "a\\b\tc\\");
    }

    #[test]
    fn own_cgroup_of_v1_hybrid_and_v2_hosts() {
        let v1 = parse_mountinfo(MOUNTINFO_V1);
        let scope = "/user.slice/user-0.slice/session-1.scope";
        assert_eq!(own_cgroup(CGROUP_V1, &v1[1], "cpu").as_deref(), Some(scope));
        assert_eq!(
            own_cgroup(CGROUP_V1, &v1[2], "memory").as_deref(),
            Some(scope)
        );
        assert_eq!(
            own_cgroup(CGROUP_V1, &v1[3], "pids").as_deref(),
            Some(scope)
        );
        let v2 = &parse_mountinfo(MOUNTINFO_V2)[0];
        assert_eq!(
            own_cgroup(CGROUP_V1, v2, "memory"),
            None,
            "no 0:: line on v1"
        );

        let here = parse_mountinfo(MOUNTINFO_HYBRID_HERE);
        assert_eq!(
            own_cgroup(CGROUP_HYBRID_HERE, &here[3], "memory").as_deref(),
            Some("/process_api/70ddda8b13c0daf59495f666e3263b07")
        );
        assert_eq!(
            own_cgroup(CGROUP_HYBRID_HERE, &here[7], "pids").as_deref(),
            Some("/")
        );
        assert_eq!(
            own_cgroup(CGROUP_HYBRID_HERE, &here[9], "cpu").as_deref(),
            Some("/")
        );

        assert_eq!(own_cgroup(CGROUP_V2, v2, "memory").as_deref(), Some(scope));
        assert_eq!(own_cgroup(CGROUP_V2, v2, "cpu").as_deref(), Some(scope));
        // A path with a colon survives.
        assert_eq!(own_cgroup("0::/a:b\n", v2, "pids").as_deref(), Some("/a:b"));
    }

    #[test]
    fn limits_follow_the_vm_or_the_options() {
        let l = Limits::new(&JailConfig::new("/j"), &vm(256, 2)).unwrap();
        assert_eq!(
            l,
            Limits {
                memory: (256 << 20) + MEMORY_OVERHEAD,
                cpu_quota_us: Some(300_000),
                pids: 2 + EXTRA_TASKS,
            }
        );
        let mut c = JailConfig::new("/j");
        c.memory_limit = Some(1 << 30);
        c.cpu_quota = Some(0.5);
        let l = Limits::new(&c, &vm(256, 1)).unwrap();
        assert_eq!((l.memory, l.cpu_quota_us), (1 << 30, Some(50_000)));
        c.cpu_quota = Some(0.0);
        assert_eq!(Limits::new(&c, &vm(256, 1)).unwrap().cpu_quota_us, None);
        c.memory_limit = Some(100 << 20);
        let e = Limits::new(&c, &vm(256, 1)).unwrap_err();
        assert!(
            matches!(
                e,
                JailError::MemoryLimitTooLow {
                    limit_mib: 100,
                    ram_mib: 256,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("a memory limit of 100 MiB is less than the guest's 256 MiB of RAM"),
            "{e}"
        );
        assert!(!e.to_string().contains("--"), "no option names: {e}");
    }

    /// A v2-only host with systemd: root (processes, exempt) > user.slice > user-0.slice (no
    /// processes) > session-1.scope (the shell and vmm). Root and user.slice enable memory and
    /// pids for their children, not cpu.
    fn v2_systemd_host(tag: &str) -> FakeRoot {
        let root = FakeRoot::new(tag);
        let all = "cpuset cpu io memory hugetlb pids rdma misc\n";
        root.cgroup("/sys/fs/cgroup", true, all, "memory pids\n", "1\n");
        root.cgroup(
            "/sys/fs/cgroup/user.slice",
            false,
            "memory pids\n",
            "memory pids\n",
            "",
        );
        root.cgroup(
            "/sys/fs/cgroup/user.slice/user-0.slice",
            false,
            "memory pids\n",
            "",
            "",
        );
        root.cgroup(
            "/sys/fs/cgroup/user.slice/user-0.slice/session-1.scope",
            false,
            "",
            "",
            "1234\n5678\n",
        );
        root
    }

    #[test]
    fn v2_only_host_in_a_systemd_scope() {
        let root = v2_systemd_host("v2");
        let host = root.host(MOUNTINFO_V2, CGROUP_V2);
        let limits = Limits::new(&JailConfig::new("/j"), &vm(256, 2)).unwrap();
        let cgroup = Cgroup::create(&host, "vmm-7", &limits).unwrap();

        // Beside the scope, in the slice: one directory for all controllers.
        let slice = "/sys/fs/cgroup/user.slice/user-0.slice";
        let dir = format!("{slice}/vmm-7");
        assert_eq!(cgroup.dirs, [root.path(&dir)]);
        assert_eq!(root.files(&dir), ["cpu.max", "memory.max", "pids.max"]);
        assert_eq!(
            root.read(&format!("{dir}/memory.max")),
            ((256u64 << 20) + MEMORY_OVERHEAD).to_string()
        );
        assert_eq!(root.read(&format!("{dir}/pids.max")), "18");
        assert_eq!(root.read(&format!("{dir}/cpu.max")), "300000 100000");
        // Each controller enabled top-down where it was missing (cgroupfs adds a "+x" write to
        // what is enabled; this plain file keeps only the last write).
        assert_eq!(root.read("/sys/fs/cgroup/cgroup.subtree_control"), "+cpu");
        assert_eq!(
            root.read("/sys/fs/cgroup/user.slice/cgroup.subtree_control"),
            "+cpu"
        );
        assert_eq!(
            root.read(&format!("{slice}/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        // The scope, which has processes, is left alone.
        let scope = format!("{slice}/session-1.scope");
        assert_eq!(root.read(&format!("{scope}/cgroup.subtree_control")), "");
        assert_eq!(root.read(&format!("{scope}/cgroup.procs")), "1234\n5678\n");

        // Joining writes "0" (the writer) to the VM's cgroup.procs, nowhere else.
        cgroup.join().unwrap();
        assert_eq!(root.read(&format!("{dir}/cgroup.procs")), "0");
        assert_eq!(root.read(&format!("{scope}/cgroup.procs")), "1234\n5678\n");
        assert_eq!(root.read(&format!("{slice}/cgroup.procs")), "");
        root.remove(cgroup);
        assert!(root.path(&scope).is_dir());
    }

    #[test]
    fn v2_without_a_cpu_quota_needs_no_cpu_controller() {
        let root = v2_systemd_host("v2-nocpu");
        // Only memory and pids are offered at all.
        root.put("/sys/fs/cgroup/cgroup.controllers", "memory pids\n");
        let host = root.host(MOUNTINFO_V2, CGROUP_V2);
        let mut config = JailConfig::new("/j");
        config.cpu_quota = Some(0.0);
        config.memory_limit = Some(1 << 30);
        let limits = Limits::new(&config, &vm(256, 1)).unwrap();
        let cgroup = Cgroup::create(&host, "vmm-8", &limits).unwrap();
        let dir = "/sys/fs/cgroup/user.slice/user-0.slice/vmm-8";
        // No cpu.max: a new cgroup's is already "max 100000".
        assert_eq!(root.files(dir), ["memory.max", "pids.max"]);
        assert_eq!(root.read(&format!("{dir}/memory.max")), "1073741824");
        assert_eq!(root.read(&format!("{dir}/pids.max")), "17");
        // Root and user.slice already enabled both: untouched.
        assert_eq!(
            root.read("/sys/fs/cgroup/cgroup.subtree_control"),
            "memory pids\n"
        );
        assert_eq!(
            root.read("/sys/fs/cgroup/user.slice/user-0.slice/cgroup.subtree_control"),
            "+memory +pids"
        );
        root.remove(cgroup);

        // With a quota, the missing cpu controller is a clear error, before anything is made.
        let limits = Limits::new(&JailConfig::new("/j"), &vm(256, 1)).unwrap();
        let e = Cgroup::create(&host, "vmm-9", &limits).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, JailError::ControllerMissing { controller: "cpu" }),
            "{e:?}"
        );
        assert!(text.contains("find the cgroup cpu controller"), "{text}");
        assert!(!text.contains("--"), "no option names: {text}");
        assert!(!root
            .path("/sys/fs/cgroup/user.slice/user-0.slice/vmm-9")
            .exists());
    }

    #[test]
    fn v2_in_the_root_cgroup() {
        // No systemd: vmm runs in the real root, which may have processes and children with
        // controllers (it is exempt from the rule).
        let root = FakeRoot::new("v2-root");
        root.cgroup("/sys/fs/cgroup", true, "cpu memory pids\n", "", "1\n99\n");
        let host = root.host(MOUNTINFO_V2, "0::/\n");
        let limits = Limits::new(&JailConfig::new("/j"), &vm(64, 1)).unwrap();
        let cgroup = Cgroup::create(&host, "vmm-3", &limits).unwrap();
        assert_eq!(cgroup.dirs, [root.path("/sys/fs/cgroup/vmm-3")]);
        assert_eq!(
            root.read("/sys/fs/cgroup/cgroup.subtree_control"),
            "+memory +pids +cpu"
        );
        assert_eq!(root.read("/sys/fs/cgroup/vmm-3/cpu.max"), "200000 100000");
        root.remove(cgroup);
    }

    #[test]
    fn v2_cgroup_with_processes_is_refused_by_name() {
        // A container with its own cgroup namespace: its root is a cgroup like any other (it has
        // cgroup.type) and holds the container's processes, vmm among them.
        let root = FakeRoot::new("v2-busy");
        root.cgroup("/sys/fs/cgroup", false, "cpu memory pids\n", "", "1\n42\n");
        let host = root.host(MOUNTINFO_V2, "0::/\n");
        let limits = Limits::new(&JailConfig::new("/j"), &vm(64, 1)).unwrap();
        let e = Cgroup::create(&host, "vmm-4", &limits).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, JailError::CgroupBusy { .. }), "{e:?}");
        assert!(
            text.contains(&format!(
                "write '+memory +pids +cpu' to {}",
                root.path("/sys/fs/cgroup/cgroup.subtree_control").display()
            )),
            "{text}"
        );
        assert!(text.contains("busy"), "{text}");
        assert!(text.contains("systemd-run --scope"), "{text}");
        assert!(!root.path("/sys/fs/cgroup/vmm-4").exists());
        assert_eq!(root.read("/sys/fs/cgroup/cgroup.subtree_control"), "");

        // Same for a cgroup with processes higher up: named, and nothing is written below it.
        let root = v2_systemd_host("v2-busy-up");
        root.put("/sys/fs/cgroup/user.slice/cgroup.procs", "77\n");
        let e = Cgroup::create(&root.host(MOUNTINFO_V2, CGROUP_V2), "vmm-5", &limits).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("'+cpu' to "), "{text}");
        assert!(
            text.contains("/user.slice/cgroup.subtree_control:"),
            "{text}"
        );
        assert_eq!(
            root.read("/sys/fs/cgroup/cgroup.subtree_control"),
            "memory pids\n"
        );
        assert_eq!(
            root.read("/sys/fs/cgroup/user.slice/user-0.slice/cgroup.subtree_control"),
            ""
        );
    }

    #[test]
    fn hybrid_host_like_this_one_uses_v1_only() {
        let root = FakeRoot::new("hybrid-here");
        let own_memory = "/sys/fs/cgroup/memory/process_api/70ddda8b13c0daf59495f666e3263b07";
        for dir in [own_memory, "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu"] {
            root.put(&format!("{dir}/cgroup.procs"), "1\n");
        }
        // The empty cgroup2 beside them offers only what no v1 mount has.
        root.cgroup("/sys/fs/cgroup/unified", true, "hugetlb\n", "", "1\n");
        let host = root.host(MOUNTINFO_HYBRID_HERE, CGROUP_HYBRID_HERE);
        let limits = Limits::new(&JailConfig::new("/j"), &vm(128, 1)).unwrap();
        let cgroup = Cgroup::create(&host, "vmm-1", &limits).unwrap();
        let memory = format!("{own_memory}/vmm-1");
        assert_eq!(
            cgroup.dirs,
            [
                root.path(&memory),
                root.path("/sys/fs/cgroup/pids/vmm-1"),
                root.path("/sys/fs/cgroup/cpu/vmm-1")
            ]
        );
        assert_eq!(root.files(&memory), ["memory.limit_in_bytes"]);
        assert_eq!(
            root.read(&format!("{memory}/memory.limit_in_bytes")),
            ((128u64 << 20) + MEMORY_OVERHEAD).to_string()
        );
        assert_eq!(root.read("/sys/fs/cgroup/pids/vmm-1/pids.max"), "17");
        assert_eq!(
            root.files("/sys/fs/cgroup/cpu/vmm-1"),
            ["cpu.cfs_period_us", "cpu.cfs_quota_us"]
        );
        assert_eq!(
            root.read("/sys/fs/cgroup/cpu/vmm-1/cpu.cfs_quota_us"),
            "200000"
        );
        assert_eq!(
            root.read("/sys/fs/cgroup/cpu/vmm-1/cpu.cfs_period_us"),
            "100000"
        );
        assert_eq!(
            root.read("/sys/fs/cgroup/unified/cgroup.subtree_control"),
            "",
            "v2 untouched"
        );
        assert_eq!(
            root.files("/sys/fs/cgroup/unified").len(),
            3,
            "v2 untouched"
        );
        cgroup.join().unwrap();
        for dir in &cgroup.dirs {
            assert_eq!(fs::read_to_string(dir.join("cgroup.procs")).unwrap(), "0");
        }
        root.remove(cgroup);
    }

    #[test]
    fn hybrid_host_takes_from_v2_what_v1_lacks() {
        let root = FakeRoot::new("hybrid-v2-cpu");
        let scope = "/user.slice/user-0.slice/session-1.scope";
        for v1 in ["memory", "pids"] {
            root.put(
                &format!("/sys/fs/cgroup/{v1}{scope}/cgroup.procs"),
                "1234\n",
            );
        }
        let unified = "/sys/fs/cgroup/unified";
        root.cgroup(unified, true, "cpu\n", "", "");
        root.cgroup(&format!("{unified}/user.slice"), false, "", "", "");
        root.cgroup(
            &format!("{unified}/user.slice/user-0.slice"),
            false,
            "",
            "",
            "",
        );
        root.cgroup(&format!("{unified}{scope}"), false, "", "", "1234\n");
        let host = root.host(MOUNTINFO_HYBRID_V2_CPU, CGROUP_HYBRID_V2_CPU);
        let limits = Limits::new(&JailConfig::new("/j"), &vm(128, 3)).unwrap();
        let cgroup = Cgroup::create(&host, "vmm-2", &limits).unwrap();
        // v1: under the own cgroup; v2: beside it.
        let v2_dir = format!("{unified}/user.slice/user-0.slice/vmm-2");
        assert_eq!(
            cgroup.dirs,
            [
                root.path(&format!("/sys/fs/cgroup/memory{scope}/vmm-2")),
                root.path(&format!("/sys/fs/cgroup/pids{scope}/vmm-2")),
                root.path(&v2_dir),
            ]
        );
        assert_eq!(root.files(&v2_dir), ["cpu.max"]);
        assert_eq!(root.read(&format!("{v2_dir}/cpu.max")), "400000 100000");
        for level in ["", "/user.slice", "/user.slice/user-0.slice"] {
            assert_eq!(
                root.read(&format!("{unified}{level}/cgroup.subtree_control")),
                "+cpu",
                "{level}"
            );
        }
        assert_eq!(
            root.read(&format!("{unified}{scope}/cgroup.subtree_control")),
            ""
        );
        root.remove(cgroup);
    }

    /// The real kernel: where a cgroup2 mount offers any controller (here: hugetlb on the empty
    /// unified hierarchy; on a v2-only host: all), build root > vmm-v2check-PID > slice > scope
    /// with a process in the scope, and check that the kernel refuses controllers for the
    /// scope's children (EBUSY, the rule `v2_parent` checks for) and that `v2_parent` gets the
    /// controller to a new cgroup beside the scope. Skipped without root or such a mount.
    #[test]
    fn v2_rules_hold_on_the_real_kernel() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let hierarchies = CgroupHost::current().hierarchies();
        let Some(h) = hierarchies
            .iter()
            .find(|h| h.v2 && !h.controllers.is_empty())
        else {
            eprintln!("skipped: no cgroup2 mount offers a controller here");
            return;
        };
        let controller = ["hugetlb", "pids", "memory"]
            .into_iter()
            .find(|c| h.controllers.iter().any(|o| o == c))
            .unwrap_or(h.controllers[0].as_str());
        let root_enabled = fs::read_to_string(h.mount.join("cgroup.subtree_control")).unwrap();
        let top = format!("vmm-v2check-{}", std::process::id());
        let scope = h.mount.join(&top).join("slice/scope");
        fs::create_dir_all(&scope).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let outcome = std::panic::catch_unwind(|| {
            fs::write(scope.join("cgroup.procs"), child.id().to_string()).unwrap();
            let own = format!("{}/{top}/slice/scope", h.root.trim_end_matches('/'));
            let slice = h.mount.join(&top).join("slice");
            // v2_parent: beside the scope, the controller enabled from the root down.
            let parent = v2_parent(h, &own, &[controller]).unwrap();
            assert_eq!(parent, slice);
            let vm_dir = parent.join("vmm-x");
            fs::create_dir(&vm_dir).unwrap();
            let offered = fs::read_to_string(vm_dir.join("cgroup.controllers")).unwrap();
            fs::remove_dir(&vm_dir).unwrap();
            assert!(
                offered.split_whitespace().any(|c| c == controller),
                "{offered}"
            );
            // The kernel's rule: no controllers for the children of a cgroup with processes,
            // though its parent offers them...
            let offered = fs::read_to_string(scope.join("cgroup.controllers")).unwrap();
            assert!(
                offered.split_whitespace().any(|c| c == controller),
                "{offered}"
            );
            let e = fs::write(
                scope.join("cgroup.subtree_control"),
                format!("+{controller}"),
            )
            .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "{e}");
            // ...which v2_parent finds before writing, and names.
            let e = v2_parent(h, &format!("{own}/x"), &[controller]).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("scope/cgroup.subtree_control"), "{text}");
            assert!(text.contains("busy"), "{text}");
        });
        let _ = child.kill();
        let _ = child.wait();
        remove_cgroup_dir(&scope);
        remove_cgroup_dir(&h.mount.join(&top).join("slice"));
        remove_cgroup_dir(&h.mount.join(&top));
        if !root_enabled.split_whitespace().any(|c| c == controller) {
            let _ = fs::write(
                h.mount.join("cgroup.subtree_control"),
                format!("-{controller}"),
            );
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}
