//! A VM booted with the agent's initramfs, its agent ready.
//!
//! Readiness is a handshake, never a timed guess: before the VM starts, the sandbox listens on
//! the vsock device's host port [`READY_PORT`] (the Unix socket `PATH_52`); the agent connects
//! there once it listens itself, and sends its hello. The wait ends with that hello, with the
//! VM's end (the guest died first), or with the caller's time limit.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent::{Frame, Hello, READY_PORT, VERSION};
use vm::{ExitReason, Initrd, ShutdownRequest, Vm, VmConfig, VsockConfig};

use crate::{agent_initramfs, Agent};

/// The guest's CID when the caller gives no vsock device.
const DEFAULT_CID: u64 = 3;

/// Why a sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The configuration has an initrd: the sandbox brings its own.
    #[error("the sandbox boots its own initramfs (the guest agent); the configuration has an initrd already")]
    InitrdGiven,
    /// A host file or socket the sandbox needs could not be made.
    #[error("cannot {what} {path}: {source}")]
    Host {
        /// What it tried.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The VM could not be built.
    #[error(transparent)]
    Vm(#[from] vm::Error),
    /// The guest stopped before its agent said it was ready.
    #[error("the guest stopped before its agent answered ({0})")]
    GuestStopped(String),
    /// No hello from the agent in time.
    #[error("the guest agent did not answer within {0:?}")]
    NotReady(Duration),
    /// The agent's hello was not what this vmm speaks.
    #[error("the guest agent's hello: {0}")]
    BadHello(String),
    /// The agent runs but could not prepare the guest (e.g. mount the root file system).
    #[error("the guest agent: {0}")]
    AgentProblem(String),
}

/// A running VM with a ready agent. Dropping it stops the VM at once.
pub struct Sandbox {
    agent: Agent,
    hello: Hello,
    shutdown: ShutdownRequest,
    vm: Option<JoinHandle<vm::Result<ExitReason>>>,
    /// Readable (hung up) once the VM thread has ended.
    ended: OwnedFd,
    /// The private directory the sandbox made for its sockets, if it made one.
    dir: Option<PathBuf>,
    ready_path: PathBuf,
}

impl Sandbox {
    /// Boots `config` with the agent's initramfs and waits at most `ready_timeout` for the agent.
    ///
    /// The first disk, if any, is the guest's root file system (`root=/dev/vda`, `rw` or `ro` as
    /// the disk is), unless the command line names one. Without a vsock device in `config`, one
    /// is added (CID 3) with its socket in a private directory the sandbox removes at the end.
    pub fn start(mut config: VmConfig, ready_timeout: Duration) -> Result<Sandbox, SandboxError> {
        if config.initrd.is_some() {
            return Err(SandboxError::InitrdGiven);
        }
        let dir = match &config.vsock {
            Some(_) => None,
            None => Some(private_dir()?),
        };
        if let Some(d) = &dir {
            config.vsock = Some(VsockConfig {
                cid: DEFAULT_CID,
                socket: d.join("vsock.sock"),
                connect_by_name: false,
            });
        }
        let socket = config
            .vsock
            .as_ref()
            .map(|v| v.socket.clone())
            .unwrap_or_default();
        let ready_path = port_path(&socket, READY_PORT);
        let cleanup = |dir: &Option<PathBuf>| {
            if let Some(d) = dir {
                let _ = std::fs::remove_dir_all(d);
            }
        };
        let ready = match UnixListener::bind(&ready_path) {
            Ok(l) => l,
            Err(source) => {
                cleanup(&dir);
                return Err(SandboxError::Host {
                    what: "listen for the guest agent on",
                    path: ready_path,
                    source,
                });
            }
        };
        let mut cmdline = config
            .cmdline
            .clone()
            .unwrap_or_else(|| match config.console.is_on() {
                true => vm::DEFAULT_CONSOLE_CMDLINE.to_string(),
                false => vm::DEFAULT_CMDLINE.to_string(),
            });
        if let Some(disk) = config.disks.first() {
            if !cmdline.split_whitespace().any(|w| w.starts_with("root=")) {
                let mode = if disk.read_only { "ro" } else { "rw" };
                cmdline.push_str(&format!(" root=/dev/vda {mode}"));
            }
        }
        config.cmdline = Some(cmdline);
        let built = Instant::now();
        let archive = agent_initramfs();
        log::info!(
            "agent initramfs built in {} µs ({} KiB)",
            built.elapsed().as_micros(),
            archive.len() / 1024
        );
        config.initrd = Some(Initrd::Bytes(archive));

        let vm = match Vm::new(config) {
            Ok(vm) => vm,
            Err(e) => {
                let _ = std::fs::remove_file(&ready_path);
                cleanup(&dir);
                return Err(e.into());
            }
        };
        let shutdown = vm.shutdown_request();
        let (ended, ended_w) = pipe().map_err(|source| SandboxError::Host {
            what: "make a pipe for",
            path: "the VM thread".into(),
            source,
        })?;
        let thread = std::thread::Builder::new()
            .name("vm".into())
            .spawn(move || {
                let result = vm.run();
                drop(ended_w);
                result
            })
            .map_err(|source| SandboxError::Host {
                what: "start a thread for",
                path: "the VM".into(),
                source,
            })?;
        let mut sandbox = Sandbox {
            agent: Agent::new(socket),
            hello: Hello::new(""),
            shutdown,
            vm: Some(thread),
            ended,
            dir,
            ready_path,
        };
        let (hello, connected, arrived) = sandbox.wait_ready(&ready, ready_timeout)?;
        sandbox.hello = hello;
        log::info!(
            "guest agent ready ({}) {:.1?} after process start; its hello came {} µs after its \
             connection, read and checked in {} µs",
            sandbox.hello.name,
            vm::process_start().elapsed(),
            arrived.saturating_duration_since(connected).as_micros(),
            arrived.elapsed().as_micros()
        );
        Ok(sandbox)
    }

    fn wait_ready(
        &mut self,
        ready: &UnixListener,
        timeout: Duration,
    ) -> Result<(Hello, Instant, Instant), SandboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SandboxError::NotReady(timeout));
            }
            let mut fds = [
                libc::pollfd {
                    fd: ready.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.ended.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: two valid pollfd entries, alive for the call.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) } < 0 {
                continue; // EINTR
            }
            if fds[1].revents != 0 {
                let why = match self.vm.take().map(JoinHandle::join) {
                    Some(Ok(Ok(reason))) => describe(reason),
                    Some(Ok(Err(e))) => return Err(e.into()),
                    _ => "its thread panicked".to_string(),
                };
                return Err(SandboxError::GuestStopped(why));
            }
            if fds[0].revents == 0 {
                continue;
            }
            // The device has connected the agent's connection to the listener: the handshake's
            // host side starts here.
            let connected = Instant::now();
            let Ok((mut conn, _)) = ready.accept() else {
                continue;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            // When the hello's first bytes are there: the wait before is the guest's.
            let mut first = libc::pollfd {
                fd: conn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, alive for the call. Its result does not matter: the read
            // below has the same time limit and reports what went wrong.
            unsafe { libc::poll(&mut first, 1, 10_000) };
            let arrived = Instant::now();
            return match Frame::read_from(&mut conn) {
                Ok(Some(Frame::Hello(h))) if h.version != VERSION => Err(SandboxError::BadHello(
                    format!("protocol version {} (this vmm speaks {VERSION})", h.version),
                )),
                Ok(Some(Frame::Hello(h))) => match &h.problem {
                    Some(p) => Err(SandboxError::AgentProblem(p.clone())),
                    None => Ok((h, connected, arrived)),
                },
                Ok(Some(_)) => Err(SandboxError::BadHello("not a HELLO frame".into())),
                Ok(None) => Err(SandboxError::BadHello("the connection ended".into())),
                Err(e) => Err(SandboxError::BadHello(e.to_string())),
            };
        }
    }

    /// The agent's client.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The agent's hello (its name and version).
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// A handle that asks the guest to shut down (see [`vm::ShutdownRequest`]).
    pub fn shutdown_request(&self) -> ShutdownRequest {
        self.shutdown.clone()
    }

    /// Waits at most `timeout` for the VM to end; true if it has.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: self.ended.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, alive for the call.
        unsafe { libc::poll(&mut fd, 1, ms) > 0 }
    }

    /// Waits for the VM to end and says how.
    pub fn wait(mut self) -> vm::Result<ExitReason> {
        self.join()
    }

    /// Asks the agent to power the guest off and waits at most `timeout` for it; then stops the
    /// VM. Says how the guest ended.
    pub fn stop(mut self, timeout: Duration) -> vm::Result<ExitReason> {
        if !self.wait_timeout(Duration::ZERO) {
            if let Err(e) = self.agent.shutdown(false) {
                log::info!("asking the guest agent to power off: {e}");
            }
            if !self.wait_timeout(timeout) {
                self.kill_now();
            }
        }
        self.join()
    }

    /// Stops the VM at once and says how it ended.
    pub fn kill(mut self) -> vm::Result<ExitReason> {
        self.kill_now();
        self.join()
    }

    fn kill_now(&self) {
        // Two requests: the second stops the VM without waiting for the guest.
        for _ in 0..2 {
            if let Err(e) = self.shutdown.request() {
                log::warn!("cannot stop the VM: {e}");
            }
        }
    }

    fn join(&mut self) -> vm::Result<ExitReason> {
        match self.vm.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(vm::Error::ThreadPanicked("vm")),
            None => Err(vm::Error::ThreadPanicked("vm (already joined)")),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.vm.is_some() {
            self.kill_now();
            let _ = self.join();
        }
        let _ = std::fs::remove_file(&self.ready_path);
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// How a guest's end reads in a message.
pub fn describe(reason: ExitReason) -> String {
    match reason {
        ExitReason::Reset => "it reset".into(),
        ExitReason::TripleFault => "it triple-faulted".into(),
        ExitReason::PowerOff => "it powered off".into(),
        ExitReason::Panic => "its kernel panicked".into(),
        ExitReason::Stopped => "the host stopped it".into(),
        ExitReason::GuestStatus(n) => format!("it wrote {n} to the exit device"),
    }
}

/// `PATH_<port>`: where vmm's vsock device connects a guest's connection to host port `port`.
pub fn port_path(socket: &Path, port: u32) -> PathBuf {
    let mut p = OsString::from(socket.as_os_str());
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// A new directory only this user can enter, under the temporary directory.
fn private_dir() -> Result<PathBuf, SandboxError> {
    let template = std::env::temp_dir().join("vmm-sandbox-XXXXXX");
    let mut bytes = template.clone().into_os_string().into_vec();
    bytes.push(0);
    // SAFETY: `bytes` is a writable NUL-terminated template ending in XXXXXX; mkdtemp fills it in.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(SandboxError::Host {
            what: "make a private directory like",
            path: template,
            source: io::Error::last_os_error(),
        });
    }
    bytes.pop();
    Ok(PathBuf::from(OsString::from_vec(bytes)))
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 with a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
