//! Network namespaces for the tests that need a tap: each test makes its own (deleted on drop,
//! also when the test panics), adds taps to it and runs `vmm` inside it. Needs root.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{reader, run_command, vmm_bin, Run};

/// A network namespace of its own, deleted on drop (also when the test panics).
pub struct NetNs(String);

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!("vmmt-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip (iproute2)");
        assert!(
            out.status.success(),
            "cannot create network namespace {name} (these tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = NetNs(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// Runs a command inside the namespace; panics unless it succeeds.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds a tap with IPv6 off (no router solicitations towards the guest) and brings it up.
    pub fn add_tap(&self, tap: &str) {
        self.exec(&["ip", "tuntap", "add", tap, "mode", "tap"]);
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.0, "sysctl", "-qw"])
            .arg(format!("net.ipv6.conf.{tap}.disable_ipv6=1"))
            .output();
        self.exec(&["ip", "link", "set", tap, "up"]);
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it makes live there).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on an open namespace file; it changes only this thread's namespace.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the namespace")
    }

    /// Spawns `vmm ARGS` inside the namespace; see [`Vmm`] for waiting on it.
    pub fn spawn_vmm(&self, args: &[&str]) -> Vmm {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, vmm_bin()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec vmm");
        let out = Arc::new(Mutex::new(Vec::new()));
        let pump = {
            let out = out.clone();
            let mut stdout = child.stdout.take().expect("stdout");
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        };
        let err = reader(child.stderr.take().expect("stderr"));
        Vmm {
            child,
            out,
            pump: Some(pump),
            err,
            start: Instant::now(),
        }
    }

    /// Runs `vmm ARGS` inside the namespace to the end, as [`run_vmm`](super::run_vmm) does.
    pub fn run_vmm(&self, args: &[&str], timeout: Duration) -> Run {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, vmm_bin()]).args(args);
        run_command(cmd, timeout)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A `vmm` started by [`NetNs::spawn_vmm`]: its console output so far, and its end.
pub struct Vmm {
    child: std::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    pump: Option<thread::JoinHandle<()>>,
    err: mpsc::Receiver<String>,
    start: Instant,
}

impl Vmm {
    /// The console output so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until the console shows `text`; panics with the output after `timeout` or if vmm
    /// exits first.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.output().contains(text) {
                return;
            }
            let exited = self.child.try_wait().expect("wait").is_some();
            if exited || start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "no '{text}' on the console ({}):\n{}",
                    if exited { "vmm exited" } else { "timed out" },
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the VMM to exit (killing it after `timeout`) and returns what it printed.
    pub fn wait(mut self, timeout: Duration) -> Run {
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break Some(status.code());
            }
            if self.start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
        let run = Run {
            code: code.flatten(),
            stdout: self.output(),
            stderr: self.err.recv().unwrap_or_default(),
            elapsed: self.start.elapsed(),
        };
        if code.is_none() {
            panic!("vmm did not exit within {timeout:?}; killed it\n{run}");
        }
        run
    }
}
