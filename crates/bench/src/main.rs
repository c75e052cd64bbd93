//! `vmm-bench`: what vmm costs, measured side by side with QEMU `-M microvm` on the same guests in
//! one run. Prints a table (median [min–max] per VMM, the ratio, the target) and writes JSON.
//!
//! ```sh
//! cargo run --release -p bench -- [--quick] [--json out.json]
//! ```
//! It builds the release `vmm` (unless `--vmm PATH`), uses the tiny guests of crates/test-guests,
//! and for the Linux figures the kernel and rootfs of resources/ (built or taken from the cache).

mod blkdev;
mod fs;
mod report;
mod run;
mod snapshot;
mod vsock;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use report::{Figure, Samples, Target};
use run::{Engine, Guest, QEMU_HOST_PARAMS, QEMU_VIRTIO_MMIO_BASE, VMM_VIRTIO_MMIO_BASE};

/// Benchmarks vmm against QEMU microvm on the same guests.
#[derive(Parser, Debug)]
#[command(name = "vmm-bench")]
struct Cli {
    /// A smoke run: few repetitions, fewer accesses, no Linux boots (unless --linux-runs is given).
    #[arg(long)]
    quick: bool,
    /// Repetitions of each tiny-guest measurement (default 20, quick 5).
    #[arg(long)]
    runs: Option<usize>,
    /// Sequential Linux boots per VMM (default 3, quick 0); blk and net boot
    /// min(--runs, this) times per VMM; 0 leaves out blk's fio in a Linux guest (its device
    /// figures, from a tiny guest, remain).
    #[arg(long)]
    linux_runs: Option<usize>,
    /// Write the figures as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Only these groups (comma-separated): null, exit, rss, rate, many, linux, linux4, blk, net,
    /// vsock, run, snapshot (tiny guests, and `vmm run --restore` of the Linux guest), fs (a shared
    /// directory beside QEMU with virtiofsd, and beside virtio-blk). blk's device figures: VMM_BENCH_BLK_MS (per run, default 2000),
    /// VMM_BENCH_BLK_RUNS (3), VMM_BENCH_BLK_DEPTH (32), VMM_BENCH_BLK_MIB (256). vsock's sizes:
    /// VMM_BENCH_VSOCK_MIB (per transfer, default 4), VMM_BENCH_VSOCK_REPS (transfers each way, default 1), VMM_BENCH_VSOCK_ROUND_TRIPS (50).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Use this vmm binary instead of building target/release/vmm.
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// The QEMU binary; `none` leaves QEMU out.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    qemu: String,
}

const TINY_TIMEOUT: Duration = Duration::from_secs(60);
const LINUX_TIMEOUT: Duration = Duration::from_secs(900);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn build_vmm() -> Result<PathBuf, String> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("vmm-bench: building the release vmm");
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--quiet", "-p", "vmm", "--bin", "vmm"])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --release -p vmm failed ({status})"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release/vmm"))
}

fn find_qemu(name: &str) -> Option<PathBuf> {
    if name == "none" {
        return None;
    }
    let ok = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| PathBuf::from(name))
}

/// The Linux guest from resources/ (vmlinux, rootfs.ext4).
fn linux_guest() -> Result<(PathBuf, PathBuf), String> {
    let res = workspace_root().join("resources");
    let mut paths = Vec::new();
    for script in ["build-kernel.sh", "build-rootfs.sh"] {
        eprintln!("vmm-bench: resources/{script} (builds on first use, minutes)");
        let out = Command::new(res.join(script))
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run resources/{script}: {e}"))?;
        if !out.status.success() {
            return Err(format!("resources/{script} failed ({})", out.status));
        }
        paths.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| PathBuf::from(l.trim())),
        );
    }
    let find = |name: &str| {
        paths
            .iter()
            .find(|p| p.file_name().is_some_and(|f| f == name))
            .cloned()
            .ok_or(format!("resources/ did not report {name}"))
    };
    Ok((find("vmlinux")?, find("rootfs.ext4")?))
}

struct Bench {
    vmm: Engine,
    qemu: Option<Engine>,
    runs: usize,
    quick: bool,
    scratch: PathBuf,
    figures: Vec<Figure>,
    failures: Vec<String>,
}

impl Bench {
    fn engines(&self) -> Vec<Engine> {
        let mut e = vec![self.vmm.clone()];
        e.extend(self.qemu.clone());
        e
    }

    /// Runs `guest` once under `engine`; a failed run is recorded and yields `None`.
    fn once(
        &mut self,
        engine: &Engine,
        guest: &Guest,
        timeout: Duration,
        watch: &[&str],
        stop_at: Option<&str>,
    ) -> Option<run::Outcome> {
        match run::run(guest.command(engine), timeout, watch, stop_at) {
            Ok(o) if o.ok(engine) => Some(o),
            Ok(o) => {
                self.failures.push(format!(
                    "{} {}: exit {:?} after {:.1?}; stderr: {}",
                    engine.name(),
                    guest.kernel.display(),
                    o.status,
                    o.elapsed,
                    o.stderr.lines().last().unwrap_or("")
                ));
                None
            }
            Err(e) => {
                self.failures
                    .push(format!("{}: cannot spawn: {e}", engine.name()));
                None
            }
        }
    }

    /// Median spawn→exit of `guest` for each engine, in ms, alternating the engines.
    fn timed(&mut self, guests: &[(Engine, Guest)], runs: usize) -> Vec<Samples> {
        let mut out = vec![Samples::default(); guests.len()];
        for _ in 0..runs {
            for (i, (engine, guest)) in guests.iter().enumerate() {
                if let Some(o) = self.once(engine, guest, TINY_TIMEOUT, &[], None) {
                    out[i].push(o.elapsed.as_secs_f64() * 1e3);
                }
            }
        }
        out
    }

    fn null_group(&mut self) {
        eprintln!("vmm-bench: null guest start → exit");
        let null = Guest::tiny(test_guests::NULL);
        let pairs: Vec<(Engine, Guest)> = self
            .engines()
            .into_iter()
            .map(|e| (e, null.clone()))
            .collect();
        // The in-kernel irqchip alongside, to show what the split one saves.
        let mut runs = pairs.clone();
        let kernel_irqchip = Guest {
            vmm_args: vec!["--irqchip".into(), "kernel".into()],
            ..null.clone()
        };
        runs.push((self.vmm.clone(), kernel_irqchip));
        let mut s = self.timed(&runs, self.runs);
        let kernel = s.pop().unwrap_or_default();
        let mut s = s.into_iter();
        let mut f = Figure::new("null_start_to_exit", "null guest: start → exit", "ms");
        f.vmm = s.next().unwrap_or_default();
        f.qemu = s.next();
        f.targets = vec![Target::AtMost(5.0), Target::RatioAtMost(0.5)];
        f.note = "spawn to reaped exit, measured by the parent".to_string();
        self.figures.push(f);
        let mut f = Figure::new(
            "null_start_to_exit_kernel_irqchip",
            "null guest: start → exit, --irqchip kernel (vmm)",
            "ms",
        );
        f.vmm = kernel;
        f.note = "the same with KVM's in-kernel I/O APIC, PICs and PIT".to_string();
        self.figures.push(f);

        // In-process figures from vmm's own clock (`-v --boot-timer`).
        let traced = Guest {
            verbose: true,
            boot_timer: true,
            ..null.clone()
        };
        let mut first_run = Figure::new(
            "start_to_first_kvm_run",
            "start → first KVM_RUN (vmm)",
            "ms",
        );
        first_run.targets = vec![Target::AtMost(2.0)];
        first_run.note = "from vmm's `-v` trace, measured from the first line of main".to_string();
        let mut mark = Figure::new(
            "null_boot_timer",
            "null guest: start → boot-timer mark (vmm)",
            "ms",
        );
        let vmm = self.vmm.clone();
        for _ in 0..self.runs {
            if let Some(o) = self.once(&vmm, &traced, TINY_TIMEOUT, &[], None) {
                if let Some(us) = o.stderr_micros("first KVM_RUN at ") {
                    first_run.vmm.push(us / 1e3);
                }
                if let Some(us) = o.stderr_micros("boot-timer: ") {
                    mark.vmm.push(us / 1e3);
                }
            }
        }
        self.figures.push(first_run);
        self.figures.push(mark);
    }

    fn exit_group(&mut self) {
        let count: u64 = if self.quick { 20_000 } else { 100_000 };
        let disk = self.scratch.join("exit-cost.img");
        if let Err(e) = std::fs::write(&disk, vec![0u8; 1 << 20]) {
            self.failures
                .push(format!("cannot write {}: {e}", disk.display()));
            return;
        }
        for kind in ["pio", "mmio"] {
            eprintln!("vmm-bench: exit cost ({kind}, {count} accesses)");
            let mut pairs = Vec::new();
            for engine in self.engines() {
                let mut guest = Guest::tiny(if kind == "pio" {
                    test_guests::EXIT_COST_PIO
                } else {
                    test_guests::EXIT_COST_MMIO
                });
                let mut extra = String::new();
                if kind == "mmio" {
                    let addr = match engine {
                        Engine::Vmm(_) => VMM_VIRTIO_MMIO_BASE,
                        Engine::Qemu(_) => QEMU_VIRTIO_MMIO_BASE,
                    };
                    extra = format!(" mmio={addr:#x}");
                    guest.disk = Some(disk.clone());
                }
                // The baseline is the same guest, devices and all, with no accesses.
                let mut base = guest.clone();
                base.cmdline = Some(format!("count=0{extra}"));
                guest.cmdline = Some(format!("count={count}{extra}"));
                pairs.push((engine.clone(), base));
                pairs.push((engine, guest));
            }
            let runs = (self.runs / 2).max(3);
            let s = self.timed(&pairs, runs);
            // Per access: (median(with accesses) − median(null)) / count, in µs.
            let per = |base: &Samples, with: &Samples| -> Samples {
                match (base.median(), with.median()) {
                    (Some(b), Some(w)) => Samples(vec![(w - b) * 1e3 / count as f64]),
                    _ => Samples::default(),
                }
            };
            let mut f = Figure::new(
                &format!("exit_cost_{kind}"),
                &format!("one {kind} exit, served in user space"),
                "µs",
            );
            f.vmm = per(&s[0], &s[1]);
            if s.len() >= 4 {
                f.qemu = Some(per(&s[2], &s[3]));
            }
            f.targets = vec![Target::RatioAtMost(1.0)];
            f.note = format!(
                "(median total − median with count=0) / {count}; totals vmm {:.0} ms, qemu {} ms",
                s[1].median().unwrap_or(f64::NAN),
                s.get(3)
                    .and_then(Samples::median)
                    .map_or("n/a".to_string(), |m| format!("{m:.0}"))
            );
            self.figures.push(f);
        }
    }

    fn rss_group(&mut self) {
        eprintln!("vmm-bench: memory overhead (park guest, 1 vCPU, 128 MiB)");
        let park = Guest::tiny(test_guests::PARK);
        let mut f = Figure::new("rss_overhead", "RSS minus guest RAM, parked guest", "MiB");
        let mut q = Samples::default();
        let runs = if self.quick { 2 } else { 5 };
        for _ in 0..runs {
            for engine in self.engines() {
                match run::parked_memory(&engine, &park, "parked", TINY_TIMEOUT) {
                    Ok(Some(m)) => {
                        let mib = m.rss_kib.saturating_sub(m.guest_rss_kib) as f64 / 1024.0;
                        match engine {
                            Engine::Vmm(_) => f.vmm.push(mib),
                            Engine::Qemu(_) => q.push(mib),
                        }
                    }
                    Ok(None) => self
                        .failures
                        .push(format!("{}: park guest did not park", engine.name())),
                    Err(e) => self.failures.push(format!("{}: {e}", engine.name())),
                }
            }
        }
        if self.qemu.is_some() {
            f.qemu = Some(q);
        }
        f.targets = vec![Target::AtMost(3.0)];
        f.note =
            "VmRSS − Rss of the guest RAM mapping (/proc/PID/smaps), 300 ms after `parked`".into();
        self.figures.push(f);
    }

    fn rate_group(&mut self) {
        let secs = if self.quick { 2 } else { 5 };
        let workers = thread::available_parallelism().map_or(2, |n| n.get());
        eprintln!("vmm-bench: VM creation rate ({workers} workers, {secs} s)");
        let mut f = Figure::new("vm_creation_rate", "null VMs back to back", "VMs/s");
        let mut q = Samples::default();
        let reps = if self.quick { 1 } else { 3 };
        for _ in 0..reps {
            for engine in self.engines() {
                let (done, failed, elapsed) = creation_rate(&engine, workers, secs);
                if failed > 0 {
                    self.failures
                        .push(format!("{}: {failed} null guests failed", engine.name()));
                }
                let rate = done as f64 / elapsed.as_secs_f64();
                match engine {
                    Engine::Vmm(_) => f.vmm.push(rate),
                    Engine::Qemu(_) => q.push(rate),
                }
            }
        }
        if self.qemu.is_some() {
            f.qemu = Some(q);
        }
        f.targets = vec![Target::AtLeast(100.0)];
        f.note = format!("{workers} parallel workers for {secs} s each");
        self.figures.push(f);
    }

    fn many_group(&mut self) {
        let n = if self.quick { 10 } else { 50 };
        eprintln!("vmm-bench: {n} null guests at once");
        let mut done = Figure::new(
            "many_null_completed",
            &format!("{n} null guests at once: completed"),
            "VMs",
        );
        let mut wall = Figure::new(
            "many_null_wall",
            &format!("{n} null guests at once: wall time"),
            "ms",
        );
        let (mut qd, mut qw) = (Samples::default(), Samples::default());
        for engine in self.engines() {
            let guest = Guest::tiny(test_guests::NULL);
            let (ok, elapsed) = at_once(&engine, &guest, n, TINY_TIMEOUT, None);
            match engine {
                Engine::Vmm(_) => {
                    done.vmm.push(ok as f64);
                    wall.vmm.push(elapsed.as_secs_f64() * 1e3);
                }
                Engine::Qemu(_) => {
                    qd.push(ok as f64);
                    qw.push(elapsed.as_secs_f64() * 1e3);
                }
            }
        }
        if self.qemu.is_some() {
            done.qemu = Some(qd);
            wall.qemu = Some(qw);
        }
        done.targets = vec![Target::AtLeast(n as f64)];
        self.figures.push(done);
        self.figures.push(wall);
    }

    fn linux_guest_for(
        &self,
        engine: &Engine,
        kernel: &Path,
        rootfs: &Path,
        tag: &str,
        mode: &str,
    ) -> Result<Guest, String> {
        let disk = self
            .scratch
            .join(format!("rootfs-{}-{tag}.ext4", engine.name()));
        std::fs::copy(rootfs, &disk).map_err(|e| format!("cannot copy the rootfs: {e}"))?;
        let base = format!("console=ttyS0 reboot=k panic=1 pci=off vmmtest={mode}");
        let cmdline = match engine {
            Engine::Vmm(_) => base,
            Engine::Qemu(_) => format!("{base} {QEMU_HOST_PARAMS} root=/dev/vda rw"),
        };
        Ok(Guest {
            kernel: kernel.to_path_buf(),
            cmdline: Some(cmdline),
            disk: Some(disk),
            memory_mib: 128,
            boot_timer: true,
            ..Guest::default()
        })
    }

    fn linux_group(
        &mut self,
        runs: usize,
        parallel: bool,
        io: &[&str],
        io_runs: usize,
        run_boots: usize,
    ) {
        let (kernel, rootfs) = match linux_guest() {
            Ok(p) => p,
            Err(e) => {
                self.failures.push(e);
                return;
            }
        };
        if runs > 0 {
            self.linux_sequential(&kernel, &rootfs, runs);
        }
        if io.contains(&"blk") {
            self.blk_group(&kernel, &rootfs, io_runs);
        }
        if io.contains(&"net") {
            self.net_group(&kernel, &rootfs, io_runs);
        }
        if io.contains(&"snapshot") {
            self.run_restore_group(&kernel, &rootfs, io_runs);
        }
        if io.contains(&"vsock") {
            self.vsock_group(&kernel, &rootfs);
        }
        if io.contains(&"fs") {
            self.fs_group(&kernel, &rootfs, io_runs);
        }
        if io.contains(&"run") && run_boots > 0 {
            self.run_group(&kernel, &rootfs, run_boots);
        }
        if parallel {
            self.linux_parallel(&kernel, &rootfs);
        }
    }

    /// One Linux guest run for an I/O benchmark: boots `guest` under `engine` to VMM-TEST-DONE,
    /// removes its rootfs copy, and returns the outcome if the guest got there.
    /// The Linux guest of the fio and iperf3 runs (256 MiB); a failure to make it is recorded.
    fn io_guest(
        &mut self,
        engine: &Engine,
        kernel: &Path,
        rootfs: &Path,
        tag: &str,
        mode: &str,
    ) -> Option<Guest> {
        match self.linux_guest_for(engine, kernel, rootfs, tag, mode) {
            Ok(guest) => Some(Guest {
                memory_mib: 256,
                ..guest
            }),
            Err(e) => {
                self.failures.push(e);
                None
            }
        }
    }

    fn linux_io_run(&mut self, engine: &Engine, guest: &Guest) -> Option<run::Outcome> {
        let stop = matches!(engine, Engine::Qemu(_)).then_some("VMM-TEST-DONE");
        let o = self.once(engine, guest, LINUX_TIMEOUT, &["VMM-TEST-DONE"], stop);
        let _ = std::fs::remove_file(guest.disk.as_deref().unwrap_or(Path::new("")));
        let o = o?;
        if o.mark("VMM-TEST-DONE").is_none() {
            self.failures.push(format!(
                "{}: the Linux guest ended before VMM-TEST-DONE",
                engine.name()
            ));
            return None;
        }
        Some(o)
    }

    /// virtio-blk: the fio jobs of resources/rootfs/bench.fio on /dev/vdb (a 256 MiB raw image
    /// in the scratch folder, the same file for both VMMs), and the same jobs on the host
    /// against that file.
    fn blk_group(&mut self, kernel: &Path, rootfs: &Path, runs: usize) {
        let secs = if self.quick { 2 } else { 5 };
        let image = self.scratch.join("blk-scratch.img");
        if let Err(e) = fill_image(&image, 256) {
            self.failures
                .push(format!("cannot write {}: {e}", image.display()));
            return;
        }
        let mut iops: Vec<Figure> = Vec::new();
        let mut bw: Vec<Figure> = Vec::new();
        for (job, title) in FIO_JOBS {
            let mut f = Figure::new(&format!("blk_{job}_iops"), &format!("fio {title}"), "IOPS");
            f.targets = vec![Target::RatioAtLeast(1.0)];
            f.host = Some(Samples::default());
            let mut b = Figure::new(&format!("blk_{job}_bw"), &format!("fio {title}"), "MiB/s");
            b.targets = vec![Target::RatioAtLeast(1.0)];
            b.host = Some(Samples::default());
            if self.qemu.is_some() {
                f.qemu = Some(Samples::default());
                b.qemu = Some(Samples::default());
            }
            iops.push(f);
            bw.push(b);
        }
        let push = |f: &mut Figure, engine: Option<&Engine>, v: Option<f64>| {
            let Some(v) = v else { return };
            match engine {
                Some(Engine::Vmm(_)) => f.vmm.push(v),
                Some(Engine::Qemu(_)) => f.qemu.get_or_insert_with(Samples::default).push(v),
                None => f.host.get_or_insert_with(Samples::default).push(v),
            }
        };
        for i in 0..runs {
            eprintln!("vmm-bench: fio on the host, run {}/{runs}", i + 1);
            match host_fio(&image, secs) {
                Ok(lines) => {
                    for (j, (job, _)) in FIO_JOBS.iter().enumerate() {
                        let r = lines.iter().find(|(name, _, _)| name == job);
                        push(&mut iops[j], None, r.map(|r| r.1));
                        push(&mut bw[j], None, r.map(|r| r.2 / 1024.0));
                    }
                }
                Err(e) => self.failures.push(e),
            }
            for engine in self.engines() {
                eprintln!(
                    "vmm-bench: fio in a Linux guest under {}, run {}/{runs}",
                    engine.name(),
                    i + 1
                );
                let mode = format!("fio vmmfiotime={secs}");
                let Some(mut guest) = self.io_guest(&engine, kernel, rootfs, "blk", &mode) else {
                    return;
                };
                guest.extra_disks = vec![image.clone()];
                let Some(o) = self.linux_io_run(&engine, &guest) else {
                    continue;
                };
                if o.checks.iter().any(|(k, _)| k == "fio") {
                    self.failures
                        .push(format!("{}: fio failed in the guest", engine.name()));
                }
                for (j, (job, _)) in FIO_JOBS.iter().enumerate() {
                    push(
                        &mut iops[j],
                        Some(&engine),
                        o.check(&format!("fio_{job}_iops")),
                    );
                    let kib = o.check(&format!("fio_{job}_bw_kib"));
                    push(&mut bw[j], Some(&engine), kib.map(|k| k / 1024.0));
                }
            }
        }
        let _ = std::fs::remove_file(&image);
        for f in iops.iter_mut().chain(bw.iter_mut()) {
            f.note = if f.key.contains("4k") {
                format!(
                    "O_DIRECT, psync, {secs} s; the guest kernel has no AIO/io_uring: \
                     32 threads make the 32 in flight"
                )
            } else {
                format!("O_DIRECT, psync, one thread, {secs} s")
            };
        }
        for (f, b) in iops.into_iter().zip(bw) {
            self.figures.push(f);
            self.figures.push(b);
        }
    }

    /// virtio-net: iperf3 TCP between the guest and a host server on a tap (MTU 65520) in a
    /// network namespace of the bench's own, guest → host and host → guest (-R).
    fn net_group(&mut self, kernel: &Path, rootfs: &Path, runs: usize) {
        let secs = if self.quick { 2 } else { 5 };
        let ns = match NetNs::new() {
            Ok(ns) => ns,
            Err(e) => {
                self.failures.push(e);
                return;
            }
        };
        let mut server = match ns.iperf3_server() {
            Ok(c) => c,
            Err(e) => {
                self.failures.push(e);
                return;
            }
        };
        let mut tx = Figure::new("net_tx", "iperf3 TCP guest → host", "Mbit/s");
        let mut rx = Figure::new("net_rx", "iperf3 TCP host → guest", "Mbit/s");
        let (mut qtx, mut qrx) = (Samples::default(), Samples::default());
        for i in 0..runs {
            for engine in self.engines() {
                eprintln!(
                    "vmm-bench: iperf3 with a Linux guest under {}, run {}/{runs}",
                    engine.name(),
                    i + 1
                );
                let mode = format!(
                    "iperf vmmip=10.0.2.15/24 vmmhost=10.0.2.1 vmmmtu=65520 vmmiperftime={secs}"
                );
                let Some(mut guest) = self.io_guest(&engine, kernel, rootfs, "net", &mode) else {
                    return;
                };
                guest.tap = Some(NetNs::TAP.to_string());
                guest.netns = Some(ns.name.clone());
                let Some(o) = self.linux_io_run(&engine, &guest) else {
                    continue;
                };
                let mbit = |k: &str| o.check(k).filter(|v| *v > 0.0).map(|v| v / 1000.0);
                let (t, r) = (mbit("iperf_tx_kbit_s"), mbit("iperf_rx_kbit_s"));
                if t.is_none() || r.is_none() {
                    self.failures
                        .push(format!("{}: iperf3 failed in the guest", engine.name()));
                }
                match engine {
                    Engine::Vmm(_) => {
                        tx.vmm.0.extend(t);
                        rx.vmm.0.extend(r);
                    }
                    Engine::Qemu(_) => {
                        qtx.0.extend(t);
                        qrx.0.extend(r);
                    }
                }
            }
        }
        let _ = server.kill();
        let _ = server.wait();
        if self.qemu.is_some() {
            tx.qemu = Some(qtx);
            rx.qemu = Some(qrx);
        }
        for f in [&mut tx, &mut rx] {
            f.targets = vec![Target::RatioAtLeast(1.0)];
            f.note = format!(
                "receiver's rate, {secs} s, tap MTU 65520, no vhost; QEMU: -netdev tap,script=no"
            );
        }
        self.figures.extend([tx, rx]);
    }

    fn linux_sequential(&mut self, kernel: &Path, rootfs: &Path, runs: usize) {
        let mut init = Figure::new("linux_start_to_init", "Linux: start → VMM-INIT-OK", "s");
        let mut done = Figure::new("linux_start_to_done", "Linux: start → VMM-TEST-DONE", "s");
        let mut exit = Figure::new("linux_start_to_exit", "Linux: start → exit (vmm)", "s");
        let mut mark = Figure::new(
            "linux_boot_timer",
            "Linux: start → init's boot-timer mark (vmm)",
            "s",
        );
        let mut init_no_acpi = Figure::new(
            "linux_start_to_init_acpi_off",
            "Linux: start → VMM-INIT-OK, guest's acpi=off (vmm)",
            "s",
        );
        let (mut qi, mut qd) = (Samples::default(), Samples::default());
        for i in 0..runs {
            for engine in self.engines() {
                eprintln!(
                    "vmm-bench: Linux boot {}/{runs} under {}",
                    i + 1,
                    engine.name()
                );
                let guest = match self.linux_guest_for(&engine, kernel, rootfs, "seq", "marker") {
                    Ok(g) => g,
                    Err(e) => {
                        self.failures.push(e);
                        return;
                    }
                };
                // QEMU microvm has no i8042: `reboot=k` cannot end it, so it is stopped at the marker.
                let stop = matches!(engine, Engine::Qemu(_)).then_some("VMM-TEST-DONE");
                let o = self.once(
                    &engine,
                    &guest,
                    LINUX_TIMEOUT,
                    &["VMM-INIT-OK", "VMM-TEST-DONE"],
                    stop,
                );
                let _ = std::fs::remove_file(guest.disk.as_deref().unwrap_or(Path::new("")));
                let Some(o) = o else { continue };
                let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
                match engine {
                    Engine::Vmm(_) => {
                        init.vmm.0.extend(s(o.mark("VMM-INIT-OK")));
                        done.vmm.0.extend(s(o.mark("VMM-TEST-DONE")));
                        exit.vmm.push(o.elapsed.as_secs_f64());
                        mark.vmm
                            .0
                            .extend(o.stderr_micros("boot-timer: ").map(|us| us / 1e6));
                        // The same boot without ACPI (MP table, command-line devices): what the
                        // ACPI tables cost the guest's boot.
                        eprintln!("vmm-bench: Linux boot {}/{runs} under vmm, acpi=off", i + 1);
                        let mut plain = guest.clone();
                        plain.cmdline = plain.cmdline.map(|c| format!("{c} acpi=off"));
                        std::fs::copy(rootfs, plain.disk.as_deref().unwrap_or(Path::new("")))
                            .map_err(|e| self.failures.push(format!("copy the rootfs: {e}")))
                            .ok();
                        let p = self.once(&engine, &plain, LINUX_TIMEOUT, &["VMM-INIT-OK"], None);
                        let _ =
                            std::fs::remove_file(plain.disk.as_deref().unwrap_or(Path::new("")));
                        if let Some(p) = p {
                            init_no_acpi.vmm.0.extend(s(p.mark("VMM-INIT-OK")));
                        }
                    }
                    Engine::Qemu(_) => {
                        qi.0.extend(s(o.mark("VMM-INIT-OK")));
                        qd.0.extend(s(o.mark("VMM-TEST-DONE")));
                    }
                }
            }
        }
        if self.qemu.is_some() {
            init.qemu = Some(qi);
            done.qemu = Some(qd);
        }
        init.targets = vec![Target::RatioAtMost(1.0)];
        done.targets = vec![Target::RatioAtMost(1.0)];
        done.note = "the guest's last line before `reboot -f`: QEMU microvm has no reset path for \
                     this guest (no i8042), so this is the comparable 'boot to exit'"
            .into();
        exit.note = "process exit after the guest's i8042 reset".into();
        init_no_acpi.note =
            "beside 'Linux: start → VMM-INIT-OK': the cost of ACPI in the boot".into();
        self.figures.extend([init, init_no_acpi, done, exit, mark]);
    }

    fn linux_parallel(&mut self, kernel: &Path, rootfs: &Path) {
        const N: usize = 4;
        let mut booted = Figure::new(
            "linux4_booted",
            "4 Linux guests at once: reached VMM-TEST-DONE",
            "VMs",
        );
        let mut wall = Figure::new("linux4_wall", "4 Linux guests at once: wall time", "s");
        let (mut qb, mut qw) = (Samples::default(), Samples::default());
        for engine in self.engines() {
            eprintln!(
                "vmm-bench: {N} Linux guests at once under {}",
                engine.name()
            );
            let mut guests = Vec::new();
            for i in 0..N {
                match self.linux_guest_for(&engine, kernel, rootfs, &format!("par{i}"), "marker") {
                    Ok(g) => guests.push(g),
                    Err(e) => {
                        self.failures.push(e);
                        return;
                    }
                }
            }
            let stop = matches!(engine, Engine::Qemu(_)).then_some("VMM-TEST-DONE");
            let start = Instant::now();
            let handles: Vec<_> = guests
                .iter()
                .map(|g| {
                    let cmd = g.command(&engine);
                    thread::spawn(move || {
                        run::run(cmd, LINUX_TIMEOUT, &["VMM-TEST-DONE"], stop)
                            .ok()
                            .and_then(|o| o.mark("VMM-TEST-DONE"))
                    })
                })
                .collect();
            let ok = handles
                .into_iter()
                .map(|h| h.join().ok().flatten().is_some())
                .filter(|b| *b)
                .count();
            let secs = start.elapsed().as_secs_f64();
            for g in &guests {
                let _ = std::fs::remove_file(g.disk.as_deref().unwrap_or(Path::new("")));
            }
            match engine {
                Engine::Vmm(_) => {
                    booted.vmm.push(ok as f64);
                    wall.vmm.push(secs);
                }
                Engine::Qemu(_) => {
                    qb.push(ok as f64);
                    qw.push(secs);
                }
            }
        }
        if self.qemu.is_some() {
            booted.qemu = Some(qb);
            wall.qemu = Some(qw);
        }
        booted.targets = vec![Target::AtLeast(N as f64)];
        self.figures.extend([booted, wall]);
    }
}

/// The fio jobs of resources/rootfs/bench.fio: (job name, title).
const FIO_JOBS: [(&str, &str); 4] = [
    ("randread4k", "4k random read, 32 in flight"),
    ("randwrite4k", "4k random write, 32 in flight"),
    ("read1m", "1M sequential read"),
    ("write1m", "1M sequential write"),
];

/// Writes `mib` MiB of non-zero data to `path` (no holes: reads must reach the disk).
fn fill_image(path: &Path, mib: usize) -> std::io::Result<()> {
    use std::io::Write;
    let chunk: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8 | 1).collect();
    let mut f = std::fs::File::create(path)?;
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

/// The fio jobs on the host against `file`: (job, IOPS, KiB/s) per job.
fn host_fio(file: &Path, secs: u64) -> Result<Vec<(String, f64, f64)>, String> {
    let job = workspace_root().join("resources/rootfs/bench.fio");
    let out = Command::new("fio")
        .arg("--output-format=terse")
        .arg(&job)
        .env("FIO_FILE", file)
        .env("FIO_RUNTIME", secs.to_string())
        .output()
        .map_err(|e| format!("cannot run fio on the host (apt-get install fio): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fio on the host failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_fio_terse(&String::from_utf8_lossy(&out.stdout)))
}

/// fio's terse (v3) lines: field 3 the job, 7/8 read KiB/s and IOPS, 48/49 write KiB/s and IOPS.
fn parse_fio_terse(text: &str) -> Vec<(String, f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(';').collect();
            let num = |i: usize| f.get(i - 1).and_then(|v| v.parse::<f64>().ok());
            if f.len() < 50 {
                return None;
            }
            Some((f[2].to_string(), num(8)? + num(49)?, num(7)? + num(48)?))
        })
        .collect()
}

/// A network namespace for the net benchmark, with a tap (MTU 65520, 10.0.2.1/24); deleted on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    const TAP: &'static str = "vbtap0";

    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run ip (apt-get install iproute2): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {} failed (the net benchmark needs root): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn new() -> Result<NetNs, String> {
        let name = format!("vmmbench-{}", std::process::id());
        Self::ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        let n = ns.name.as_str();
        for args in [
            &["netns", "exec", n, "ip", "link", "set", "lo", "up"][..],
            &[
                "netns",
                "exec",
                n,
                "ip",
                "tuntap",
                "add",
                Self::TAP,
                "mode",
                "tap",
            ],
            &[
                "netns",
                "exec",
                n,
                "ip",
                "link",
                "set",
                Self::TAP,
                "mtu",
                "65520",
            ],
            &[
                "netns",
                "exec",
                n,
                "ip",
                "addr",
                "add",
                "10.0.2.1/24",
                "dev",
                Self::TAP,
            ],
            &["netns", "exec", n, "ip", "link", "set", Self::TAP, "up"],
        ] {
            Self::ip(args)?;
        }
        Ok(ns)
    }

    /// `iperf3 -s` inside the namespace, serving one client after another.
    fn iperf3_server(&self) -> Result<std::process::Child, String> {
        Command::new("ip")
            .args([
                "netns", "exec", &self.name, "iperf3", "-s", "-B", "10.0.2.1",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start iperf3 -s (apt-get install iperf3): {e}"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Self::ip(&["netns", "del", &self.name]);
    }
}

/// Null guests back to back on `workers` threads for `secs` seconds: (completed, failed, elapsed).
fn creation_rate(engine: &Engine, workers: usize, secs: u64) -> (usize, usize, Duration) {
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (engine, done, failed) = (engine.clone(), done.clone(), failed.clone());
            thread::spawn(move || {
                let guest = Guest::tiny(test_guests::NULL);
                while Instant::now() < deadline {
                    match run::run(guest.command(&engine), TINY_TIMEOUT, &[], None) {
                        Ok(o) if o.ok(&engine) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    (
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        start.elapsed(),
    )
}

/// `n` copies of `guest` started at once; (how many ended cleanly, wall time).
fn at_once(
    engine: &Engine,
    guest: &Guest,
    n: usize,
    timeout: Duration,
    stop: Option<&'static str>,
) -> (usize, Duration) {
    let start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (engine, cmd) = (engine.clone(), guest.command(engine));
            thread::spawn(move || run::run(cmd, timeout, &[], stop).is_ok_and(|o| o.ok(&engine)))
        })
        .collect();
    let ok = handles
        .into_iter()
        .filter_map(|h| h.join().ok())
        .filter(|b| *b)
        .count();
    (ok, start.elapsed())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let vmm = match cli.vmm.clone().map_or_else(build_vmm, Ok) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let qemu = find_qemu(&cli.qemu).map(Engine::Qemu);
    if qemu.is_none() && cli.qemu != "none" {
        eprintln!(
            "vmm-bench: {} not found; QEMU figures are n/a (apt-get install qemu-system-x86)",
            cli.qemu
        );
    }
    let scratch = std::env::temp_dir().join(format!("vmm-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        eprintln!("error: cannot create {}: {e}", scratch.display());
        return ExitCode::FAILURE;
    }
    let mut bench = Bench {
        vmm: Engine::Vmm(vmm.clone()),
        qemu,
        runs: cli.runs.unwrap_or(if cli.quick { 5 } else { 20 }).max(1),
        quick: cli.quick,
        scratch: scratch.clone(),
        figures: Vec::new(),
        failures: Vec::new(),
    };
    let wants = |g: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == g);
    let load_before = loadavg();
    let started = Instant::now();

    if wants("null") {
        bench.null_group();
    }
    if wants("exit") {
        bench.exit_group();
    }
    if wants("rss") {
        bench.rss_group();
    }
    if wants("rate") {
        bench.rate_group();
    }
    if wants("many") {
        bench.many_group();
    }
    if wants("snapshot") {
        bench.snapshot_group();
    }
    let linux_runs = cli.linux_runs.unwrap_or(if cli.quick { 0 } else { 3 });
    let linux4 = !cli.only.is_empty() && wants("linux4") || cli.only.is_empty() && !cli.quick;
    // blk, net, vsock, run and fs boot Linux too: by default in a full run, or when named with --only.
    let io: Vec<&str> = ["blk", "net", "vsock", "run", "snapshot", "fs"]
        .into_iter()
        .filter(|g| !cli.only.is_empty() && wants(g) || cli.only.is_empty() && !cli.quick)
        .collect();
    let io_runs = bench.runs.min(cli.linux_runs.unwrap_or(3)).max(1);
    // `vmm run -- true` boots: one unless --linux-runs says otherwise.
    let run_boots = cli.linux_runs.unwrap_or(1);
    // blk's device figures need no Linux guest; its fio in a Linux guest is skipped with
    // `--linux-runs 0`.
    let mut io = io;
    if io.contains(&"blk") {
        bench.blkdev_group();
        if cli.linux_runs == Some(0) {
            io.retain(|g| *g != "blk");
        }
    }
    if (wants("linux") && linux_runs > 0) || linux4 || !io.is_empty() {
        bench.linux_group(
            if wants("linux") { linux_runs } else { 0 },
            linux4,
            &io,
            io_runs,
            run_boots,
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let load_after = loadavg();
    let meta = vec![
        ("vmm", vmm.display().to_string()),
        (
            "qemu",
            bench
                .qemu
                .as_ref()
                .map_or("none".to_string(), |_| cli.qemu.clone()),
        ),
        ("runs", bench.runs.to_string()),
        ("quick", cli.quick.to_string()),
        ("loadavg_before", load_before.clone()),
        ("loadavg_after", load_after.clone()),
        (
            "cpus",
            thread::available_parallelism()
                .map_or(0, |n| n.get())
                .to_string(),
        ),
        (
            "duration_s",
            format!("{:.0}", started.elapsed().as_secs_f64()),
        ),
        ("failures", bench.failures.join("; ")),
    ];
    println!("{}", report::table(&bench.figures));
    println!(
        "load average before {load_before}, after {load_after}; {} s",
        started.elapsed().as_secs()
    );
    for f in &bench.failures {
        println!("failed: {f}");
    }
    if let Some(path) = &cli.json {
        if let Err(e) = std::fs::write(path, report::json(&meta, &bench.figures)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_terse_lines() {
        let mut read = vec!["0"; 130];
        read[0] = "3";
        read[2] = "randread4k";
        read[6] = "657";
        read[7] = "164";
        let mut write = read.clone();
        write[2] = "write1m";
        write[6] = "0";
        write[7] = "0";
        write[47] = "5651";
        write[48] = "5";
        let text = format!("{}\n{}\nnoise\n", read.join(";"), write.join(";"));
        let got = parse_fio_terse(&text);
        assert_eq!(
            got,
            vec![
                ("randread4k".to_string(), 164.0, 657.0),
                ("write1m".to_string(), 5.0, 5651.0)
            ]
        );
    }
}
