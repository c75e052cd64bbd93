//! `--jail DIR`: the jailed VMM runs as an unprivileged uid with no capabilities, in its own
//! namespaces and cgroup, sees only DIR, still serves its devices, and its status reaches the caller.
//! These tests need root (namespaces, cgroups, pivot_root): they fail with a clear message when not
//! run as root, unless VMM_SKIP_JAIL_TESTS=1 is set.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{root_available, run_vmm, s, status_field, vmm_bin, vmm_command, Running, Scratch};

const TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

macro_rules! require_root {
    () => {
        require_kvm!();
        if !root_available() {
            return;
        }
    };
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("read ns link")
}

/// (controller list, cgroup path) per line of /proc/PID/cgroup.
fn cgroups(pid: u32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("read cgroup")
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
            Some((ctrls.to_string(), path.to_string()))
        })
        .collect()
}

/// The directory of `pid`'s cgroup holding `controller`: a v1 mount with it, else the v2 mount.
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let groups = cgroups(pid);
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if right[0] == "cgroup" && right[2].split(',').any(|o| o == controller) {
            let (_, path) = groups
                .iter()
                .find(|(c, _)| c.split(',').any(|c| c == controller))
                .expect("v1 line");
            return Path::new(left[4]).join(path.trim_start_matches('/'));
        }
    }
    for line in mountinfo.lines() {
        if line.contains(" - cgroup2 ") {
            let mount = line.split(' ').nth(4).expect("mount point");
            let (_, path) = groups.iter().find(|(c, _)| c.is_empty()).expect("v2 line");
            return Path::new(mount).join(path.trim_start_matches('/'));
        }
    }
    panic!("no cgroup hierarchy has {controller}");
}

/// An empty directory owned by root that only root can write: what `--jail` takes.
fn jail_root(scratch: &Scratch) -> PathBuf {
    let root = scratch.path("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// A jail id no other test uses: the cgroup is `vmm-<id>`.
fn test_id(n: u32) -> u32 {
    1_000_000_000 + (std::process::id() % 100_000) * 10 + n
}

/// Waits up to `timeout` for `done`.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

fn read_trim(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Checks the jailed VMM of a parked guest from outside, then stops it with SIGTERM.
#[test]
fn boot_jail_confines_the_vmm() {
    require_root!();
    let scratch = Scratch::new("jail-confines");
    let root = jail_root(&scratch);
    let id = test_id(1).to_string();
    let mut vmm = Running::start(&[
        "--kernel",
        test_guests::PARK,
        // SIGTERM then stops the parked guest (it has no power-button driver) at once.
        "--shutdown-timeout",
        "100ms",
        "--jail",
        s(&root),
        "--jail-id",
        &id,
        "--uid",
        "4242",
        "--gid",
        "4343",
        "--memory-limit",
        "300M",
        "--cpu-quota",
        "0.5",
    ]);
    vmm.wait_for_line("parked", TIMEOUT);
    let pid = vmm.jailed_pid();

    // Credentials and capabilities.
    assert_eq!(status_field(pid, "Uid"), "4242\t4242\t4242\t4242");
    assert_eq!(status_field(pid, "Gid"), "4343\t4343\t4343\t4343");
    assert_eq!(status_field(pid, "Groups"), "");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // Every thread (the event loop and the vCPU) has the same: credentials are per thread.
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
        assert!(text.contains("CapEff:\t0000000000000000"), "thread {tid}");
        assert!(text.contains("CapBnd:\t0000000000000000"), "thread {tid}");
        assert!(text.contains("Uid:\t4242\t"), "thread {tid}");
    }

    // Namespaces: all new (no tap, so the net namespace too).
    for kind in ["mnt", "pid", "ipc", "uts", "net"] {
        assert_ne!(
            ns(&pid.to_string(), kind),
            ns("self", kind),
            "{kind} namespace"
        );
    }
    // pid 1 of its namespace.
    let nspid = status_field(pid, "NSpid");
    assert!(nspid.ends_with("\t1"), "NSpid {nspid}");

    // The cgroup, with the limits asked for.
    let name = format!("vmm-{id}");
    let memory = cgroup_dir(pid, "memory");
    let pids = cgroup_dir(pid, "pids");
    let cpu = cgroup_dir(pid, "cpu");
    for dir in [&memory, &pids, &cpu] {
        assert!(dir.ends_with(&name), "{} is not {name}", dir.display());
    }
    if memory.join("memory.limit_in_bytes").exists() {
        assert_eq!(
            read_trim(&memory.join("memory.limit_in_bytes")),
            (300 * MIB).to_string()
        );
        assert_eq!(read_trim(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read_trim(&cpu.join("cpu.cfs_period_us")), "100000");
    } else {
        assert_eq!(
            read_trim(&memory.join("memory.max")),
            (300 * MIB).to_string()
        );
        assert_eq!(read_trim(&cpu.join("cpu.max")), "50000 100000");
    }
    assert_eq!(read_trim(&pids.join("pids.max")), "17", "1 vCPU + 16");

    // The file system: only the (empty) jail directory, read-only.
    let seen: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(seen, BTreeSet::new());
    assert!(!Path::new(&format!("/proc/{pid}/root/etc/passwd")).exists());
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert_eq!(mountinfo.lines().count(), 1, "{mountinfo}");
    assert!(
        mountinfo.contains(" / ro,nosuid,nodev,noexec"),
        "{mountinfo}"
    );

    // rlimits.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in limits"))
            .split_whitespace()
            .rev()
            .nth(2)
            .unwrap()
            .to_string()
    };
    assert_eq!(limit("Max processes"), "17");
    assert_eq!(limit("Max core file size"), "0");
    let nofile: u64 = limit("Max open files").parse().unwrap();
    assert!(nofile < 1024, "open files {nofile}");
    // stdout is a pipe, so the file size limit is the largest disk: none here, 1 byte.
    assert_eq!(limit("Max file size"), "1");

    // SIGTERM to the supervisor ends the VM; the status says so; the cgroup is removed.
    let code = vmm.signal_and_wait(libc::SIGTERM, TIMEOUT);
    assert_eq!(code, Some(128 + libc::SIGTERM));
    // The supervisor reaped the jailed VMM before exiting.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "jailed VMM {pid} still there"
    );
    for dir in [&memory, &pids, &cpu] {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

fn disk_image(scratch: &Scratch, name: &str) -> String {
    let mut data = b"HELLO-SECTOR-0!!".to_vec();
    data.resize(MIB as usize, 0);
    scratch.file(name, &data)
}

/// Behind the jail the tiny virtio-blk driver's requests (DISCARD and WRITE_ZEROES too) still land
/// in the image (opened before the pivot), serial output arrives, and the guest's reset exits 0 through the supervisor.
#[test]
fn boot_jail_virtio_blk_guest_does_io_and_exits_zero() {
    require_root!();
    jail_virtio_blk("", 2);
}

/// The same with `aio=io_uring` (the ring is set up before the pivot and the filters; its kernel
/// workers live under the jail's process and cgroup limits), and 20 requests kept in flight.
#[test]
fn boot_jail_virtio_blk_io_uring_keeps_requests_in_flight() {
    require_root!();
    let run = jail_virtio_blk(",aio=io_uring", 6);
    let r = test_guests::Report::parse(&run.stdout);
    run.expect(
        run.stderr.contains("(read-write, io_uring)"),
        "the disk is not served with io_uring",
    );
    run.expect(
        r.num("inflight_write_ok") == Some(20),
        "writes in flight failed",
    );
    run.expect(r.num("inflight_flush_status") == Some(0), "flush failed");
    run.expect(
        r.num("inflight_read_ok") == Some(20),
        "reads in flight failed",
    );
}

/// Runs the tiny virtio-blk driver jailed, on a disk with `extra` options (with aio=, -v and
/// `blk_inflight=20` too), as jail `test_id(n)`; checks its requests and returns the run.
fn jail_virtio_blk(extra: &str, n: u32) -> common::Run {
    let scratch = Scratch::new("jail-blk");
    let root = jail_root(&scratch);
    let disk = disk_image(&scratch, "disk.img");
    let id = test_id(n).to_string();
    let disk_arg = format!("{disk}{extra}");
    let mut args = vec![
        "--kernel",
        test_guests::VIRTIO_BLK,
        "--disk",
        &disk_arg,
        "--jail",
        s(&root),
        "--jail-id",
        &id,
    ];
    if !extra.is_empty() {
        args.extend(["-v", "--cmdline", "blk_inflight=20"]);
    }
    let run = run_vmm(&args, TIMEOUT);
    run.expect_success();
    let r = test_guests::Report::parse(&run.stdout);
    run.expect(r.num("write_status") == Some(0), "write failed");
    run.expect(r.num("flush_status") == Some(0), "flush failed");
    run.expect(
        r.get("sector1") == Some("WRITTEN-BY-GUEST"),
        "write not read back",
    );
    run.expect(r.num("final_status") == Some(0xf), "device marked failed");
    // DISCARD and WRITE_ZEROES under the jail's limits and filters.
    run.expect(r.num("discard_status") == Some(0), "discard failed");
    run.expect(
        r.num("discarded_zero") == Some(1),
        "discarded sector not zero",
    );
    run.expect(r.num("zeroes_status") == Some(0), "write zeroes failed");
    let image = std::fs::read(&disk).unwrap();
    assert_eq!(&image[512..528], b"WRITTEN-BY-GUEST", "{run}");
    assert_eq!(image.len(), 1 << 20, "{run}");
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/pids/vmm-{id}")).exists(),
        "{run}"
    );
    run
}

/// A qcow2 overlay of a raw base behind the jail: the backing file is opened before the pivot,
/// and the overlay may grow past its size at start (RLIMIT_FSIZE allows for the image's virtual
/// size, not the file's); the base is unchanged.
#[test]
fn boot_jail_virtio_blk_qcow2_overlay_grows_and_leaves_the_base() {
    require_root!();
    let scratch = Scratch::new("jail-blk-qcow2");
    let root = jail_root(&scratch);
    let base = disk_image(&scratch, "base.img");
    let before = std::fs::read(&base).unwrap();
    let overlay = scratch.path("overlay.qcow2");
    common::qcow2_overlay("base.img", "raw", s(&overlay));
    let len_before = std::fs::metadata(&overlay).unwrap().len();
    let id = test_id(8).to_string();
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::VIRTIO_BLK,
            "--disk",
            s(&overlay),
            "--jail",
            s(&root),
            "--jail-id",
            &id,
        ],
        TIMEOUT,
    );
    run.expect_success();
    let r = test_guests::Report::parse(&run.stdout);
    for key in [
        "write_status",
        "flush_status",
        "discard_status",
        "zeroes_status",
    ] {
        run.expect(r.num(key) == Some(0), &format!("{key} not OK"));
    }
    run.expect(
        r.get("sector1") == Some("WRITTEN-BY-GUEST"),
        "write not read back",
    );
    run.expect(r.num("final_status") == Some(0xf), "device marked failed");
    assert!(
        std::fs::metadata(&overlay).unwrap().len() > len_before,
        "the overlay did not grow\n{run}"
    );
    assert!(
        std::fs::read(&base).unwrap() == before,
        "the base changed\n{run}"
    );
}

/// `snapshot=on` behind the jail: the overlay, made before the pivot, outlives the closing of
/// inherited descriptors and the pivot; the guest's writes and zeroes read back; the image and
/// its directory are left exactly as they were.
#[test]
fn boot_jail_virtio_blk_snapshot_leaves_the_image() {
    require_root!();
    let scratch = Scratch::new("jail-blk-snapshot");
    let root = jail_root(&scratch);
    let disk = disk_image(&scratch, "disk.img");
    let before = std::fs::read(&disk).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&scratch.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    files.sort();
    let id = test_id(3).to_string();
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::VIRTIO_BLK,
            "--disk",
            &format!("{disk},snapshot=on"),
            "--jail",
            s(&root),
            "--jail-id",
            &id,
        ],
        TIMEOUT,
    );
    run.expect_success();
    let r = test_guests::Report::parse(&run.stdout);
    run.expect(r.num("write_status") == Some(0), "write failed");
    run.expect(
        r.get("sector1") == Some("WRITTEN-BY-GUEST"),
        "write not read back",
    );
    run.expect(r.num("zeroed_zero") == Some(1), "zeroed sector not zero");
    run.expect(r.num("final_status") == Some(0xf), "device marked failed");
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "image changed\n{run}"
    );
    let mut after: Vec<_> = std::fs::read_dir(&scratch.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    after.sort();
    assert_eq!(after, files, "{run}");
}

/// A VMM error inside the jail (a KVM internal error) comes out as exit 1 with its message.
#[test]
fn boot_jail_forwards_an_error_exit() {
    require_root!();
    let scratch = Scratch::new("jail-error");
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::PVH_HANG_INTERNAL_ERROR,
            "--jail",
            s(&scratch.0),
        ],
        TIMEOUT,
    );
    if run.stdout.contains("int3=survived") {
        run.expect_success();
        return;
    }
    run.expect(run.code == Some(1), "internal error did not exit 1");
    run.expect(
        run.stderr.contains("error: vCPU 0: KVM internal error"),
        "no error line",
    );
}

/// With a tap the VMM stays in the host's net namespace (the tap lives there); the others are new.
#[test]
fn boot_jail_with_a_tap_keeps_the_net_namespace() {
    require_root!();
    let scratch = Scratch::new("jail-tap");
    let tap = format!("vmmjail{}", std::process::id() % 10000);
    let net = format!("tap={tap},create=on");
    let mut vmm = Running::start(&[
        "--kernel",
        test_guests::PARK,
        // SIGTERM then stops the parked guest (it has no power-button driver) at once.
        "--shutdown-timeout",
        "100ms",
        "--net",
        &net,
        "--jail",
        s(&scratch.0),
    ]);
    vmm.wait_for_line("parked", TIMEOUT);
    let jailed = vmm.jailed_pid();
    // Without --uid/--gid: the jail's own id, drawn from 2000000000 to 2^31 - 2, which names its
    // cgroup too.
    let id: u32 = status_field(jailed, "Uid")
        .split('\t')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2_000_000_000..i32::MAX as u32).contains(&id), "uid {id}");
    assert!(cgroup_dir(jailed, "pids").ends_with(format!("vmm-{id}")));
    assert_eq!(
        status_field(jailed, "Uid"),
        format!("{id}\t{id}\t{id}\t{id}")
    );
    assert_eq!(
        status_field(jailed, "Gid"),
        format!("{id}\t{id}\t{id}\t{id}")
    );
    let pid = jailed.to_string();
    assert_eq!(ns(&pid, "net"), ns("self", "net"));
    for kind in ["mnt", "pid", "ipc", "uts"] {
        assert_ne!(ns(&pid, kind), ns("self", kind), "{kind} namespace");
    }
    assert!(Path::new(&format!("/sys/class/net/{tap}")).exists());
    assert_eq!(
        vmm.signal_and_wait(libc::SIGINT, TIMEOUT),
        Some(128 + libc::SIGINT)
    );
    assert!(
        !Path::new(&format!("/sys/class/net/{tap}")).exists(),
        "tap left behind"
    );
}

/// Bad input: one `error:` line and exit 1, or a usage error and exit 2.
#[test]
fn jail_bad_input_is_refused_clearly() {
    let scratch = Scratch::new("jail-bad");
    let file = scratch.file("plain-file", b"x");
    let missing = scratch.path("missing");
    let open = scratch.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let link = scratch.path("link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--jail", s(&missing)], 1, "No such file or directory"),
        (&["--jail", &file], 1, "is not a directory"),
        (&["--jail", "/"], 1, "host's files"),
        (
            &["--jail", "/etc"],
            1,
            "'/etc' cannot be the jail's root: it is not empty",
        ),
        (
            &["--jail", "/proc"],
            1,
            "'/proc' cannot be the jail's root: it is not empty",
        ),
        (&["--jail", s(&link)], 1, "symbolic link"),
        (
            &["--jail", s(&open)],
            1,
            "other users can write it (mode 1777)",
        ),
        (
            &["--jail", s(&scratch.0), "--uid", "0"],
            1,
            "uid 0: the jailed VMM runs as an unprivileged user and needs ids from 1 to \
             4294967294",
        ),
        (
            &["--jail", s(&scratch.0), "--uid", "4294967295"],
            1,
            "give --uid from 1 to 4294967294",
        ),
        (
            &["--jail", s(&scratch.0), "--gid", "4294967295"],
            1,
            "give --gid from 1 to 4294967294",
        ),
        (
            &["--jail", s(&scratch.0), "--jail-id", "0"],
            1,
            "jail id 0: the jailed VMM",
        ),
        (
            &["--jail", s(&scratch.0), "--memory-limit", "16M"],
            1,
            "less than the guest's --memory",
        ),
        (&["--uid", "1000"], 2, "--jail"),
        (&["--memory-limit", "1G"], 2, "--jail"),
        (
            &["--jail", s(&scratch.0), "--cpu-quota", "lots"],
            2,
            "CPU quota",
        ),
        (&["--jail", s(&scratch.0), "--cpu-quota=-1"], 2, "CPU quota"),
        (
            &["--jail", s(&scratch.0), "--cpu-quota", "0.001"],
            2,
            "CPU quota",
        ),
    ];
    for (extra, code, text) in cases {
        let mut args = vec!["--kernel", test_guests::NULL];
        args.extend_from_slice(extra);
        let run = run_vmm(&args, TIMEOUT);
        run.expect(run.code == Some(*code), &format!("{extra:?}: exit {code}"));
        run.expect(run.stderr.contains(text), &format!("{extra:?}: '{text}'"));
        if *code == 1 {
            run.expect(
                run.stderr.starts_with("error: ") && run.stderr.lines().count() == 1,
                "one error line",
            );
        }
    }
}

/// Not root: the jail says it needs root, before making anything.
#[test]
fn jail_without_root_says_it_needs_root() {
    if !root_available() {
        return;
    }
    let scratch = Scratch::new("jail-noroot");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(vmm_bin())
        .args(["--kernel", test_guests::NULL, "--jail", s(&scratch.0)])
        .output()
        .expect("run setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
}

/// Several jailed VMs at once: each has its own id, cgroup and namespaces, so none stops another
/// (with one shared uid, RLIMIT_NPROC would add up all their threads).
#[test]
fn boot_jail_many_at_once_all_exit_zero() {
    require_root!();
    let scratch = Scratch::new("jail-many");
    let dir = scratch.0.clone();
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let dir = dir.clone();
            thread::spawn(move || {
                run_vmm(
                    &[
                        "--kernel",
                        test_guests::NULL,
                        "--cpus",
                        "2",
                        "--jail",
                        s(&dir),
                    ],
                    TIMEOUT,
                )
            })
        })
        .collect();
    for run in runs {
        run.join().expect("runner").expect_success();
    }
}

/// What the caller hands down does not reach the jailed VMM: descriptors (the host's `/`, a
/// read-write secret, /etc/shadow), environment variables, a blocked signal mask, a umask of 0.
#[test]
fn boot_jail_drops_inherited_fds_and_environment() {
    require_root!();
    let scratch = Scratch::new("jail-inherit");
    let root = jail_root(&scratch);
    let secret = scratch.file("secret", b"secret");
    let secret_c = std::ffi::CString::new(secret.clone()).unwrap();
    let mut cmd = vmm_command(&[
        "--kernel",
        test_guests::PARK,
        "--shutdown-timeout",
        "100ms",
        "--jail",
        s(&root),
    ]);
    cmd.env("VMM_TEST_SECRET", "hunter2").env("HOME", "/root");
    // SAFETY: only async-signal-safe calls (open, dup2, close, sigprocmask, umask) between fork
    // and exec; the strings were made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for (path, flags, fd) in [
                (c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY, 3),
                (secret_c.as_ptr(), libc::O_RDWR, 4),
                (c"/etc/shadow".as_ptr(), libc::O_RDONLY, 5),
            ] {
                let opened = libc::open(path, flags);
                if opened < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 leaves the new descriptor without close-on-exec.
                libc::dup2(opened, fd);
                libc::close(opened);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::umask(0);
            let param = libc::sched_param { sched_priority: 1 };
            libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
            Ok(())
        });
    }
    let mut vmm = Running::spawn(cmd);
    vmm.wait_for_line("parked", TIMEOUT);
    let pid = vmm.jailed_pid();
    let inherited = [
        PathBuf::from("/"),
        PathBuf::from(&secret),
        PathBuf::from("/etc/shadow"),
    ];
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        assert!(
            !inherited.contains(&target),
            "fd {:?} of the jailed VMM is the inherited {}",
            entry.file_name(),
            target.display()
        );
        seen.push(target);
    }
    assert!(
        seen.iter().any(|t| t == Path::new("anon_inode:kvm-vm")),
        "{seen:?}"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    // Empty, or (without CAP_SYS_RESOURCE to shrink it) wiped.
    assert!(
        environ.iter().all(|&b| b == 0),
        "environment: {}",
        String::from_utf8_lossy(&environ)
    );
    assert_eq!(status_field(pid, "Umask"), "0077");
    // The normal scheduling policy (field 41 of stat), not the caller's real-time one.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit_once(')').unwrap().1;
    let policy = after_name.split_whitespace().nth(38).unwrap();
    assert_eq!(policy, libc::SCHED_OTHER.to_string(), "scheduling policy");
    // The cgroup, made before the child set its umask, is not left writable by all either.
    for controller in ["memory", "pids", "cpu"] {
        let dir = cgroup_dir(pid, controller);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o022, 0, "{} has mode {mode:o}", dir.display());
    }
    let blocked = u64::from_str_radix(&status_field(pid, "SigBlk"), 16).unwrap();
    assert_eq!(blocked & (1 << (libc::SIGUSR1 - 1)), 0, "SIGUSR1 blocked");
    assert_eq!(
        vmm.signal_and_wait(libc::SIGTERM, TIMEOUT),
        Some(128 + libc::SIGTERM)
    );
}

/// The jail directory is opened once: swapping it for a symbolic link to /etc after it was checked
/// and before the jailed VMM enters it (here: while the VMM, built, waits on a FIFO that debug
/// builds read when VMM_TEST_JAIL_PAUSE names it) changes nothing.
#[test]
fn boot_jail_directory_swapped_while_the_vm_is_built_is_not_followed() {
    require_root!();
    let scratch = Scratch::new("jail-swap");
    let root = jail_root(&scratch);
    let fifo = scratch.path("pause.fifo");
    let fifo_c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
    let mut cmd = vmm_command(&[
        "--kernel",
        test_guests::PARK,
        "--shutdown-timeout",
        "100ms",
        "--jail",
        s(&root),
    ]);
    cmd.env("VMM_TEST_JAIL_PAUSE", &fifo);
    let mut vmm = Running::spawn(cmd);
    // The jailed VMM has built the VM once it waits for a writer of the FIFO.
    let building = wait_until(TIMEOUT, || {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", vmm.child.id()))
            .ok()
            .and_then(|c| c.split_whitespace().next().map(str::to_string))
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok())
            .is_some_and(|wchan| wchan == "wait_for_partner")
    });
    assert!(building, "the VMM never opened the FIFO: {}", vmm.stop());
    std::fs::rename(&root, scratch.path("moved")).unwrap();
    std::os::unix::fs::symlink("/etc", &root).unwrap();
    // Let it go on: open the FIFO for writing and close it.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    vmm.wait_for_line("parked", TIMEOUT);
    let pid = vmm.jailed_pid();
    let seen: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(seen.is_empty(), "the jail's root holds {seen:?}");
    assert!(!Path::new(&format!("/proc/{pid}/root/passwd")).exists());
    vmm.stop();
}

/// kill -9 of the supervisor: the jailed VMM dies with it, and the next `vmm --jail` removes the
/// cgroup it left.
#[test]
fn boot_jail_supervisor_killed_leaves_no_vmm_and_no_cgroup() {
    require_root!();
    let scratch = Scratch::new("jail-kill9");
    let root = jail_root(&scratch);
    let mut vmm = Running::start(&["--kernel", test_guests::PARK, "--jail", s(&root)]);
    vmm.wait_for_line("parked", TIMEOUT);
    let pid = vmm.jailed_pid();
    let dirs: Vec<PathBuf> = ["memory", "pids", "cpu"]
        .iter()
        .map(|c| cgroup_dir(pid, c))
        .collect();
    assert!(vmm.child.kill().is_ok());
    let _ = vmm.child.wait();
    assert!(
        wait_until(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "jailed VMM {pid} outlived its supervisor"
    );
    // The cgroup is left (unless another test's vmm has already removed it): the next run removes
    // it.
    run_vmm(
        &["--kernel", test_guests::NULL, "--jail", s(&root)],
        TIMEOUT,
    )
    .expect_success();
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// The only child of `pid`.
fn only_child(pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let pids: Vec<u32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "children of {pid}: {pids:?}");
    pids[0]
}

/// Two jails at once get two ids (uids, gids, cgroups), even when both supervisors have the same
/// pid (pid 1 of two pid namespaces); an id in use is refused, not shared.
#[test]
fn boot_jail_two_at_once_have_distinct_ids_and_cgroups() {
    require_root!();
    let scratch = Scratch::new("jail-two");
    let root = jail_root(&scratch);
    let start = || {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child=SIGTERM", "--", vmm_bin()]);
        cmd.args(["--kernel", test_guests::PARK, "--jail", s(&root)]);
        Running::spawn(cmd)
    };
    let mut first = start();
    let mut second = start();
    first.wait_for_line("parked", TIMEOUT);
    second.wait_for_line("parked", TIMEOUT);
    // unshare → the supervisor (pid 1 of its namespace) → the jailed VMM.
    let (a, b) = (
        only_child(only_child(first.child.id())),
        only_child(only_child(second.child.id())),
    );
    assert_ne!(status_field(a, "Uid"), status_field(b, "Uid"));
    assert_ne!(status_field(a, "Gid"), status_field(b, "Gid"));
    for controller in ["memory", "pids", "cpu"] {
        assert_ne!(cgroup_dir(a, controller), cgroup_dir(b, controller));
    }
    let id = cgroup_dir(a, "pids")
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmm-")
        .to_string();
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::NULL,
            "--jail",
            s(&root),
            "--jail-id",
            &id,
        ],
        TIMEOUT,
    );
    run.expect(run.code == Some(1), "an id in use was accepted");
    run.expect(
        run.stderr.contains("already exists") && run.stderr.contains("give another --jail-id"),
        "no error naming the cgroup",
    );
    // The first VM is untouched.
    assert!(cgroup_dir(a, "pids").exists());
    // unshare ignores SIGTERM while it waits: stop the supervisors themselves.
    for running in [&first, &second] {
        let supervisor = only_child(running.child.id()) as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(supervisor, libc::SIGTERM) };
    }
    first.stop();
    second.stop();
}

/// A caller that ignores SIGCHLD (or SIGTERM, SIGINT) passes that on through exec; the supervisor
/// still learns that the jailed VMM ended, and exits with its status.
#[test]
fn boot_jail_supervisor_works_when_signals_were_ignored() {
    require_root!();
    let scratch = Scratch::new("jail-sigign");
    let root = jail_root(&scratch);
    let mut cmd = vmm_command(&["--kernel", test_guests::NULL, "--jail", s(&root)]);
    // SAFETY: signal() is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
                libc::signal(sig, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let run = common::run_command(cmd, Duration::from_secs(20));
    run.expect_success();
}

/// Started from a terminal, the jailed VMM leaves the caller's session: without a controlling
/// terminal it cannot push input into the caller's shell (TIOCSTI) even with --seccomp off, nor
/// signal its process group. Terminal size changes still reach it (the supervisor forwards
/// SIGWINCH).
#[test]
fn boot_jail_leaves_the_callers_terminal_session() {
    require_root!();
    let scratch = Scratch::new("jail-tty");
    let root = jail_root(&scratch);
    // SAFETY: posix_openpt, grantpt, unlockpt, ptsname_r on a new descriptor we own.
    let (primary, secondary) = unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(fd >= 0);
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let mut name = [0 as libc::c_char; 64];
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        (fd, std::ffi::CStr::from_ptr(name.as_ptr()).to_owned())
    };
    let mut cmd = vmm_command(&[
        "--kernel",
        test_guests::PARK,
        // SIGTERM then stops the parked guest (it has no power-button driver) at once.
        "--shutdown-timeout",
        "100ms",
        "--seccomp",
        "off",
        "--jail",
        s(&root),
    ]);
    // SAFETY: setsid, open, ioctl, dup2 and close are async-signal-safe; the name was made
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            let tty = libc::open(secondary.as_ptr(), libc::O_RDWR);
            if tty < 0 || libc::ioctl(tty, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::dup2(tty, 0);
            libc::close(tty);
            Ok(())
        });
    }
    let mut vmm = Running::spawn(cmd);
    vmm.wait_for_line("parked", TIMEOUT);
    let pid = vmm.jailed_pid();
    let stat = |pid: u32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<String> = text
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .map(str::to_string)
            .collect();
        // (session, tty_nr): fields 6 and 7.
        (fields[3].clone(), fields[4].clone())
    };
    let (supervisor_session, supervisor_tty) = stat(vmm.child.id());
    assert_ne!(supervisor_tty, "0", "the test gave vmm no terminal");
    let (session, tty) = stat(pid);
    assert_ne!(session, supervisor_session, "same session as the caller");
    assert_eq!(tty, "0", "the jailed VMM has a controlling terminal");
    vmm.stop();
    // SAFETY: our descriptor.
    unsafe { libc::close(primary) };
}

/// SIGTERM to the supervisor reaches the jailed VMM as SIGTERM: it presses the guest's power
/// button, the guest powers off, and the supervisor exits with the VMM's 0.
#[test]
fn boot_jail_sigterm_presses_the_guests_power_button() {
    require_root!();
    let scratch = Scratch::new("jail-sigterm");
    let root = jail_root(&scratch);
    let mut vmm = Running::start(&[
        "--kernel",
        test_guests::ACPI,
        "--cmdline",
        "action=button",
        "--jail",
        s(&root),
    ]);
    vmm.wait_for_line("waiting_for_button", TIMEOUT);
    assert_eq!(vmm.signal_and_wait(libc::SIGTERM, TIMEOUT), Some(0));
}

/// A serial port on a socket under the jail: the listener, bound before the fork, survives the
/// jailed VMM's closing of what it inherited, a client reads the guest's output through it, and
/// the socket file is removed at the end.
#[test]
fn boot_jail_serial_on_a_socket_works() {
    require_root!();
    let scratch = Scratch::new("jail-socket");
    let root = jail_root(&scratch);
    let sock = scratch.path("ttyS0.sock");
    let serial = format!("socket={}", s(&sock));
    let mut vmm = Running::start(&[
        "--kernel",
        test_guests::PARK,
        "--shutdown-timeout",
        "100ms",
        "--serial",
        &serial,
        "--jail",
        s(&root),
    ]);
    assert!(
        wait_until(TIMEOUT, || sock.exists()),
        "no socket: {}",
        vmm.stop()
    );
    let client = std::os::unix::net::UnixStream::connect(&sock).expect("connect to the serial");
    client
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    let mut text = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(client)) {
        let line = line.expect("read the serial");
        text.push_str(&line);
        text.push('\n');
        if line.trim_end() == "parked" {
            break;
        }
    }
    assert!(text.contains("parked"), "{text}");
    assert_eq!(vmm.signal_and_wait(libc::SIGTERM, TIMEOUT), Some(143));
    assert!(!sock.exists(), "the socket file was left behind");
}

fn vsock_connect(sock: &Path, port: u32) -> (std::os::unix::net::UnixStream, Option<String>) {
    common::vsock_connect(sock, port, TIMEOUT)
}

/// virtio-vsock under the jail. The device's socket is bound before the fork and removed by the
/// supervisor at the end; host programs reach the guest (a hundred connections at once, more
/// than the jail's spare descriptors were); the guest reaches `PATH_5000`, which the host made
/// connectable by the jail's group, in a directory only that group may search; and `PATH_5001`,
/// a symbolic link out of the directory (`../outside/x.sock`) to a socket anyone may connect to,
/// leads nowhere: the jailed VMM reaches that directory and nothing above it.
#[test]
fn boot_jail_vsock_both_ways_and_only_its_directory() {
    use std::io::{BufRead, Read, Write};
    use std::os::unix::net::UnixListener;
    require_root!();
    let scratch = Scratch::new("jail-vsock");
    let root = jail_root(&scratch);
    let id = test_id(7);
    let dir = scratch.path("vsock");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(id)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o710)).unwrap();
    let sock = dir.join("v.sock");
    let host = UnixListener::bind(dir.join("v.sock_5000")).unwrap();
    std::os::unix::fs::chown(dir.join("v.sock_5000"), Some(0), Some(id)).unwrap();
    std::fs::set_permissions(
        dir.join("v.sock_5000"),
        std::fs::Permissions::from_mode(0o660),
    )
    .unwrap();
    let outside_dir = scratch.path("outside");
    std::fs::create_dir(&outside_dir).unwrap();
    let outside = UnixListener::bind(outside_dir.join("x.sock")).unwrap();
    std::fs::set_permissions(
        outside_dir.join("x.sock"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    outside.set_nonblocking(true).unwrap();
    std::os::unix::fs::symlink("../outside/x.sock", dir.join("v.sock_5001")).unwrap();

    let mut vmm = Running::start(&[
        "--kernel",
        test_guests::VSOCK,
        "--cmdline",
        "vsock_listen=1234 vsock_connect=5000 vsock_refused=5001",
        "--vsock",
        &format!("cid=3,socket={}", s(&sock)),
        "--jail",
        s(&root),
        "--jail-id",
        &id.to_string(),
    ]);
    for line in ["status=0xf", "listening", "connect=ok", "refused=rst"] {
        vmm.wait_for_line(line, TIMEOUT);
    }
    assert_eq!(
        outside.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the guest reached a socket outside the vsock directory"
    );

    // Guest to host.
    let (mut g2h, _) = host.accept().expect("the guest's connection");
    g2h.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut greeting = String::new();
    std::io::BufReader::new(g2h.try_clone().unwrap())
        .read_line(&mut greeting)
        .expect("greeting");
    assert_eq!(greeting, "guest-hello\n");
    g2h.write_all(b"back to the guest\n").unwrap();
    let mut echo = [0u8; 18];
    g2h.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"back to the guest\n");

    // Host to guest, a hundred at once.
    let mut many: Vec<_> = (0..100)
        .map(|i| {
            let (c, answer) = vsock_connect(&sock, 1234);
            assert!(
                answer.as_deref().is_some_and(|a| a.starts_with("OK ")),
                "connection {i}: {answer:?}"
            );
            c
        })
        .collect();
    for (i, c) in many.iter_mut().enumerate() {
        c.write_all(format!("hello {i:03}\n").as_bytes()).unwrap();
    }
    for (i, c) in many.iter_mut().enumerate() {
        let mut got = [0u8; 10];
        c.read_exact(&mut got).expect("echo");
        assert_eq!(got, *format!("hello {i:03}\n").as_bytes());
    }
    drop(many);
    drop(g2h);

    // The quit port ends the guest.
    let (_quit, answer) = vsock_connect(&sock, 1235);
    assert_eq!(answer, None);
    vmm.wait_for_line("accepted=0x64", TIMEOUT);
    vmm.wait_for_line("done", TIMEOUT);
    assert!(
        wait_until(TIMEOUT, || !vmm.is_running()),
        "vmm did not exit"
    );
    let code = vmm.child.try_wait().unwrap().and_then(|st| st.code());
    let stderr = vmm.stop();
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert!(!stderr.contains("seccomp"), "{stderr}");
    assert!(!sock.exists(), "the supervisor removes the socket");
    assert!(dir.join("v.sock_5000").exists(), "the host's sockets stay");
}

/// A snapshot taken outside the jail restores inside it: the memory file is mapped before the
/// jail closes, and the guest runs to its end with the same output as without a break.
#[test]
fn boot_jail_restores_a_snapshot() {
    require_root!();
    let scratch = Scratch::new("jail-restore");
    let root = jail_root(&scratch);
    let sock = scratch.path("api.sock");
    let snap = scratch.path("snap");
    let (before, after) = (scratch.path("before.txt"), scratch.path("after.txt"));
    let mut vmm = Running::start(&[
        "--kernel",
        test_guests::SNAP,
        "--memory",
        "16M",
        "--serial",
        &format!("file={}", s(&before)),
        "--api-socket",
        s(&sock),
    ]);
    assert!(wait_until(TIMEOUT, || sock.exists()), "no API socket");
    assert!(wait_until(TIMEOUT, || read_trim(&before).contains("round=100")));
    for op in [vec!["pause"], vec!["snapshot", s(&snap)]] {
        let (code, out, err) = common::ctl(&sock, &op);
        assert_eq!(code, 0, "{op:?}: {out}{err}");
    }
    let _ = vmm.signal_and_wait(libc::SIGKILL, TIMEOUT);
    let id = test_id(9).to_string();
    let run = run_vmm(
        &[
            "--restore",
            s(&snap),
            "--serial",
            &format!("file={}", s(&after)),
            "--jail",
            s(&root),
            "--jail-id",
            &id,
        ],
        TIMEOUT,
    );
    run.expect_success();
    let out = read_trim(&after);
    assert!(out.ends_with("done"), "{out}");
    assert!(
        out.contains("lapic_irqs=0x1f4") && out.contains("pit_irqs=0x1f4"),
        "{out}"
    );
}

/// A jailed VMM serves a shared directory (and its root from a host directory): the guest reads
/// and writes the share, the jailed VMM keeps every promise of `boot_jail_confines_the_vmm`'s
/// credentials, and each share's server is inside the jail's pid namespace and cgroup, in mount
/// and pid namespaces of its own, under its own seccomp filter, with the file capabilities only.
#[test]
fn boot_jail_serves_a_share() {
    require_root!();
    let guest = common::linux_guest();
    let scratch = Scratch::new("jail-share");
    let root = jail_root(&scratch);
    let share = scratch.path("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("in.txt"), b"from the host\n").unwrap();
    let init = share.join("init.sh");
    std::fs::write(
        &init,
        "#!/bin/sh\necho \"JAIL-SHARE read=$(cat /vmm-test/in.txt)\"\necho from-guest > /vmm-test/out.txt\nwhile [ ! -e /vmm-test/go ]; do sleep 1; done\necho o > /proc/sysrq-trigger\nsleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = test_id(4).to_string();
    let mut vmm = Running::start(&[
        "--kernel",
        s(&guest.vmlinux),
        "--root-share",
        "/",
        "--share",
        &format!("{}:/vmm-test", s(&share)),
        "--cmdline",
        "console=ttyS0 reboot=k panic=1 pci=off vmm.init=/vmm-test/init.sh",
        "--jail",
        s(&root),
        "--jail-id",
        &id,
        "--uid",
        "4242",
        "--gid",
        "4343",
    ]);
    vmm.wait_for_line("JAIL-SHARE read=from the host", Duration::from_secs(400));
    // Created, then written: wait for the bytes.
    assert!(
        wait_until(TIMEOUT, || std::fs::read(share.join("out.txt"))
            .is_ok_and(|b| b == b"from-guest\n")),
        "the guest's file reached the host"
    );

    let pid = vmm.jailed_pid();
    assert_eq!(status_field(pid, "Uid"), "4242\t4242\t4242\t4242");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(pid, "Seccomp"), "2");
    let waiters = children_of(pid);
    assert_eq!(
        waiters.len(),
        2,
        "a server per share (the root and one): {waiters:?}"
    );
    let vmm_cgroups = cgroups(pid);
    for waiter in waiters {
        // The process the VMM started only waits for the server, under a filter of its own.
        assert_eq!(status_field(waiter, "Seccomp"), "2");
        let servers = children_of(waiter);
        assert_eq!(servers.len(), 1, "children of {waiter}: {servers:?}");
        let server = servers[0];
        // The host's, the jail's and its own pid namespace (pid 1 there).
        let nspid = status_field(server, "NSpid");
        assert_eq!(nspid.split_whitespace().count(), 3, "NSpid {nspid}");
        assert!(nspid.ends_with("\t1"), "NSpid {nspid}");
        assert_eq!(status_field(server, "Seccomp"), "2");
        assert_eq!(status_field(server, "NoNewPrivs"), "1");
        assert_eq!(status_field(server, "CapBnd"), "00000000000000cb");
        assert_ne!(ns(&server.to_string(), "mnt"), ns(&pid.to_string(), "mnt"));
        assert_eq!(cgroups(server), vmm_cgroups, "in the jail's cgroup");
    }
    std::fs::write(share.join("go"), b"").unwrap();
    let code = vmm.signal_and_wait(0, Duration::from_secs(120));
    assert_eq!(code, Some(0), "the guest powered off");
}

/// The children of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect()
}
