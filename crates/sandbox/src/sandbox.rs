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
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent::{Frame, Hello, READY_PORT, VERSION};
use vm::{ExitReason, Initrd, ShutdownRequest, Vm, VmConfig, VsockConfig};

use crate::client::ByDeadline;
use crate::text::{printable, MAX_GUEST_TEXT};
use crate::{agent_initramfs, Agent};

/// The guest's CID when the caller gives no vsock device.
const DEFAULT_CID: u64 = 3;

/// Why a sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The configuration has an initrd: the sandbox brings its own.
    #[error("the sandbox boots its own initramfs (the guest agent); the configuration has an initrd already")]
    InitrdGiven,
    /// A share's guest directory cannot be passed on the guest's command line.
    #[error("share guest directory {}: the agent mounts shares at paths without white space or quotes; give one as HOSTDIR:GUESTDIR", dir.display())]
    ShareDir {
        /// The directory.
        dir: std::path::PathBuf,
    },
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
    /// The snapshot has no vsock device, so no agent can be reached in it.
    #[error("the snapshot in {0} has no vsock device: save one with `vmm run --save DIR`")]
    NoAgentInSnapshot(PathBuf),
    /// Saving the sandbox through its control API failed.
    #[error("cannot save the VM to {dir}: {why}")]
    Save {
        /// The snapshot directory.
        dir: PathBuf,
        /// What the control API said, or why it could not be asked.
        why: String,
    },
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
    ready: OwnSocket,
    /// The VM's control API socket, if it has one.
    api: Option<PathBuf>,
}

/// A socket file this process bound, removed only if the path still names it (a file put in
/// its place is left alone).
struct OwnSocket {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl OwnSocket {
    fn bind(path: PathBuf) -> io::Result<(OwnSocket, UnixListener)> {
        let listener = UnixListener::bind(&path)?;
        let id = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok((OwnSocket { path, id }, listener))
    }

    fn remove(&mut self) {
        let now = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if self.id.is_some() && now == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
        self.id = None;
    }
}

/// Removes the private directory if nothing but what the sandbox made was left in it: rmdir(2),
/// never a recursive removal (the directory may have been swapped for another).
fn remove_private_dir(dir: &Option<PathBuf>) {
    if let Some(d) = dir {
        if let Err(e) = std::fs::remove_dir(d) {
            log::warn!("cannot remove the sandbox's directory {}: {e}", d.display());
        }
    }
}

/// The command-line words that have the agent mount `shares` where the guest should see them
/// (`vmm.share=TAG:GUESTDIR`; tags as [`vm::name_shares`] gives them).
pub fn share_cmdline(shares: &[vm::ShareConfig]) -> Result<Vec<String>, SandboxError> {
    let mut words = Vec::new();
    for share in vm::name_shares(shares)? {
        let at = share.guest_path();
        // The kernel reads `"` as a quote: such a path would swallow the words after it.
        let plain =
            |p: &&str| !p.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"');
        match at.to_str().filter(plain) {
            Some(at) => words.push(format!("vmm.share={}:{at}", share.tag)),
            None => return Err(SandboxError::ShareDir { dir: at }),
        }
    }
    Ok(words)
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
        let share_words = share_cmdline(&config.shares)?;
        let (dir, socket) = own_vsock(&mut config, DEFAULT_CID)?;
        let ready_path = port_path(&socket, READY_PORT);
        let (mut own_ready, ready) = match OwnSocket::bind(ready_path.clone()) {
            Ok(l) => l,
            Err(source) => {
                remove_private_dir(&dir);
                return Err(SandboxError::Host {
                    what: "listen for the guest agent on",
                    path: ready_path,
                    source,
                });
            }
        };
        let mut cmdline = config.base_cmdline().to_string();
        for word in &share_words {
            cmdline.push(' ');
            cmdline.push_str(word);
        }
        if let (Some(disk), None) = (config.disks.first(), &config.root_share) {
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

        let api = config.api_socket.as_ref().map(|a| a.path().to_path_buf());
        let vm = match Vm::new(config) {
            Ok(vm) => vm,
            Err(e) => {
                own_ready.remove();
                remove_private_dir(&dir);
                return Err(e.into());
            }
        };
        let mut sandbox = Sandbox::launch(vm, socket, dir, own_ready, api)?;
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

    /// Restores the VM saved in `snapshot` (by [`Sandbox::save`], its agent ready) with the
    /// backends of `config` (see [`vm::Vm::restore`]). Without a vsock device in `config` the
    /// snapshot's is given a new socket in a private directory (with its CID), so that many
    /// sandboxes can be restored from one snapshot at once. Ready when the agent answers a hello
    /// on a new connection, within `ready_timeout`: if the snapshot held vsock connections the
    /// guest's driver resets them, and a connection made just before it did is cut, so a cut
    /// one is tried again.
    pub fn restore(
        mut config: VmConfig,
        snapshot: &vm::Snapshot,
        ready_timeout: Duration,
    ) -> Result<Sandbox, SandboxError> {
        let Some(saved) = snapshot.machine().vsock.as_ref() else {
            return Err(SandboxError::NoAgentInSnapshot(snapshot.dir().into()));
        };
        let (dir, socket) = own_vsock(&mut config, saved.cid)?;
        let api = config.api_socket.as_ref().map(|a| a.path().to_path_buf());
        let vm = match Vm::restore(config, snapshot) {
            Ok(vm) => vm,
            Err(e) => {
                remove_private_dir(&dir);
                return Err(e.into());
            }
        };
        let ready = OwnSocket {
            path: PathBuf::new(),
            id: None,
        };
        let mut sandbox = Sandbox::launch(vm, socket, dir, ready, api)?;
        let deadline = Instant::now() + ready_timeout;
        loop {
            match sandbox.agent.ping() {
                Ok(hello) => {
                    sandbox.hello = Hello {
                        name: printable(&hello.name, MAX_GUEST_TEXT),
                        ..hello
                    };
                    break;
                }
                Err(e) => {
                    if sandbox.wait_timeout(Duration::ZERO) {
                        let why = match sandbox.join() {
                            Ok(reason) => describe(reason),
                            Err(e) => e.to_string(),
                        };
                        return Err(SandboxError::GuestStopped(why));
                    }
                    if Instant::now() >= deadline {
                        log::info!("the restored guest's agent: {e}");
                        return Err(SandboxError::NotReady(ready_timeout));
                    }
                    log::debug!("the restored guest's agent, once more: {e}");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        log::info!(
            "restored guest's agent ready {} µs after process start",
            vm::process_start().elapsed().as_micros()
        );
        Ok(sandbox)
    }

    /// Pauses the VM and saves it to `dir` through its control API (the sandbox must have been
    /// started with `config.api_socket`); the VM stays paused. Returns the bytes of memory saved.
    pub fn save(&self, dir: &Path, timeout: Duration) -> Result<u64, SandboxError> {
        let failed = |why: String| SandboxError::Save {
            dir: dir.into(),
            why,
        };
        let Some(api) = &self.api else {
            return Err(failed("the VM has no control API socket".into()));
        };
        let call = |path: &str, body: Option<&str>| -> Result<String, SandboxError> {
            match vm::api::call(api, "PUT", path, body, timeout) {
                Ok((200, answer)) => Ok(answer),
                Ok((status, answer)) => Err(failed(format!(
                    "{path} answered {status}: {}",
                    printable(&answer, MAX_GUEST_TEXT)
                ))),
                Err(e) => Err(failed(format!("{path}: {e}"))),
            }
        };
        let dir = std::path::absolute(dir).map_err(|e| failed(e.to_string()))?;
        let body = serde_json::json!({ "dir": dir }).to_string();
        call("/vm/pause", None)?;
        let answer = call("/vm/snapshot", Some(&body))?;
        let saved: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| failed(e.to_string()))?;
        Ok(saved["memory_bytes"].as_u64().unwrap_or(0))
    }

    /// Runs `vm` on a thread of its own and makes the sandbox around it.
    fn launch(
        vm: Vm,
        socket: PathBuf,
        dir: Option<PathBuf>,
        ready: OwnSocket,
        api: Option<PathBuf>,
    ) -> Result<Sandbox, SandboxError> {
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
        Ok(Sandbox {
            agent: Agent::new(socket),
            hello: Hello::new(""),
            shutdown,
            vm: Some(thread),
            ended,
            dir,
            ready,
            api,
        })
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
            let Some(conn) = accept_from_this_process(ready, &self.ready.path) else {
                continue;
            };
            // When the hello's first bytes are there: the wait before is the guest's.
            let mut first = libc::pollfd {
                fd: conn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd, alive for the call. Its result does not matter: the read
            // below has the same deadline and reports what went wrong.
            unsafe { libc::poll(&mut first, 1, ms) };
            let arrived = Instant::now();
            return read_hello(&conn, deadline, timeout).map(|h| (h, connected, arrived));
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
        if let Err(e) = self.shutdown.stop_now() {
            log::warn!("cannot stop the VM: {e}");
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
        self.ready.remove();
        remove_private_dir(&self.dir);
    }
}

/// The agent's hello on `conn`, by `deadline` however it is split; the guest wrote every string
/// in it, so they are made printable. `timeout` is the whole time allowed, for the message.
fn read_hello(
    conn: &UnixStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<Hello, SandboxError> {
    let guest = |s: &str| printable(s, MAX_GUEST_TEXT);
    match Frame::read_from(&mut ByDeadline::new(conn, Some(deadline))) {
        Ok(Some(Frame::Hello(h))) if h.version != VERSION => Err(SandboxError::BadHello(format!(
            "protocol version {} (this vmm speaks {VERSION})",
            h.version
        ))),
        Ok(Some(Frame::Hello(h))) => match &h.problem {
            Some(p) => Err(SandboxError::AgentProblem(guest(p))),
            None => Ok(Hello {
                name: guest(&h.name),
                ..h
            }),
        },
        Ok(Some(_)) => Err(SandboxError::BadHello("not a HELLO frame".into())),
        Ok(None) => Err(SandboxError::BadHello("the connection ended".into())),
        Err(agent::Error::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(SandboxError::NotReady(timeout))
        }
        Err(e) => Err(SandboxError::BadHello(guest(&e.to_string()))),
    }
}

/// A connection to `ready`, if it comes from this process. Only the vsock device, a thread of
/// this process, connects there for the guest: anyone else who can reach the socket (a --vsock
/// path in a shared directory) is turned away before a byte is read.
fn accept_from_this_process(ready: &UnixListener, path: &Path) -> Option<UnixStream> {
    let (conn, _) = ready.accept().ok()?;
    if peer_pid(&conn) != Some(std::process::id()) {
        log::warn!(
            "ignored a connection to {} from another process",
            path.display()
        );
        return None;
    }
    Some(conn)
}

/// The process id at the other end of a Unix socket connection (SO_PEERCRED).
fn peer_pid(conn: &UnixStream) -> Option<u32> {
    // SAFETY: ucred is plain data; all zeroes is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt on a socket we own, with a ucred-sized buffer and its length.
    let ret = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    match ret == 0 && len as usize == std::mem::size_of::<libc::ucred>() {
        true => u32::try_from(cred.pid).ok(),
        false => None,
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

/// The vsock device's socket: `config`'s, or, when it has no vsock device, one with `cid` on a
/// socket in a new private directory (returned, for removal at the end).
fn own_vsock(config: &mut VmConfig, cid: u64) -> Result<(Option<PathBuf>, PathBuf), SandboxError> {
    if let Some(vsock) = &config.vsock {
        return Ok((None, vsock.socket.clone()));
    }
    let dir = private_dir()?;
    let socket = dir.join("vsock.sock");
    config.vsock = Some(VsockConfig {
        cid,
        socket: socket.clone(),
        connect_by_name: false,
    });
    Ok((Some(dir), socket))
}

/// A new directory only this user can enter, under the temporary directory.
pub fn private_dir() -> Result<PathBuf, SandboxError> {
    let tmp = std::env::temp_dir();
    check_temp_dir(&tmp).map_err(|source| SandboxError::Host {
        what: "use the temporary directory",
        path: tmp.clone(),
        source,
    })?;
    let template = tmp.join("vmm-sandbox-XXXXXX");
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

/// Refuses a temporary directory in which another user could rename the sandbox's directory
/// and put their own (or a symbolic link) in its place, and so be the "guest agent" the sandbox
/// talks to: it must be owned by this user or root, and a directory others may write must be
/// sticky (as /tmp is).
fn check_temp_dir(dir: &Path) -> io::Result<()> {
    let m = std::fs::metadata(dir)?;
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me && m.uid() != 0 {
        return Err(io::Error::other(format!(
            "it belongs to user {}; set TMPDIR to a directory of yours",
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
        return Err(io::Error::other(
            "others may write it and it is not sticky (mode 1777 as /tmp, or set TMPDIR)",
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use agent::Hello;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sandbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_hello_split_into_bytes_cannot_stretch_the_ready_timeout() {
        let (conn, mut agent) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            for b in Frame::Hello(Hello::new("slow")).encode() {
                std::thread::sleep(Duration::from_millis(100));
                if agent.write_all(&[b]).is_err() {
                    return;
                }
            }
        });
        let start = Instant::now();
        let timeout = Duration::from_secs(1);
        let r = read_hello(&conn, start + timeout, timeout);
        assert!(matches!(r, Err(SandboxError::NotReady(_))), "{r:?}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        drop(conn);
        writer.join().unwrap();
    }

    #[test]
    fn the_hellos_strings_are_made_printable() {
        let (conn, mut agent) = UnixStream::pair().unwrap();
        let hello = Hello {
            problem: Some(format!("\u{1b}[2J\nerror: forged{}", "y".repeat(100_000))),
            ..Hello::new("agent")
        };
        agent.write_all(&Frame::Hello(hello).encode()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        match read_hello(&conn, deadline, Duration::from_secs(5)) {
            Err(SandboxError::AgentProblem(p)) => {
                assert!(p.starts_with("\\u{1b}[2J\\nerror: forged"), "{p}");
                assert!(p.chars().count() <= MAX_GUEST_TEXT + 1);
            }
            other => panic!("{other:?}"),
        }
        let (conn, mut agent) = UnixStream::pair().unwrap();
        let hello = Hello::new("agent\u{7}\u{202e}");
        agent.write_all(&Frame::Hello(hello).encode()).unwrap();
        let h = read_hello(&conn, deadline, Duration::from_secs(5)).unwrap();
        assert_eq!(h.name, "agent\\u{7}\\u{202e}");
    }

    /// Run as a child by the next test: connects to the socket it is given.
    #[test]
    #[ignore = "a helper the next test runs in a process of its own"]
    fn connect_from_another_process() {
        if let Some(path) = std::env::var_os("SANDBOX_TEST_CONNECT") {
            let mut s = UnixStream::connect(path).unwrap();
            let _ = s.write_all(&Frame::Hello(Hello::new("impostor")).encode());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    #[test]
    fn another_process_cannot_answer_for_the_agent() {
        let d = scratch("impostor");
        let path = d.join("v.sock_52");
        let listener = UnixListener::bind(&path).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "sandbox::tests::connect_from_another_process",
            ])
            .env("SANDBOX_TEST_CONNECT", &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(accept_from_this_process(&listener, &path).is_none());
        let _mine = UnixStream::connect(&path).unwrap();
        assert!(accept_from_this_process(&listener, &path).is_some());
        child.wait().unwrap();
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_temporary_directory_others_could_swap_things_in_is_refused() {
        let d = scratch("tmpdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_temp_dir(&d).is_err());
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_temp_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_temp_dir(&d).unwrap();
        let path = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: chown with a NUL-terminated path; only the test's own directory.
        if unsafe { libc::chown(path.as_ptr(), 12345, 12345) } == 0 {
            assert!(check_temp_dir(&d).is_err());
        }
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn only_what_the_sandbox_made_is_removed() {
        let d = scratch("own");
        let (mut own, listener) = OwnSocket::bind(d.join("v.sock_52")).unwrap();
        drop(listener);
        // Someone replaced the socket with a file of theirs: it stays.
        std::fs::write(d.join("theirs"), b"theirs").unwrap();
        std::fs::rename(d.join("theirs"), d.join("v.sock_52")).unwrap();
        own.remove();
        assert!(d.join("v.sock_52").exists());
        remove_private_dir(&Some(d.clone()));
        assert!(
            d.exists(),
            "a directory with someone else's file was removed"
        );
        std::fs::remove_file(d.join("v.sock_52")).unwrap();
        let (mut own, _listener) = OwnSocket::bind(d.join("v.sock_52")).unwrap();
        own.remove();
        remove_private_dir(&Some(d.clone()));
        assert!(!d.exists());
    }
}
