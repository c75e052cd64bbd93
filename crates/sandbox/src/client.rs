//! The agent client: one vsock connection per request (PROTOCOL.md in crates/agent).
//!
//! Every length the agent sends is bounded by the protocol ([`agent::MAX_FRAME`]), file reads by
//! the caller's maximum, and collected output by [`Output`]'s cap; a frame the protocol does not
//! allow, or a connection that ends early, is an error, never a wait.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::{
    ErrorKind, Exec, Frame, Hello, Request, Response, Stream, AGENT_PORT, MAX_DATA, MAX_FRAME,
    VERSION,
};

use crate::text::{printable, MAX_GUEST_TEXT};
use crate::vsock::{self, ConnectError};

/// The highest signal number Linux has (SIGRTMAX): a `signaled` status above it is a lie.
const MAX_SIGNAL: i32 = 64;

/// What the client calls itself in its hello.
const NAME: &str = concat!("vmm ", env!("CARGO_PKG_VERSION"));

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    /// It exited with this status.
    Exited(i32),
    /// This signal killed it.
    Signaled(i32),
}

impl CommandStatus {
    /// The status a shell would give: the exit status, or 128 + the signal's number.
    pub fn code(self) -> i32 {
        match self {
            CommandStatus::Exited(c) => c,
            CommandStatus::Signaled(s) => 128 + s,
        }
    }
}

/// A finished command's collected output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: CommandStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

/// What failed talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection to the agent's port could not be made.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The agent broke the protocol (or the connection failed mid-frame).
    #[error("the guest agent broke the protocol: {0}")]
    Protocol(#[from] agent::Error),
    /// The agent sent a frame that has no place here.
    #[error("the guest agent sent an unexpected {got} frame {during}")]
    Unexpected {
        /// The frame's kind.
        got: &'static str,
        /// What the client was waiting for.
        during: &'static str,
    },
    /// The agent speaks another protocol version.
    #[error("the guest agent speaks protocol version {theirs}; this vmm speaks {VERSION}")]
    Version {
        /// The agent's version.
        theirs: u32,
    },
    /// The agent answered with an error.
    #[error("{message}")]
    Agent {
        /// What kind of error.
        kind: ErrorKind,
        /// The agent's message, made printable and cut to [`crate::MAX_GUEST_TEXT`] characters
        /// (see [`crate::printable`]): the guest wrote it.
        message: String,
    },
    /// The agent reported a status no process can end with (an exit code outside 0 to 255, a
    /// signal outside 1 to 64).
    #[error("the guest agent reported an impossible status: {0}")]
    BadStatus(String),
    /// Writing the command's output to the caller's stdout or stderr failed (e.g. a closed
    /// pipe); the command was stopped.
    #[error("cannot write the command's {stream}: {source}")]
    Output {
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The connection ended before the answer (the guest stopped, or the agent died).
    #[error("the connection to the guest agent ended {during}")]
    Closed {
        /// What the client was waiting for.
        during: &'static str,
    },
    /// The time allowed ran out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// More bytes than the caller allowed.
    #[error("{what} is larger than the {max} bytes allowed")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit.
        max: u64,
    },
    /// Reading or writing the connection, or the caller's streams, failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Where a command's streams come from and go to.
pub struct ExecIo<'a> {
    /// Its standard input, read on a thread of its own (none: empty).
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Where its standard output goes (flushed after every chunk).
    pub stdout: &'a mut dyn Write,
    /// Where its standard error goes.
    pub stderr: &'a mut dyn Write,
    /// How long it may run; when this runs out the connection is closed, which kills the
    /// command's process group in the guest.
    pub timeout: Option<Duration>,
}

/// A client of the agent behind a vmm vsock socket.
#[derive(Debug, Clone)]
pub struct Agent {
    socket: PathBuf,
    port: u32,
    connect_timeout: Duration,
}

impl Agent {
    /// The agent on guest port [`AGENT_PORT`] behind the vsock socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Agent {
        Agent {
            socket: socket.into(),
            port: AGENT_PORT,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Another guest port.
    pub fn with_port(mut self, port: u32) -> Agent {
        self.port = port;
        self
    }

    /// The vsock socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens a connection, exchanges hellos and sends `request`: all within the connect
    /// timeout, however slowly the agent reads or answers.
    fn open(&self, request: Request) -> Result<UnixStream, ClientError> {
        // A request the agent would refuse unread (PROTOCOL.md: at most MAX_FRAME bytes) is
        // refused here, before a guest is bothered.
        let request = Frame::Request(request).encode();
        if request.len() - 4 > MAX_FRAME {
            return Err(ClientError::TooLarge {
                what: "the request (the command's arguments and environment, or the path)",
                max: MAX_FRAME as u64,
            });
        }
        let (mut s, _) = self.greet()?;
        s.set_read_timeout(None)?;
        s.write_all(&request)?;
        s.set_write_timeout(None)?;
        Ok(s)
    }

    /// Opens a connection and exchanges hellos, within the connect timeout: the connection and
    /// the agent's hello.
    fn greet(&self) -> Result<(UnixStream, Hello), ClientError> {
        let mut s = vsock::connect(&self.socket, self.port, self.connect_timeout)?;
        let deadline = Instant::now() + self.connect_timeout;
        s.set_write_timeout(Some(self.connect_timeout))?;
        Frame::Hello(Hello::new(NAME)).write_to(&mut s)?;
        match read(&s, Some(deadline), "the agent's hello")? {
            Frame::Hello(h) if h.version == VERSION => Ok((s, h)),
            Frame::Hello(h) => Err(ClientError::Version { theirs: h.version }),
            other => Err(unexpected(&other, "instead of the agent's hello")),
        }
    }

    /// Opens a connection, exchanges hellos and closes it: whether the agent answers, and its
    /// hello.
    pub fn ping(&self) -> Result<Hello, ClientError> {
        let (s, hello) = self.greet()?;
        let _ = s.shutdown(Shutdown::Both);
        Ok(hello)
    }

    /// Runs a command, streaming its input and output (see [`ExecIo`]). The connection is shut
    /// down when this returns, which ends the agent's side of it (and kills what is left of the
    /// command's process group) even while a stdin that never ends is still being read.
    pub fn exec(&self, exec: &Exec, io: ExecIo<'_>) -> Result<CommandStatus, ClientError> {
        let deadline = io.timeout.map(|t| (Instant::now() + t, t));
        let s = self.open(Request::Exec(exec.clone()))?;
        let result = exec_on(&s, deadline, io);
        let _ = s.shutdown(Shutdown::Both);
        result
    }

    /// Runs a command with `stdin` as its input and collects its output, at most `max_output`
    /// bytes of each stream.
    pub fn output(
        &self,
        exec: &Exec,
        stdin: Vec<u8>,
        max_output: usize,
        timeout: Option<Duration>,
    ) -> Result<Output, ClientError> {
        let mut stdout = Capped::new(max_output, "the command's stdout");
        let mut stderr = Capped::new(max_output, "the command's stderr");
        let stdin: Option<Box<dyn Read + Send>> = match stdin.is_empty() {
            true => None,
            false => Some(Box::new(io::Cursor::new(stdin))),
        };
        let status = self.exec(
            exec,
            ExecIo {
                stdin,
                stdout: &mut stdout,
                stderr: &mut stderr,
                timeout,
            },
        );
        let status = match status {
            Err(ClientError::Output { source, .. })
                if source.kind() == io::ErrorKind::OutOfMemory =>
            {
                return Err(ClientError::TooLarge {
                    what: "the command's output",
                    max: max_output as u64,
                })
            }
            other => other?,
        };
        Ok(Output {
            status,
            stdout: stdout.buf,
            stderr: stderr.buf,
        })
    }

    /// Writes `data` to `path` in the guest (created with `mode`, or truncated), synced.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<u64, ClientError> {
        let mut s = self.open(Request::WriteFile {
            path: path.to_string(),
            mode,
        })?;
        for f in agent::data_frames(Stream::File, data) {
            f.write_to(&mut s)?;
        }
        Frame::Eof(Stream::File).write_to(&mut s)?;
        match read(&s, None, "the answer to a file write")? {
            Frame::Response(Response::Done { bytes }) => Ok(bytes),
            Frame::Response(Response::Error { kind, message }) => Err(agent_error(kind, &message)),
            other => Err(unexpected(&other, "instead of the answer to a file write")),
        }
    }

    /// Reads `path` in the guest, at most `max` bytes (more is [`ClientError::TooLarge`]).
    pub fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, ClientError> {
        let s = self.open(Request::ReadFile {
            path: path.to_string(),
        })?;
        let mut data = Vec::new();
        loop {
            match read(&s, None, "before the file's end")? {
                Frame::Data(Stream::File, b) => {
                    if data.len() as u64 + b.len() as u64 > max {
                        return Err(ClientError::TooLarge {
                            what: "the file",
                            max,
                        });
                    }
                    data.extend_from_slice(&b);
                }
                Frame::Eof(Stream::File) => {}
                Frame::Response(Response::Done { .. }) => return Ok(data),
                Frame::Response(Response::Error { kind, message }) => {
                    return Err(agent_error(kind, &message))
                }
                other => return Err(unexpected(&other, "while reading a file")),
            }
        }
    }

    /// Asks the guest to sync and power off (or reset); returns once the agent has agreed.
    pub fn shutdown(&self, reboot: bool) -> Result<(), ClientError> {
        let s = self.open(Request::Shutdown { reboot })?;
        let deadline = Instant::now() + self.connect_timeout;
        match read(&s, Some(deadline), "the answer to a shutdown")? {
            Frame::Response(Response::Done { .. }) => Ok(()),
            Frame::Response(Response::Error { kind, message }) => Err(agent_error(kind, &message)),
            other => Err(unexpected(&other, "instead of the answer to a shutdown")),
        }
    }
}

/// The body of [`Agent::exec`] once the request is sent.
fn exec_on(
    s: &UnixStream,
    deadline: Option<(Instant, Duration)>,
    io: ExecIo<'_>,
) -> Result<CommandStatus, ClientError> {
    let mut s = s;
    match read_by(s, deadline, "the command's start")? {
        Frame::Response(Response::Started { .. }) => {}
        Frame::Response(Response::Error { kind, message }) => {
            return Err(agent_error(kind, &message))
        }
        other => return Err(unexpected(&other, "instead of the command's start")),
    }
    match io.stdin {
        // A command that ended already closed its side: its answer is still to be read.
        None => {
            let _ = Frame::Eof(Stream::Stdin).write_to(&mut s);
        }
        Some(input) => {
            let conn = s.try_clone()?;
            // Not joined: a stdin that never ends (a terminal) must not hold the answer.
            std::thread::Builder::new()
                .name("agent-stdin".into())
                .spawn(move || feed(input, conn))?;
        }
    }
    let output = |stream| move |source| ClientError::Output { stream, source };
    loop {
        match read_by(s, deadline, "before the command's end")? {
            Frame::Data(Stream::Stdout, b) => {
                io.stdout.write_all(&b).map_err(output("stdout"))?;
                io.stdout.flush().map_err(output("stdout"))?;
            }
            Frame::Data(Stream::Stderr, b) => {
                io.stderr.write_all(&b).map_err(output("stderr"))?;
                io.stderr.flush().map_err(output("stderr"))?;
            }
            Frame::Eof(Stream::Stdout | Stream::Stderr) => {}
            Frame::Response(Response::Exited { code }) => {
                return match code {
                    0..=255 => Ok(CommandStatus::Exited(code)),
                    _ => Err(ClientError::BadStatus(format!("exit code {code}"))),
                };
            }
            Frame::Response(Response::Signaled { signal }) => {
                return match signal {
                    1..=MAX_SIGNAL => Ok(CommandStatus::Signaled(signal)),
                    _ => Err(ClientError::BadStatus(format!("signal {signal}"))),
                };
            }
            Frame::Response(Response::Error { kind, message }) => {
                return Err(agent_error(kind, &message))
            }
            other => return Err(unexpected(&other, "while the command ran")),
        }
    }
}

/// The agent's error, its message made printable (the guest wrote it).
fn agent_error(kind: ErrorKind, message: &str) -> ClientError {
    ClientError::Agent {
        kind,
        message: printable(message, MAX_GUEST_TEXT),
    }
}

/// Reads from a connection, every read(2) bounded by what is left until `deadline`: an agent
/// that sends a frame a byte at a time cannot stretch the time allowed, which a plain receive
/// timeout (restarted by every byte) would let it do.
pub(crate) struct ByDeadline<'a> {
    conn: &'a UnixStream,
    deadline: Option<Instant>,
}

impl<'a> ByDeadline<'a> {
    pub(crate) fn new(conn: &'a UnixStream, deadline: Option<Instant>) -> ByDeadline<'a> {
        ByDeadline { conn, deadline }
    }
}

impl Read for ByDeadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.deadline {
            Some(when) => {
                let left = when.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                self.conn.set_read_timeout(Some(left))?;
            }
            None => self.conn.set_read_timeout(None)?,
        }
        (&mut &*self.conn).read(buf)
    }
}

/// Reads one frame by `deadline` (none: no limit); the end of the connection, or the deadline,
/// is [`ClientError::Closed`].
fn read(
    s: &UnixStream,
    deadline: Option<Instant>,
    during: &'static str,
) -> Result<Frame, ClientError> {
    match Frame::read_from(&mut ByDeadline::new(s, deadline)) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(ClientError::Closed { during }),
        Err(agent::Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
            Err(ClientError::Closed { during })
        }
        Err(agent::Error::Io(e)) if is_timeout(&e) => Err(ClientError::Closed { during }),
        Err(e) => Err(e.into()),
    }
}

/// [`read`] with the command's deadline: (when, the whole time allowed, for the message), which
/// is [`ClientError::Timeout`] when it runs out.
fn read_by(
    s: &UnixStream,
    deadline: Option<(Instant, Duration)>,
    during: &'static str,
) -> Result<Frame, ClientError> {
    match Frame::read_from(&mut ByDeadline::new(s, deadline.map(|d| d.0))) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(ClientError::Closed { during }),
        Err(agent::Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
            Err(ClientError::Closed { during })
        }
        Err(agent::Error::Io(e)) if is_timeout(&e) => match deadline {
            Some((_, total)) => Err(ClientError::Timeout(total)),
            None => Err(ClientError::Closed { during }),
        },
        Err(e) => Err(e.into()),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn unexpected(f: &Frame, during: &'static str) -> ClientError {
    let got = match f {
        Frame::Hello(_) => "HELLO",
        Frame::Request(_) => "REQUEST",
        Frame::Data(..) => "DATA",
        Frame::Eof(_) => "EOF",
        Frame::Response(_) => "RESPONSE",
    };
    ClientError::Unexpected { got, during }
}

/// Sends `input` as the command's stdin, then its end.
fn feed(mut input: Box<dyn Read + Send>, mut conn: UnixStream) {
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if Frame::Data(Stream::Stdin, buf[..n].to_vec())
                    .write_to(&mut conn)
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("reading the command's stdin: {e}; sending its end");
                break;
            }
        }
    }
    let _ = Frame::Eof(Stream::Stdin).write_to(&mut conn);
}

/// A writer that keeps at most `max` bytes and fails beyond.
struct Capped {
    buf: Vec<u8>,
    max: usize,
    what: &'static str,
}

impl Capped {
    fn new(max: usize, what: &'static str) -> Capped {
        Capped {
            buf: Vec::new(),
            max,
            what,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.buf.len() + b.len() > self.max {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("{} is larger than {} bytes", self.what, self.max),
            ));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The client against a lying agent behind a fake vsock socket.
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// A fake vsock socket: answers `OK 1` to the CONNECT line, reads the client's hello, then
    /// plays `script` with the connection (after sending `hello` if given).
    fn fake_agent(
        name: &str,
        hello: Option<Hello>,
        script: impl FnOnce(&mut UnixStream) + Send + 'static,
    ) -> (Agent, std::thread::JoinHandle<()>) {
        let dir =
            std::env::temp_dir().join(format!("sandbox-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "CONNECT 52\n");
            s.write_all(b"OK 1\n").unwrap();
            if let Some(h) = hello {
                assert!(matches!(
                    Frame::read_from(&mut s),
                    Ok(Some(Frame::Hello(_)))
                ));
                Frame::Hello(h).write_to(&mut s).unwrap();
            }
            script(&mut s);
            let _ = std::fs::remove_dir_all(dir);
        });
        let mut agent = Agent::new(path);
        agent.connect_timeout = Duration::from_secs(5);
        (agent, server)
    }

    fn hello() -> Option<Hello> {
        Some(Hello::new("fake"))
    }

    fn sh() -> Exec {
        Exec {
            argv: vec!["sh".into()],
            ..Exec::default()
        }
    }

    fn output(agent: &Agent) -> Result<Output, ClientError> {
        agent.output(&sh(), Vec::new(), 1 << 20, Some(Duration::from_secs(5)))
    }

    #[test]
    fn a_huge_length_is_refused_without_allocating() {
        let (agent, server) = fake_agent("huge", hello(), |s| {
            let _ = Frame::read_from(s);
            let _ = s.write_all(&[0xff, 0xff, 0xff, 0xff, 3, 1]);
        });
        match output(&agent) {
            Err(ClientError::Protocol(agent::Error::TooLong { .. })) => {}
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let (agent, server) = fake_agent("garbage", hello(), |s| {
            let _ = Frame::read_from(s);
            s.write_all(b"\x05\x00\x00\x00\x05{{{{").unwrap();
        });
        match output(&agent) {
            Err(ClientError::Protocol(agent::Error::BadMessage { .. })) => {}
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn an_agent_that_stops_talking_is_a_timeout() {
        let (agent, server) = fake_agent("stall", hello(), |s| {
            let _ = Frame::read_from(s);
            Frame::Response(Response::Started { pid: 9 })
                .write_to(s)
                .unwrap();
            // Half a frame, then nothing.
            s.write_all(&[100, 0, 0]).unwrap();
            std::thread::sleep(Duration::from_secs(3));
        });
        let e = agent.output(&sh(), Vec::new(), 1 << 20, Some(Duration::from_secs(2)));
        assert!(matches!(e, Err(ClientError::Timeout(_))), "{e:?}");
        server.join().unwrap();
    }

    #[test]
    fn a_connection_that_ends_early_is_closed_not_a_hang() {
        let (agent, server) = fake_agent("early", hello(), |s| {
            let _ = Frame::read_from(s);
            Frame::Response(Response::Started { pid: 9 })
                .write_to(s)
                .unwrap();
        });
        let e = agent.output(&sh(), Vec::new(), 1 << 20, None);
        assert!(matches!(e, Err(ClientError::Closed { .. })), "{e:?}");
        server.join().unwrap();
    }

    #[test]
    fn another_version_is_refused() {
        let other = Hello {
            version: 99,
            ..Hello::new("future")
        };
        let (agent, server) = fake_agent("version", Some(other), |_| {});
        match output(&agent) {
            Err(ClientError::Version { theirs: 99 }) => {}
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn frames_out_of_place_are_refused() {
        let (agent, server) = fake_agent("misplaced", hello(), |s| {
            let _ = Frame::read_from(s);
            Frame::Response(Response::Started { pid: 9 })
                .write_to(s)
                .unwrap();
            Frame::Data(Stream::File, vec![1]).write_to(s).unwrap();
        });
        match output(&agent) {
            Err(ClientError::Unexpected { got: "DATA", .. }) => {}
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_file_larger_than_asked_is_refused() {
        let (agent, server) = fake_agent("bigfile", hello(), |s| {
            let _ = Frame::read_from(s);
            for _ in 0..4 {
                if Frame::Data(Stream::File, vec![0; MAX_DATA])
                    .write_to(s)
                    .is_err()
                {
                    return;
                }
            }
        });
        match agent.read_file("/x", 100_000) {
            Err(ClientError::TooLarge { max: 100_000, .. }) => {}
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn an_agent_that_trickles_a_frame_cannot_stretch_the_timeout() {
        let (agent, server) = fake_agent("trickle", hello(), |s| {
            let _ = Frame::read_from(s);
            Frame::Response(Response::Started { pid: 9 })
                .write_to(s)
                .unwrap();
            // A DATA frame of 40 bytes, one byte every 200 ms: each read(2) gets a byte well
            // within a receive timeout, so only a deadline stops it.
            let _ = s.write_all(&[40, 0, 0, 0, 3, 1]);
            for _ in 0..38 {
                std::thread::sleep(Duration::from_millis(200));
                if s.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let start = Instant::now();
        let e = agent.output(&sh(), Vec::new(), 1 << 20, Some(Duration::from_secs(1)));
        assert!(matches!(e, Err(ClientError::Timeout(_))), "{e:?}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        server.join().unwrap();
    }

    #[test]
    fn an_impossible_status_is_refused() {
        for (n, status) in [
            Response::Exited { code: -1 },
            Response::Exited { code: 256 },
            Response::Exited { code: i32::MIN },
            Response::Signaled { signal: 0 },
            Response::Signaled { signal: -128 },
            Response::Signaled { signal: 65 },
        ]
        .into_iter()
        .enumerate()
        {
            let (agent, server) = fake_agent(&format!("status{n}"), hello(), move |s| {
                let _ = Frame::read_from(s);
                Frame::Response(Response::Started { pid: 9 })
                    .write_to(s)
                    .unwrap();
                Frame::Response(status).write_to(s).unwrap();
            });
            let e = output(&agent);
            assert!(matches!(e, Err(ClientError::BadStatus(_))), "{e:?}");
            server.join().unwrap();
        }
        // The edges are real statuses.
        let (agent, server) = fake_agent("status-ok", hello(), |s| {
            let _ = Frame::read_from(s);
            Frame::Response(Response::Started { pid: 9 })
                .write_to(s)
                .unwrap();
            Frame::Response(Response::Signaled { signal: 64 })
                .write_to(s)
                .unwrap();
        });
        assert_eq!(output(&agent).unwrap().status.code(), 192);
        server.join().unwrap();
    }

    #[test]
    fn the_agents_message_is_made_printable_and_cut() {
        let (agent, server) = fake_agent("message", hello(), |s| {
            let _ = Frame::read_from(s);
            let message = format!("\u{1b}]0;owned\u{7}\0\nerror: fake{}", "x".repeat(900_000));
            Frame::Response(Response::Error {
                kind: ErrorKind::NotFound,
                message,
            })
            .write_to(s)
            .unwrap();
        });
        match output(&agent) {
            Err(ClientError::Agent { message, .. }) => {
                assert!(!message.chars().any(char::is_control), "{message:?}");
                assert!(message.starts_with("\\u{1b}]0;owned\\u{7}\\u{0}\\nerror: fake"));
                assert!(message.chars().count() <= MAX_GUEST_TEXT + 1);
            }
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_request_larger_than_a_frame_is_refused_before_connecting() {
        let exec = Exec {
            argv: vec!["echo".into(), "x".repeat(MAX_FRAME)],
            ..Exec::default()
        };
        let agent = Agent::new("/nonexistent/vsock.sock");
        let e = agent.output(&exec, Vec::new(), 100, None);
        assert!(
            matches!(e, Err(ClientError::TooLarge { max, .. }) if max == MAX_FRAME as u64),
            "{e:?}"
        );
    }

    /// A writer that fails as a closed pipe does.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Plays an agent that starts the command, sends `before`, and then checks that the client
    /// closes the connection (within 3 s) even though its stdin never ends.
    fn expect_closed_after(name: &str, before: Vec<Frame>) -> Result<CommandStatus, ClientError> {
        let (agent, server) = fake_agent(name, hello(), move |s| {
            let _ = Frame::read_from(s);
            Frame::Response(Response::Started { pid: 9 })
                .write_to(s)
                .unwrap();
            for f in before {
                f.write_to(s).unwrap();
            }
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            loop {
                match Frame::read_from(s) {
                    Ok(None) => break,
                    Ok(Some(_)) => {}
                    Err(e) => panic!("the client kept the connection open: {e}"),
                }
            }
        });
        // A stdin that never ends (a terminal nobody types into).
        let (never, keep) = UnixStream::pair().unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut closed = ClosedPipe;
        let stdout: &mut dyn Write = match name.ends_with("pipe") {
            true => &mut closed,
            false => &mut out,
        };
        let r = agent.exec(
            &sh(),
            ExecIo {
                stdin: Some(Box::new(never)),
                stdout,
                stderr: &mut err,
                timeout: Some(Duration::from_secs(10)),
            },
        );
        server.join().unwrap();
        drop(keep);
        r
    }

    #[test]
    fn the_connection_ends_with_the_command_even_if_stdin_does_not() {
        let r = expect_closed_after(
            "endless-stdin",
            vec![Frame::Response(Response::Exited { code: 3 })],
        );
        assert_eq!(r.unwrap(), CommandStatus::Exited(3));
    }

    #[test]
    fn a_closed_stdout_is_its_own_error_and_ends_the_connection() {
        let r = expect_closed_after(
            "closed-pipe",
            vec![Frame::Data(Stream::Stdout, b"hello".to_vec())],
        );
        match r {
            Err(ClientError::Output {
                stream: "stdout",
                source,
            }) => assert_eq!(source.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_port_is_named() {
        let dir =
            std::env::temp_dir().join(format!("sandbox-client-refused-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            drop(s); // what vmm does when the guest has no listener
        });
        match Agent::new(&path).shutdown(false) {
            Err(ClientError::Connect(ConnectError::Refused { port: 52 })) => {}
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
