//! Frames and messages (PROTOCOL.md).

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks; a peer with another version is refused.
pub const VERSION: u32 = 1;
/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 52;
/// The host port the agent connects to (CID 2) once it listens, to say it is ready: on vmm's
/// vsock device that reaches the Unix socket `PATH_52`.
pub const READY_PORT: u32 = 52;
/// The largest frame body (the bytes after the length field), either way.
pub const MAX_FRAME: usize = 1 << 20;
/// The largest payload of one DATA frame.
pub const MAX_DATA: usize = 64 << 10;

const KIND_HELLO: u8 = 1;
const KIND_REQUEST: u8 = 2;
const KIND_DATA: u8 = 3;
const KIND_EOF: u8 = 4;
const KIND_RESPONSE: u8 = 5;

/// A byte stream inside one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The command's standard input (host to guest).
    Stdin,
    /// The command's standard output (guest to host).
    Stdout,
    /// The command's standard error (guest to host).
    Stderr,
    /// A file's contents (either way).
    File,
}

impl Stream {
    fn byte(self) -> u8 {
        match self {
            Stream::Stdin => 0,
            Stream::Stdout => 1,
            Stream::Stderr => 2,
            Stream::File => 3,
        }
    }

    fn from_byte(b: u8) -> Result<Stream, Error> {
        Ok(match b {
            0 => Stream::Stdin,
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            3 => Stream::File,
            _ => return Err(Error::BadStream(b)),
        })
    }
}

/// The first message each way on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version ([`VERSION`]).
    pub version: u32,
    /// The sender's name and version, for messages (e.g. `vmm-agent 0.1.0`).
    pub name: String,
    /// Set by an agent that runs but could not prepare the guest as asked (e.g. mount the root
    /// file system): what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Hello {
    /// This side's hello.
    pub fn new(name: &str) -> Hello {
        Hello {
            version: VERSION,
            name: name.to_string(),
            problem: None,
        }
    }
}

/// What the host asks of the agent: one per connection, after the hellos.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run a command; stdin, stdout and stderr follow as DATA frames.
    Exec(Exec),
    /// Write a file (created or truncated, `mode` for a new one); its bytes follow as DATA
    /// frames of [`Stream::File`] and an EOF.
    WriteFile {
        /// The path in the guest.
        path: String,
        /// The permission bits of a new file.
        mode: u32,
    },
    /// Read a file: the agent sends its bytes as DATA frames of [`Stream::File`] and an EOF.
    ReadFile {
        /// The path in the guest.
        path: String,
    },
    /// Sync the guest's file systems, answer, then power off (or reset with `reboot`).
    Shutdown {
        /// Reset instead of powering off.
        #[serde(default)]
        reboot: bool,
    },
}

/// A command to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Exec {
    /// The program (looked up in the command's `PATH`) and its arguments.
    pub argv: Vec<String>,
    /// Variables added to the agent's default environment (`PATH`, `HOME`), in order.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The working directory (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// The agent's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The command started with this process id.
    Started {
        /// Its process id in the guest.
        pid: u32,
    },
    /// The command exited with this status.
    Exited {
        /// Its exit status, 0 to 255.
        code: i32,
    },
    /// A signal killed the command.
    Signaled {
        /// The signal's number.
        signal: i32,
    },
    /// A file request or a shutdown succeeded.
    Done {
        /// The bytes written or read.
        bytes: u64,
    },
    /// The request failed.
    Error {
        /// What kind of failure (the host maps it to its exit status).
        kind: ErrorKind,
        /// The agent's description.
        message: String,
    },
}

/// Kinds of failure the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The program was not found.
    NotFound,
    /// The program was found but cannot be executed.
    NotExecutable,
    /// The working directory does not exist or is not a directory.
    Workdir,
    /// The request is malformed, or of a version the agent does not speak.
    BadRequest,
    /// An I/O error (opening, reading or writing a file; starting a process).
    Io,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// [`Hello`].
    Hello(Hello),
    /// [`Request`].
    Request(Request),
    /// Bytes of a stream, at most [`MAX_DATA`].
    Data(Stream, Vec<u8>),
    /// The end of a stream.
    Eof(Stream),
    /// [`Response`].
    Response(Response),
}

/// What can go wrong reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection inside a frame.
    #[error("the connection ended inside a frame")]
    Truncated,
    /// A frame longer than the protocol allows.
    #[error("a frame of {len} bytes (at most {max})")]
    TooLong {
        /// The length the peer announced.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A frame of length zero (no kind byte).
    #[error("an empty frame")]
    Empty,
    /// An unknown frame kind.
    #[error("a frame of unknown kind {0}")]
    UnknownKind(u8),
    /// An unknown stream number.
    #[error("a DATA or EOF frame for unknown stream {0}")]
    BadStream(u8),
    /// A control message that is not the JSON it should be.
    #[error("a malformed {what} message: {source}")]
    BadMessage {
        /// The kind of message.
        what: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A DATA or EOF frame whose body has the wrong length.
    #[error("a malformed {0} frame")]
    BadBody(&'static str),
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            Frame::Hello(h) => (KIND_HELLO, json(h)),
            Frame::Request(r) => (KIND_REQUEST, json(r)),
            Frame::Response(r) => (KIND_RESPONSE, json(r)),
            Frame::Data(s, bytes) => {
                let mut body = Vec::with_capacity(1 + bytes.len());
                body.push(s.byte());
                body.extend_from_slice(bytes);
                (KIND_DATA, body)
            }
            Frame::Eof(s) => (KIND_EOF, vec![s.byte()]),
        };
        let len = (1 + body.len()) as u32;
        let mut out = Vec::with_capacity(5 + body.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&body);
        out
    }

    /// Parses one frame body (`kind` and the bytes after it).
    pub fn decode(kind: u8, body: &[u8]) -> Result<Frame, Error> {
        let parse = |what| move |source| Error::BadMessage { what, source };
        match kind {
            KIND_HELLO => Ok(Frame::Hello(
                serde_json::from_slice(body).map_err(parse("hello"))?,
            )),
            KIND_REQUEST => Ok(Frame::Request(
                serde_json::from_slice(body).map_err(parse("request"))?,
            )),
            KIND_RESPONSE => Ok(Frame::Response(
                serde_json::from_slice(body).map_err(parse("response"))?,
            )),
            KIND_DATA => {
                let (&s, bytes) = body.split_first().ok_or(Error::BadBody("DATA"))?;
                if bytes.len() > MAX_DATA {
                    return Err(Error::TooLong {
                        len: bytes.len() as u64,
                        max: MAX_DATA,
                    });
                }
                Ok(Frame::Data(Stream::from_byte(s)?, bytes.to_vec()))
            }
            KIND_EOF => match body {
                [s] => Ok(Frame::Eof(Stream::from_byte(*s)?)),
                _ => Err(Error::BadBody("EOF")),
            },
            other => Err(Error::UnknownKind(other)),
        }
    }

    /// Writes the frame in one `write_all`.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }

    /// Reads one frame; `Ok(None)` when the peer closed the connection between frames. The
    /// length is checked against [`MAX_FRAME`] before anything is allocated.
    pub fn read_from(r: &mut impl Read) -> Result<Option<Frame>, Error> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < len.len() {
            match r.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(Error::Truncated),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            return Err(Error::Empty);
        }
        if len > MAX_FRAME {
            return Err(Error::TooLong {
                len: len as u64,
                max: MAX_FRAME,
            });
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::Truncated,
            _ => Error::Io(e),
        })?;
        Frame::decode(body[0], &body[1..]).map(Some)
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_vec(value).unwrap_or_default()
}

/// Splits `bytes` into DATA frames of `stream`, [`MAX_DATA`] bytes at most each.
pub fn data_frames(stream: Stream, bytes: &[u8]) -> impl Iterator<Item = Frame> + '_ {
    bytes
        .chunks(MAX_DATA)
        .map(move |c| Frame::Data(stream, c.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: Frame) {
        let bytes = f.encode();
        let back = Frame::read_from(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Frame::Hello(Hello::new("test 1")));
        round_trip(Frame::Request(Request::Exec(Exec {
            argv: vec!["sh".into(), "-c".into(), "exit 7".into()],
            env: vec![("A".into(), "b=c".into())],
            workdir: Some("/tmp".into()),
        })));
        round_trip(Frame::Request(Request::WriteFile {
            path: "/x".into(),
            mode: 0o644,
        }));
        round_trip(Frame::Request(Request::ReadFile { path: "/x".into() }));
        round_trip(Frame::Request(Request::Shutdown { reboot: true }));
        round_trip(Frame::Data(Stream::Stderr, vec![1, 2, 3]));
        round_trip(Frame::Data(Stream::File, vec![]));
        round_trip(Frame::Eof(Stream::Stdin));
        round_trip(Frame::Response(Response::Signaled { signal: 9 }));
        round_trip(Frame::Response(Response::Error {
            kind: ErrorKind::NotFound,
            message: "no".into(),
        }));
    }

    #[test]
    fn the_wire_format_is_as_documented() {
        let bytes = Frame::Eof(Stream::Stdout).encode();
        assert_eq!(bytes, [2, 0, 0, 0, KIND_EOF, 1]);
        let bytes = Frame::Request(Request::Shutdown { reboot: false }).encode();
        assert_eq!(&bytes[5..], br#"{"op":"shutdown","reboot":false}"#);
        let bytes = Frame::Response(Response::Exited { code: 7 }).encode();
        assert_eq!(&bytes[5..], br#"{"exited":{"code":7}}"#);
    }

    #[test]
    fn a_huge_length_is_refused_before_allocating() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.push(KIND_DATA);
        match Frame::read_from(&mut &bytes[..]) {
            Err(Error::TooLong { len, max }) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, MAX_FRAME);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        let cases: [(&[u8], &str); 8] = [
            (&[0, 0, 0, 0], "empty"),
            (&[1, 0, 0, 0, 9], "unknown kind"),
            (&[2, 0, 0, 0, KIND_DATA, 7], "unknown stream"),
            (&[1, 0, 0, 0, KIND_DATA], "DATA"),
            (&[3, 0, 0, 0, KIND_EOF, 1, 1], "EOF"),
            (&[3, 0, 0, 0, KIND_HELLO, b'{', b'}'], "hello"),
            (&[5, 0, 0, 0, KIND_DATA], "inside a frame"),
            (&[5, 0], "inside a frame"),
        ];
        for (bytes, what) in cases {
            let e = Frame::read_from(&mut &bytes[..]).unwrap_err().to_string();
            assert!(e.contains(what), "{bytes:?}: {e}");
        }
        // A DATA frame longer than MAX_DATA (but within MAX_FRAME).
        let mut long = ((MAX_DATA + 3) as u32).to_le_bytes().to_vec();
        long.push(KIND_DATA);
        long.push(1);
        long.extend(std::iter::repeat_n(0, MAX_DATA + 1));
        assert!(matches!(
            Frame::read_from(&mut &long[..]),
            Err(Error::TooLong { .. })
        ));
        // A clean end between frames is not an error.
        assert!(Frame::read_from(&mut &[][..]).unwrap().is_none());
    }

    #[test]
    fn data_is_split_at_max_data() {
        let bytes = vec![5u8; MAX_DATA * 2 + 1];
        let frames: Vec<Frame> = data_frames(Stream::File, &bytes).collect();
        assert_eq!(frames.len(), 3);
        assert!(matches!(&frames[2], Frame::Data(Stream::File, b) if b.len() == 1));
    }
}
