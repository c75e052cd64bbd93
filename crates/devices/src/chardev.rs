//! Character backends for the guest's consoles (the 8250 on COM1 and virtio-console): where guest
//! output goes and where host input comes from.
//!
//! A [`Chardev`] is one of: nothing, the process's stdout (optionally with stdin as input), a file,
//! any `Write`, a pseudo-terminal, or a unix socket (one client at a time). It offers two ways to
//! write, one per kind of device:
//!
//! * [`Chardev::write`] never blocks and never drops while someone is listening: it answers
//!   `ErrorKind::WouldBlock` when the host side cannot take more, and the owner (virtio-console)
//!   stops consuming guest output until [`ChardevReady::writable`] says so.
//! * [`Chardev::write_lossy`] is for a device that cannot wait (the UART, written from a vCPU
//!   thread): stdout, files and writers are written synchronously (the vCPU waits, as a UART with
//!   flow control would); a pty or socket that cannot take more gets the bytes in a bounded
//!   backlog ([`BACKLOG_LIMIT`]) that the event loop drains; what does not fit is counted as lost.
//!
//! While a socket has no client, output of either kind goes to the same bounded backlog, which is
//! replayed to the next client; what does not fit is counted and logged.
//!
//! The event-loop side: the owner's event-manager subscriber calls [`Chardev::update_interest`]
//! after anything that may have changed what the backend waits for (input paused, output blocked,
//! a client gone), and hands every event on a file descriptor the chardev owns
//! ([`Chardev::owns`]) to [`Chardev::handle_event`].

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events};
use log::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::{SyscallRule, Syscalls};
use crate::Error;

/// How much output a backend keeps while nobody can take it (a socket without a client, a
/// pty or socket that is not reading fast enough for a device that cannot wait): 1 MiB.
pub const BACKLOG_LIMIT: usize = 1 << 20;
/// The largest write to stdout after a POLLOUT (a pipe takes this much without blocking).
const STDOUT_CHUNK: usize = 4096;

/// Where the output goes.
enum Out {
    Null,
    /// The process's standard output, shared with others: never made non-blocking; `write`
    /// polls it before each write of at most [`STDOUT_CHUNK`] bytes.
    Stdout,
    File(File),
    Writer(Box<dyn Write + Send>),
    /// The primary side of a pseudo-terminal (non-blocking), also the input.
    Pty {
        primary: File,
        /// Held open so the pty never reports a hang-up and keeps its raw settings.
        _secondary: File,
        path: PathBuf,
    },
    /// A listening unix socket and its current client (non-blocking), also the input.
    Socket {
        listener: UnixListener,
        client: Option<UnixStream>,
        path: PathBuf,
    },
}

/// What [`Chardev::handle_event`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChardevReady {
    /// Input can be read with [`Chardev::read_input`].
    pub input: bool,
    /// Output that was blocked can go on (the backlog is empty again).
    pub writable: bool,
}

/// One character backend. See the module documentation.
pub struct Chardev {
    /// "serial" or "console", for log messages.
    name: &'static str,
    out: Out,
    /// The input of the output-only kinds: a duplicate of stdin for stdio, or what
    /// [`Chardev::with_input`] added.
    input: Option<File>,
    /// Output waiting for the host side (bounded by [`BACKLOG_LIMIT`]).
    backlog: Vec<u8>,
    /// The owner got `WouldBlock` and waits for [`ChardevReady::writable`].
    blocked: bool,
    /// Bytes of guest output that were dropped.
    lost: u64,
    loss_logged: bool,
    /// The owner does not want input now (no room in the guest).
    input_paused: bool,
    /// Input ended (EOF, an error, or an fd epoll cannot watch).
    input_done: bool,
    /// Clients gone while no `EventOps` was at hand; unregistered and dropped by `update_interest`.
    stale: Vec<UnixStream>,
    /// Wakes the event loop when a write from another thread left work for it.
    wake: EventFd,
    wake_sent: bool,
    /// The file descriptors registered with the owner's epoll, and for what.
    registered: Vec<(RawFd, EventSet)>,
}

fn wake_event() -> Result<EventFd, Error> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|error| Error::EventFd {
        what: "console backend",
        error,
    })
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn chardev_err(what: String) -> impl FnOnce(io::Error) -> Error {
    move |error| Error::Chardev { what, error }
}

impl Chardev {
    fn with_out(name: &'static str, out: Out) -> Result<Self, Error> {
        Ok(Chardev {
            name,
            out,
            input: None,
            backlog: Vec::new(),
            blocked: false,
            lost: 0,
            loss_logged: false,
            input_paused: false,
            input_done: false,
            stale: Vec::new(),
            wake: wake_event()?,
            wake_sent: false,
            registered: Vec::new(),
        })
    }

    /// Output discarded, no input.
    pub fn null(name: &'static str) -> Result<Self, Error> {
        Self::with_out(name, Out::Null)
    }

    /// Output to the process's stdout; with `input`, a duplicate of stdin is the input.
    pub fn stdio(name: &'static str, input: bool) -> Result<Self, Error> {
        let mut dev = Self::with_out(name, Out::Stdout)?;
        if input {
            // SAFETY: dup of our own stdin; the new descriptor is owned by the File below.
            let fd = unsafe { libc::dup(libc::STDIN_FILENO) };
            if fd < 0 {
                return Err(Error::Chardev {
                    what: "cannot duplicate stdin".into(),
                    error: io::Error::last_os_error(),
                });
            }
            // SAFETY: `fd` is a freshly duplicated descriptor nobody else owns.
            dev.input = Some(unsafe { File::from_raw_fd(fd) });
        }
        Ok(dev)
    }

    /// Output to `path`, created or truncated; no input.
    pub fn file(name: &'static str, path: &Path) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .map_err(chardev_err(format!("cannot create '{}'", path.display())))?;
        Self::with_out(name, Out::File(file))
    }

    /// Output to any writer (written synchronously); no input.
    pub fn writer(name: &'static str, writer: Box<dyn Write + Send>) -> Result<Self, Error> {
        Self::with_out(name, Out::Writer(writer))
    }

    /// A new pseudo-terminal: the guest is on the primary side; the secondary (see
    /// [`Chardev::pty_path`]) is in raw mode, for a terminal program to open.
    pub fn pty(name: &'static str) -> Result<Self, Error> {
        let err = |what: &str| chardev_err(format!("cannot create a pty: {what}"));
        // SAFETY: posix_openpt takes flags only and returns a new descriptor or -1.
        let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(err("posix_openpt")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let primary = unsafe { File::from_raw_fd(fd) };
        // SAFETY: grantpt and unlockpt on the primary we just opened.
        if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
            return Err(err("grantpt/unlockpt")(io::Error::last_os_error()));
        }
        let mut buf = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes at most buf.len() bytes (NUL included) into `buf`.
        let ret = unsafe { libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()) };
        if ret != 0 {
            return Err(err("ptsname")(io::Error::from_raw_os_error(ret)));
        }
        // SAFETY: on success ptsname_r wrote a NUL-terminated string into `buf`.
        let cpath = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        let path = PathBuf::from(cpath.to_string_lossy().into_owned());
        let secondary = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .map_err(err("open the secondary"))?;
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut tio: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: the secondary is a terminal and `tio` is writable.
        if unsafe { libc::tcgetattr(secondary.as_raw_fd(), &mut tio) } != 0 {
            return Err(err("tcgetattr")(io::Error::last_os_error()));
        }
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut tio) };
        // SAFETY: the secondary is a terminal and `tio` a valid termios.
        if unsafe { libc::tcsetattr(secondary.as_raw_fd(), libc::TCSANOW, &tio) } != 0 {
            return Err(err("tcsetattr")(io::Error::last_os_error()));
        }
        set_nonblocking(fd).map_err(err("O_NONBLOCK"))?;
        Self::with_out(
            name,
            Out::Pty {
                primary,
                _secondary: secondary,
                path,
            },
        )
    }

    /// A unix socket listening at `path` (a stale socket there is replaced). One client at a
    /// time: while one is connected, further clients are accepted and closed at once.
    pub fn socket(name: &'static str, path: &Path) -> Result<Self, Error> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let what = || format!("cannot listen on unix socket '{}'", path.display());
        let listener = UnixListener::bind(path).map_err(chardev_err(what()))?;
        listener
            .set_nonblocking(true)
            .map_err(chardev_err(what()))?;
        Self::with_out(
            name,
            Out::Socket {
                listener,
                client: None,
                path: path.to_path_buf(),
            },
        )
    }

    /// The secondary side of a pty backend (e.g. `/dev/pts/3`).
    pub fn pty_path(&self) -> Option<&Path> {
        match &self.out {
            Out::Pty { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Whether this backend is the process's stdio.
    pub fn is_stdio(&self) -> bool {
        matches!(self.out, Out::Stdout)
    }

    /// Whether the backend can ever produce input.
    pub fn has_input(&self) -> bool {
        match &self.out {
            Out::Pty { .. } | Out::Socket { .. } => true,
            _ => self.input.is_some(),
        }
    }

    /// Whether input has ended for good (EOF, an error, or an fd epoll cannot watch).
    pub fn input_finished(&self) -> bool {
        self.input_done
    }

    /// Adds `input` (e.g. a pipe) as the input of a backend that has none of its own (null,
    /// stdout, file, writer); pty and socket backends ignore it.
    pub fn with_input(mut self, input: File) -> Self {
        self.input = Some(input);
        self
    }

    /// Bytes of guest output dropped so far.
    pub fn lost_bytes(&self) -> u64 {
        self.lost
    }

    /// Bytes of output waiting in the backlog.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Whether a socket backend has a client (always true for the other kinds).
    pub fn connected(&self) -> bool {
        !matches!(&self.out, Out::Socket { client: None, .. })
    }

    fn lose(&mut self, n: usize, why: &str) {
        if n == 0 {
            return;
        }
        self.lost += n as u64;
        if !self.loss_logged {
            warn!(
                "{}: {why}: guest output is being dropped (counted; total logged at exit)",
                self.name
            );
            self.loss_logged = true;
        }
    }

    /// Keeps `buf` for later, up to the backlog limit; the rest is lost.
    fn keep(&mut self, buf: &[u8]) {
        let room = BACKLOG_LIMIT.saturating_sub(self.backlog.len());
        let n = room.min(buf.len());
        self.backlog.extend_from_slice(&buf[..n]);
        self.lose(buf.len() - n, "the 1 MiB output backlog is full");
    }

    /// Drops the socket client (kept until `update_interest` unregisters it).
    fn disconnect(&mut self) {
        if let Out::Socket { client, path, .. } = &mut self.out {
            if let Some(c) = client.take() {
                info!("{}: client of '{}' disconnected", self.name, path.display());
                self.stale.push(c);
            }
        }
        self.blocked = false;
    }

    /// One attempt to hand bytes to the host side without blocking (stdout: after a poll).
    /// `Ok(None)` means a socket without a client.
    fn raw_write(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        let result = match &mut self.out {
            Out::Null => Ok(buf.len()),
            Out::Stdout => {
                let mut pfd = libc::pollfd {
                    fd: libc::STDOUT_FILENO,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: poll on one valid pollfd struct, no timeout.
                let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
                if ready < 0 {
                    return Err(io::Error::last_os_error());
                }
                if ready == 0 {
                    return Err(ErrorKind::WouldBlock.into());
                }
                stdout().write(&buf[..buf.len().min(STDOUT_CHUNK)])
            }
            Out::File(f) => f.write(buf),
            Out::Writer(w) => w.write(buf).and_then(|n| w.flush().map(|()| n)),
            Out::Pty { primary, .. } => primary.write(buf),
            Out::Socket { client: None, .. } => return Ok(None),
            Out::Socket {
                client: Some(c), ..
            } => {
                // SAFETY: send from a valid buffer on a socket we own; MSG_NOSIGNAL: no SIGPIPE.
                let n = unsafe {
                    libc::send(
                        c.as_raw_fd(),
                        buf.as_ptr().cast(),
                        buf.len(),
                        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted {
                        debug!("{}: socket client write failed: {e}", self.name);
                        self.disconnect();
                        return Ok(None);
                    }
                    Err(e)
                } else {
                    Ok(n as usize)
                }
            }
        };
        match result {
            Ok(0) if !buf.is_empty() => Err(ErrorKind::WriteZero.into()),
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::Interrupted => Err(ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        }
    }

    /// Writes as much of the backlog as the host side takes now.
    fn flush_backlog(&mut self) {
        while !self.backlog.is_empty() {
            let chunk = self.backlog.len().min(64 << 10);
            let backlog = std::mem::take(&mut self.backlog);
            let result = self.raw_write(&backlog[..chunk]);
            self.backlog = backlog;
            match result {
                Ok(Some(n)) => {
                    self.backlog.drain(..n);
                }
                Ok(None) => return,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    let n = self.backlog.len();
                    self.backlog.clear();
                    self.lose(n, &format!("output failed ({e})"));
                }
            }
        }
    }

    /// Writes guest output without blocking: `Ok(n)` for the first `n` bytes taken (kept in the
    /// backlog while a socket has no client), `Err(WouldBlock)` when the host side is full: the
    /// caller keeps the bytes and waits for [`ChardevReady::writable`] after calling
    /// [`Chardev::update_interest`]. Output that cannot be written at all (an I/O error such as a
    /// closed pipe) is counted as lost and reported as written, so the guest never stalls on it.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_backlog();
        if !self.backlog.is_empty() {
            if self.connected() {
                self.blocked = true;
                return Err(ErrorKind::WouldBlock.into());
            }
            self.keep(buf);
            return Ok(buf.len());
        }
        match self.raw_write(buf) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => {
                self.keep(buf);
                Ok(buf.len())
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.blocked = true;
                Err(e)
            }
            Err(e) => {
                self.lose(buf.len(), &format!("output failed ({e})"));
                Ok(buf.len())
            }
        }
    }

    /// Writes guest output for a device that cannot wait: see the module documentation. Safe to
    /// call from any thread; wakes the event loop when it left bytes in the backlog.
    pub fn write_lossy(&mut self, buf: &[u8]) {
        let result = match &mut self.out {
            Out::Stdout => stdout().write_all(buf),
            Out::File(f) => f.write_all(buf),
            Out::Writer(w) => w.write_all(buf).and_then(|()| w.flush()),
            Out::Null => Ok(()),
            Out::Pty { .. } | Out::Socket { .. } => {
                let mut rest = buf;
                while !rest.is_empty() {
                    if !self.backlog.is_empty() {
                        self.flush_backlog();
                    }
                    if !self.backlog.is_empty() {
                        break;
                    }
                    match self.raw_write(rest) {
                        Ok(Some(n)) => rest = &rest[n..],
                        Ok(None) => break,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => {
                            self.lose(rest.len(), &format!("output failed ({e})"));
                            rest = &[];
                        }
                    }
                }
                self.keep(rest);
                Ok(())
            }
        };
        if let Err(e) = result {
            self.lose(buf.len(), &format!("output failed ({e})"));
        }
        if (!self.backlog.is_empty() || !self.stale.is_empty()) && !self.wake_sent {
            self.wake_sent = true;
            if let Err(e) = self.wake.write(1) {
                debug!("{}: cannot wake the event loop: {e}", self.name);
            }
        }
    }

    /// Reads host input into `buf`; 0 when there is none now. End of input (stdin EOF, an
    /// error) stops input for good; a socket client that leaves makes room for the next one.
    pub fn read_input(&mut self, buf: &mut [u8]) -> usize {
        if self.input_done || buf.is_empty() {
            return 0;
        }
        let result = match &mut self.out {
            Out::Pty { primary, .. } => primary.read(buf),
            Out::Socket {
                client: Some(c), ..
            } => c.read(buf),
            Out::Socket { client: None, .. } => return 0,
            _ => match &mut self.input {
                Some(f) => f.read(buf),
                None => return 0,
            },
        };
        match result {
            Ok(0) => {
                if matches!(self.out, Out::Socket { .. }) {
                    self.disconnect();
                } else {
                    debug!("{}: end of input", self.name);
                    self.input_done = true;
                }
                0
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
            Err(e) => {
                if matches!(self.out, Out::Socket { .. }) {
                    self.disconnect();
                } else {
                    debug!("{}: not reading input any more: {e}", self.name);
                    self.input_done = true;
                }
                0
            }
        }
    }

    /// Stops (or resumes) watching the input; takes effect at the next `update_interest`.
    pub fn set_input_paused(&mut self, paused: bool) {
        self.input_paused = paused;
    }

    /// Whether a file descriptor belongs to this backend.
    pub fn owns(&self, fd: RawFd) -> bool {
        fd == self.wake.as_raw_fd() || self.registered.iter().any(|(f, _)| *f == fd)
    }

    fn input_fd(&self) -> Option<RawFd> {
        match &self.out {
            Out::Pty { primary, .. } => Some(primary.as_raw_fd()),
            Out::Socket { client, .. } => client.as_ref().map(|c| c.as_raw_fd()),
            _ => self.input.as_ref().map(|f| f.as_raw_fd()),
        }
    }

    fn output_fd(&self) -> Option<RawFd> {
        match &self.out {
            Out::Stdout => Some(libc::STDOUT_FILENO),
            Out::Pty { primary, .. } => Some(primary.as_raw_fd()),
            Out::Socket {
                client: Some(c), ..
            } => Some(c.as_raw_fd()),
            _ => None,
        }
    }

    /// Registers the wake event; call from the owner's `init`, then [`Chardev::update_interest`].
    pub fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            warn!("{}: cannot watch the backend wake event: {e}", self.name);
        }
        self.update_interest(ops);
    }

    /// Brings the epoll registrations in line with what the backend waits for now.
    pub fn update_interest(&mut self, ops: &mut EventOps) {
        let mut want: Vec<(RawFd, EventSet)> = Vec::new();
        let mut add = |fd: RawFd, set: EventSet| match want.iter_mut().find(|(f, _)| *f == fd) {
            Some((_, s)) => *s |= set,
            None => want.push((fd, set)),
        };
        if let Out::Socket { listener, .. } = &self.out {
            add(listener.as_raw_fd(), EventSet::IN);
        }
        if !self.input_paused && !self.input_done {
            if let Some(fd) = self.input_fd() {
                add(fd, EventSet::IN | EventSet::READ_HANG_UP);
            }
        }
        if self.blocked || !self.backlog.is_empty() {
            if let Some(fd) = self.output_fd() {
                add(fd, EventSet::OUT);
            }
        }
        for (fd, set) in std::mem::take(&mut self.registered) {
            match want.iter().find(|(f, _)| *f == fd) {
                None => {
                    if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                        debug!("{}: cannot unwatch fd {fd}: {e}", self.name);
                    }
                }
                Some(&(_, w)) if w == set => self.registered.push((fd, set)),
                Some(&(_, w)) => match ops.modify(Events::new_raw(fd, w)) {
                    Ok(()) => self.registered.push((fd, w)),
                    Err(e) => debug!("{}: cannot re-watch fd {fd}: {e}", self.name),
                },
            }
        }
        for (fd, set) in want {
            if self.registered.iter().any(|(f, _)| *f == fd) {
                continue;
            }
            match ops.add(Events::new_raw(fd, set)) {
                Ok(()) => self.registered.push((fd, set)),
                Err(e) => {
                    // Regular files and /dev/null cannot be watched: they never block, and as
                    // input they are not a console.
                    debug!("{}: cannot watch fd {fd}: {e}", self.name);
                    if Some(fd) == self.input_fd() && set.contains(EventSet::IN) {
                        self.input_done = true;
                    }
                }
            }
        }
        self.stale.clear();
    }

    /// Handles an event on one of the backend's descriptors; the caller then reads input and/or
    /// resumes output as the answer says, and calls [`Chardev::update_interest`].
    pub fn handle_event(&mut self, events: &Events) -> ChardevReady {
        let fd = events.fd();
        let set = events.event_set();
        let mut ready = ChardevReady::default();
        if fd == self.wake.as_raw_fd() {
            let _ = self.wake.read();
            self.wake_sent = false;
            return ready;
        }
        if let Out::Socket {
            listener,
            client,
            path,
        } = &mut self.out
        {
            if fd == listener.as_raw_fd() {
                match listener.accept() {
                    Ok((stream, _)) if client.is_none() => {
                        if let Err(e) = stream.set_nonblocking(true) {
                            warn!("{}: cannot make the client non-blocking: {e}", self.name);
                            return ready;
                        }
                        info!("{}: client connected to '{}'", self.name, path.display());
                        *client = Some(stream);
                        self.flush_backlog();
                        ready.writable = self.backlog.is_empty();
                        ready.input = true;
                    }
                    Ok((stream, _)) => {
                        info!(
                            "{}: refused a second client on '{}' (one at a time)",
                            self.name,
                            path.display()
                        );
                        drop(stream);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => debug!("{}: accept failed: {e}", self.name),
                }
                return ready;
            }
        }
        if Some(fd) == self.output_fd() && set.intersects(EventSet::OUT | EventSet::ERROR) {
            self.flush_backlog();
            if self.backlog.is_empty() {
                self.blocked = false;
                ready.writable = true;
            }
        }
        if Some(fd) == self.input_fd()
            && set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP)
        {
            ready.input = true;
        }
        if matches!(self.out, Out::Socket { .. })
            && Some(fd) == self.input_fd()
            && set.intersects(EventSet::HANG_UP | EventSet::ERROR)
            && !set.contains(EventSet::IN)
        {
            self.disconnect();
            ready.input = false;
        }
        ready
    }
}

/// fd 1 as a `File` that is never closed.
fn stdout() -> ManuallyDrop<File> {
    // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop never closes it.
    ManuallyDrop::new(unsafe { File::from_raw_fd(libc::STDOUT_FILENO) })
}

impl Drop for Chardev {
    fn drop(&mut self) {
        if !self.backlog.is_empty() {
            let n = self.backlog.len();
            self.lose(n, "output still waiting at exit");
        }
        if self.lost > 0 {
            warn!(
                "{}: {} bytes of guest output were dropped",
                self.name, self.lost
            );
        }
        match &self.out {
            Out::Socket { path, .. } => {
                let _ = std::fs::remove_file(path);
            }
            Out::Pty { _secondary, .. } => drain_pty(self.name, _secondary),
            _ => {}
        }
    }
}

/// How long the VM's end waits for a pty's reader to take the output still queued for it.
const PTY_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How many checks in a row, [`PTY_DRAIN_STEP`] apart, must find the pty's queue empty.
const PTY_DRAIN_EMPTY_CHECKS: u32 = 3;
const PTY_DRAIN_STEP: std::time::Duration = std::time::Duration::from_millis(10);

/// Waits, at most [`PTY_DRAIN_LIMIT`], until nothing is left to read on the pty's secondary side.
/// Closing the primary hangs the secondary up, and the hang-up discards what its reader has not
/// read yet: without this wait the guest's last lines before it stops could be lost. What the
/// primary wrote reaches the secondary's queue from a kernel work item, a little later: so the
/// queue must be found empty several times in a row.
fn drain_pty(name: &str, secondary: &File) {
    let start = std::time::Instant::now();
    let mut empty = 0;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD on a terminal we own writes one int into `queued`, which outlives the call.
        if unsafe { libc::ioctl(secondary.as_raw_fd(), libc::FIONREAD, &mut queued) } != 0 {
            return;
        }
        if queued <= 0 {
            empty += 1;
            if empty >= PTY_DRAIN_EMPTY_CHECKS {
                return;
            }
        } else {
            empty = 0;
        }
        if start.elapsed() >= PTY_DRAIN_LIMIT {
            warn!("{name}: {queued} bytes of guest output were not read from the pty before exit");
            return;
        }
        std::thread::sleep(PTY_DRAIN_STEP);
    }
}

impl std::fmt::Debug for Chardev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.out {
            Out::Null => "null",
            Out::Stdout => "stdio",
            Out::File(_) => "file",
            Out::Writer(_) => "writer",
            Out::Pty { .. } => "pty",
            Out::Socket { .. } => "socket",
        };
        f.debug_struct("Chardev")
            .field("name", &self.name)
            .field("kind", &kind)
            .field("backlog", &self.backlog.len())
            .field("lost", &self.lost)
            .finish()
    }
}

/// The stdio backend's system calls once the guest runs. Output (from the UART on a vCPU thread,
/// from virtio-console on the event loop) is written to stdout after a poll for room; input is
/// read from stdin on the event loop, where the terminal's mode (raw while a stdio console runs
/// on a terminal) is checked and restored when the VM ends.
pub const STDIO_SYSCALLS: Syscalls = Syscalls {
    name: "chardev stdio",
    vcpu: &[
        SyscallRule::Any(libc::SYS_write),
        SyscallRule::Any(libc::SYS_poll),
    ],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
        SyscallRule::Any(libc::SYS_poll),
        SyscallRule::Ioctl(libc::TCGETS),
        SyscallRule::Ioctl(libc::TCSETS),
        SyscallRule::Ioctl(libc::TCSETSW),
        SyscallRule::Ioctl(libc::TCSETSF),
    ],
};

/// The file backend's system calls once the guest runs: output written on either thread; the
/// event loop reads the wake-up eventfd of a backlog.
pub const FILE_SYSCALLS: Syscalls = Syscalls {
    name: "chardev file",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
    ],
};

/// The pty backend's system calls once the guest runs: output written to the primary side on
/// either thread, input read from it on the event loop; when the VM ends, the event loop waits for
/// the reader to take what is queued ([`drain_pty`]: FIONREAD and a sleep).
pub const PTY_SYSCALLS: Syscalls = Syscalls {
    name: "chardev pty",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
        SyscallRule::Ioctl(libc::FIONREAD),
        SyscallRule::Any(libc::SYS_nanosleep),
        SyscallRule::Any(libc::SYS_clock_nanosleep),
    ],
};

/// The socket backend's system calls once the guest runs. Output is sent to the connected client
/// on either thread (`send`; a `recv` tells a client that left). On the event loop, a client is
/// accepted and made non-blocking (FIONBIO), its input received, a second client shut out, and the
/// socket file removed when the VM ends.
pub const SOCKET_SYSCALLS: Syscalls = Syscalls {
    name: "chardev socket",
    vcpu: &[
        SyscallRule::SendConnected,
        SyscallRule::Any(libc::SYS_recvfrom),
        SyscallRule::Any(libc::SYS_write),
    ],
    event_loop: &[
        SyscallRule::Any(libc::SYS_accept4),
        SyscallRule::Ioctl(libc::FIONBIO),
        SyscallRule::SendConnected,
        SyscallRule::Any(libc::SYS_recvfrom),
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
        SyscallRule::Any(libc::SYS_shutdown),
        SyscallRule::Any(libc::SYS_unlink),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::SharedBuf;

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vmm-chardev-{name}-{}.sock", std::process::id()))
    }

    fn listener_fd(dev: &Chardev) -> RawFd {
        match &dev.out {
            Out::Socket { listener, .. } => listener.as_raw_fd(),
            _ => panic!("not a socket"),
        }
    }

    #[test]
    fn writer_and_null_take_everything() {
        let buf = SharedBuf::default();
        let mut dev = Chardev::writer("t", Box::new(buf.clone())).unwrap();
        assert_eq!(dev.write(b"abc").unwrap(), 3);
        dev.write_lossy(b"def");
        assert_eq!(buf.0.lock().unwrap().as_slice(), b"abcdef");
        assert!(!dev.has_input());
        let mut null = Chardev::null("t").unwrap();
        assert_eq!(null.write(&[0; 100]).unwrap(), 100);
        assert_eq!(null.lost_bytes(), 0);
    }

    #[test]
    fn file_backend_truncates_and_appends() {
        let path = std::env::temp_dir().join(format!("vmm-chardev-{}.txt", std::process::id()));
        std::fs::write(&path, b"old contents").unwrap();
        let mut dev = Chardev::file("t", &path).unwrap();
        dev.write_lossy(b"one ");
        assert_eq!(dev.write(b"two").unwrap(), 3);
        drop(dev);
        assert_eq!(std::fs::read(&path).unwrap(), b"one two");
        let _ = std::fs::remove_file(&path);
    }

    /// Without a client output is kept up to the limit, the rest counted; a client gets the
    /// backlog in order; a second client is refused.
    #[test]
    fn socket_keeps_a_bounded_backlog_until_a_client_comes() {
        let path = socket_path("backlog");
        let mut dev = Chardev::socket("t", &path).unwrap();
        assert!(!dev.connected());
        let chunk: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut sent = 0;
        while sent < BACKLOG_LIMIT + 5000 {
            assert_eq!(dev.write(&chunk).unwrap(), chunk.len());
            sent += chunk.len();
        }
        dev.write_lossy(b"xyz");
        assert_eq!(dev.backlog_len(), BACKLOG_LIMIT);
        assert_eq!(dev.lost_bytes(), (sent + 3 - BACKLOG_LIMIT) as u64);

        let mut client = UnixStream::connect(&path).unwrap();
        let lfd = listener_fd(&dev);
        let ready = dev.handle_event(&Events::new_raw(lfd, EventSet::IN));
        assert!(dev.connected());
        assert!(ready.input);
        // The second client is accepted and closed at once.
        let mut second = UnixStream::connect(&path).unwrap();
        dev.handle_event(&Events::new_raw(lfd, EventSet::IN));
        let mut b = [0u8; 1];
        assert_eq!(second.read(&mut b).unwrap(), 0);

        // Drain: the client reads everything that was kept, in order.
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; BACKLOG_LIMIT];
            client.read_exact(&mut got).unwrap();
            got
        });
        while dev.backlog_len() > 0 {
            dev.flush_backlog();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let got = reader.join().unwrap();
        let want: Vec<u8> = chunk.iter().copied().cycle().take(BACKLOG_LIMIT).collect();
        assert!(got == want);
        drop(dev);
        assert!(!path.exists(), "socket file removed on drop");
    }

    /// A connected client that does not read: `write` reports WouldBlock and never drops.
    #[test]
    fn socket_client_that_does_not_read_backpressures() {
        let path = socket_path("slow");
        let mut dev = Chardev::socket("t", &path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        dev.handle_event(&Events::new_raw(listener_fd(&dev), EventSet::IN));
        let data = vec![7u8; 4096];
        let mut written = 0usize;
        let blocked = loop {
            match dev.write(&data) {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(written < 64 << 20, "never blocked");
        };
        assert_eq!(blocked.kind(), ErrorKind::WouldBlock);
        assert_eq!(dev.lost_bytes(), 0);
        assert_eq!(dev.backlog_len(), 0);
        // The client reads it all: exactly what was accepted.
        drop(dev);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), written);
    }

    #[test]
    fn pty_has_a_path_and_carries_bytes_both_ways() {
        let mut dev = Chardev::pty("t").unwrap();
        let path = dev.pty_path().unwrap().to_path_buf();
        assert!(path.starts_with("/dev/pts"));
        let mut secondary = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(dev.write(b"out\n").unwrap(), 4);
        let mut b = [0u8; 4];
        secondary.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"out\n", "raw mode: no \\r added");
        secondary.write_all(b"in").unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            let mut buf = [0u8; 8];
            let n = dev.read_input(&mut buf);
            got.extend_from_slice(&buf[..n]);
            if got.len() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, b"in");
    }
}
