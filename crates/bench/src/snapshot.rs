//! The `snapshot` group: what saving and restoring a VM costs.
//!
//! * Tiny guests (the park guest, parked with interrupts off): `PUT /vm/snapshot` of a paused
//!   128 MiB and 1 GiB guest, the snapshot's disk space, and `vmm --restore` start → first
//!   KVM_RUN (from its `-v` line).
//! * Clones: many `vmm --restore` of one 128 MiB snapshot at once, each running; how many per
//!   second come up, and each one's PSS (its private pages plus its share of the snapshot's
//!   page cache: pages no clone wrote are shared).
//! * Linux (with the `run` guest): `vmm run --save`, then `vmm run --restore DIR -- true` end
//!   to end, beside the cold `vmm run -- true` of the `run` group.
//!
//! Beside QEMU (microvm, the same park guest), through its QMP socket: `stop`, then `migrate` to
//! `exec:cat > FILE` until `query-migrate` says completed; and `-incoming exec:cat FILE` from
//! start until `query-status` leaves `inmigrate` (the guest restored, paused: QEMU keeps the
//! source's run state).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{Figure, Samples, Target};
use crate::run::Engine;
use crate::{Bench, LINUX_TIMEOUT};

/// How long a tiny guest may take to park, or a restored one to run.
const TINY: Duration = Duration::from_secs(30);

/// A vmm child, killed on drop.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `child`'s stream line by line until one starts with `prefix`; that line.
fn wait_line(stream: impl std::io::Read, prefix: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    for line in BufReader::new(stream).lines() {
        let line = line.ok()?;
        if let Some(at) = line.find(prefix) {
            return Some(line[at..].to_string());
        }
        if Instant::now() > deadline {
            return None;
        }
    }
    None
}

/// The disk space `dir`'s files take, in bytes (holes not counted).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// `Pss:` of /proc/PID/smaps_rollup, in KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The µs of `vCPU 0: first KVM_RUN at N µs since process start`.
fn first_run_us(line: &str) -> Option<f64> {
    line.split_whitespace()
        .skip_while(|w| *w != "at")
        .nth(1)
        .and_then(|n| n.parse().ok())
}

impl Bench {
    /// Boots the park guest with `mib` MiB, pauses it and saves it to `dir`: the snapshot
    /// request's time in ms.
    fn save_parked(&self, mib: u64, dir: &Path) -> Result<f64, String> {
        let sock = self.scratch.join(format!("snap-api-{mib}.sock"));
        let _ = std::fs::remove_file(&sock);
        let mut kid = Kid(Command::new(self.vmm_path())
            .args([
                "--kernel",
                test_guests::PARK,
                "--memory",
                &format!("{mib}M"),
            ])
            .arg("--api-socket")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot spawn vmm: {e}"))?);
        let out = kid.0.stdout.take().ok_or("no stdout")?;
        wait_line(out, "parked", TINY).ok_or("the park guest did not park")?;
        let call =
            |path: &str, body: Option<&str>| match vm::api::call(&sock, "PUT", path, body, TINY) {
                Ok((200, _)) => Ok(()),
                Ok((status, answer)) => Err(format!("{path}: {status} {answer}")),
                Err(e) => Err(format!("{path}: {e}")),
            };
        call("/vm/pause", None)?;
        let body = format!("{{\"dir\":\"{}\"}}", dir.display());
        let started = Instant::now();
        call("/vm/snapshot", Some(&body))?;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    }

    /// `vmm --restore DIR -v`, running, and its start → first KVM_RUN in ms.
    fn restore(&self, dir: &Path) -> Result<(Kid, f64), String> {
        Restorer {
            vmm: self.vmm_path(),
        }
        .restore(dir)
    }

    /// QEMU: the park guest with `mib` MiB migrated to `file`; the migration's time in ms.
    fn qemu_save(&self, qemu: &Engine, mib: u32, file: &Path) -> Result<f64, String> {
        let sock = self.scratch.join(format!("qmp-save-{mib}.sock"));
        let mut cmd = qemu_park(qemu, mib, &sock);
        let mut kid = Kid(cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot spawn QEMU: {e}"))?);
        let out = kid.0.stdout.take().ok_or("no stdout")?;
        wait_line(out, "parked", TINY).ok_or("the park guest did not park under QEMU")?;
        let mut qmp = Qmp::connect(&sock)?;
        qmp.call(r#"{"execute":"stop"}"#)?;
        let started = Instant::now();
        let uri = format!("exec:cat > {}", file.display());
        qmp.call(&format!(
            r#"{{"execute":"migrate","arguments":{{"uri":"{uri}"}}}}"#
        ))?;
        loop {
            let answer = qmp.call(r#"{"execute":"query-migrate"}"#)?;
            if answer.contains(r#""status": "completed""#) {
                return Ok(started.elapsed().as_secs_f64() * 1e3);
            }
            if answer.contains(r#""status": "failed""#) || started.elapsed() > TINY {
                return Err(format!("QEMU's migration: {answer}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// QEMU: `-incoming exec:cat FILE`; start → restored (paused), in ms.
    fn qemu_restore(&self, qemu: &Engine, mib: u32, file: &Path) -> Result<f64, String> {
        let sock = self.scratch.join(format!("qmp-restore-{mib}.sock"));
        let mut cmd = qemu_park(qemu, mib, &sock);
        cmd.arg("-incoming")
            .arg(format!("exec:cat {}", file.display()));
        let started = Instant::now();
        let _kid = Kid(cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot spawn QEMU: {e}"))?);
        let mut qmp = Qmp::connect(&sock)?;
        loop {
            let answer = qmp.call(r#"{"execute":"query-status"}"#)?;
            if !answer.contains("inmigrate") {
                return Ok(started.elapsed().as_secs_f64() * 1e3);
            }
            if started.elapsed() > TINY {
                return Err(format!("QEMU's incoming migration: {answer}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub(crate) fn snapshot_group(&mut self) {
        eprintln!("vmm-bench: snapshot and restore (park guest)");
        let runs = if self.quick { 2 } else { 5 };
        for (mib, key) in [(128u64, "128m"), (1024, "1g")] {
            let mut save = Figure::new(
                &format!("snapshot_save_{key}"),
                &format!("snapshot of a paused {mib} MiB guest (PUT /vm/snapshot)"),
                "ms",
            );
            let mut size = Figure::new(
                &format!("snapshot_size_{key}"),
                &format!("snapshot of a {mib} MiB guest: disk space (zero pages are holes)"),
                "MiB",
            );
            let mut first = Figure::new(
                &format!("snapshot_restore_{key}"),
                &format!("vmm --restore ({mib} MiB): start → first KVM_RUN"),
                "ms",
            );
            let (mut qemu_save, mut qemu_size, mut qemu_first) =
                (Samples::default(), Samples::default(), Samples::default());
            for run in 0..runs {
                let dir = self.scratch.join(format!("snap-{key}-{run}"));
                match self.save_parked(mib, &dir) {
                    Ok(ms) => save.vmm.push(ms),
                    Err(e) => {
                        self.failures.push(format!("snapshot {key}: {e}"));
                        continue;
                    }
                }
                size.vmm.push(allocated(&dir) as f64 / f64::from(1 << 20));
                match self.restore(&dir) {
                    Ok((_kid, ms)) => first.vmm.push(ms),
                    Err(e) => self.failures.push(format!("restore {key}: {e}")),
                }
                let _ = std::fs::remove_dir_all(&dir);
                if let Some(qemu) = self.qemu.clone() {
                    let file = self.scratch.join(format!("qemu-{key}.mig"));
                    let mib = mib as u32;
                    match self.qemu_save(&qemu, mib, &file) {
                        Ok(ms) => {
                            qemu_save.push(ms);
                            qemu_size.push(allocated_file(&file) as f64 / f64::from(1 << 20));
                            match self.qemu_restore(&qemu, mib, &file) {
                                Ok(ms) => qemu_first.push(ms),
                                Err(e) => self.failures.push(format!("qemu restore {key}: {e}")),
                            }
                        }
                        Err(e) => self.failures.push(format!("qemu save {key}: {e}")),
                    }
                    let _ = std::fs::remove_file(&file);
                }
            }
            if self.qemu.is_some() {
                save.qemu = Some(qemu_save);
                size.qemu = Some(qemu_size);
                first.qemu = Some(qemu_first);
            }
            if mib == 128 {
                first.targets = vec![Target::AtMost(5.0)];
            }
            first.note = "vmm: the `-v` line `first KVM_RUN at N µs since process start`; \
                          QEMU: start → `query-status` leaves inmigrate (restored, paused)"
                .into();
            save.note = "QEMU: `stop`, then `migrate` to exec:cat > FILE until completed".into();
            self.figures.extend([save, size, first]);
        }
        self.clones(if self.quick { 20 } else { 100 });
    }

    /// `count` clones of one 128 MiB snapshot at once.
    fn clones(&mut self, count: usize) {
        eprintln!("vmm-bench: {count} clones of one 128 MiB snapshot at once");
        let dir = self.scratch.join("snap-clones");
        if let Err(e) = self.save_parked(128, &dir) {
            self.failures.push(format!("clones: {e}"));
            return;
        }
        let mut rate = Figure::new(
            "snapshot_clones_per_s",
            &format!(
                "clones restored per second ({count} started at once, each to its first KVM_RUN)"
            ),
            "1/s",
        );
        let mut pss = Figure::new(
            "snapshot_clone_pss",
            &format!("PSS of each of {count} clones of a 128 MiB guest, all running"),
            "MiB",
        );
        let mut running = Figure::new(
            "snapshot_clones_running",
            &format!("clones of a 128 MiB guest running at once (of {count} started)"),
            "VMs",
        );
        let started = Instant::now();
        let mut kids = Vec::with_capacity(count);
        let spawned: Vec<_> = (0..count)
            .map(|_| {
                let dir = dir.clone();
                let vmm = self.vmm_path();
                std::thread::spawn(move || {
                    let bench = Restorer { vmm };
                    bench.restore(&dir)
                })
            })
            .collect();
        for handle in spawned {
            match handle.join() {
                Ok(Ok((kid, _))) => kids.push(kid),
                Ok(Err(e)) => self.failures.push(format!("clone: {e}")),
                Err(_) => self.failures.push("clone: thread panicked".into()),
            }
        }
        let took = started.elapsed().as_secs_f64();
        rate.vmm.push(kids.len() as f64 / took);
        let mut alive = 0;
        for kid in &mut kids {
            if matches!(kid.0.try_wait(), Ok(None)) {
                alive += 1;
                if let Some(kib) = pss_kib(kid.0.id()) {
                    pss.vmm.push(kib as f64 / 1024.0);
                }
            }
        }
        running.vmm.push(f64::from(alive));
        running.targets = vec![Target::AtLeast(count as f64)];
        if count >= 100 {
            pss.note = "/proc/PID/smaps_rollup; the park guest touches few pages".into();
        }
        self.figures.extend([rate, pss, running]);
        drop(kids);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `vmm run --save`, then `vmm run --restore DIR -- true` `runs` times (ms each, end to end).
    pub(crate) fn run_restore_group(&mut self, kernel: &Path, rootfs: &Path, runs: usize) {
        eprintln!("vmm-bench: vmm run --save, then vmm run --restore -- true");
        let Some(disk) = self.rootfs_copy(rootfs, "run-restore") else {
            return;
        };
        let dir = self.scratch.join("snap-run");
        let saved = Command::new(self.vmm_path())
            .arg("run")
            .arg("--kernel")
            .arg(kernel)
            .arg("--disk")
            .arg(&disk)
            .arg("--save")
            .arg(&dir)
            .stdin(Stdio::null())
            .output();
        match saved {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr).into_owned();
                self.failures
                    .push(format!("vmm run --save: {}: {err}", o.status));
                return;
            }
            Err(e) => {
                self.failures.push(format!("vmm run --save: {e}"));
                return;
            }
        }
        let mut total = Figure::new(
            "run_restore_start_to_exit",
            "vmm run --restore DIR -- true: start → exit",
            "ms",
        );
        let mut ready = Figure::new(
            "run_restore_ready",
            "vmm run --restore DIR -- true: start → the agent answers a hello",
            "ms",
        );
        for _ in 0..runs.max(1) {
            let started = Instant::now();
            let out = Command::new(self.vmm_path())
                .args(["run", "-v", "--restore"])
                .arg(&dir)
                .args(["--", "true"])
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() && started.elapsed() < LINUX_TIMEOUT => {
                    total.vmm.push(started.elapsed().as_secs_f64() * 1e3);
                    let err = String::from_utf8_lossy(&o.stderr);
                    let us = err
                        .lines()
                        .find_map(|l| l.split("agent ready ").nth(1))
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|n| n.parse::<f64>().ok());
                    if let Some(us) = us {
                        ready.vmm.push(us / 1e3);
                    }
                }
                Ok(o) => self.failures.push(format!(
                    "vmm run --restore: {}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                )),
                Err(e) => self.failures.push(format!("vmm run --restore: {e}")),
            }
        }
        total.targets = vec![Target::AtMost(50.0)];
        total.note = "most of it the guest's own fork and exec of `true` (about 2 s per process \
                      on this host's kvm_pvm)"
            .into();
        ready.note = "the `-v` line `restored guest's agent ready N µs after process start`; \
                      the rest is the guest's own fork and exec of `true`"
            .into();
        self.figures.push(ready);
        self.figures.push(total);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&disk);
    }
}

/// QEMU running the park guest with `mib` MiB and its QMP socket at `sock`.
fn qemu_park(qemu: &Engine, mib: u32, sock: &Path) -> Command {
    let _ = std::fs::remove_file(sock);
    let mut guest = crate::run::Guest::tiny(test_guests::PARK);
    guest.memory_mib = mib;
    let mut cmd = guest.command(qemu);
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()));
    cmd
}

/// The disk space one file takes, in bytes.
fn allocated_file(file: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).map_or(0, |m| m.blocks() * 512)
}

/// A QMP connection, capabilities negotiated; answers read a line at a time, events skipped.
struct Qmp {
    out: UnixStream,
    lines: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(sock: &Path) -> Result<Qmp, String> {
        let deadline = Instant::now() + TINY;
        let out = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(format!("QMP at {}: {e}", sock.display())),
            }
        };
        out.set_read_timeout(Some(TINY))
            .map_err(|e| e.to_string())?;
        let lines = BufReader::new(out.try_clone().map_err(|e| e.to_string())?);
        let mut qmp = Qmp { out, lines };
        qmp.line()?; // the greeting
        qmp.call(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(qmp)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.lines.read_line(&mut line) {
            Ok(0) => Err("QMP closed".into()),
            Ok(_) => Ok(line),
            Err(e) => Err(format!("QMP: {e}")),
        }
    }

    /// Sends `command` and returns its answer (`return` or `error`).
    fn call(&mut self, command: &str) -> Result<String, String> {
        writeln!(self.out, "{command}").map_err(|e| format!("QMP: {e}"))?;
        loop {
            let line = self.line()?;
            if line.contains(r#""error""#) {
                return Err(format!("QMP {command}: {line}"));
            }
            if line.contains(r#""return""#) {
                return Ok(line);
            }
        }
    }
}

/// Restores a snapshot, on any thread (clones start from threads of their own).
struct Restorer {
    vmm: PathBuf,
}

impl Restorer {
    fn restore(&self, dir: &Path) -> Result<(Kid, f64), String> {
        let mut kid = Kid(Command::new(&self.vmm)
            .arg("--restore")
            .arg(dir)
            .args(["--serial", "off", "-v"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot spawn vmm --restore: {e}"))?);
        let err = kid.0.stderr.take().ok_or("no stderr")?;
        let line = wait_line(err, "first KVM_RUN at", TINY).ok_or("no first KVM_RUN line")?;
        let us = first_run_us(&line).ok_or_else(|| format!("cannot read '{line}'"))?;
        Ok((kid, us / 1e3))
    }
}
