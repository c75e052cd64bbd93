//! seccomp: every VMM thread runs under its filter while the guest runs, `--seccomp off` turns them off
//! with a warning, and a forbidden system call stops the VMM with a line naming the thread and the
//! call. Tiny guests on real KVM (the `park` guest keeps the VM up while /proc is read).

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{root_available, vmm_bin, Running};
use vm::{CharBackend, ExitReason, SeccompMode, Vm, VmConfig};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A `vmm` running the park guest with two vCPUs, once it has reported (its stdin a pipe held open,
/// so the serial port reads it).
fn parked(extra: &[&str]) -> Running {
    let mut args = vec!["--kernel", test_guests::PARK, "--cpus", "2"];
    args.extend_from_slice(extra);
    let mut vmm = Running::start(&args);
    vmm.wait_for_line("parked", TIMEOUT);
    vmm
}

/// (thread name, `Seccomp:` value, `Seccomp_filters:` value) of every thread of the VMM.
fn vmm_threads(vmm: &Running) -> Vec<(String, String, Option<String>)> {
    threads_of(vmm.child.id())
}

/// (thread name, `Seccomp:` value, `Seccomp_filters:` value) of every thread of process `pid`.
fn threads_of(pid: u32) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let dir = task.expect("task").path();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue; // the thread just exited
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        out.push((
            field("Name:").unwrap_or_default(),
            field("Seccomp:").unwrap_or_default(),
            field("Seccomp_filters:"),
        ));
    }
    out
}

/// Threads the kernel starts inside the VMM process for KVM (e.g. `kvm-nx-lpage-recovery`) never
/// run user code; their seccomp state depends on which thread created them, so they are left out.
fn is_kernel_worker(name: &str) -> bool {
    name.starts_with("kvm-")
}

#[test]
fn seccomp_every_vmm_thread_is_filtered_while_the_guest_runs() {
    require_kvm!();
    let mut vmm = parked(&[]);
    let threads = vmm_threads(&vmm);
    let names: Vec<&str> = threads.iter().map(|t| t.0.as_str()).collect();
    // The event loop (the main thread), one per vCPU, and nothing else of ours.
    for want in ["vmm", "vcpu0", "vcpu1"] {
        assert!(names.contains(&want), "no thread {want}: {names:?}");
    }
    for (name, mode, filters) in &threads {
        if is_kernel_worker(name) {
            continue;
        }
        assert_eq!(
            mode, "2",
            "thread {name} is not in seccomp filter mode: {threads:?}"
        );
        if let Some(filters) = filters {
            assert_eq!(
                filters, "1",
                "thread {name}: one filter expected: {threads:?}"
            );
        }
    }
    assert_eq!(
        threads.iter().filter(|t| !is_kernel_worker(&t.0)).count(),
        3,
        "unexpected threads: {threads:?}"
    );
    let stderr = vmm.stop();
    assert!(!stderr.contains("seccomp"), "{stderr}");
}

#[test]
fn seccomp_off_leaves_threads_unfiltered_and_warns() {
    require_kvm!();
    let mut vmm = parked(&["--seccomp", "off"]);
    let threads = vmm_threads(&vmm);
    for (name, mode, _) in &threads {
        assert_eq!(
            mode, "0",
            "thread {name} is filtered with --seccomp off: {threads:?}"
        );
    }
    let stderr = vmm.stop();
    assert!(
        stderr.contains("--seccomp off: the VMM runs unconfined"),
        "no warning on stderr:\n{stderr}"
    );
}

#[test]
fn seccomp_on_is_the_default_and_accepts_on() {
    require_kvm!();
    let vmm = parked(&["--seccomp", "on"]);
    assert!(vmm_threads(&vmm)
        .iter()
        .all(|(name, mode, _)| is_kernel_worker(name) || mode == "2"));
}

#[test]
fn seccomp_bad_value_is_a_usage_error() {
    let out = Command::new(vmm_bin())
        .args(["--kernel", test_guests::NULL, "--seccomp", "maybe"])
        .output()
        .expect("run vmm");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--seccomp"), "{stderr}");
}

/// Runs the park guest with a thread of `kind` making a forbidden call (debug builds only); returns
/// (exit status, stderr). The test fails if vmm keeps running.
fn provoke(kind: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut cmd = common::vmm_command(&["--kernel", test_guests::PARK, "--cpus", "2"]);
    cmd.args(extra).env("VMM_SECCOMP_TEST_FORBIDDEN", kind);
    let run = common::run_command(cmd, TIMEOUT);
    (run.code, run.stderr)
}

/// The test switch exists in debug builds only (`cargo test` builds `vmm` with the test profile).
fn debug_build() -> bool {
    if !cfg!(debug_assertions) {
        eprintln!("skipping: VMM_SECCOMP_TEST_FORBIDDEN is honoured by debug builds only");
    }
    cfg!(debug_assertions)
}

#[test]
fn seccomp_forbidden_call_on_a_vcpu_thread_stops_with_a_named_message() {
    require_kvm!();
    if !debug_build() {
        return;
    }
    let (code, stderr) = provoke("vcpu", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    // Either vCPU may be the first to get there; the line names it and the call.
    let line = stderr
        .lines()
        .find(|l| l.starts_with("vmm: seccomp: thread 'vcpu"))
        .unwrap_or_else(|| panic!("no seccomp line:\n{stderr}"));
    assert!(
        line.ends_with(
            "' made a forbidden system call: openat (257); stopping. Run with --seccomp off to debug."
        ),
        "{line}"
    );
    assert!(!stderr.contains("Bad system call"), "{stderr}");
}

#[test]
fn seccomp_forbidden_call_on_the_event_loop_thread_stops_with_a_named_message() {
    require_kvm!();
    if !debug_build() {
        return;
    }
    let (code, stderr) = provoke("vmm", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "vmm: seccomp: thread 'vmm' made a forbidden system call: openat (257); stopping. \
             Run with --seccomp off to debug."
        ),
        "{stderr}"
    );
}

#[test]
fn seccomp_the_control_api_thread_is_filtered() {
    require_kvm!();
    let scratch = common::Scratch::new("seccomp-api");
    let sock = scratch.path("api.sock");
    let mut vmm = parked(&["--api-socket", common::s(&sock)]);
    let threads = vmm_threads(&vmm);
    // The API thread, and the thread that writes its snapshots, each under its own filter.
    for name in ["api", "snapshot"] {
        let thread = threads.iter().find(|t| t.0 == name);
        assert!(
            thread.is_some_and(|t| t.1 == "2"),
            "no filtered {name} thread: {threads:?}"
        );
    }
    let stderr = vmm.stop();
    assert!(!stderr.contains("seccomp"), "{stderr}");
}

#[test]
fn seccomp_forbidden_call_on_the_api_thread_stops_with_a_named_message() {
    require_kvm!();
    if !debug_build() {
        return;
    }
    let scratch = common::Scratch::new("seccomp-api-forbidden");
    let sock = scratch.path("api.sock");
    let (code, stderr) = provoke("api", &["--api-socket", common::s(&sock)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "vmm: seccomp: thread 'api' made a forbidden system call: openat (257); stopping. \
             Run with --seccomp off to debug."
        ),
        "{stderr}"
    );
}

#[test]
fn seccomp_forbidden_call_on_the_snapshot_thread_stops_with_a_named_message() {
    require_kvm!();
    if !debug_build() {
        return;
    }
    // The test switch opens /etc/hostname read-only: the snapshot thread may open only its
    // directory and new files, so even a read is refused.
    let scratch = common::Scratch::new("seccomp-snapshot-forbidden");
    let sock = scratch.path("api.sock");
    let (code, stderr) = provoke("snapshot", &["--api-socket", common::s(&sock)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr
            .contains("vmm: seccomp: thread 'snapshot' made a forbidden system call: openat (257)"),
        "{stderr}"
    );
}

fn null_guest(seccomp: SeccompMode) -> VmConfig {
    let mut config = VmConfig::new(test_guests::NULL);
    config.serial = CharBackend::Off;
    config.seccomp = seccomp;
    config
}

fn seccomp_of(tid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// The library default filters the vCPU threads only: the caller's thread stays free to build and
/// run more VMs.
#[test]
fn seccomp_library_default_leaves_the_calling_thread_free() {
    require_kvm!();
    assert_eq!(VmConfig::new("k").seccomp, SeccompMode::VcpusOnly);
    // On a thread of its own: another test's thread may share this process.
    thread::spawn(|| {
        for _ in 0..2 {
            let reason = Vm::new(null_guest(SeccompMode::VcpusOnly))
                .expect("build")
                .run()
                .expect("run");
            assert!(matches!(
                reason,
                ExitReason::Reset | ExitReason::TripleFault
            ));
        }
        assert_eq!(seccomp_of(gettid()), "0");
    })
    .join()
    .expect("runner");
}

/// `AllThreads` confines the calling thread for good, after the VM ran normally.
#[test]
fn seccomp_all_threads_confines_the_calling_thread() {
    require_kvm!();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let runner = thread::spawn(move || {
        let reason = Vm::new(null_guest(SeccompMode::AllThreads))
            .expect("build")
            .run();
        tid_tx.send(gettid()).expect("send");
        // Stay alive (filtered) until the test has looked.
        let _ = done_rx.recv();
        reason.map(|_| ()).map_err(|e| e.to_string())
    });
    let tid = tid_rx.recv().expect("tid");
    assert_eq!(seccomp_of(tid), "2");
    done_tx.send(()).expect("done");
    runner.join().expect("runner").expect("the VM ran");
}

/// seccomp goes on after the jail closes: the jailed VMM's threads are filtered too, and a forbidden
/// call is still named (on the stderr the supervisor shares) with status 1 passed through.
#[test]
fn seccomp_holds_inside_the_jail() {
    require_kvm!();
    if !root_available() {
        return;
    }
    let scratch = common::Scratch::new("seccomp-jail");
    let root = scratch.path("root");
    std::fs::create_dir(&root).expect("jail dir");
    let root = common::s(&root);

    let vmm = parked(&["--jail", root]);
    let threads = threads_of(vmm.jailed_pid());
    assert!(threads.len() >= 3, "{threads:?}");
    for (name, mode, _) in &threads {
        assert!(
            is_kernel_worker(name) || mode == "2",
            "jailed thread {name} is not filtered: {threads:?}"
        );
    }
    // The supervisor (the process the test started, outside the jail) filters itself too.
    let supervisor = threads_of(vmm.child.id());
    assert_eq!(supervisor.len(), 1, "{supervisor:?}");
    assert_eq!(
        supervisor[0].1, "2",
        "the supervisor is not filtered: {supervisor:?}"
    );
    drop(vmm);

    if debug_build() {
        let (code, stderr) = provoke("vcpu", &["--jail", root]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("' made a forbidden system call: openat (257); stopping."),
            "{stderr}"
        );
    }
}
