//! The device-level virtio-blk figures of the `blk` group: the tiny guest `blk_bench`
//! (crates/test-guests) keeps the queue full (4 KiB random and 1 MiB sequential, reads and writes)
//! against each disk variant (raw with `aio=sync` and `aio=io_uring`, qcow2, a qcow2 overlay on a
//! raw base), under vmm and under QEMU microvm with the same images, beside the host's own fio on
//! the same file. Unlike the Linux guest's fio, these figures are bound by the device, not by this
//! host's emulation of a guest kernel.
//!
//! Sizes: `VMM_BENCH_BLK_MS` (measurement per run, default 2000; quick 1000), `VMM_BENCH_BLK_RUNS`
//! (runs per figure, default 3; quick 1), `VMM_BENCH_BLK_DEPTH` (requests in flight, default 32),
//! `VMM_BENCH_BLK_MIB` (image size, default 256).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::report::{Figure, Samples, Target};
use crate::run::{Engine, Guest};
use crate::Bench;

/// The guest's modes: (figure key, title, `blk_mode=`, bytes per request).
const MODES: [(&str, &str, &str, u64); 4] = [
    ("randread4k", "4k random read", "randread", 4096),
    ("randwrite4k", "4k random write", "randwrite", 4096),
    ("seqread1m", "1M sequential read", "seqread", 1 << 20),
    ("seqwrite1m", "1M sequential write", "seqwrite", 1 << 20),
];

/// How a variant's image is made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Raw,
    /// `qemu-img convert` of the raw image: every cluster allocated.
    Qcow2,
    /// `qemu-img create -f qcow2 -b BASE -F raw`: empty, made afresh for every run.
    Qcow2Overlay,
}

/// One disk set-up measured under both VMMs.
struct Variant {
    name: &'static str,
    format: Format,
    /// vmm's `aio=`; QEMU's `aio=` is `threads` for `sync`.
    aio: &'static str,
}

/// qcow2 and its overlay use `aio=sync`, so that they compare with raw-sync like for like.
const VARIANTS: [Variant; 4] = [
    Variant {
        name: "raw-sync",
        format: Format::Raw,
        aio: "sync",
    },
    Variant {
        name: "raw-io_uring",
        format: Format::Raw,
        aio: "io_uring",
    },
    Variant {
        name: "qcow2",
        format: Format::Qcow2,
        aio: "sync",
    },
    Variant {
        name: "qcow2-overlay",
        format: Format::Qcow2Overlay,
        aio: "sync",
    },
];

/// A run's timeout beyond its measurement: boot, calibration (0.3 s), warm-up, drain.
const SLACK: Duration = Duration::from_secs(30);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// What one run of the guest gave.
#[derive(Debug, Default)]
struct Measured {
    ops: f64,
    bytes: f64,
    /// The guest's own measurement window.
    elapsed_s: f64,
    /// CPU seconds of the VMM's threads other than its vCPUs between `bench_start` and `bench_end`.
    vmm_cpu_s: Option<f64>,
}

/// Why a run gave no figure.
#[derive(Debug)]
enum Failure {
    /// The VMM refused the disk's options (the variant does not exist in it).
    Unsupported(String),
    Failed(String),
}

/// The `key=value` number (hex with 0x, or decimal) the guest printed.
fn guest_num(lines: &[String], key: &str) -> Option<u64> {
    lines.iter().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        }
    })
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (clock ticks) of a /proc stat line; the fields after the command's `)`.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the line, utime 14 and stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Whether a thread name is a vCPU's: vmm's `vcpuN`, QEMU's `CPU N/KVM` (with debug-threads=on).
fn is_vcpu_thread(comm: &str) -> bool {
    let comm = comm.trim();
    comm.starts_with("vcpu") || (comm.starts_with("CPU ") && comm.ends_with("/KVM"))
}

/// CPU ticks of process `pid` (all its threads, exited ones included) minus its vCPU threads'.
fn non_vcpu_ticks(pid: u32) -> Option<u64> {
    let total = stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let mut vcpus = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if is_vcpu_thread(&comm) {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            vcpus += stat_ticks(&stat).unwrap_or(0);
        }
    }
    Some(total.saturating_sub(vcpus))
}

/// The `--disk` value for vmm; `aio` None leaves the option out.
fn vmm_disk(image: &Path, format: Format, aio: Option<&str>) -> String {
    let mut s = format!("path={}", image.display());
    if format != Format::Raw {
        s.push_str(",format=qcow2");
    }
    if let Some(aio) = aio {
        s.push_str(&format!(",aio={aio}"));
    }
    s
}

/// The command that runs the guest on `image` under `engine`.
fn command(
    engine: &Engine,
    image: &Path,
    format: Format,
    aio: Option<&str>,
    cmdline: &str,
    memory_mib: u32,
) -> Command {
    let guest = Guest {
        cmdline: Some(cmdline.to_string()),
        memory_mib,
        ..Guest::tiny(test_guests::BLK_BENCH)
    };
    let mut c = guest.command(engine);
    match engine {
        Engine::Vmm(_) => {
            c.arg("--disk").arg(vmm_disk(image, format, aio));
        }
        Engine::Qemu(_) => {
            let fmt = if format == Format::Raw {
                "raw"
            } else {
                "qcow2"
            };
            let aio = match aio {
                Some("io_uring") => "io_uring",
                _ => "threads",
            };
            // cache=writeback (QEMU's default, spelled out): the page cache, as vmm's preadv.
            c.arg("-drive").arg(format!(
                "id=d0,file={},format={fmt},if=none,aio={aio},cache=writeback",
                image.display()
            ));
            c.args(["-device", "virtio-blk-device,drive=d0"]);
            c.args(["-name", "blkbench,debug-threads=on"]);
            // The guest drives virtio-mmio version 2 (QEMU's transports are legacy by default).
            c.args(["-global", "virtio-mmio.force-legacy=false"]);
        }
    }
    c
}

/// Runs the guest once: the VMM's CPU is sampled when `bench_start` and `bench_end` appear.
fn run_once(mut cmd: Command, timeout: Duration, engine: &Engine) -> Result<Measured, Failure> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::Failed(format!("cannot spawn {}: {e}", engine.name())))?;
    let pid = child.id();
    let stderr = child.stderr.take().map(|mut e| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s
        })
    });
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take();
    let reader = thread::spawn(move || {
        let mut lines = Vec::new();
        let (mut at_start, mut at_end) = (None, None);
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                let line = line.trim().to_string();
                if line == "bench_start" {
                    at_start = non_vcpu_ticks(pid);
                } else if line == "bench_end" {
                    at_end = non_vcpu_ticks(pid);
                }
                lines.push(line);
            }
        }
        let _ = tx.send(());
        (lines, at_start, at_end)
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    while rx.recv_timeout(Duration::from_millis(100)).is_err() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            timed_out = true;
            break;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            // The VMM is gone; the reader ends at EOF.
            let _ = rx.recv_timeout(Duration::from_secs(5));
            break;
        }
    }
    let status = child.wait().ok();
    let (lines, at_start, at_end) = reader.join().unwrap_or_default();
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let last_err = stderr
        .lines()
        .find(|l| l.contains("error"))
        .or_else(|| stderr.lines().last())
        .unwrap_or("")
        .trim()
        .to_string();
    if timed_out {
        return Err(Failure::Failed(format!(
            "{}: blk_bench did not end within {timeout:?} (last line {:?})",
            engine.name(),
            lines.last()
        )));
    }
    let started = lines.iter().any(|l| l.starts_with("status="));
    let code = status.and_then(|s| s.code());
    if !started && matches!(engine, Engine::Vmm(_)) && refused(code, &last_err) {
        return Err(Failure::Unsupported(last_err));
    }
    let num = |k: &str| guest_num(&lines, k);
    let clean = match engine {
        Engine::Vmm(_) => code == Some(0),
        // isa-debug-exit with 0: QEMU exits 1.
        Engine::Qemu(_) => matches!(code, Some(0 | 1)),
    };
    let ok = clean
        && lines.iter().any(|l| l == "done")
        && num("errors") == Some(0)
        && num("bad_data") == Some(0)
        && num("answered").is_some()
        && num("answered") == num("submitted");
    if !ok {
        let tail: Vec<&str> = lines.iter().rev().take(4).map(String::as_str).collect();
        return Err(Failure::Failed(format!(
            "{}: blk_bench failed (exit {code:?}; last lines {tail:?}; stderr: {last_err})",
            engine.name()
        )));
    }
    let (Some(ops), Some(bytes), Some(us)) = (num("ops"), num("bytes"), num("elapsed_us")) else {
        return Err(Failure::Failed(format!(
            "{}: blk_bench printed no figures",
            engine.name()
        )));
    };
    let vmm_cpu_s = match (at_start, at_end) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / clock_ticks()),
        _ => None,
    };
    Ok(Measured {
        ops: ops as f64,
        bytes: bytes as f64,
        elapsed_s: us as f64 / 1e6,
        vmm_cpu_s,
    })
}

/// Whether vmm, stopped before its guest reached the disk, refused the variant's options: a usage
/// error (exit 2), or an error (exit 1) naming them after the file's name (`error_line` is vmm's
/// `error:` line); any other early end is a failure.
fn refused(code: Option<i32>, error_line: &str) -> bool {
    let gist = refusal(error_line);
    match code {
        Some(2) => true,
        Some(1) => ["aio", "io_uring", "format", "qcow2"]
            .iter()
            .any(|k| gist.contains(k)),
        _ => false,
    }
}

/// The gist of vmm's refusal: `unknown disk option 'aio'` rather than the whole usage line.
fn refusal(stderr: &str) -> &str {
    let tail = stderr.rsplit("': ").next().unwrap_or(stderr);
    tail.split(';').next().unwrap_or(tail).trim()
}

/// Writes an image of `mib` MiB whose every sector carries blk_bench's stamp (seed 0).
fn write_image(path: &Path, mib: u64) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let per_mib = (1u64 << 20) / 512;
    let mut chunk = test_guests::blk_bench_image(per_mib, 0);
    for m in 0..mib {
        for s in 0..per_mib {
            let off = usize::try_from(s * 512).unwrap_or(0);
            chunk[off..off + test_guests::BLK_BENCH_STAMP_LEN]
                .copy_from_slice(&test_guests::blk_bench_stamp(m * per_mib + s, 0));
        }
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

fn qemu_img(args: &[&str]) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run qemu-img (apt-get install qemu-utils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The host's fio on `file`: 4 KiB random reads, `depth` in flight on one job, buffered (as vmm's
/// preadv and QEMU's cache=writeback), io_uring (libaio if fio has no io_uring). IOPS.
fn host_randread(file: &Path, depth: u64, secs: f64) -> Result<f64, String> {
    let mut last = String::new();
    for engine in ["io_uring", "libaio"] {
        let out = Command::new("fio")
            .args([
                "--name=randread4k",
                "--rw=randread",
                "--bs=4k",
                "--direct=0",
                "--time_based",
                "--output-format=terse",
            ])
            .arg(format!("--filename={}", file.display()))
            .arg(format!("--ioengine={engine}"))
            .arg(format!("--iodepth={depth}"))
            .arg(format!("--runtime={}ms", (secs * 1000.0) as u64))
            .output()
            .map_err(|e| format!("cannot run fio on the host (apt-get install fio): {e}"))?;
        if out.status.success() {
            let lines = crate::parse_fio_terse(&String::from_utf8_lossy(&out.stdout));
            if let Some((_, iops, _)) = lines.first() {
                return Ok(*iops);
            }
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Err(format!("fio on the host failed: {last}"))
}

/// Figures of one (mode, variant): throughput and the VMM's CPU per request.
struct Pair {
    rate: Figure,
    cpu: Figure,
    /// The other unit (MiB/s for IOPS figures and the reverse), per engine.
    other: [Samples; 2],
    unsupported: Option<String>,
}

impl Bench {
    /// The device-level part of the `blk` group (see the module's documentation).
    pub fn blkdev_group(&mut self) {
        let quick = self.quick;
        let ms = env_num("VMM_BENCH_BLK_MS", if quick { 1000 } else { 2000 });
        let runs = env_num("VMM_BENCH_BLK_RUNS", if quick { 1 } else { 3 });
        let depth = env_num("VMM_BENCH_BLK_DEPTH", 32).min(64);
        let mib = env_num("VMM_BENCH_BLK_MIB", 256);
        let base = self.scratch.join("blkdev-base.raw");
        eprintln!("vmm-bench: blk device: a {mib} MiB raw image, stamped");
        if let Err(e) = write_image(&base, mib) {
            self.failures
                .push(format!("cannot write {}: {e}", base.display()));
            return;
        }
        let qcow2 = self.scratch.join("blkdev.qcow2");
        let overlay = self.scratch.join("blkdev-overlay.qcow2");
        let base_s = base.display().to_string();
        let qcow2_made = qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &base_s,
            &qcow2.display().to_string(),
        ]);
        if let Err(e) = &qcow2_made {
            self.failures.push(e.clone());
        }

        let engines = self.engines();
        let mut pairs: Vec<Vec<Pair>> = Vec::new();
        for (key, title, _, bs) in MODES {
            let unit = if bs < 1 << 20 { "IOPS" } else { "MiB/s" };
            let row = VARIANTS
                .iter()
                .map(|v| {
                    let mut rate = Figure::new(
                        &format!("blkdev_{key}_{}", v.name.replace('-', "_")),
                        &format!("blk device {title}, {} in flight, {}", depth, v.name),
                        unit,
                    );
                    let mut cpu = Figure::new(
                        &format!("blkdev_{key}_{}_cpu", v.name.replace('-', "_")),
                        &format!("blk device {title}, {}: VMM CPU per request", v.name),
                        "µs",
                    );
                    if self.qemu.is_some() {
                        rate.qemu = Some(Samples::default());
                        cpu.qemu = Some(Samples::default());
                    }
                    Pair {
                        rate,
                        cpu,
                        other: [Samples::default(), Samples::default()],
                        unsupported: None,
                    }
                })
                .collect();
            pairs.push(row);
        }

        let mut host = Samples::default();
        for run in 0..runs {
            eprintln!(
                "vmm-bench: blk device: fio on the host, run {}/{runs}",
                run + 1
            );
            match host_randread(&base, depth, ms as f64 / 1000.0) {
                Ok(iops) => host.push(iops),
                Err(e) => self.failures.push(e),
            }
            for (m, (_, _, mode, bs)) in MODES.iter().enumerate() {
                let memory_mib =
                    u32::try_from(((16 + depth * bs / (1 << 20)) + 32).max(128)).unwrap_or(128);
                let cmdline = format!(
                    "blk_mode={mode} blk_depth={depth} blk_ms={ms} blk_seed={}",
                    run + 2
                );
                for (v, variant) in VARIANTS.iter().enumerate() {
                    for engine in &engines {
                        // A variant vmm refused once is refused again; QEMU still runs it.
                        if pairs[m][v].unsupported.is_some() && matches!(engine, Engine::Vmm(_)) {
                            continue;
                        }
                        let image = match variant.format {
                            Format::Raw => base.clone(),
                            Format::Qcow2 if qcow2_made.is_ok() => qcow2.clone(),
                            Format::Qcow2 => break,
                            Format::Qcow2Overlay => {
                                let _ = std::fs::remove_file(&overlay);
                                if let Err(e) = qemu_img(&[
                                    "create",
                                    "-q",
                                    "-f",
                                    "qcow2",
                                    "-b",
                                    &base_s,
                                    "-F",
                                    "raw",
                                    &overlay.display().to_string(),
                                ]) {
                                    self.failures.push(e);
                                    continue;
                                }
                                overlay.clone()
                            }
                        };
                        eprintln!(
                            "vmm-bench: blk device: {mode} on {} under {}, run {}/{runs}",
                            variant.name,
                            engine.name(),
                            run + 1
                        );
                        let timeout = Duration::from_millis(ms * 2) + SLACK;
                        let mut res = run_once(
                            command(
                                engine,
                                &image,
                                variant.format,
                                Some(variant.aio),
                                &cmdline,
                                memory_mib,
                            ),
                            timeout,
                            engine,
                        );
                        // A vmm without `aio=` serves every disk synchronously: that is raw-sync.
                        if variant.aio == "sync"
                            && matches!(&res, Err(Failure::Unsupported(e)) if e.contains("aio"))
                        {
                            res = run_once(
                                command(engine, &image, variant.format, None, &cmdline, memory_mib),
                                timeout,
                                engine,
                            );
                        }
                        let p = &mut pairs[m][v];
                        match res {
                            Ok(r) => {
                                let iops = r.ops / r.elapsed_s;
                                let mibs = r.bytes / r.elapsed_s / f64::from(1u32 << 20);
                                let (main, other) = if *bs < 1 << 20 {
                                    (iops, mibs)
                                } else {
                                    (mibs, iops)
                                };
                                let i = usize::from(matches!(engine, Engine::Qemu(_)));
                                let cpu =
                                    r.vmm_cpu_s.filter(|_| r.ops > 0.0).map(|s| s * 1e6 / r.ops);
                                match engine {
                                    Engine::Vmm(_) => {
                                        p.rate.vmm.push(main);
                                        if let Some(c) = cpu {
                                            p.cpu.vmm.push(c);
                                        }
                                    }
                                    Engine::Qemu(_) => {
                                        p.rate.qemu.get_or_insert_with(Samples::default).push(main);
                                        if let Some(c) = cpu {
                                            p.cpu.qemu.get_or_insert_with(Samples::default).push(c);
                                        }
                                    }
                                }
                                p.other[i].push(other);
                            }
                            Err(Failure::Unsupported(e)) => p.unsupported = Some(e),
                            Err(Failure::Failed(e)) => {
                                self.failures
                                    .push(format!("blk device {mode} {}: {e}", variant.name));
                            }
                        }
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&base);
        let _ = std::fs::remove_file(&qcow2);
        let _ = std::fs::remove_file(&overlay);

        for (m, row) in pairs.iter_mut().enumerate() {
            let (key, _, _, bs) = MODES[m];
            let raw = row[0].rate.vmm.median();
            let raw_cpu = row[0].cpu.vmm.median();
            for (v, p) in row.iter_mut().enumerate() {
                let variant = &VARIANTS[v];
                if let Some(why) = &p.unsupported {
                    p.rate.note = format!("not supported by this vmm ({})", refusal(why));
                    p.cpu.note = "vmm: not supported".to_string();
                    continue;
                }
                let other_unit = if bs < 1 << 20 { "MiB/s" } else { "IOPS" };
                let med = |s: &Samples| s.median().map_or("—".to_string(), |x| format!("{x:.1}"));
                p.rate.note = format!(
                    "guest-timed, {ms} ms after 200 ms of warm-up; {other_unit}: vmm {}, qemu {}; {}",
                    med(&p.other[0]),
                    med(&p.other[1]),
                    match (variant.format, variant.aio) {
                        (Format::Raw, _) => format!("raw image, vmm aio={}", variant.aio),
                        (Format::Qcow2, _) => "qemu-img convert of the raw image (every cluster allocated), aio=sync".to_string(),
                        (Format::Qcow2Overlay, _) => "a fresh empty overlay each run on the raw base (reads go to the base, writes allocate clusters), aio=sync".to_string(),
                    }
                );
                p.cpu.note = "user+sys of the VMM's threads but its vCPUs (/proc, between the guest's bench_start and bench_end lines) over the requests of the window".to_string();
                if key == "randread4k" {
                    p.rate.host = Some(host.clone());
                    if let Some(h) = host.median() {
                        p.rate.targets.push(Target::AtLeast(0.5 * h));
                        p.rate.note.push_str("; target: ≥ 50% of the host's fio");
                    }
                }
                if variant.format != Format::Raw {
                    if let Some(r) = raw {
                        p.rate.targets.push(Target::AtLeast(r / 1.2));
                        p.rate.note.push_str("; target: ≥ raw-sync / 1.2");
                    }
                    if let Some(c) = raw_cpu {
                        p.cpu.targets.push(Target::AtMost(1.2 * c));
                        p.cpu.note.push_str("; target: ≤ 1.2× raw-sync");
                    }
                }
            }
        }
        for row in pairs {
            for p in row {
                self.figures.push(p.rate);
                self.figures.push(p.cpu);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn guest_numbers_and_proc_stat() {
        let lines: Vec<String> = ["ops=0x10", "bytes=4096", "status=0xf"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(guest_num(&lines, "ops"), Some(16));
        assert_eq!(guest_num(&lines, "bytes"), Some(4096));
        assert_eq!(guest_num(&lines, "op"), None);
        let stat = "42 (vcpu 0) (x) S 1 2 3 4 5 6 7 8 9 10 11 30 12 0 0";
        assert_eq!(stat_ticks(stat), Some(41));
        assert!(is_vcpu_thread("vcpu0\n"));
        assert!(is_vcpu_thread("CPU 0/KVM"));
        assert!(!is_vcpu_thread("vmm"));
        assert!(!is_vcpu_thread("worker"));
    }

    #[test]
    fn refusals_are_cut_to_their_gist() {
        let e =
            "error: invalid value 'path=/x,aio=sync' for '--disk <PATH[,id=NAME]>': unknown disk \
                 option 'aio'; known options: readonly=on|off";
        assert_eq!(refusal(e), "unknown disk option 'aio'");
        assert_eq!(refusal("error: no qcow2 here"), "error: no qcow2 here");
    }

    #[test]
    fn only_refused_options_make_a_variant_unsupported() {
        assert!(refused(Some(2), "error: unknown disk option 'aio'"));
        assert!(refused(Some(1), "error: 'x.img' is not a qcow2 image"));
        assert!(!refused(
            Some(1),
            "error: cannot lock 'x.img': held by another process"
        ));
        assert!(!refused(None, "aio"));
        assert!(!refused(Some(0), ""));
    }

    #[test]
    fn vmm_disk_options() {
        let p = PathBuf::from("/i.img");
        assert_eq!(
            vmm_disk(&p, Format::Raw, Some("sync")),
            "path=/i.img,aio=sync"
        );
        assert_eq!(vmm_disk(&p, Format::Raw, None), "path=/i.img");
        assert_eq!(
            vmm_disk(&p, Format::Qcow2Overlay, Some("io_uring")),
            "path=/i.img,format=qcow2,aio=io_uring"
        );
    }
}
