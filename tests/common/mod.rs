//! The integration-test harness: find or build guest artifacts, spawn `vmm`, read its console, wait with a
//! time-out. A guest that hangs fails its test; it never blocks the suite.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The `vmm` binary under test.
pub fn vmm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmm")
}

/// True when KVM tests should run. Without /dev/kvm they fail loudly, unless VMM_SKIP_KVM_TESTS=1.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("VMM_SKIP_KVM_TESTS").as_deref() == Ok("1") {
                eprintln!("skipping: /dev/kvm is not usable ({e}) and VMM_SKIP_KVM_TESTS=1");
                false
            } else {
                panic!(
                    "/dev/kvm is not usable ({e}): this test boots a real guest on KVM. \
                     Run on a host with KVM, or set VMM_SKIP_KVM_TESTS=1 to skip KVM tests explicitly."
                );
            }
        }
    }
}

/// Skips (returns from) the calling test when KVM is missing and skipping was asked for.
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !common::kvm_available() {
            return;
        }
    };
}

/// What a finished `vmm` run left behind.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// `key=value` lines of a tiny guest's report (the last value wins).
    pub fn facts(&self) -> HashMap<String, String> {
        let mut map = HashMap::new();
        for line in self.stdout.lines() {
            let line = line.trim_end_matches('\r');
            if let Some((k, v)) = line.split_once('=') {
                map.insert(k.to_string(), v.to_string());
            }
        }
        map
    }

    /// All values of a repeated key, in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .collect()
    }

    /// The value of `CHECK key=value` lines from the Linux guest's init.
    pub fn check(&self, key: &str) -> Option<String> {
        self.stdout.lines().rev().find_map(|l| {
            l.trim_end_matches('\r')
                .strip_prefix("CHECK ")
                .and_then(|rest| rest.split_once('='))
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
    }

    /// Panics with the whole run unless the init printed `CHECK key=want`.
    pub fn expect_check(&self, key: &str, want: &str) {
        let got = self.check(key);
        self.expect(
            got.as_deref() == Some(want),
            &format!("CHECK {key}: expected {want}, got {got:?}"),
        );
    }

    /// Panics with the whole run if the condition does not hold.
    pub fn expect(&self, ok: bool, what: &str) {
        assert!(ok, "{what}\n{self}");
    }

    pub fn expect_success(&self) {
        self.expect(self.code == Some(0), "vmm did not exit 0");
    }

    /// A tiny guest's report, once its run ended well: vmm exited 0 through the guest's i8042
    /// reset (not its triple-fault fallback) after the guest printed `done`.
    pub fn finished_report(&self) -> test_guests::Report {
        self.expect_success();
        let r = test_guests::Report::parse(&self.stdout);
        self.expect(r.done, "guest did not finish");
        self.expect(
            !self.stdout.contains("i8042_reset=ignored"),
            "the VMM ignored the i8042 reset",
        );
        r
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = |s: &str| {
            let start = s.len().saturating_sub(6000);
            let start = (start..s.len())
                .find(|i| s.is_char_boundary(*i))
                .unwrap_or(s.len());
            s[start..].to_string()
        };
        write!(
            f,
            "--- exit code {:?} after {:.2?}\n--- stdout (tail):\n{}\n--- stderr (tail):\n{}",
            self.code,
            self.elapsed,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

pub mod netns;

/// Connects to a vsock device's socket and asks for guest port `port` (`CONNECT <port>`): the
/// `OK <host port>` line, or `None` when the device closed the connection instead (the guest
/// refused). Reads wait at most `timeout`.
pub fn vsock_connect(
    sock: &Path,
    port: u32,
    timeout: Duration,
) -> (std::os::unix::net::UnixStream, Option<String>) {
    let mut c = std::os::unix::net::UnixStream::connect(sock).expect("connect to the vsock socket");
    c.set_read_timeout(Some(timeout)).expect("timeout");
    c.write_all(format!("CONNECT {port}\n").as_bytes())
        .expect("write CONNECT");
    // Byte by byte: nothing after the line may be taken here.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match c.read(&mut b) {
            Ok(0) => return (c, None),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (c, None),
            Err(e) => panic!("reading the answer to CONNECT {port}: {e}"),
        }
    }
    (c, Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Runs `vmm ARGS` with stdin from /dev/null, kills it after `timeout`.
pub fn run_vmm(args: &[&str], timeout: Duration) -> Run {
    run_command(vmm_command(args), timeout)
}

/// Runs `cmd` (vmm, or a wrapper that runs it) with stdin from /dev/null; kills it after `timeout`,
/// and then fails the test with everything it printed.
pub fn run_command(cmd: Command, timeout: Duration) -> Run {
    drive(cmd, None, timeout)
}

/// `vmm ARGS`, not started yet.
pub fn vmm_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(vmm_bin());
    cmd.args(args);
    cmd
}

/// Runs `vmm ARGS` as a person at the console would: each time the output contains the next `wait_for`
/// text (counted from where the previous one was found), types its `send` text. Kills vmm after `timeout`.
pub fn run_vmm_interactive(args: &[&str], script: &[(&str, &str)], timeout: Duration) -> Run {
    drive(vmm_command(args), Some(script), timeout)
}

/// Spawns vmm, feeds the script (if any) into its stdin, and waits for it to exit or time out, in which
/// case it is killed and the test fails with everything it printed.
fn drive(mut cmd: Command, script: Option<&[(&str, &str)]>, timeout: Duration) -> Run {
    let mut child = cmd
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let mut input = child.stdin.take();
    let script = script.unwrap_or_default();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut out = child.stdout.take().expect("stdout");
    let pump = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut all = Vec::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = tx.send(buf[..n].to_vec());
        }
        all
    });
    let stderr = reader(child.stderr.take().expect("stderr"));
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut from = 0;
    let mut step = 0;
    let code = loop {
        while let Ok(chunk) = rx.try_recv() {
            seen.extend_from_slice(&chunk);
        }
        if let (Some((wait_for, send)), Some(stdin)) = (script.get(step), input.as_mut()) {
            let text = String::from_utf8_lossy(&seen[from..]).into_owned();
            if let Some(pos) = text.find(wait_for) {
                from += text[..pos + wait_for.len()].len();
                stdin.write_all(send.as_bytes()).expect("type into vmm");
                stdin.flush().expect("flush stdin");
                step += 1;
            }
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status.code());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    drop(input);
    let run = Run {
        code: code.flatten(),
        stdout: String::from_utf8_lossy(&pump.join().unwrap_or_default()).into_owned(),
        stderr: stderr.recv().unwrap_or_default(),
        elapsed: start.elapsed(),
    };
    if code.is_none() {
        panic!("vmm did not exit within {timeout:?} (script step {step}); killed it\n{run}");
    }
    run
}

fn reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// True when the tests that need root (`--jail`, network namespaces) should run: as root.
/// Otherwise they fail, unless VMM_SKIP_JAIL_TESTS=1 is set.
pub fn root_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("VMM_SKIP_JAIL_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: this test needs root and VMM_SKIP_JAIL_TESTS=1");
        return false;
    }
    panic!(
        "this test needs root (namespaces, cgroups, pivot_root): run it as root, or set \
         VMM_SKIP_JAIL_TESTS=1 to skip it explicitly"
    );
}

/// A `vmm` left running (stdin a pipe held open, so the serial port has an idle input): its
/// stdout lines arrive on a channel, its stderr is collected. Stopped on drop.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Running {
    pub fn start(args: &[&str]) -> Running {
        Running::spawn(vmm_command(args))
    }

    /// As [`Running::start`], for a command the caller prepared (descriptors, environment).
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = Some(thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }));
        Running {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for a stdout line equal to `want`; if it does not come within `timeout`, stops vmm
    /// and panics with its stderr.
    pub fn wait_for_line(&mut self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim_end() == want => return,
                Ok(_) => {}
                Err(e) => panic!(
                    "vmm never printed '{want}' within {timeout:?} ({e}); stderr:\n{}",
                    self.stop()
                ),
            }
        }
    }

    /// Whether vmm is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The jailed VMM: the only child of the `--jail` supervisor we started.
    pub fn jailed_pid(&self) -> u32 {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .expect("read the supervisor's children");
        let pids: Vec<u32> = children
            .split_whitespace()
            .map(|p| p.parse().expect("pid"))
            .collect();
        assert_eq!(
            pids.len(),
            1,
            "the supervisor should have one child: {pids:?}"
        );
        pids[0]
    }

    /// Sends `signal` to vmm and waits (up to `timeout`) for it to exit; returns its exit code.
    pub fn signal_and_wait(&mut self, signal: libc::c_int, timeout: Duration) -> Option<i32> {
        if self.is_running() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
        let start = Instant::now();
        loop {
            match self.child.try_wait().expect("wait") {
                Some(status) => return status.code(),
                None if start.elapsed() > timeout => {
                    panic!("vmm did not exit within {timeout:?} of signal {signal}")
                }
                None => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Stops vmm (SIGTERM, so a `--jail` supervisor removes its cgroup; the first presses the
    /// guest's power button, a second one every 100 ms stops the VM; SIGKILL if that does not do
    /// within 30 s) and returns what it wrote on stderr.
    pub fn stop(&mut self) -> String {
        let start = Instant::now();
        let mut last_signal: Option<Instant> = None;
        while self.is_running() && start.elapsed() < Duration::from_secs(30) {
            if last_signal.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
                // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
                unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
                last_signal = Some(Instant::now());
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `vmm ctl --api-socket SOCK ARGS…`: (exit code, stdout, stderr).
pub fn ctl(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(vmm_bin())
        .arg("ctl")
        .arg("--api-socket")
        .arg(sock)
        .args(args)
        .output()
        .expect("run vmm ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "vmm-test-{name}-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a file and returns its path as a String.
    pub fn file(&self, name: &str, data: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, data).expect("write scratch file");
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Path as &str for argument lists.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The Linux test guest, built by resources/ (or taken from its cache).
pub struct LinuxGuest {
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    pub rootfs: PathBuf,
    pub initramfs: PathBuf,
}

/// Builds (or finds in the cache) the Linux guest. Serialised: the scripts lock, but one call at a time
/// keeps the output readable.
pub fn linux_guest() -> LinuxGuest {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources");
    let mut paths = Vec::new();
    for script in ["build-kernel.sh", "build-rootfs.sh"] {
        let out = Command::new(root.join(script))
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run resources/{script}: {e}"));
        assert!(
            out.status.success(),
            "resources/{script} failed ({}); see its messages above",
            out.status
        );
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
            .unwrap_or_else(|| panic!("the resources scripts did not report {name}: {paths:?}"))
    };
    // The plain cpio beside the gzip'd one unpacks several times faster on hosts without hardware
    // virtualization, where the guest kernel's inflate is slow.
    let initramfs = find("initramfs.cpio.gz").with_extension("");
    assert!(initramfs.exists(), "{} is missing", initramfs.display());
    LinuxGuest {
        vmlinux: find("vmlinux"),
        bzimage: find("bzImage"),
        rootfs: find("rootfs.ext4"),
        initramfs,
    }
}

/// Runs a host tool that a test needs and checks it succeeded; a missing tool fails the test
/// saying which Debian package has it.
pub fn tool(name: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} not found ({e}): this test needs it (Debian: apt-get install qemu-utils e2fsprogs)")
    });
    assert!(
        out.status.success(),
        "{name} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-img ARGS`, which must succeed.
pub fn qemu_img(args: &[&str]) -> std::process::Output {
    tool("qemu-img", args)
}

/// `qemu-img check` finds no corruption (exit 0; 3 is leaked clusters only, which a kill may
/// leave and `qemu-img check -r leaks` reclaims).
pub fn qemu_img_check(path: &str) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", path])
        .output()
        .expect("qemu-img not found: this test needs it (apt-get install qemu-utils)");
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "qemu-img check {path}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img create -f qcow2 -b BACKING -F BACKING_FORMAT OVERLAY`: a qcow2 overlay (a relative
/// `backing` is relative to the overlay's directory, as QEMU reads it).
pub fn qcow2_overlay(backing: &str, backing_format: &str, overlay: &str) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        backing,
        "-F",
        backing_format,
        overlay,
    ]);
}

/// `Name:\tvalue` from /proc/PID/status.
pub fn status_field(pid: u32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}
