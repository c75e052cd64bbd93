//! The groups that drive a Linux guest through vmm's agent (`vmm run`, crates/sandbox):
//!
//! * `vsock`: virtio-vsock throughput both ways and a small message's round trip, beside
//!   virtio-net TCP in the same guest, all moved by the rootfs's `tcpblast` (sink /dev/null,
//!   source /dev/zero, 1 MiB system calls, the same way for both transports). One boot of
//!   `vmm run -- cat` on a tap in the bench's network namespace; each guest side is one
//!   `Agent::output` while the main command waits on its stdin.
//! * `run`: `vmm run -- true` end to end, split at the lines vmm logs with `-v`, and what vmm adds
//!   beyond the guest's own boot: start → first KVM_RUN (which holds the in-memory initramfs's
//!   build) and the readiness handshake; and the RSS beyond guest RAM with a vsock device and the
//!   agent's initramfs.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sandbox::{Agent, Exec};

use crate::report::{Figure, Samples, Target};
use crate::run::{self, Engine};
use crate::{Bench, NetNs, LINUX_TIMEOUT};

/// The guest's address on the bench's tap, and the host's.
const GUEST_IP: &str = "10.0.2.15";
const HOST_IP: &str = "10.0.2.1";
/// The guest's CID (`--vsock cid=`); the host is CID 2.
const GUEST_CID: u32 = 3;
/// Ports, one per measurement (a port's listener is gone before the next starts, but a fresh
/// one spares TIME_WAIT questions).
const PORT_TCP_IN: u16 = 5001;
const PORT_TCP_OUT: u16 = 5002;
const PORT_VSOCK_IN: u32 = 5003;
const PORT_VSOCK_OUT: u32 = 5004;
const PORT_VSOCK_ECHO: u32 = 5005;
const PORT_TCP_ECHO: u16 = 5006;
/// The small message of the round-trip figures.
const MESSAGE: usize = 64;
/// How long a guest program (or the host side waiting for it) may take: a process spawn alone
/// takes about 2 s in the development host's guest.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long after the agent's hello the RSS is read (as the rss group waits after `parked`).
const SETTLE: Duration = Duration::from_millis(300);

/// A number from the environment, or `default`.
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The number right after `prefix` in `line`, e.g. "handshake " in "…; handshake 812 µs …".
fn number_after(line: &str, prefix: &str) -> Option<f64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

/// A vmm process whose stderr lines are timestamped (since spawn) as they arrive.
struct Live {
    child: Child,
    start: Instant,
    lines: Arc<Mutex<Vec<(Duration, String)>>>,
    reader: Option<JoinHandle<()>>,
    stdin: Option<ChildStdin>,
}

impl Live {
    /// Spawns `cmd`; its stdin is a pipe kept open until [`Live::finish`] when `keep_stdin`.
    fn spawn(mut cmd: Command, keep_stdin: bool) -> io::Result<Live> {
        cmd.stdin(if keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stderr.take().map(|err| {
            let lines = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let at = start.elapsed();
                    if let Ok(mut l) = lines.lock() {
                        l.push((at, line));
                    }
                }
            })
        });
        let stdin = child.stdin.take();
        Ok(Live {
            child,
            start,
            lines,
            reader,
            stdin,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stderr line so far that contains `needle`, with its arrival time.
    fn line(&self, needle: &str) -> Option<(Duration, String)> {
        let lines = self.lines.lock().ok()?;
        lines.iter().find(|(_, l)| l.contains(needle)).cloned()
    }

    /// The last stderr lines, for a failure's message.
    fn tail(&self) -> String {
        let Ok(lines) = self.lines.lock() else {
            return String::new();
        };
        let n = lines.len().saturating_sub(3);
        lines[n..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Waits at most `timeout` for a stderr line containing `needle`; `None` when vmm ended (or
    /// the time ran out) first.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> Option<(Duration, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.line(needle) {
                return Some(l);
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return self.line(needle);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Closes vmm's stdin and waits at most `timeout` for its exit (then kills it): its status
    /// (`None` when killed) and spawn → reaped exit, to the millisecond.
    fn finish(&mut self, timeout: Duration) -> (Option<ExitStatus>, Duration) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let result = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break (Some(status), self.start.elapsed()),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break (None, self.start.elapsed());
                }
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        result
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A stream the host side can half-close.
trait HalfClose: Read + Write {
    fn close_write(&self) -> io::Result<()>;
}

impl HalfClose for TcpStream {
    fn close_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl HalfClose for UnixStream {
    fn close_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / f64::from(1u32 << 20) / took.as_secs_f64().max(1e-9)
}

/// Sends `bytes` bytes, half-closes and waits for the peer's close: MiB/s from the first write
/// to that close (every byte taken by the guest's program).
fn send_bytes(s: &mut dyn HalfClose, bytes: u64) -> Result<f64, String> {
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])
            .map_err(|e| format!("sending to the guest: {e}"))?;
        left -= n as u64;
    }
    s.close_write()
        .map_err(|e| format!("half-closing towards the guest: {e}"))?;
    let mut sink = [0u8; 4096];
    while s
        .read(&mut sink)
        .map_err(|e| format!("waiting for the guest's close: {e}"))?
        > 0
    {}
    Ok(mib_per_s(bytes, start.elapsed()))
}

/// Reads to the end: MiB/s from the connection's acceptance to its end; the byte count must be
/// `bytes`.
fn receive_bytes(s: &mut dyn HalfClose, bytes: u64, start: Instant) -> Result<f64, String> {
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receiving from the guest: {e}")),
        }
    }
    let took = start.elapsed();
    if got != bytes {
        return Err(format!("received {got} bytes of {bytes}"));
    }
    Ok(mib_per_s(bytes, took))
}

/// `n` round trips of a [`MESSAGE`]-byte message through the guest's echo: µs each.
fn round_trips(s: &mut dyn HalfClose, n: usize) -> Result<Vec<f64>, String> {
    let out = [0x42u8; MESSAGE];
    let mut back = [0u8; MESSAGE];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&out).map_err(|e| format!("echo: {e}"))?;
        s.read_exact(&mut back).map_err(|e| format!("echo: {e}"))?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _ = s.close_write();
    let mut rest = [0u8; 64];
    while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
    Ok(times)
}

/// Connects to the guest's TCP `port`, retrying until its program listens.
fn tcp_connect(port: u16) -> Result<TcpStream, String> {
    let addr: SocketAddr = format!("{GUEST_IP}:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => return Err(format!("connect {addr}: {e}")),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Connects to the guest's vsock `port` through vmm's socket, retrying until its program listens.
fn vsock_connect(socket: &Path, port: u32) -> Result<UnixStream, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match sandbox::vsock::connect(socket, port, Duration::from_secs(10)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            Err(sandbox::vsock::ConnectError::Refused { .. }) => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Accepts one connection within [`STEP_TIMEOUT`]; returns it with the moment it was taken.
fn accept_by<S>(mut accept: impl FnMut() -> io::Result<S>) -> Result<(S, Instant), String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match accept() {
            Ok(s) => return Ok((s, Instant::now())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_micros(500))
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Runs `f` on a thread of its own inside network namespace `ns` (setns affects that thread
/// only), telling `ready` when its listener is up.
fn spawn_in_netns<T: Send + 'static>(
    ns: Option<String>,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> JoinHandle<Result<T, String>> {
    thread::spawn(move || {
        if let Some(ns) = ns {
            let path = format!("/var/run/netns/{ns}");
            let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            // SAFETY: setns(2) on a descriptor we own; it moves this thread alone.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", io::Error::last_os_error()));
            }
        }
        f()
    })
}

/// One measurement: the host side `host` on its own thread (in `ns`), which sends on `ready` once
/// it can take the guest's connection; then the guest side `argv` through the agent.
fn measure<T: Send + 'static>(
    agent: &Agent,
    argv: &[String],
    ns: Option<String>,
    host: impl FnOnce(mpsc::Sender<()>) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    let handle = spawn_in_netns(ns, move || host(tx));
    if rx.recv_timeout(Duration::from_secs(10)).is_err() {
        return match handle.join() {
            Ok(Err(e)) => Err(e),
            _ => Err("the host side did not start".into()),
        };
    }
    let guest = guest_run(agent, argv);
    let host = handle
        .join()
        .unwrap_or_else(|_| Err("the host side panicked".into()));
    guest?;
    host
}

/// Runs `argv` in the guest; an error unless it exits 0.
fn guest_run(agent: &Agent, argv: &[String]) -> Result<(), String> {
    let exec = Exec {
        argv: argv.to_vec(),
        env: Vec::new(),
        workdir: None,
    };
    let out = agent
        .output(&exec, Vec::new(), 64 << 10, Some(STEP_TIMEOUT))
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if out.status.code() != 0 {
        return Err(format!(
            "{}: status {} ({})",
            argv.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// RSS beyond guest RAM of process `pid` (vmm with `memory_mib` of guest RAM), in MiB.
fn rss_overhead_mib(pid: u32, memory_mib: u32) -> Option<f64> {
    let m = run::memory(pid, u64::from(memory_mib) << 20)?;
    Some(m.rss_kib.saturating_sub(m.guest_rss_kib) as f64 / 1024.0)
}

impl Bench {
    pub(crate) fn vmm_path(&self) -> PathBuf {
        match &self.vmm {
            Engine::Vmm(p) | Engine::Qemu(p) => p.clone(),
        }
    }

    /// A copy of `rootfs` in the scratch folder for one boot.
    pub(crate) fn rootfs_copy(&mut self, rootfs: &Path, tag: &str) -> Option<PathBuf> {
        let disk = self.scratch.join(format!("rootfs-agent-{tag}.ext4"));
        match std::fs::copy(rootfs, &disk) {
            Ok(_) => Some(disk),
            Err(e) => {
                self.failures.push(format!("cannot copy the rootfs: {e}"));
                None
            }
        }
    }

    /// `vmm run -v` of `command` with `kernel` and the disk, 256 MiB, and `extra` VM options.
    fn vmm_run(&self, kernel: &Path, disk: &Path, extra: &[String], command: &[&str]) -> Command {
        let mut c = Command::new(self.vmm_path());
        c.args(["run", "-v", "--memory", "256M"])
            .arg("--kernel")
            .arg(kernel)
            .arg("--disk")
            .arg(disk)
            .args(extra)
            .arg("--")
            .args(command);
        c
    }

    /// The `vsock` group (see the module's text).
    pub(crate) fn vsock_group(&mut self, kernel: &Path, rootfs: &Path) {
        let mib = env_usize("VMM_BENCH_VSOCK_MIB", 4).max(1) as u64;
        let reps = env_usize("VMM_BENCH_VSOCK_REPS", 1).max(1);
        let trips = env_usize("VMM_BENCH_VSOCK_ROUND_TRIPS", 50).max(1);
        let bytes = mib << 20;
        let ns = match NetNs::new() {
            Ok(ns) => ns,
            Err(e) => {
                self.failures.push(e);
                return;
            }
        };
        let Some(disk) = self.rootfs_copy(rootfs, "vsock") else {
            return;
        };
        let socket = self.scratch.join("vsock.sock");
        let extra = vec![
            "--net".to_string(),
            format!("tap={}", NetNs::TAP),
            "--vsock".to_string(),
            format!("cid={GUEST_CID},socket={}", socket.display()),
        ];
        // `ip netns exec` execs vmm: the child's pid is vmm's.
        let mut cmd = Command::new("ip");
        let inner = self.vmm_run(kernel, &disk, &extra, &["cat"]);
        cmd.args(["netns", "exec", &ns.name])
            .arg(inner.get_program())
            .args(inner.get_args());
        eprintln!(
            "vmm-bench: vsock and TCP in one Linux guest (vmm run -- cat; boots in about a minute)"
        );
        let mut live = match Live::spawn(cmd, true) {
            Ok(l) => l,
            Err(e) => {
                self.failures.push(format!("cannot spawn vmm run: {e}"));
                return;
            }
        };
        if live.wait_line("guest agent ready", LINUX_TIMEOUT).is_none() {
            self.failures.push(format!(
                "vsock: the guest agent did not answer: {}",
                live.tail()
            ));
            let _ = std::fs::remove_file(&disk);
            return;
        }
        let agent = Agent::new(&socket);
        let figures = self.vsock_measure(&agent, &socket, &ns.name, bytes, reps, trips);
        // The RSS after the traffic, beside the run group's (taken before any).
        let rss = rss_overhead_mib(live.pid(), 256);
        let (status, _) = live.finish(Duration::from_secs(120));
        if !status.is_some_and(|s| s.success()) {
            self.failures.push(format!(
                "vsock: vmm run ended with {status:?}: {}",
                live.tail()
            ));
        }
        let _ = std::fs::remove_file(&disk);
        let Some(mut figures) = figures else { return };
        let mut f = Figure::new(
            "vsock_rss_overhead_after",
            "RSS minus guest RAM, vmm run with vsock and a NIC, after the transfers",
            "MiB",
        );
        f.vmm.0.extend(rss);
        f.note = "VmRSS − Rss of the guest RAM mapping, before the command ends".into();
        figures.push(f);
        self.figures.extend(figures);
    }

    /// The transfers and round trips of the vsock group; `None` (failures recorded) when the
    /// guest's network could not be set up.
    fn vsock_measure(
        &mut self,
        agent: &Agent,
        socket: &Path,
        ns: &str,
        bytes: u64,
        reps: usize,
        trips: usize,
    ) -> Option<Vec<Figure>> {
        for step in [
            argv(&[
                "ip",
                "addr",
                "add",
                &format!("{GUEST_IP}/24"),
                "dev",
                "eth0",
            ]),
            argv(&["ip", "link", "set", "eth0", "mtu", "65520", "up"]),
        ] {
            if let Err(e) = guest_run(agent, &step) {
                self.failures.push(format!("vsock: guest network: {e}"));
                return None;
            }
        }
        let (mut v_in, mut v_out) = (Samples::default(), Samples::default());
        let (mut t_in, mut t_out) = (Samples::default(), Samples::default());
        let ns = Some(ns.to_string());
        let size = bytes.to_string();
        for i in 0..reps {
            eprintln!(
                "vmm-bench: {} MiB each way over vsock and TCP, {}/{reps}",
                bytes >> 20,
                i + 1
            );
            // Host → guest over vsock.
            let sock = socket.to_path_buf();
            let r = measure(
                agent,
                &argv(&[
                    "tcpblast",
                    "recv",
                    &format!("vsock:{PORT_VSOCK_IN}"),
                    "/dev/null",
                ]),
                None,
                move |ready| {
                    let _ = ready.send(());
                    send_bytes(&mut vsock_connect(&sock, PORT_VSOCK_IN)?, bytes)
                },
            );
            self.record(&mut v_in, "vsock host → guest", r);
            // Host → guest over TCP.
            let r = measure(
                agent,
                &argv(&["tcpblast", "recv", &PORT_TCP_IN.to_string(), "/dev/null"]),
                ns.clone(),
                move |ready| {
                    let _ = ready.send(());
                    send_bytes(&mut tcp_connect(PORT_TCP_IN)?, bytes)
                },
            );
            self.record(&mut t_in, "TCP host → guest", r);
            // Guest → host over vsock: a listener at PATH_<port>.
            let path = sandbox::port_path(socket, PORT_VSOCK_OUT);
            let _ = std::fs::remove_file(&path);
            let listen = path.clone();
            let r = measure(
                agent,
                &argv(&[
                    "tcpblast",
                    "send",
                    "vsock:2",
                    &PORT_VSOCK_OUT.to_string(),
                    "/dev/zero",
                    &size,
                ]),
                None,
                move |ready| {
                    let l = UnixListener::bind(&listen)
                        .map_err(|e| format!("listen on {}: {e}", listen.display()))?;
                    l.set_nonblocking(true).map_err(|e| e.to_string())?;
                    let _ = ready.send(());
                    let (mut s, at) = accept_by(|| l.accept().map(|(s, _)| s))?;
                    s.set_nonblocking(false).map_err(|e| e.to_string())?;
                    receive_bytes(&mut s, bytes, at)
                },
            );
            let _ = std::fs::remove_file(&path);
            self.record(&mut v_out, "vsock guest → host", r);
            // Guest → host over TCP.
            let r = measure(
                agent,
                &argv(&[
                    "tcpblast",
                    "send",
                    HOST_IP,
                    &PORT_TCP_OUT.to_string(),
                    "/dev/zero",
                    &size,
                ]),
                ns.clone(),
                move |ready| {
                    let l = TcpListener::bind(format!("{HOST_IP}:{PORT_TCP_OUT}"))
                        .map_err(|e| format!("listen on {HOST_IP}:{PORT_TCP_OUT}: {e}"))?;
                    l.set_nonblocking(true).map_err(|e| e.to_string())?;
                    let _ = ready.send(());
                    let (mut s, at) = accept_by(|| l.accept().map(|(s, _)| s))?;
                    s.set_nonblocking(false).map_err(|e| e.to_string())?;
                    receive_bytes(&mut s, bytes, at)
                },
            );
            self.record(&mut t_out, "TCP guest → host", r);
        }
        eprintln!("vmm-bench: {trips} round trips of {MESSAGE} bytes over vsock and TCP");
        let sock = socket.to_path_buf();
        let v_rtt = measure(
            agent,
            &argv(&["tcpblast", "echo", &format!("vsock:{PORT_VSOCK_ECHO}")]),
            None,
            move |ready| {
                let _ = ready.send(());
                round_trips(&mut vsock_connect(&sock, PORT_VSOCK_ECHO)?, trips)
            },
        );
        let t_rtt = measure(
            agent,
            &argv(&["tcpblast", "echo", &PORT_TCP_ECHO.to_string()]),
            ns,
            move |ready| {
                let _ = ready.send(());
                round_trips(&mut tcp_connect(PORT_TCP_ECHO)?, trips)
            },
        );
        let rtt = |bench: &mut Bench, what: &str, r: Result<Vec<f64>, String>| match r {
            Ok(v) => Samples(v),
            Err(e) => {
                bench.failures.push(format!("{what}: {e}"));
                Samples::default()
            }
        };
        let v_rtt = rtt(self, "vsock round trips", v_rtt);
        let t_rtt = rtt(self, "TCP round trips", t_rtt);

        let note = format!(
            "{} MiB per transfer, tcpblast in the guest (1 MiB system calls; sink /dev/null, \
             source /dev/zero), timed on the host from the first byte to the last; one boot",
            bytes >> 20
        );
        let mut figures = Vec::new();
        for (key, title, samples, tcp, tcp_key) in [
            (
                "vsock_in",
                "vsock host → guest",
                v_in,
                t_in.median(),
                "tcp_in",
            ),
            (
                "vsock_out",
                "vsock guest → host",
                v_out,
                t_out.median(),
                "tcp_out",
            ),
        ] {
            let mut f = Figure::new(
                key,
                &format!("{title} (target: ≥ virtio-net TCP, same guest)"),
                "MiB/s",
            );
            f.vmm = samples;
            if let Some(m) = tcp {
                f.targets = vec![Target::AtLeast(m)];
            }
            f.note = format!("{note}; the target is {tcp_key}'s median");
            figures.push(f);
        }
        for (key, title, samples) in [
            ("tcp_in", "virtio-net TCP host → guest, same guest", t_in),
            ("tcp_out", "virtio-net TCP guest → host, same guest", t_out),
        ] {
            let mut f = Figure::new(key, title, "MiB/s");
            f.vmm = samples;
            f.note = "tap MTU 65520, no vhost".into();
            figures.push(f);
        }
        let mut f = Figure::new(
            "vsock_round_trip",
            &format!("vsock round trip, {MESSAGE} bytes"),
            "µs",
        );
        f.vmm = v_rtt;
        f.note = format!(
            "{trips} write-then-read round trips through `tcpblast echo` in the guest, host clock"
        );
        figures.push(f);
        let mut f = Figure::new(
            "tcp_round_trip",
            &format!("virtio-net TCP round trip, {MESSAGE} bytes, same guest"),
            "µs",
        );
        f.vmm = t_rtt;
        f.note = "the same over TCP_NODELAY sockets".into();
        figures.push(f);
        Some(figures)
    }

    fn record(&mut self, into: &mut Samples, what: &str, r: Result<f64, String>) {
        match r {
            Ok(v) => {
                eprintln!("vmm-bench:   {what}: {v:.2} MiB/s");
                into.push(v)
            }
            Err(e) => {
                eprintln!("vmm-bench:   {what}: failed: {e}");
                self.failures.push(format!("{what}: {e}"))
            }
        }
    }

    /// The `run` group (see the module's text): `boots` boots of `vmm run -- true`.
    pub(crate) fn run_group(&mut self, kernel: &Path, rootfs: &Path, boots: usize) {
        let mut ready = Figure::new(
            "run_start_to_ready",
            "vmm run -- true: start → agent ready",
            "s",
        );
        let mut done = Figure::new(
            "run_ready_to_done",
            "vmm run -- true: agent ready → command done",
            "ms",
        );
        let mut exit = Figure::new(
            "run_done_to_exit",
            "vmm run -- true: command done → vmm exit",
            "ms",
        );
        let mut total = Figure::new("run_start_to_exit", "vmm run -- true: start → exit", "s");
        let mut first = Figure::new(
            "run_first_kvm_run",
            "vmm run: start → first KVM_RUN (holds the initramfs build)",
            "ms",
        );
        let mut build = Figure::new(
            "run_initramfs_build",
            "vmm run: agent initramfs built in memory",
            "ms",
        );
        let mut handshake = Figure::new(
            "run_handshake",
            "vmm run: agent's hello there → Sandbox::start returns",
            "ms",
        );
        let mut hello = Figure::new(
            "run_hello_wait",
            "vmm run: agent's connection → its hello's bytes (the guest's)",
            "ms",
        );
        let mut added = Figure::new(
            "run_vmm_added",
            "vmm run: what it adds to a boot (initramfs build + its load + handshake)",
            "ms",
        );
        let mut kernel_load = Figure::new(
            "run_kernel_load",
            "vmm run: the kernel's load (every boot's, beside)",
            "ms",
        );
        let mut rss = Figure::new(
            "run_rss_overhead",
            "RSS minus guest RAM, vmm run with vsock and the agent's initramfs",
            "MiB",
        );
        for i in 0..boots {
            eprintln!(
                "vmm-bench: vmm run -- true, boot {}/{boots} (about a minute)",
                i + 1
            );
            let Some(disk) = self.rootfs_copy(rootfs, "run") else {
                return;
            };
            let mut live = match Live::spawn(self.vmm_run(kernel, &disk, &[], &["true"]), false) {
                Ok(l) => l,
                Err(e) => {
                    self.failures.push(format!("cannot spawn vmm run: {e}"));
                    return;
                }
            };
            if live.wait_line("guest agent ready", LINUX_TIMEOUT).is_some() {
                thread::sleep(SETTLE);
                match rss_overhead_mib(live.pid(), 256) {
                    Some(m) => rss.vmm.push(m),
                    None => self
                        .failures
                        .push("run: vmm ended before its RSS was read".into()),
                }
            }
            let (status, elapsed) = live.finish(Duration::from_secs(120));
            let _ = std::fs::remove_file(&disk);
            let ok = status.is_some_and(|s| s.success());
            let r = live.line("guest agent ready");
            let d = live.line("true ended: ");
            let (Some((t_ready, r_line)), Some((t_done, _)), true) = (r, d, ok) else {
                self.failures.push(format!(
                    "run: vmm run -- true ended with {status:?}: {}",
                    live.tail()
                ));
                continue;
            };
            ready.vmm.push(t_ready.as_secs_f64());
            done.vmm
                .push(t_done.saturating_sub(t_ready).as_secs_f64() * 1e3);
            exit.vmm
                .push(elapsed.saturating_sub(t_done).as_secs_f64() * 1e3);
            total.vmm.push(elapsed.as_secs_f64());
            let us = |needle: &str, prefix: &str| {
                live.line(needle)
                    .and_then(|(_, l)| number_after(&l, prefix))
                    .map(|us| us / 1e3)
            };
            let f = us("first KVM_RUN at ", "first KVM_RUN at ");
            let b = us("agent initramfs built in ", "agent initramfs built in ");
            let h = number_after(&r_line, "checked in ").map(|us| us / 1e3);
            let came = number_after(&r_line, "hello came ").map(|us| us / 1e3);
            first.vmm.0.extend(f);
            build.vmm.0.extend(b);
            handshake.vmm.0.extend(h);
            hello.vmm.0.extend(came);
            if let Ok(lines) = live.lines.lock() {
                for (at, l) in lines.iter() {
                    eprintln!("vmm-bench:   {:>9.3} s  {l}", at.as_secs_f64());
                }
            }
            let k = step_ms(&live, "loaded kernel");
            let i = step_ms(&live, "loaded initrd");
            kernel_load.vmm.0.extend(
                k.zip(step_before(&live, "loaded kernel"))
                    .map(|(k, b)| k - b),
            );
            if let (Some(b), Some(i), Some(k), Some(h)) = (b, i, k, h) {
                added.vmm.push(b + (i - k) + h);
            }
        }
        ready.note = "spawn → vmm's `-v` line \"guest agent ready\" (host clock, line arrival): \
                      the guest's boot, the agent's mounts, its hello"
            .into();
        done.note =
            "→ the `-v` line \"true ended\": one Agent::exec (the guest's spawn of true)".into();
        exit.note = "→ vmm reaped: the agent's sync and power-off, the VM's teardown".into();
        first.note = "vmm's own `-v` clock from main's first line".into();
        build.note =
            "vmm's `-v` line: initramfs::build(AGENT_BINARY) and its copy into an Arc".into();
        handshake.note = "vmm's `-v` line: from poll(2) seeing the hello's bytes on the agent's \
                          connection to PATH_52 to the hello read and checked (the host's side)"
            .into();
        hello.note =
            "vmm's `-v` line: from poll(2) seeing the connection (the device's connect to \
                      PATH_52) to the hello's first bytes: the guest writing it"
                .into();
        added.note = "the initramfs's build + its copy into guest RAM (the `-v` step \
                      \"loaded initrd\") + the handshake's host side: what `vmm run` adds to a \
                      plain boot of the same kernel and disk; the rest of start → first KVM_RUN \
                      is every boot's, the rest of start → ready the guest's"
            .into();
        kernel_load.note = "the `-v` step \"loaded kernel\" (ELF vmlinux read and copied)".into();
        added.targets = vec![Target::AtMost(20.0)];
        rss.note = format!(
            "VmRSS − Rss of the guest RAM mapping, {} ms after the agent's hello",
            SETTLE.as_millis()
        );
        rss.targets = vec![Target::AtMost(3.0)];
        self.figures.extend([
            ready,
            done,
            exit,
            total,
            first,
            kernel_load,
            build,
            hello,
            handshake,
        ]);
        self.figures.extend([added, rss]);
    }
}

/// The ms since process start of vmm's `-v` start-up step `what` ("… vm::start]  117.192 ms  what").
fn step_ms(live: &Live, what: &str) -> Option<f64> {
    let (_, line) = live.line(&format!("ms  {what}"))?;
    step_of(&line)
}

/// The ms of the `-v` start-up step logged just before `what`.
fn step_before(live: &Live, what: &str) -> Option<f64> {
    let lines = live.lines.lock().ok()?;
    let at = lines
        .iter()
        .position(|(_, l)| l.contains(&format!("ms  {what}")))?;
    lines[..at].iter().rev().find_map(|(_, l)| step_of(l))
}

fn step_of(line: &str) -> Option<f64> {
    let rest = &line[line.find("vm::start]")? + "vm::start]".len()..];
    number_after(rest.trim_start(), "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_after_a_prefix() {
        let line = "[2026-12-03T16:00:00.000000Z INFO  sandbox::sandbox] guest agent ready \
                    (vmm-agent) 45.2s after process start; its hello came 30512 µs after its \
                    connection, read and checked in 81 µs";
        assert_eq!(number_after(line, "hello came "), Some(30512.0));
        assert_eq!(number_after(line, "checked in "), Some(81.0));
        assert_eq!(
            number_after(
                "vCPU 0: first KVM_RUN at 1520 µs since",
                "first KVM_RUN at "
            ),
            Some(1520.0)
        );
        assert_eq!(number_after("no number here", "handshake "), None);
        let step = "[2026-12-03T16:43:13.265478Z INFO  vm::start]  117.192 ms  loaded initrd";
        assert_eq!(step_of(step), Some(117.192));
        assert_eq!(step_of("[… INFO  vm::vcpu] vCPU 0"), None);
    }

    #[test]
    fn host_side_transfers_over_a_socket_pair() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let echo = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut total = 0u64;
            loop {
                match b.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
            drop(b);
            total
        });
        let rate = send_bytes(&mut a, 3 << 20).unwrap();
        assert!(rate > 0.0);
        assert_eq!(echo.join().unwrap(), 3 << 20);

        let (mut a, mut b) = UnixStream::pair().unwrap();
        let writer = thread::spawn(move || {
            b.write_all(&vec![1u8; 100_000]).unwrap();
        });
        assert!(receive_bytes(&mut a, 100_000, Instant::now()).is_ok());
        writer.join().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(receive_bytes(&mut a, 1, Instant::now()).is_err());
    }

    #[test]
    fn round_trips_through_an_echo() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let echo = thread::spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                match b.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => b.write_all(&buf[..n]).unwrap(),
                }
            }
        });
        let t = round_trips(&mut a, 10).unwrap();
        assert_eq!(t.len(), 10);
        echo.join().unwrap();
    }
}
