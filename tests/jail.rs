//! `--jail DIR`: the jailed VMM runs as an unprivileged uid with no capabilities, in its own
//! namespaces and cgroup, sees only DIR, still serves its devices, and its status reaches the caller.
//! These tests need root (namespaces, cgroups, pivot_root): they fail with a clear message when not
//! run as root, unless VMM_SKIP_JAIL_TESTS=1 is set.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::{root_available, run_vmm, s, vmm_bin, Running, Scratch};

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

/// `Name:\tvalue` from /proc/PID/status.
fn status_field(pid: u32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
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
    let root = scratch.path("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("only-this"), b"x").unwrap();
    let mut vmm = Running::start(&[
        "--kernel",
        test_guests::PARK,
        "--jail",
        s(&root),
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
    let supervisor = vmm.child.id();
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
    let name = format!("vmm-{supervisor}");
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

    // The file system: only the jail directory, read-only.
    let seen: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(seen, BTreeSet::from(["only-this".to_string()]));
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

/// Behind the jail the tiny virtio-blk driver's requests still land in the image (opened before
/// the pivot), serial output arrives, and the guest's reset exits 0 through the supervisor.
#[test]
fn boot_jail_virtio_blk_guest_does_io_and_exits_zero() {
    require_root!();
    let scratch = Scratch::new("jail-blk");
    let root = scratch.path("root");
    std::fs::create_dir(&root).unwrap();
    let disk = disk_image(&scratch, "disk.img");
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::VIRTIO_BLK,
            "--disk",
            &disk,
            "--jail",
            s(&root),
        ],
        TIMEOUT,
    );
    run.expect_success();
    let r = test_guests::Report::parse(&run.stdout);
    run.expect(r.num("write_status") == Some(0), "write failed");
    run.expect(r.num("flush_status") == Some(0), "flush failed");
    run.expect(
        r.get("sector1") == Some("WRITTEN-BY-GUEST"),
        "write not read back",
    );
    run.expect(r.num("final_status") == Some(0xf), "device marked failed");
    let image = std::fs::read(&disk).unwrap();
    assert_eq!(&image[512..528], b"WRITTEN-BY-GUEST", "{run}");
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/pids/vmm-{}", std::process::id())).exists(),
        "{run}"
    );
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
        "--net",
        &net,
        "--jail",
        s(&scratch.0),
    ]);
    vmm.wait_for_line("parked", TIMEOUT);
    let jailed = vmm.jailed_pid();
    // Without --uid/--gid: an id of its own, 2000000000 + the supervisor's pid.
    let id = 2_000_000_000 + vmm.child.id();
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
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--jail", s(&missing)], 1, "No such file or directory"),
        (&["--jail", &file], 1, "is not a directory"),
        (&["--jail", "/"], 1, "host's files"),
        (&["--jail", s(&scratch.0), "--uid", "0"], 1, "non-zero ids"),
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
