//! The rate limiters measured from inside a guest: the tiny `rate_probe` guest keeps reads (or TX
//! frames) in flight, times them with its own clock (its TSC calibrated against the PIT), spends the
//! limiter's burst first and then reports what it got over two seconds. A limited device must
//! measure within ±10% of its limit (the one explicit timing bound the issue asks for), an
//! unlimited one clearly above it, so the measurement itself can fail.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::netns::NetNs;
use common::{run_vmm, Run, Scratch};
use test_guests::RATE_PROBE;

const TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// What the probe measured.
#[derive(Debug)]
struct Measured {
    bw: u64,
    iops: u64,
}

/// The host's TSC rate in kHz, measured against CLOCK_MONOTONIC over 300 ms.
fn host_tsc_khz() -> u64 {
    static KHZ: OnceLock<u64> = OnceLock::new();
    *KHZ.get_or_init(|| {
        // SAFETY: RDTSC has no side effects; every x86_64 CPU has it.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        let t1 = unsafe { core::arch::x86_64::_rdtsc() };
        let elapsed = start.elapsed();
        ((t1 - t0) as f64 / elapsed.as_secs_f64() / 1000.0) as u64
    })
}

/// Checks a finished probe run and returns its figures: clean reset, every request OK, and the
/// guest's clock agrees with the host's TSC within 1% (so its rates are in real seconds).
fn measured(run: &Run, what: &str) -> Measured {
    let r = run.finished_report();
    let num = |key: &str| {
        r.num(key)
            .unwrap_or_else(|| panic!("probe did not report {key}\n{run}"))
    };
    let guest_khz = num("tsc_khz");
    let host_khz = host_tsc_khz();
    run.expect(
        guest_khz.abs_diff(host_khz) * 100 <= host_khz,
        &format!("guest clock {guest_khz} kHz vs host TSC {host_khz} kHz: more than 1% apart"),
    );
    run.expect(num("probe_errors") == 0, "requests failed");
    let m = Measured {
        bw: num("bw_bytes_per_s"),
        iops: num("iops"),
    };
    eprintln!(
        "{what}: bw {} B/s ({:.3} MiB/s), {} ops/s over {} ops in {} us (guest TSC {guest_khz} kHz)",
        m.bw,
        m.bw as f64 / MIB as f64,
        m.iops,
        num("probe_ops"),
        num("probe_us"),
    );
    m
}

/// Runs the probe against a 64 MiB sparse disk with the given `--disk` options.
fn probe_disk(opts: &str, size: u32) -> (Run, Measured) {
    let scratch = Scratch::new("rate-probe");
    let disk = scratch.path("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 * MIB))
        .expect("create the disk image");
    let disk = format!("{}{opts}", disk.display());
    let run = run_vmm(
        &[
            "--kernel",
            RATE_PROBE,
            "--disk",
            &disk,
            "--cmdline",
            &format!("probe_size={size}"),
        ],
        TIMEOUT,
    );
    let m = measured(&run, &format!("disk '{opts}', {size}-byte reads"));
    (run, m)
}

/// Asserts `got` is within ±10% of `want`.
fn within_10_percent(run: &Run, what: &str, got: u64, want: u64) {
    run.expect(
        got.abs_diff(want) * 10 <= want,
        &format!("{what}: measured {got}, limit {want}: not within ±10%"),
    );
}

#[test]
fn disk_bw_limit_measures_within_10_percent_in_the_guest() {
    require_kvm!();
    let (run, m) = probe_disk(",bw=4M", 64 << 10);
    within_10_percent(&run, "bytes/s", m.bw, 4 * MIB);
}

#[test]
fn disk_iops_limit_measures_within_10_percent_in_the_guest() {
    require_kvm!();
    let (run, m) = probe_disk(",iops=500", 512);
    within_10_percent(&run, "reads/s", m.iops, 500);
}

#[test]
fn disk_bw_and_iops_together_the_tighter_limit_binds() {
    require_kvm!();
    // 64 KiB reads: 4 MiB/s is 64 reads/s, far below 500, so the byte bucket binds.
    let (run, m) = probe_disk(",bw=4M,iops=500", 64 << 10);
    within_10_percent(&run, "bytes/s (bw binds)", m.bw, 4 * MIB);
    run.expect(m.iops < 100, "64 KiB reads went faster than 4 MiB/s allows");
    // 512-byte reads: 500 reads/s is 250 KiB/s, far below 4 MiB/s, so the op bucket binds.
    let (run, m) = probe_disk(",bw=4M,iops=500", 512);
    within_10_percent(&run, "reads/s (iops binds)", m.iops, 500);
    run.expect(m.bw < MIB, "512-byte reads went faster than 500/s allows");
}

#[test]
fn disk_unlimited_measures_clearly_above_the_limits() {
    require_kvm!();
    // Proves the probe can see more than the limits above: the limiter, not the guest or the
    // device, is what held those runs down.
    let (run, m) = probe_disk("", 64 << 10);
    run.expect(m.bw > 2 * 4 * MIB, "unlimited disk not above 2× 4 MiB/s");
    let (run, m) = probe_disk("", 512);
    run.expect(m.iops > 2 * 500, "unlimited disk not above 2× 500 reads/s");
}

/// Runs the probe in TX mode, in `ns`, on a tap vmm creates there, with the given `--net` options.
fn probe_net(ns: &NetNs, opts: &str, size: u32) -> (Run, Measured) {
    let net = format!("tap=rp0,create=on{opts}");
    let cmdline = format!("probe_dev=net probe_size={size}");
    let run = ns.run_vmm(
        &["--kernel", RATE_PROBE, "--net", &net, "--cmdline", &cmdline],
        TIMEOUT,
    );
    let m = measured(&run, &format!("net '{opts}', {size}-byte frames"));
    (run, m)
}

#[test]
fn net_tx_limits_measure_within_10_percent_in_the_guest() {
    require_kvm!();
    let ns = NetNs::new("rate");
    let (run, m) = probe_net(&ns, ",pps=1000", 60);
    within_10_percent(&run, "TX frames/s", m.iops, 1000);
    // Bytes are counted without the vnet header: 1514-byte frames at 1 MiB/s.
    let (run, m) = probe_net(&ns, ",bw=1M", 1514);
    within_10_percent(&run, "TX bytes/s", m.bw, MIB);
    let (run, m) = probe_net(&ns, "", 60);
    run.expect(
        m.iops > 2 * 1000,
        "unlimited NIC not above 2× 1000 frames/s",
    );
}
