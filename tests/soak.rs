//! Soak: many tiny-guest boot/exit cycles, through the `vm` library in this one process and as
//! separate `vmm` processes. Everything a VM takes (KVM fds, eventfds, vCPU threads, the kick
//! signal handler, guest memory) must be given back each time: after a warm-up the open fds stay
//! the same and RSS stays within a small slack. Needs KVM.
//!
//! The two tests take a lock so that one's children and pipes do not disturb the other's fd count.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{run_vmm, Run};
use vm::{CharBackend, ExitReason, Vm, VmConfig};

static SERIAL: Mutex<()> = Mutex::new(());

const LIBRARY_CYCLES: usize = 1000;
const WARM_UP: usize = 100;
const PROCESSES: usize = 200;
const PARALLEL: usize = 4;
/// RSS slack after the warm-up: allocator arenas and caches may still settle a little, but a leak
/// of even one 4 KiB page per cycle (900 cycles, 3.5 MiB) or of one guest's RAM (128 MiB) shows.
const RSS_SLACK_KIB: u64 = 2048;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

fn boot_once() {
    let mut config = VmConfig::new(test_guests::NULL);
    config.serial = CharBackend::Off;
    let reason = Vm::new(config)
        .expect("build the VM")
        .run()
        .expect("run the VM");
    // The null guest resets through the i8042; a triple fault is its fallback.
    assert!(
        matches!(reason, ExitReason::Reset | ExitReason::TripleFault),
        "unexpected exit {reason:?}"
    );
}

#[test]
fn boot_soak_library_1000_cycles_no_fd_or_rss_growth() {
    require_kvm!();
    let _lock = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let start = Instant::now();
    for _ in 0..WARM_UP {
        boot_once();
    }
    let (fds0, rss0, thr0) = (open_fds(), rss_kib(), threads());
    for _ in WARM_UP..LIBRARY_CYCLES {
        boot_once();
    }
    let (fds1, rss1, thr1) = (open_fds(), rss_kib(), threads());
    let took = start.elapsed();
    eprintln!(
        "soak: {LIBRARY_CYCLES} library cycles in {took:.2?} ({:.2?} each); after {WARM_UP}: \
         {fds0} fds, {rss0} KiB RSS, {thr0} threads; at the end: {fds1} fds, {rss1} KiB RSS, \
         {thr1} threads",
        took / LIBRARY_CYCLES as u32
    );
    assert_eq!(fds1, fds0, "open fds grew over {LIBRARY_CYCLES} cycles");
    assert!(
        thr1 <= thr0,
        "threads grew over {LIBRARY_CYCLES} cycles: {thr0} -> {thr1}"
    );
    assert!(
        rss1 <= rss0 + RSS_SLACK_KIB,
        "RSS grew by {} KiB over {} cycles (slack {RSS_SLACK_KIB} KiB)",
        rss1.saturating_sub(rss0),
        LIBRARY_CYCLES - WARM_UP
    );
}

#[test]
fn boot_soak_200_processes_all_exit_zero() {
    require_kvm!();
    let _lock = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let start = Instant::now();
    let mut done = 0;
    while done < PROCESSES {
        let batch = PARALLEL.min(PROCESSES - done);
        let runs: Vec<Run> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..batch)
                .map(|_| {
                    s.spawn(|| {
                        run_vmm(
                            &["--kernel", test_guests::NULL, "--serial", "off"],
                            Duration::from_secs(60),
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("runner thread"))
                .collect()
        });
        for run in &runs {
            run.expect_success();
            run.expect(run.stderr.is_empty(), "a clean run logs nothing");
        }
        done += batch;
    }
    eprintln!(
        "soak: {PROCESSES} vmm processes ({PARALLEL} at a time) in {:.2?}",
        start.elapsed()
    );
}
