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
//! Host files and sockets are handled with a local user in mind who can create files, symbolic
//! links and sockets where the VMM looks:
//!
//! * A file backend ([`Chardev::file`]) never follows a symbolic link (O_NOFOLLOW), creates a new
//!   file 0600, appends to an existing one unless asked to truncate it, refuses anything but a
//!   regular file with one link or /dev/null, and stops writing (counting and logging once) at a
//!   size cap ([`FileOptions::max_bytes`]).
//! * A socket backend ([`SocketFile`]) is bound inside a private 0700 directory, made 0600 there
//!   and linked into place only if nothing is at the path (so no other user can connect during
//!   the window, and no existing file is ever replaced); at the end the path is removed only if
//!   it is still that socket (same device and inode).
//! * A pty's secondary side is made 0600 (grantpt leaves it writable by the tty group).
//!
//! The event-loop side: the owner's event-manager subscriber calls [`Chardev::update_interest`]
//! after anything that may have changed what the backend waits for (input paused, output blocked,
//! a client gone), and hands every event on a file descriptor the chardev owns
//! ([`Chardev::owns`]) to [`Chardev::handle_event`].

use std::ffi::CString;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
/// The default size cap of an output file: 1 GiB.
pub const DEFAULT_FILE_MAX: u64 = 1 << 30;

/// How a file backend opens and bounds its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    /// The size the file may reach; guest output beyond it is dropped and counted.
    pub max_bytes: u64,
    /// Empty an existing file first (default: append to it). A new file is empty anyway.
    pub truncate: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            max_bytes: DEFAULT_FILE_MAX,
            truncate: false,
        }
    }
}

/// A file's identity: its device and inode numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// The device (st_dev).
    pub dev: u64,
    /// The inode (st_ino).
    pub ino: u64,
}

/// lstat(2), made as newfstatat (the call the socket backend declares for its end).
fn lstat(path: &Path) -> io::Result<libc::stat> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: a zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable stat that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_newfstatat,
            libc::AT_FDCWD,
            c.as_ptr(),
            &mut st as *mut libc::stat,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn is_socket(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFSOCK
}

/// Removes `path` if it is still the socket `id`; a file someone put in its place stays.
pub fn remove_socket_if_same(path: &Path, id: FileId) -> bool {
    match lstat(path) {
        Ok(st) if is_socket(&st) && st.st_dev == id.dev && st.st_ino == id.ino => {
            std::fs::remove_file(path).is_ok()
        }
        _ => false,
    }
}

/// Refuses a socket path where something already is: a socket a process listens on, a stale
/// socket, or any other file. Nothing found there is ever removed.
fn refuse_taken(path: &Path) -> Result<(), Error> {
    let st = match lstat(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(Error::Chardev {
                what: format!("cannot look at '{}'", path.display()),
                error,
            })
        }
        Ok(st) => st,
    };
    let path = path.to_path_buf();
    if !is_socket(&st) {
        let kind = crate::file_kind(st.st_mode).to_string();
        return Err(Error::PathTaken { path, kind });
    }
    match UnixStream::connect(&path) {
        Ok(_) => Err(Error::SocketInUse { path }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Err(Error::SocketStale { path }),
        Err(e) => Err(Error::PathTaken {
            path,
            kind: format!("a socket vmm cannot connect to: {e}"),
        }),
    }
}

/// A directory only this process can enter, next to a socket path, removed with what is in it.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(parent: &Path) -> io::Result<PrivateDir> {
        let template = parent.join(".vmm-XXXXXX");
        let mut buf = CString::new(template.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(ErrorKind::InvalidInput))?
            .into_bytes_with_nul();
        // SAFETY: `buf` is a writable NUL-terminated template ending in XXXXXX; mkdtemp fills
        // the X's in place and creates the directory with mode 0700.
        let ret = unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) };
        if ret.is_null() {
            return Err(io::Error::last_os_error());
        }
        buf.pop();
        Ok(PrivateDir(PathBuf::from(std::ffi::OsStr::from_bytes(&buf))))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A unix socket file bound by this VMM: the listener (non-blocking) and the identity of its
/// inode, so that the file is removed at the end only if it is still the one made here.
#[derive(Debug)]
pub struct SocketFile {
    listener: UnixListener,
    path: PathBuf,
    id: FileId,
}

impl SocketFile {
    /// Creates a socket at `path`, mode 0600 (whatever the umask), listening; refuses a path
    /// where anything already is (see the module documentation).
    pub fn bind(path: &Path) -> Result<SocketFile, Error> {
        let what = || format!("cannot listen on unix socket '{}'", path.display());
        refuse_taken(path)?;
        if path.file_name().is_none() {
            return Err(Error::PathTaken {
                path: path.to_path_buf(),
                kind: "not a file name".into(),
            });
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let private = PrivateDir::new(parent).map_err(chardev_err(format!(
            "cannot create a private directory in '{}' to bind '{}' in",
            parent.display(),
            path.display()
        )))?;
        let inner = private.0.join("s");
        let listener = UnixListener::bind(&inner).map_err(chardev_err(what()))?;
        std::fs::set_permissions(&inner, Permissions::from_mode(0o600))
            .map_err(chardev_err(what()))?;
        let st = lstat(&inner).map_err(chardev_err(what()))?;
        let id = FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        // link(2) never replaces what is at the path: EEXIST if someone got there first.
        if let Err(e) = std::fs::hard_link(&inner, path) {
            refuse_taken(path)?;
            return Err(chardev_err(what())(e));
        }
        drop(private);
        listener
            .set_nonblocking(true)
            .map_err(chardev_err(what()))?;
        Ok(SocketFile {
            listener,
            path: path.to_path_buf(),
            id,
        })
    }

    /// The path the socket was bound at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket (non-blocking).
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket inode's identity.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// Removes the socket file if it is still the one bound here.
    pub fn remove(&self) -> bool {
        remove_socket_if_same(&self.path, self.id)
    }
}

/// Where the output goes.
enum Out {
    Null,
    /// The process's standard output, shared with others: never made non-blocking; `write`
    /// polls it before each write of at most [`STDOUT_CHUNK`] bytes.
    Stdout,
    /// A file and its size now, which output never takes beyond `max`.
    File {
        file: File,
        size: u64,
        max: u64,
    },
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
        socket: SocketFile,
        client: Option<UnixStream>,
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
    /// The file's size cap was reached (logged once).
    cap_logged: bool,
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
            cap_logged: false,
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

    /// Output to `path`: a new file (mode 0600), or an existing regular file appended to (emptied
    /// first with `options.truncate`), or /dev/null; never through a symbolic link, never a
    /// file with more than one link. Output stops at `options.max_bytes`. No input.
    pub fn file(name: &'static str, path: &Path, options: FileOptions) -> Result<Self, Error> {
        let file = open_output_file(path, options.truncate)?;
        let size = file
            .metadata()
            .map_err(chardev_err(format!("cannot look at '{}'", path.display())))?
            .len();
        Self::with_out(
            name,
            Out::File {
                file,
                size,
                max: options.max_bytes,
            },
        )
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
        // grantpt leaves it writable by the tty group, i.e. able to type into the guest.
        secondary
            .set_permissions(Permissions::from_mode(0o600))
            .map_err(err("make the secondary 0600"))?;
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

    /// A unix socket listening at `path` ([`SocketFile::bind`]: mode 0600, refused if anything
    /// is at the path). One client at a time: while one is connected, further clients are
    /// accepted and closed at once.
    pub fn socket(name: &'static str, path: &Path) -> Result<Self, Error> {
        Self::listen(name, SocketFile::bind(path)?)
    }

    /// A socket backend on a socket bound beforehand (e.g. before a fork, so that the parent
    /// knows its identity).
    pub fn listen(name: &'static str, socket: SocketFile) -> Result<Self, Error> {
        Self::with_out(
            name,
            Out::Socket {
                socket,
                client: None,
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
        if let Out::Socket { client, socket } = &mut self.out {
            if let Some(c) = client.take() {
                info!(
                    "{}: client of '{}' disconnected",
                    self.name,
                    socket.path.display()
                );
                self.stale.push(c);
            }
        }
        self.blocked = false;
    }

    /// Counts what a file's size cap did not let through; logs the first time.
    fn over_cap(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.lost += n as u64;
        if !self.cap_logged {
            if let Out::File { max, .. } = &self.out {
                warn!(
                    "{}: the output file reached its size cap of {max} bytes: further guest \
                     output is dropped (counted; total logged at exit)",
                    self.name
                );
            }
            self.cap_logged = true;
        }
    }

    /// One attempt to hand bytes to the host side without blocking (stdout: after a poll).
    /// `Ok(None)` means a socket without a client.
    fn raw_write(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        let mut over = 0;
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
            Out::File { file, size, max } => {
                let room = usize::try_from(max.saturating_sub(*size)).unwrap_or(usize::MAX);
                if room == 0 {
                    over = buf.len();
                    Ok(buf.len())
                } else {
                    let n = file.write(&buf[..buf.len().min(room)]);
                    if let Ok(n) = n {
                        *size += n as u64;
                    }
                    n
                }
            }
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
        self.over_cap(over);
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
        let mut over = 0;
        let result = match &mut self.out {
            Out::Stdout => stdout().write_all(buf),
            Out::File { file, size, max } => {
                let room = usize::try_from(max.saturating_sub(*size)).unwrap_or(usize::MAX);
                let n = buf.len().min(room);
                over = buf.len() - n;
                let written = file.write_all(&buf[..n]);
                if written.is_ok() {
                    *size += n as u64;
                }
                written
            }
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
        self.over_cap(over);
        if let Err(e) = result {
            self.lose(buf.len() - over, &format!("output failed ({e})"));
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
        if let Out::Socket { socket, .. } = &self.out {
            add(socket.listener.as_raw_fd(), EventSet::IN);
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
        if let Out::Socket { socket, client } = &mut self.out {
            let path = &socket.path;
            if fd == socket.listener.as_raw_fd() {
                match socket.listener.accept() {
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
            Out::Socket { socket, .. } => {
                socket.remove();
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
            Out::File { .. } => "file",
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

/// Opens a file backend's file: see [`Chardev::file`].
fn open_output_file(path: &Path, truncate: bool) -> Result<File, Error> {
    let flags = libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let refused = |why: String| Error::OutputFileRefused {
        path: path.to_path_buf(),
        why,
    };
    // O_CREAT|O_EXCL: a new file, never one reached through a symbolic link.
    match OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(flags)
        .open(path)
    {
        Ok(file) => return Ok(file),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(error) => {
            return Err(Error::Chardev {
                what: format!("cannot create '{}'", path.display()),
                error,
            })
        }
    }
    let file = match OpenOptions::new()
        .append(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refused(
                "is a symbolic link, which vmm does not follow".into(),
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(refused("is a FIFO or socket".into()))
        }
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            return Err(refused("is a directory".into()))
        }
        Err(error) => {
            return Err(Error::Chardev {
                what: format!("cannot open '{}'", path.display()),
                error,
            })
        }
    };
    let meta = file
        .metadata()
        .map_err(chardev_err(format!("cannot look at '{}'", path.display())))?;
    let null = libc::makedev(1, 3);
    if meta.file_type().is_char_device() && meta.rdev() == null {
        return Ok(file);
    }
    if !meta.file_type().is_file() {
        return Err(refused(format!("is {}", crate::file_kind(meta.mode()))));
    }
    if meta.nlink() > 1 {
        return Err(refused(format!(
            "has {} hard links (another of its names may be a file you did not mean)",
            meta.nlink()
        )));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        // Someone else made it (in a shared directory, before vmm ran): they could read the
        // guest's output in it, or size it past the cap.
        return Err(refused(format!(
            "belongs to uid {}, not to vmm's uid {euid}",
            meta.uid()
        )));
    }
    if truncate {
        file.set_len(0)
            .map_err(chardev_err(format!("cannot empty '{}'", path.display())))?;
    }
    Ok(file)
}

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
        // The socket file removed at the end if it is still ours (lstat, then unlink).
        SyscallRule::Any(libc::SYS_newfstatat),
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
            Out::Socket { socket, .. } => socket.listener.as_raw_fd(),
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

    fn temp(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vmm-chardev-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn file_backend_appends_unless_asked_to_truncate() {
        let path = temp("append.txt");
        std::fs::write(&path, b"old contents ").unwrap();
        let mut dev = Chardev::file("t", &path, FileOptions::default()).unwrap();
        dev.write_lossy(b"one ");
        assert_eq!(dev.write(b"two").unwrap(), 3);
        drop(dev);
        assert_eq!(std::fs::read(&path).unwrap(), b"old contents one two");
        let truncate = FileOptions {
            truncate: true,
            ..FileOptions::default()
        };
        let mut dev = Chardev::file("t", &path, truncate).unwrap();
        dev.write_lossy(b"new");
        drop(dev);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let _ = std::fs::remove_file(&path);
    }

    /// A file another user made (say in a shared /tmp, before vmm ran) is refused: its owner could
    /// read the guest's output or size it past the cap.
    #[test]
    fn file_backend_refuses_a_file_another_user_owns() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can give a file away
        }
        let path = temp("theirs.log");
        std::fs::write(&path, b"").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let e = Chardev::file("t", &path, FileOptions::default()).unwrap_err();
        assert!(matches!(e, Error::OutputFileRefused { .. }), "{e}");
        assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        let _ = std::fs::remove_file(&path);
    }

    /// A new file is 0600 whatever the umask; a symbolic link is not followed (its target is
    /// neither truncated nor written); FIFOs, directories and files with two links are refused;
    /// /dev/null is taken.
    #[test]
    fn file_backend_creates_0600_and_refuses_links_and_special_files() {
        let path = temp("new.txt");
        drop(Chardev::file("t", &path, FileOptions::default()).unwrap());
        assert_eq!(mode(&path), 0o600);
        let _ = std::fs::remove_file(&path);

        let victim = temp("victim.txt");
        std::fs::write(&victim, b"precious").unwrap();
        let link = temp("link.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let truncate = FileOptions {
            truncate: true,
            ..FileOptions::default()
        };
        let e = Chardev::file("t", &link, truncate).unwrap_err();
        assert!(matches!(e, Error::OutputFileRefused { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

        let hard = temp("hard.log");
        std::fs::hard_link(&victim, &hard).unwrap();
        let e = Chardev::file("t", &hard, truncate).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

        let fifo = temp("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = Chardev::file("t", &fifo, FileOptions::default()).unwrap_err();
        assert!(matches!(e, Error::OutputFileRefused { .. }), "{e}");
        let e = Chardev::file("t", &std::env::temp_dir(), FileOptions::default()).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let mut null = Chardev::file("t", Path::new("/dev/null"), truncate).unwrap();
        null.write_lossy(b"gone");
        for p in [&victim, &link, &hard, &fifo] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Output beyond the cap is dropped and counted, by either kind of write.
    #[test]
    fn file_backend_stops_at_its_size_cap() {
        let path = temp("cap.txt");
        std::fs::write(&path, b"0123").unwrap();
        let options = FileOptions {
            max_bytes: 10,
            truncate: false,
        };
        let mut dev = Chardev::file("t", &path, options).unwrap();
        dev.write_lossy(b"abcd");
        assert_eq!(
            dev.write(b"efgh").unwrap(),
            2,
            "only the room left is written"
        );
        assert_eq!(
            dev.write(b"ijkl").unwrap(),
            4,
            "beyond the cap: taken and dropped"
        );
        dev.write_lossy(b"mnop");
        assert_eq!(dev.lost_bytes(), 8);
        drop(dev);
        assert_eq!(std::fs::read(&path).unwrap(), b"0123abcdef");
        let _ = std::fs::remove_file(&path);
    }

    /// The socket is 0600 whatever the umask; a path where anything is (a file, a live socket,
    /// a stale one) is refused and left as it was; at the end the path is removed only if it
    /// is still our socket.
    #[test]
    fn socket_is_private_refuses_a_taken_path_and_removes_only_its_own() {
        let path = socket_path("private");
        let _ = std::fs::remove_file(&path);
        let dev = Chardev::socket("t", &path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let e = Chardev::socket("t", &path).unwrap_err();
        assert!(matches!(e, Error::SocketInUse { .. }), "{e}");
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
        // Someone replaces our socket with a file of their own: the end leaves it there.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"precious").unwrap();
        drop(dev);
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        let e = Chardev::socket("t", &path).unwrap_err();
        assert!(matches!(e, Error::PathTaken { .. }), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();

        // A socket nobody listens on (a killed VMM's) is refused, not removed.
        drop(UnixListener::bind(&path).unwrap());
        let e = Chardev::socket("t", &path).unwrap_err();
        assert!(matches!(e, Error::SocketStale { .. }), "{e}");
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();

        // Bound in a private directory that is gone once the socket is in place.
        let dev = Chardev::socket("t", &path).unwrap();
        let inode = std::fs::symlink_metadata(&path).unwrap().ino();
        let left = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".vmm-"))
            .filter(|e| {
                std::fs::symlink_metadata(e.path().join("s")).is_ok_and(|m| m.ino() == inode)
            })
            .count();
        assert_eq!(left, 0);
        drop(dev);
        assert!(!path.exists());
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
        assert_eq!(mode(&path), 0o600, "only its owner may type into the guest");
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
