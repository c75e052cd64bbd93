//! `vmm ctl`: the client of a running vmm's control API (`--api-socket`, docs/API.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

/// How long one read or write to the API may take (a pause answers within about 2 s).
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub(crate) struct CtlArgs {
    /// The control API's socket: the PATH vmm was started with as --api-socket PATH.
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,

    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand, Debug)]
enum Op {
    /// Print the VM's state (running or paused), configuration, uptime and device counters as
    /// JSON.
    Info,
    /// Stop every vCPU (the guest makes no progress until resume).
    Pause,
    /// Let the paused vCPUs run again.
    Resume,
    /// Press the guest's power button; vmm stops the VM if it has not powered off within its
    /// --shutdown-timeout (a second shutdown stops it at once).
    Shutdown,
    /// Save the paused VM to DIR (made mode 0700 if missing; a snapshot already there is
    /// replaced): its state file and its memory file. The VM stays paused. `vmm --restore DIR`
    /// continues it.
    Snapshot {
        /// The directory to write the snapshot to (relative to this command's working directory:
        /// vmm is told the absolute path).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Runs one `vmm ctl` operation: exit 0 when the API did it, 1 with one `error:` line if not.
pub(crate) fn ctl(args: CtlArgs) -> ExitCode {
    let socket = &args.api_socket;
    let snapshot_body;
    let (method, path, body) = match &args.op {
        Op::Info => ("GET", "/vm", None),
        Op::Pause => ("PUT", "/vm/pause", None),
        Op::Resume => ("PUT", "/vm/resume", None),
        Op::Shutdown => ("PUT", "/vm/shutdown", None),
        Op::Snapshot { dir } => {
            let dir = match std::path::absolute(dir) {
                Ok(dir) => dir,
                Err(e) => {
                    eprintln!("error: snapshot directory '{}': {e}", dir.display());
                    return ExitCode::FAILURE;
                }
            };
            let Some(dir) = dir.to_str() else {
                eprintln!(
                    "error: '{}' is not UTF-8 (the API carries JSON text); give snapshot another DIR",
                    dir.display()
                );
                return ExitCode::FAILURE;
            };
            snapshot_body = serde_json_string(dir);
            ("PUT", "/vm/snapshot", Some(snapshot_body.as_str()))
        }
    };
    match vm::api::call(socket, method, path, body, TIMEOUT) {
        Ok((200, body)) => {
            let line = match args.op {
                Op::Info => body,
                Op::Pause => "paused".into(),
                Op::Resume => "resumed".into(),
                Op::Shutdown => "shutdown requested: the guest's power button is pressed".into(),
                Op::Snapshot { dir } => format!("snapshot written to {}", dir.display()),
            };
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!(
                "error: the control API at '{}' answered {status}: {}",
                socket.display(),
                error_message(&body)
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                    "; is vmm running with --api-socket {}?",
                    socket.display()
                ),
                std::io::ErrorKind::PermissionDenied => {
                    "; the socket is its owner's only (mode 0600): run vmm ctl as the user who started vmm".into()
                }
                _ => String::new(),
            };
            eprintln!(
                "error: cannot talk to the control API at '{}': {e}{hint}",
                socket.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// `{"dir": DIR}` with DIR escaped as a JSON string.
fn serde_json_string(dir: &str) -> String {
    let mut out = String::from("{\"dir\":\"");
    for c in dir.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str("\"}");
    out
}

/// The `error` member of an error body, else the body itself (made printable, cut).
fn error_message(body: &str) -> String {
    let text = body
        .split_once("\"error\":\"")
        .and_then(|(_, rest)| rest.rsplit_once("\"}"))
        .map_or(body, |(message, _)| message);
    sandbox::printable(text, 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_dirs_are_escaped_json() {
        assert_eq!(
            serde_json_string("/a\"b\\c\n"),
            r#"{"dir":"/a\"b\\c\u000a"}"#
        );
    }

    #[test]
    fn the_error_member_is_shown() {
        assert_eq!(
            error_message(r#"{"error":"no such endpoint"}"#),
            "no such endpoint"
        );
        assert_eq!(error_message("plain"), "plain");
    }
}
