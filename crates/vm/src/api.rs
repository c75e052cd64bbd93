//! The control API (docs/API.md): HTTP/1.1 with JSON bodies on a Unix socket, served by a thread
//! of its own (`api`, under its own seccomp filter) while the VM runs.
//!
//! One request per connection (the answer says `Connection: close`). Everything a client sends
//! is bounded: the request head ([`MAX_HEAD_BYTES`], [`MAX_HEADERS`]), the body
//! ([`MAX_BODY_BYTES`]), the time from connecting to the end of the request
//! ([`REQUEST_TIMEOUT`]) and the number of clients held at once ([`MAX_CLIENTS`]; a newcomer
//! beyond them replaces the oldest). The sockets are non-blocking and watched with poll(2), so a client
//! that stalls holds only its own slot until its time is up; garbage gets 400 and the connection
//! closed. The VM never waits for this thread: pause and resume only touch the vCPUs' park gate,
//! shutdown writes the same eventfd as SIGTERM.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::chardev::SocketFile;
use devices::seccomp::SyscallRule;
use seccompiler::BpfProgram;
use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};
use crate::seccomp::ThreadKind;
use crate::vcpu::Pause;
use crate::vm::ShutdownRequest;

/// The largest request head (request line and headers) accepted: 431 beyond.
pub const MAX_HEAD_BYTES: usize = 8192;
/// The most headers a request may carry: 431 beyond.
pub const MAX_HEADERS: usize = 32;
/// The largest body accepted (its Content-Length): 413 beyond.
pub const MAX_BODY_BYTES: usize = 16384;
/// A client has this long from connecting to the end of its request; then it is dropped (408).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients held at once; a newcomer beyond them replaces the one held longest.
pub const MAX_CLIENTS: usize = 16;
/// How long the listener rests after accept4 failed for want of a descriptor or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the control API's socket at `path`, mode 0600, before the VM is built (and before a
/// jail confines the process). Anything at `path` is refused and left alone, except a stale
/// socket of ours: a socket owned by this user that nobody listens on (left by a vmm that was
/// killed), which is removed and replaced.
pub fn bind(path: &Path) -> std::result::Result<SocketFile, devices::Error> {
    match SocketFile::bind(path) {
        Err(devices::Error::SocketStale { path: stale }) if owned_by_us(&stale) => {
            log::info!(
                "removing the stale API socket '{}' (nobody listens on it)",
                stale.display()
            );
            std::fs::remove_file(&stale).map_err(|error| devices::Error::Chardev {
                what: format!("cannot remove the stale socket '{}'", stale.display()),
                error,
            })?;
            SocketFile::bind(path)
        }
        other => other,
    }
}

fn owned_by_us(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(path).is_ok_and(|m| m.uid() == euid)
}

/// The control API's socket file as a running VM holds it: removed (if it is still the one bound
/// here) when dropped, however the VM ends.
pub(crate) struct ApiSocket(pub SocketFile);

impl Drop for ApiSocket {
    fn drop(&mut self) {
        self.0.remove();
    }
}

/// The client side (`vmm ctl`): sends one request to the API at `socket` and returns the status
/// and body of the answer. `timeout` bounds each read and write.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    // The server closes the connection after its answer.
    stream.take(1 << 20).read_to_end(&mut answer)?;
    let bad = |what: &str| std::io::Error::new(ErrorKind::InvalidData, what.to_string());
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&answer) {
        Ok(httparse::Status::Complete(n)) => {
            let status = response
                .code
                .ok_or_else(|| bad("an answer without a status"))?;
            Ok((status, String::from_utf8_lossy(&answer[n..]).into_owned()))
        }
        Ok(httparse::Status::Partial) => Err(bad("the answer ended early")),
        Err(e) => Err(bad(&format!("an answer that is not HTTP: {e}"))),
    }
}

/// An HTTP answer: status and JSON body (none for an empty string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The JSON body.
    pub body: String,
    /// For 405: the methods the path takes.
    pub allow: Option<&'static str>,
}

impl Response {
    fn json(status: u16, body: Value) -> Response {
        Response {
            status,
            body: body.to_string(),
            allow: None,
        }
    }

    /// An error answer: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, json!({ "error": message.into() }))
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            413 => "Payload Too Large",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            505 => "HTTP Version Not Supported",
            _ => "",
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason());
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET, PUT, …
    pub method: String,
    /// The path, query included.
    pub path: String,
    /// The body (Content-Length bytes).
    pub body: Vec<u8>,
}

/// What the bytes received so far make.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet, and nothing wrong so far.
    Partial,
    /// A whole request.
    Complete(Request),
    /// A request that is refused: answer this and close.
    Refused(Response),
}

/// Parses the bytes a client sent so far.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => {
            return Parsed::Refused(head_too_large())
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Parsed::Refused(head_too_large())
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refused(Response::error(
                431,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => return Parsed::Refused(Response::error(400, format!("not HTTP/1.1: {e}"))),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Refused(Response::error(400, "incomplete request line"));
    };
    if version != 1 {
        return Parsed::Refused(Response::error(505, "only HTTP/1.1 is served"));
    }
    let mut length: usize = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Refused(Response::error(
                400,
                "Transfer-Encoding is not accepted: send the body with Content-Length",
            ));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match parsed {
                Some(n) if n > MAX_BODY_BYTES => {
                    return Parsed::Refused(Response::error(
                        413,
                        format!("a body of {n} bytes: at most {MAX_BODY_BYTES} are accepted"),
                    ))
                }
                Some(n) => length = n,
                None => return Parsed::Refused(Response::error(400, "bad Content-Length")),
            }
        }
    }
    let Some(body) = buf.get(head_len..head_len + length) else {
        return Parsed::Partial;
    };
    Parsed::Complete(Request {
        method: method.to_string(),
        path: path.to_string(),
        body: body.to_vec(),
    })
}

fn head_too_large() -> Response {
    Response::error(
        431,
        format!("a request head over {MAX_HEAD_BYTES} bytes is not accepted"),
    )
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// GET /vm
    Info,
    /// PUT /vm/pause
    Pause,
    /// PUT /vm/resume
    Resume,
    /// PUT /vm/shutdown
    Shutdown,
    /// PUT /vm/snapshot {"dir": DIR}
    Snapshot(String),
}

/// Maps a request to its action, or the answer that refuses it.
pub fn route(req: &Request) -> std::result::Result<Action, Response> {
    let (allowed, action) = match req.path.as_str() {
        "/vm" => ("GET", Action::Info),
        "/vm/pause" => ("PUT", Action::Pause),
        "/vm/resume" => ("PUT", Action::Resume),
        "/vm/shutdown" => ("PUT", Action::Shutdown),
        "/vm/snapshot" => ("PUT", Action::Snapshot(String::new())),
        other => {
            return Err(Response::error(
                404,
                format!("no such endpoint: '{}'", printable(other)),
            ))
        }
    };
    if req.method != allowed {
        let mut r = Response::error(
            405,
            format!(
                "{} takes {allowed}, not {}",
                req.path,
                printable(&req.method)
            ),
        );
        r.allow = Some(allowed);
        return Err(r);
    }
    if let Action::Snapshot(_) = action {
        let dir = serde_json::from_slice::<Value>(&req.body)
            .ok()
            .and_then(|v| v.get("dir").and_then(Value::as_str).map(str::to_string));
        return match dir {
            Some(dir) if !dir.is_empty() => Ok(Action::Snapshot(dir)),
            _ => Err(Response::error(
                400,
                "the body must be a JSON object {\"dir\": \"DIR\"}",
            )),
        };
    }
    // The other actions take no body; one that is there must be empty JSON (or nothing).
    let body_ok = req.body.iter().all(u8::is_ascii_whitespace)
        || serde_json::from_slice::<Value>(&req.body).is_ok_and(|v| v == json!({}));
    if !body_ok {
        return Err(Response::error(
            400,
            format!("{} takes no body (or {{}})", req.path),
        ));
    }
    Ok(action)
}

/// At most 64 characters of `s`, control characters escaped, for error messages.
fn printable(s: &str) -> String {
    s.chars().take(64).flat_map(char::escape_debug).collect()
}

/// What the API thread acts on: the VM's pause gate, its shutdown request and what info shows.
pub(crate) struct Control {
    pub pause: Arc<Pause>,
    /// The vCPU threads, to kick into their park.
    pub vcpu_threads: Vec<libc::pthread_t>,
    pub shutdown: ShutdownRequest,
    pub started: Instant,
    pub config: Value,
    pub devices: Vec<crate::device_manager::DeviceCounters>,
    /// The snapshot thread.
    pub snapshot: crate::snapshot::Snapshotter,
}

impl Control {
    fn state(&self) -> &'static str {
        match self.pause.is_paused() {
            true => "paused",
            false => "running",
        }
    }

    /// Carries out `action`.
    pub(crate) fn act(&self, action: Action) -> Response {
        match action {
            Action::Info => Response::json(200, self.info()),
            Action::Pause => {
                if !self.pause.pause(&self.vcpu_threads) {
                    return Response::error(500, "the vCPUs did not stop within 2 s");
                }
                log::info!("control API: paused");
                Response::json(200, json!({ "state": "paused" }))
            }
            Action::Resume => {
                self.pause.resume();
                log::info!("control API: resumed");
                Response::json(200, json!({ "state": "running" }))
            }
            Action::Shutdown => {
                // A paused guest could not hear the power button.
                self.pause.resume();
                match self.shutdown.request() {
                    Ok(()) => {
                        log::info!("control API: shutdown requested");
                        Response::json(200, json!({ "state": "shutting down" }))
                    }
                    Err(e) => Response::error(500, format!("cannot request the shutdown: {e}")),
                }
            }
            Action::Snapshot(dir) => {
                if !self.pause.is_paused() {
                    return Response::error(
                        409,
                        "the VM is running: pause it first (PUT /vm/pause)",
                    );
                }
                let dir = std::path::PathBuf::from(dir);
                if !dir.is_absolute() {
                    return Response::error(
                        400,
                        format!(
                            "snapshot directory '{}' is relative: give an absolute path",
                            printable(&dir.to_string_lossy())
                        ),
                    );
                }
                let started = Instant::now();
                match self.snapshot.take(dir.clone()) {
                    Ok(bytes) => {
                        log::info!("control API: snapshot in {:?}", started.elapsed());
                        Response::json(
                            200,
                            json!({ "dir": dir, "memory_bytes": bytes, "state": "paused" }),
                        )
                    }
                    Err(e) => Response::error(500, e.to_string()),
                }
            }
        }
    }

    fn info(&self) -> Value {
        let devices: Vec<Value> = self.devices.iter().map(|d| d.to_json()).collect();
        json!({
            "state": self.state(),
            "uptime_ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "config": self.config,
            "devices": devices,
        })
    }
}

/// The VM's configuration as the info shows it.
pub(crate) fn config_json(config: &crate::VmConfig) -> Value {
    use crate::{CharBackend, Initrd};
    let backend = |b: &CharBackend| match b {
        CharBackend::Off => "off".to_string(),
        CharBackend::Stdio => "stdio".into(),
        CharBackend::Stdout => "stdout".into(),
        CharBackend::File(path, _) => format!("file={}", path.display()),
        CharBackend::Pty => "pty".into(),
        CharBackend::Socket(path) => format!("socket={}", path.display()),
        CharBackend::BoundSocket(s) => format!("socket={}", s.path().display()),
        CharBackend::Writer(_) => "writer".into(),
    };
    let limits = |r: &crate::RateLimitConfig| {
        json!({
            "bytes_per_s": r.bytes.map(|b| b.rate),
            "ops_per_s": r.ops.map(|b| b.rate),
        })
    };
    let disks: Vec<Value> = config
        .disks
        .iter()
        .map(|d| {
            json!({
                "path": d.path.display().to_string(),
                "format": d.format.map(|f| format!("{f:?}").to_lowercase()),
                "read_only": d.read_only,
                "snapshot": d.snapshot,
                "id": d.id,
                "aio": format!("{:?}", d.aio).to_lowercase(),
                "rate_limit": limits(&d.rate_limit),
            })
        })
        .collect();
    let nets: Vec<Value> = config
        .nets
        .iter()
        .map(|n| {
            json!({
                "tap": n.tap,
                "mac": devices::virtio::net::format_mac(&n.guest_mac()),
                "rate_limit": limits(&n.rate_limit),
            })
        })
        .collect();
    json!({
        "kernel": config.kernel.display().to_string(),
        "initrd": config.initrd.as_ref().map(|i| match i {
            Initrd::File(p) => p.display().to_string(),
            Initrd::Bytes(_) => "(in memory)".to_string(),
        }),
        "cmdline": config.cmdline,
        "vcpus": config.vcpus,
        "memory_bytes": config.memory_bytes,
        "disks": disks,
        "nets": nets,
        "serial": backend(&config.serial),
        "console": backend(&config.console),
        "vsock": config.vsock.as_ref().map(|v| json!({
            "cid": v.cid,
            "socket": v.socket.display().to_string(),
        })),
        "irqchip": format!("{:?}", config.irqchip).to_lowercase(),
        "acpi": config.acpi,
        "seccomp": match config.seccomp {
            crate::SeccompMode::Off => "off",
            crate::SeccompMode::VcpusOnly => "vcpus",
            crate::SeccompMode::AllThreads => "all threads",
        },
        "shutdown_timeout_ms": u64::try_from(config.shutdown_timeout.as_millis()).unwrap_or(u64::MAX),
        "api_socket": config.api_socket.as_ref().map(|s| s.path().display().to_string()),
    })
}

/// One client's connection.
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
    /// The answer, once there is one, and how much of it was written.
    out: Option<(Vec<u8>, usize)>,
}

/// The running API thread: ask it to stop, then join it.
pub(crate) struct ApiThread {
    stop: Arc<EventFd>,
    handle: JoinHandle<()>,
    /// Held here, not by the thread: the file is removed when this drops, on the thread that
    /// stops the API (whose filter has the calls for it; the API thread's has not).
    _socket: ApiSocket,
}

impl ApiThread {
    /// Starts the thread on `socket`. It installs `filter` first thing; the receiver hears once
    /// it has (or has ended).
    pub(crate) fn start(
        socket: ApiSocket,
        control: Control,
        filter: Option<BpfProgram>,
    ) -> Result<(ApiThread, mpsc::Receiver<()>)> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?);
        let (filtered, ready) = mpsc::sync_channel(1);
        let thread_stop = stop.clone();
        let listener = socket.0.listener().as_raw_fd();
        let handle = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                if let Some(program) = filter {
                    if let Err(e) = crate::seccomp::apply(ThreadKind::Api, &program, "api") {
                        log::error!("control API thread: {e}; the API is not served");
                        return;
                    }
                }
                let _ = filtered.send(());
                serve(listener, &control, &thread_stop);
            })
            .map_err(|source| Error::Thread {
                name: "api".into(),
                source,
            })?;
        Ok((
            ApiThread {
                stop,
                handle,
                _socket: socket,
            },
            ready,
        ))
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.handle.join();
    }
}

/// The API thread's loop, until `stop` fires.
fn serve(listener: RawFd, control: &Control, stop: &EventFd) {
    let mut clients: Vec<Client> = Vec::new();
    // Set when accept4 failed for want of a descriptor (or memory): the connection stays queued
    // and the listener readable, so it is left out of poll until then instead of spinning.
    let mut accept_again: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let accepting = accept_again.is_none_or(|t| t <= now);
        if accepting {
            accept_again = None;
        }
        // Clients whose time is up: a 408 if it goes out at once, then closed.
        clients.retain_mut(|c| {
            if c.deadline > now {
                return true;
            }
            if c.out.is_none() {
                log::debug!("control API: a client took over {REQUEST_TIMEOUT:?}; dropped");
                let _ = c
                    .stream
                    .write(&Response::error(408, "the request took too long").to_bytes());
            }
            false
        });
        let mut fds = vec![
            pollfd(stop.as_raw_fd(), libc::POLLIN),
            // A negative fd is ignored by poll(2).
            pollfd(if accepting { listener } else { -1 }, libc::POLLIN),
        ];
        let first_client = fds.len();
        for c in &clients {
            let events = match c.out {
                Some(_) => libc::POLLOUT,
                None => libc::POLLIN,
            };
            fds.push(pollfd(c.stream.as_raw_fd(), events));
        }
        let timeout = clients
            .iter()
            .map(|c| c.deadline)
            .chain(accept_again)
            .map(|t| t.saturating_duration_since(now))
            .min()
            .map_or(-1, |d| {
                i32::try_from(d.as_millis().saturating_add(1)).unwrap_or(i32::MAX)
            });
        // SAFETY: `fds` is a valid array of fds.len() pollfd structures for the call's length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            log::error!("control API: poll failed: {e}; the API stops");
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        let ready: Vec<bool> = fds[first_client..].iter().map(|f| f.revents != 0).collect();
        let mut keep = Vec::with_capacity(clients.len());
        for (mut c, ready) in clients.drain(..).zip(ready) {
            if !ready || step(&mut c, control) {
                keep.push(c);
            }
        }
        clients = keep;
        if fds[1].revents != 0 && !accept(listener, &mut clients) {
            accept_again = Some(Instant::now() + ACCEPT_BACKOFF);
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Takes the waiting connections (at most [`MAX_CLIENTS`] per call). With [`MAX_CLIENTS`] held
/// already, the one that has had the longest to send its request is dropped for the newcomer:
/// silent connections cannot keep a client that talks at once from being served. Returns false
/// when accept4 failed otherwise than for want of a connection (EMFILE, ENOMEM…).
fn accept(listener: RawFd, clients: &mut Vec<Client>) -> bool {
    for _ in 0..MAX_CLIENTS {
        // SAFETY: accept4 on our listening socket, without an address buffer.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted {
                return true;
            }
            log::debug!("control API: accept: {e}; trying again in {ACCEPT_BACKOFF:?}");
            return false;
        }
        if clients.len() >= MAX_CLIENTS {
            let oldest = (0..clients.len()).min_by_key(|&i| clients[i].deadline);
            if let Some(i) = oldest {
                log::debug!("control API: {MAX_CLIENTS} clients at once; dropped the oldest");
                clients.swap_remove(i);
            }
        }
        clients.push(Client {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            stream: unsafe { UnixStream::from_raw_fd(fd) },
            buf: Vec::new(),
            deadline: Instant::now() + REQUEST_TIMEOUT,
            out: None,
        });
    }
    true
}

/// Serves one ready client; returns whether to keep it.
fn step(c: &mut Client, control: &Control) -> bool {
    if let Some((out, written)) = &mut c.out {
        return match c.stream.write(&out[*written..]) {
            Ok(n) => {
                *written += n;
                *written < out.len()
            }
            Err(e) => e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted,
        };
    }
    let mut chunk = [0u8; 4096];
    match c.stream.read(&mut chunk) {
        Ok(0) => return false,
        Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
        Err(e) => return e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted,
    }
    let response = match parse(&c.buf) {
        Parsed::Partial => return true,
        Parsed::Refused(r) => {
            log::debug!("control API: refused a request: {}", r.body);
            r
        }
        Parsed::Complete(req) => match route(&req) {
            Ok(action) => control.act(action),
            Err(r) => r,
        },
    };
    c.buf = Vec::new();
    c.out = Some((response.to_bytes(), 0));
    // Written at once when it fits in the socket's buffer, else as the client reads.
    step(c, control)
}

/// The API thread's calls, on top of the calls every thread has: poll, accept4 (sockets made
/// non-blocking and close-on-exec by it), recv and send, and the vCPU kick signal (`tgkill`, in
/// `seccomp::rules`). Closing, the eventfds and the futexes are common calls.
pub(crate) const API_SYSCALLS: &[SyscallRule] = &[
    SyscallRule::Any(libc::SYS_poll),
    SyscallRule::Any(libc::SYS_ppoll),
    SyscallRule::Any(libc::SYS_accept4),
    // std reads a socket with recv(2), that is recvfrom without an address.
    SyscallRule::Any(libc::SYS_recvfrom),
    // std writes a socket with send(2): `sendto` without a destination, which every filter
    // allows (`seccomp::rules`).
    SyscallRule::SendConnected,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_whole_request_is_parsed_with_its_body() {
        let raw = b"PUT /vm/snapshot HTTP/1.1\r\nHost: localhost\r\nContent-Length: 13\r\n\r\n{\"dir\":\"/x\"}\n";
        assert_eq!(
            parse(raw),
            Parsed::Complete(req("PUT", "/vm/snapshot", "{\"dir\":\"/x\"}\n"))
        );
        assert_eq!(
            parse(b"GET /vm HTTP/1.1\r\n\r\n"),
            Parsed::Complete(req("GET", "/vm", ""))
        );
    }

    #[test]
    fn requests_cut_anywhere_are_partial() {
        let raw = b"PUT /vm/snapshot HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"dir\":\"x\"}";
        for end in 0..raw.len() {
            assert_eq!(parse(&raw[..end]), Parsed::Partial, "{end}");
        }
    }

    fn status(p: Parsed) -> u16 {
        match p {
            Parsed::Refused(r) => r.status,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn garbage_and_oversized_requests_are_refused() {
        assert_eq!(status(parse(b"\x00\x01\x02 garbage\r\n\r\n")), 400);
        assert_eq!(status(parse(b"GET /vm HTTP/1.0\r\n\r\n")), 505);
        assert_eq!(
            status(parse(b"GET /vm HTTP/1.1\r\nContent-Length: x\r\n\r\n")),
            400
        );
        assert_eq!(
            status(parse(b"GET /vm HTTP/1.1\r\nContent-Length: -1\r\n\r\n")),
            400
        );
        assert_eq!(
            status(parse(
                b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )),
            400
        );
        let huge = format!(
            "PUT /vm/pause HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            1 << 30
        );
        assert_eq!(status(parse(huge.as_bytes())), 413);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let raw = format!("GET /vm HTTP/1.1\r\n{many}\r\n");
        assert_eq!(status(parse(raw.as_bytes())), 431);
        // A head that never ends is refused once it passes the limit, not buffered for ever.
        let long = format!("GET /vm HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(status(parse(long.as_bytes())), 431);
    }

    #[test]
    fn routes_map_to_actions() {
        assert_eq!(route(&req("GET", "/vm", "")), Ok(Action::Info));
        assert_eq!(route(&req("PUT", "/vm/pause", "")), Ok(Action::Pause));
        assert_eq!(route(&req("PUT", "/vm/pause", "{}")), Ok(Action::Pause));
        assert_eq!(route(&req("PUT", "/vm/resume", "")), Ok(Action::Resume));
        assert_eq!(route(&req("PUT", "/vm/shutdown", "")), Ok(Action::Shutdown));
        assert_eq!(
            route(&req("PUT", "/vm/snapshot", r#"{"dir":"/s"}"#)),
            Ok(Action::Snapshot("/s".into()))
        );
    }

    #[test]
    fn wrong_routes_are_refused_with_the_right_status() {
        let s = |r: Request| route(&r).unwrap_err().status;
        assert_eq!(s(req("GET", "/nope", "")), 404);
        assert_eq!(s(req("GET", "/vm/pause", "")), 405);
        assert_eq!(
            route(&req("PUT", "/vm", "")).unwrap_err().allow,
            Some("GET")
        );
        assert_eq!(s(req("PUT", "/vm/pause", "junk")), 400);
        assert_eq!(s(req("PUT", "/vm/snapshot", "")), 400);
        assert_eq!(s(req("PUT", "/vm/snapshot", r#"{"dir":7}"#)), 400);
    }

    #[test]
    fn answers_are_http_with_a_json_body() {
        let bytes = Response::error(404, "no").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 14\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"error\":\"no\"}"), "{text}");
    }
}
