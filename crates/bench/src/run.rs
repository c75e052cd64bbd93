//! Spawning one VMM process and timing it from the outside.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Which VMM runs a guest.
#[derive(Clone, Debug)]
pub enum Engine {
    /// Our `vmm` binary.
    Vmm(PathBuf),
    /// `qemu-system-x86_64 -M microvm`.
    Qemu(PathBuf),
}

impl Engine {
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Vmm(_) => "vmm",
            Engine::Qemu(_) => "qemu",
        }
    }
}

/// Kernel parameters this host (KVM-PVM, CPUID not virtualized) needs; vmm adds them by itself
/// (DESIGN.md, "Host quirks"), QEMU is given them as resources/boot-qemu.sh does.
pub const QEMU_HOST_PARAMS: &str = "noxsave clearcpuid=151,158,306,288,308,145,298,534,515,514";

/// QEMU microvm's first virtio-mmio transport.
pub const QEMU_VIRTIO_MMIO_BASE: u64 = 0xfeb0_0000;
/// vmm's first virtio-mmio slot.
pub const VMM_VIRTIO_MMIO_BASE: u64 = 0xd000_0000;

/// One guest to boot.
#[derive(Clone, Debug, Default)]
pub struct Guest {
    pub kernel: PathBuf,
    /// Appended to the command line (vmm: `--cmdline`; QEMU: `-append`).
    pub cmdline: Option<String>,
    pub disk: Option<PathBuf>,
    pub memory_mib: u32,
    /// vmm only: `--boot-timer`.
    pub boot_timer: bool,
    /// vmm only: `-v` (the start-up trace).
    pub verbose: bool,
    /// More disks after `disk` (/dev/vdb, …).
    pub extra_disks: Vec<PathBuf>,
    /// A virtio-net NIC on this (existing) host tap.
    pub tap: Option<String>,
    /// Run the VMM inside this network namespace (`ip netns exec NS …`).
    pub netns: Option<String>,
    /// vmm only: more options (e.g. `--irqchip kernel`).
    pub vmm_args: Vec<String>,
    /// QEMU only: more options (e.g. a vhost-user device).
    pub qemu_args: Vec<String>,
}

impl Guest {
    pub fn tiny(kernel: &str) -> Guest {
        Guest {
            kernel: PathBuf::from(kernel),
            memory_mib: 128,
            ..Guest::default()
        }
    }

    /// The command that boots this guest under `engine`.
    pub fn command(&self, engine: &Engine) -> Command {
        let new = |bin: &PathBuf| match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        match engine {
            Engine::Vmm(bin) => {
                let mut c = new(bin);
                c.arg("--kernel").arg(&self.kernel);
                c.arg("--memory").arg(format!("{}M", self.memory_mib));
                if let Some(cmdline) = &self.cmdline {
                    c.arg("--cmdline").arg(cmdline);
                }
                for disk in self.disk.iter().chain(&self.extra_disks) {
                    c.arg("--disk").arg(disk);
                }
                if let Some(tap) = &self.tap {
                    c.arg("--net").arg(format!("tap={tap}"));
                }
                if self.boot_timer {
                    c.arg("--boot-timer");
                }
                if self.verbose {
                    c.arg("-v");
                }
                c.args(&self.vmm_args);
                c
            }
            Engine::Qemu(bin) => {
                let mut c = new(bin);
                c.args([
                    "-M",
                    "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off",
                    "-enable-kvm",
                    // Without -arch-capabilities, QEMU 7.2 on AMD hosts aborts writing MSR 0x10a,
                    // which KVM refuses there; vmm does not set that MSR either.
                    "-cpu",
                    "host,-arch-capabilities",
                    "-smp",
                    "1",
                    "-nodefaults",
                    "-no-user-config",
                    "-nographic",
                    "-no-reboot",
                    "-display",
                    "none",
                    "-serial",
                    "stdio",
                    // The tiny guests end QEMU here (it has no i8042).
                    "-device",
                    "isa-debug-exit,iobase=0xf4,iosize=4",
                ]);
                c.arg("-m").arg(self.memory_mib.to_string());
                c.arg("-kernel").arg(&self.kernel);
                for (i, disk) in self.disk.iter().chain(&self.extra_disks).enumerate() {
                    c.arg("-drive").arg(format!(
                        "id=d{i},file={},format=raw,if=none",
                        disk.display()
                    ));
                    c.args(["-device", &format!("virtio-blk-device,drive=d{i}")]);
                }
                if let Some(tap) = &self.tap {
                    c.arg("-netdev")
                        .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
                    c.args(["-device", "virtio-net-device,netdev=n0"]);
                }
                if let Some(cmdline) = &self.cmdline {
                    c.arg("-append").arg(cmdline);
                }
                c.args(&self.qemu_args);
                c
            }
        }
    }
}

/// What one run left behind.
#[derive(Debug)]
pub struct Outcome {
    /// Spawn to reaped exit.
    pub elapsed: Duration,
    /// `None` when it was killed at the time-out.
    pub status: Option<ExitStatus>,
    /// Killed on purpose when the `stop_at` line appeared.
    pub stopped_at_marker: bool,
    pub stderr: String,
    /// The first time (since spawn) each watched marker appeared on the console.
    pub marks: Vec<(String, Duration)>,
    /// `CHECK key=value` lines of the console (when watching it).
    pub checks: Vec<(String, String)>,
}

impl Outcome {
    /// The number of a `CHECK key=value` line, if the guest printed one.
    pub fn check(&self, key: &str) -> Option<f64> {
        self.checks
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
    }

    pub fn mark(&self, marker: &str) -> Option<Duration> {
        self.marks
            .iter()
            .find(|(m, _)| m == marker)
            .map(|(_, d)| *d)
    }

    /// A clean end: vmm exits 0; QEMU exits 0 (triple fault with -no-reboot) or 1
    /// (isa-debug-exit with value 0), or was stopped at its marker.
    pub fn ok(&self, engine: &Engine) -> bool {
        if self.stopped_at_marker {
            return true;
        }
        matches!(
            (engine, self.status.and_then(|s| s.code())),
            (Engine::Vmm(_), Some(0)) | (Engine::Qemu(_), Some(0 | 1))
        )
    }

    /// A `µs` number logged by vmm on stderr after `prefix`, e.g. "boot-timer: ".
    pub fn stderr_micros(&self, prefix: &str) -> Option<f64> {
        self.stderr.lines().find_map(|l| {
            let rest = &l[l.find(prefix)? + prefix.len()..];
            let num: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            num.parse::<f64>().ok()
        })
    }
}

fn kill(pid: u32, sig: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Runs `cmd` to its end (or `timeout`), timing spawn → exit. Console lines containing one of
/// `watch` are timestamped; when a line contains `stop_at` the process is sent SIGKILL (a SIGTERM
/// would ask vmm's guest to power off and wait for it).
pub fn run(
    mut cmd: Command,
    timeout: Duration,
    watch: &[&str],
    stop_at: Option<&str>,
) -> std::io::Result<Outcome> {
    let watching = !watch.is_empty() || stop_at.is_some();
    cmd.stdin(Stdio::null())
        .stdout(if watching {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id();

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(timeout) {
            kill(pid, libc::SIGKILL);
            return true;
        }
        false
    });

    let stderr = child.stderr.take().map(|mut e| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let watch: Vec<String> = watch.iter().map(|s| s.to_string()).collect();
    let stop_at = stop_at.map(str::to_string);
    let stdout = child.stdout.take().map(|out| {
        thread::spawn(move || {
            let mut marks: Vec<(String, Duration)> = Vec::new();
            let mut checks: Vec<(String, String)> = Vec::new();
            let mut stopped = false;
            let mut reader = BufReader::new(out);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let now = start.elapsed();
                let text = String::from_utf8_lossy(&line);
                if let Some((k, v)) = text
                    .find("CHECK ")
                    .and_then(|i| text[i + 6..].trim_end().split_once('='))
                {
                    checks.push((k.to_string(), v.to_string()));
                }
                for m in &watch {
                    if text.contains(m.as_str()) && !marks.iter().any(|(k, _)| k == m) {
                        marks.push((m.clone(), now));
                    }
                }
                if let Some(stop) = &stop_at {
                    if !stopped && text.contains(stop.as_str()) {
                        stopped = true;
                        kill(pid, libc::SIGKILL);
                    }
                }
                line.clear();
            }
            (marks, checks, stopped)
        })
    });

    let status = child.wait()?;
    let elapsed = start.elapsed();
    let _ = stop_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let (marks, checks, stopped_at_marker) = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    Ok(Outcome {
        elapsed,
        status: (!timed_out).then_some(status),
        stopped_at_marker,
        stderr,
        marks,
        checks,
    })
}

/// Memory of a running VMM process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// Rss of the guest RAM mapping (the largest mapping of at least the guest's size), KiB.
    pub guest_rss_kib: u64,
}

/// Reads VmRSS and the guest RAM mapping's Rss of process `pid`.
pub fn memory(pid: u32, guest_bytes: u64) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    // (size KiB, rss KiB) of every mapping.
    let mut maps: Vec<(u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let field = |name: &str| -> Option<u64> {
            line.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        };
        if let Some(size) = field("Size:") {
            maps.push((size, 0));
        } else if let (Some(rss), Some(last)) = (field("Rss:"), maps.last_mut()) {
            last.1 = rss;
        }
    }
    let guest_rss_kib = maps
        .iter()
        .filter(|(size, _)| *size >= guest_bytes / 1024)
        .max_by_key(|(size, _)| *size)
        .map(|(_, rss)| *rss)?;
    Some(Memory {
        rss_kib,
        guest_rss_kib,
    })
}

/// Boots `guest`, waits for `ready` on its console, lets it settle, reads its memory, kills it.
pub fn parked_memory(
    engine: &Engine,
    guest: &Guest,
    ready: &str,
    timeout: Duration,
) -> std::io::Result<Option<Memory>> {
    let mut cmd = guest.command(engine);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let out = child.stdout.take();
    let ready = ready.to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        if let Some(out) = out {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains(&ready) {
                    let _ = tx.send(());
                }
            }
        }
    });
    let result = match rx.recv_timeout(timeout) {
        Ok(()) => {
            thread::sleep(Duration::from_millis(300));
            memory(pid, u64::from(guest.memory_mib) << 20)
        }
        Err(_) => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(result)
}
