//! Connecting to a guest's vsock port through vmm's vsock socket: `CONNECT <port>\n`, answered
//! `OK <host port>\n` once the guest accepts; a guest with no listener on the port closes it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The longest answer line vmm sends (`OK 4294967295\n` is 14 bytes).
const ANSWER_MAX: usize = 32;

/// Why a connection to a guest port failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The vsock socket could not be reached.
    #[error("cannot connect to the vsock socket {path}: {source}")]
    Socket {
        /// The socket's path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The guest refused: nothing listens on the port (or the device is gone).
    #[error("the guest refused a connection to vsock port {port}")]
    Refused {
        /// The guest port.
        port: u32,
    },
    /// vmm's answer was not `OK <n>`.
    #[error("an unexpected answer to CONNECT {port}: {answer:?}")]
    BadAnswer {
        /// The guest port.
        port: u32,
        /// What came back (at most a line).
        answer: String,
    },
    /// No answer in time.
    #[error("no answer to CONNECT {port} within {timeout:?}")]
    Timeout {
        /// The guest port.
        port: u32,
        /// The time allowed.
        timeout: Duration,
    },
    /// Reading or writing failed.
    #[error("vsock port {port}: {source}")]
    Io {
        /// The guest port.
        port: u32,
        /// The error.
        source: io::Error,
    },
}

/// Connects to guest port `port` through the vsock socket at `socket`, waiting at most
/// `timeout` for the guest to accept. The stream has no timeouts set when it is returned.
pub fn connect(socket: &Path, port: u32, timeout: Duration) -> Result<UnixStream, ConnectError> {
    let mut s = UnixStream::connect(socket).map_err(|source| ConnectError::Socket {
        path: socket.display().to_string(),
        source,
    })?;
    let io = |source| ConnectError::Io { port, source };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    // A device that closes at once (no listener on the port) may beat the line.
    match s.write_all(format!("CONNECT {port}\n").as_bytes()) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            return Err(ConnectError::Refused { port })
        }
        r => r.map_err(io)?,
    }
    // Byte by byte: nothing after the line may be taken from the stream.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) if line.is_empty() => return Err(ConnectError::Refused { port }),
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() < ANSWER_MAX => line.push(b[0]),
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ConnectError::Timeout { port, timeout })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ConnectError::Refused { port })
            }
            Err(e) => return Err(io(e)),
        }
    }
    let answer = String::from_utf8_lossy(&line).into_owned();
    match answer.strip_prefix("OK ").map(|n| n.parse::<u32>()) {
        Some(Ok(_)) => {
            s.set_read_timeout(None).map_err(io)?;
            s.set_write_timeout(None).map_err(io)?;
            Ok(s)
        }
        _ => Err(ConnectError::BadAnswer { port, answer }),
    }
}
