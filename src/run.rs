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

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_FAILED)
}

pub fn run(args: RunArgs) -> ExitCode {
    let cli = &args.vm;
    if cli.jail.is_some() {
        return fail("vmm run does not take --jail yet; run the VM with `vmm --jail` instead");
    }
    if cli.initrd.is_some() {
        return fail("vmm run brings its own initramfs (the guest agent); drop --initrd");
    }
    if cli.disk.is_empty() {
        return fail(
            "vmm run needs the guest's root file system: give --disk PATH (the first disk is mounted as /)",
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
    let config = vm_config(cli, serial, console);
    if let Err(e) = config.check_backend_paths() {
        return fail(format_args!("{e}{}", flag_hint(&e)));
    }
    let shutdown_timeout = config.shutdown_timeout;
    let sandbox = match Sandbox::start(config, args.ready_timeout) {
        Ok(s) => s,
        Err(e) => return fail(start_error(&e)),
    };
    let _sigterm = crate::shutdown_on_sigterm(sandbox.shutdown_request());

    let exec = Exec {
        argv: args.command.clone(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
    };
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    let result = sandbox.agent().exec(
        &exec,
        ExecIo {
            stdin: Some(Box::new(std::io::stdin())),
            stdout: &mut stdout,
            stderr: &mut stderr,
            timeout: args.timeout,
        },
    );
    drop((stdout, stderr));
    log::info!(
        "{} ended: {result:?}, {:.1?} after process start",
        args.command[0],
        vm::process_start().elapsed()
    );
    let name = &args.command[0];
    match result {
        Ok(status) => {
            match sandbox.stop(shutdown_timeout) {
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
