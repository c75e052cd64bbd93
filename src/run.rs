//! `vmm run [VM options] -- COMMAND [ARGS...]`: COMMAND in a fresh guest, its streams and its
//! status on the host (DESIGN.md, "vmm run and the guest agent").

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sandbox::{ClientError, Exec, ExecIo, Sandbox, SandboxError};
use vm::CharBackend;

use crate::{backend, error_chain, flag_hint, vm_config, RunArgs};

/// `--timeout` ran out (timeout(1)'s status).
pub const EXIT_TIMEOUT: u8 = 124;
/// vmm or the guest failed before COMMAND could finish (env(1)'s and timeout(1)'s status).
pub const EXIT_FAILED: u8 = 125;
/// COMMAND was found but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// COMMAND was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// The status of a command that a closed pipe (SIGPIPE) ended, as a shell reports it.
const EXIT_SIGPIPE: u8 = 128 + libc::SIGPIPE as u8;

/// The longest error line vmm run prints, in characters.
const MAX_LINE: usize = 4096;

/// One `error:` line and 125. The line may quote the guest (the agent's parse errors), so it is
/// made printable and cut.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!(
        "error: {}",
        sandbox::printable(&message.to_string(), MAX_LINE)
    );
    ExitCode::from(EXIT_FAILED)
}

pub fn run(args: RunArgs) -> ExitCode {
    let mut argv = Vec::with_capacity(args.command.len());
    for (i, a) in args.command.iter().enumerate() {
        match a.to_str() {
            Some(a) => argv.push(a.to_string()),
            None => {
                return fail(format_args!(
                    "COMMAND's argument {i} ({}) is not UTF-8: the guest agent takes text only",
                    a.to_string_lossy()
                ))
            }
        }
    }
    let cli = &args.vm;
    if cli.jail.is_some() {
        return fail("vmm run does not take --jail yet; run the VM with `vmm --jail` instead");
    }
    if cli.initrd.is_some() {
        return fail("vmm run brings its own initramfs (the guest agent); drop --initrd");
    }
    if cli.disk.is_empty() && cli.restore.is_none() && cli.root_share.is_none() {
        return fail(
            "vmm run needs the guest's root file system: give --disk PATH (the first disk is mounted as /) or --root-share DIR",
        );
    }
    // The guest's consoles are quiet unless asked for: vmm's stdout and stderr are COMMAND's.
    let console = cli.console.as_deref().map_or(CharBackend::Off, backend);
    let serial = cli.serial.as_deref().map_or(CharBackend::Off, backend);
    if console.owns_stdin() || serial.owns_stdin() {
        return fail(
            "vmm run gives its stdin to COMMAND; give --serial and --console file=PATH, pty, socket=PATH or off",
        );
    }
    let mut config = vm_config(cli, serial, console);
    let snapshot = match &cli.restore {
        Some(dir) => {
            let quiet = backend("file=/dev/null");
            match crate::restore_config(cli, dir, &mut config, quiet) {
                Ok(snapshot) => Some(snapshot),
                Err(e) => return fail(format_args!("{}{}", error_chain(&e), flag_hint(&e))),
            }
        }
        None => None,
    };
    if snapshot.is_some() {
        // A snapshot is a template: the writable disks it names (not replaced by --disk) get
        // throw-away writes, so every run starts from the same disks; and a vsock socket of its
        // own unless --vsock gives one.
        for disk in config.disks.iter_mut().skip(cli.disk.len()) {
            disk.snapshot |= !disk.read_only;
        }
        if cli.vsock.is_none() {
            config.vsock = None;
        }
    }
    if let Err(e) = config.check_backend_paths() {
        return fail(format_args!("{e}{}", flag_hint(&e)));
    }
    if let Err(e) = crate::bind_api_socket(cli, &mut config) {
        return fail(format_args!("{}{}", error_chain(&e), flag_hint(&e)));
    }
    // --save reaches the VM through its control API: on a socket of its own when none is given.
    let mut api_dir = None;
    if args.save.is_some() && config.api_socket.is_none() {
        let dir = match sandbox::private_dir() {
            Ok(dir) => dir,
            Err(e) => return fail(e),
        };
        match vm::api::bind(&dir.join("api.sock")) {
            Ok(socket) => config.api_socket = Some(socket),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return fail(format_args!("cannot make the control API socket: {e}"));
            }
        }
        api_dir = Some(dir);
    }
    let shutdown_timeout = config.shutdown_timeout;
    // Nothing the guest writes outlives it (read-only or throw-away disks only): no need to wait
    // for a clean power-off at the end.
    let nothing_kept = config.disks.iter().all(|d| d.read_only || d.snapshot);
    let started = match &snapshot {
        Some(snapshot) => Sandbox::restore(config, snapshot, args.ready_timeout),
        None => Sandbox::start(config, args.ready_timeout),
    };
    let sandbox = match started {
        Ok(s) => s,
        Err(e) => {
            api_dir.map(std::fs::remove_dir);
            return fail(start_error(&e));
        }
    };
    if let Some(dir) = &args.save {
        let saved = sandbox.save(dir, Duration::from_secs(60));
        // Stopped at once: a clean power-off would write the disks after the snapshot.
        let _ = sandbox.kill();
        api_dir.map(std::fs::remove_dir);
        return match saved {
            Ok(_) => {
                println!("snapshot written to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    let _sigterm = crate::shutdown_on_sigterm(sandbox.shutdown_request());

    let exec = Exec {
        argv,
        env: args.env.clone(),
        workdir: args.workdir.clone(),
    };
    // Not locked for the whole command: the VM's thread logs to stderr too (a restored VM is
    // still starting when the command does).
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let result = sandbox.agent().exec(
        &exec,
        ExecIo {
            stdin: Some(Box::new(std::io::stdin())),
            stdout: &mut stdout,
            stderr: &mut stderr,
            timeout: args.timeout,
        },
    );
    let name = sandbox::printable(&exec.argv[0], 256);
    log::info!(
        "{name} ended: {result:?}, {:.1?} after process start",
        vm::process_start().elapsed()
    );
    match result {
        Ok(status) => {
            let stopped = match nothing_kept {
                true => sandbox.kill(),
                false => sandbox.stop(shutdown_timeout),
            };
            match stopped {
                Ok(reason) => log::info!("guest stopped: {reason:?}"),
                Err(e) => log::warn!("stopping the guest: {}", error_chain(&e)),
            }
            ExitCode::from(status.code().clamp(0, 255) as u8)
        }
        Err(ClientError::Timeout(t)) => {
            eprintln!("error: {name} timed out after {t:?}; the VM was stopped");
            let _ = sandbox.kill();
            ExitCode::from(EXIT_TIMEOUT)
        }
        Err(ClientError::Output { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            // Nobody reads COMMAND's output any more: stop it, and end as a command that
            // SIGPIPE ended (quietly, with the shell's status for it).
            let _ = sandbox.kill();
            ExitCode::from(EXIT_SIGPIPE)
        }
        Err(e @ ClientError::Output { .. }) => {
            let _ = sandbox.kill();
            fail(e)
        }
        Err(ClientError::Agent { kind, message }) => {
            let status = match kind {
                agent::ErrorKind::NotFound => EXIT_NOT_FOUND,
                agent::ErrorKind::NotExecutable => EXIT_CANNOT_EXECUTE,
                _ => EXIT_FAILED,
            };
            eprintln!("error: {message}");
            let _ = sandbox.stop(shutdown_timeout);
            ExitCode::from(status)
        }
        Err(e) => {
            // The connection broke: most likely the guest stopped under the command.
            if sandbox.wait_timeout(Duration::from_secs(5)) {
                let why = match sandbox.wait() {
                    Ok(reason) => sandbox::describe(reason),
                    Err(e) => error_chain(&e),
                };
                let sigterm = crate::SIGTERM_SEEN.load(Ordering::Acquire);
                eprintln!("error: the guest stopped before {name} finished: {why}");
                if sigterm {
                    return ExitCode::from(crate::EXIT_STOPPED);
                }
                return ExitCode::from(EXIT_FAILED);
            }
            let _ = sandbox.kill();
            fail(format_args!("the guest agent: {}", error_chain(&e)))
        }
    }
}

/// A start-up failure on one line, with the option to change where one is the fix.
fn start_error(e: &SandboxError) -> String {
    match e {
        SandboxError::Vm(v) => format!("{}{}", error_chain(v), flag_hint(v)),
        SandboxError::NotReady(_) | SandboxError::GuestStopped(_) => format!(
            "{e}; the guest's kernel needs virtio-mmio and virtio-vsock built in, and \
             --serial file=PATH shows its console"
        ),
        SandboxError::Host { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
            format!("{e}; remove it, or give --vsock another socket path")
        }
        _ => error_chain(e),
    }
}
