//! `vmm-agent`: vmm's guest agent. It runs commands, reads and writes files and shuts the guest
//! down for a host program, over vsock (PROTOCOL.md).
//!
//! As PID 1 of the initramfs `vmm run` builds it prepares the guest first (see [`init`]): mounts
//! /proc, /sys and /dev, mounts the root file system the kernel command line names (`root=`,
//! `rootfstype=`, `rootflags=`, `ro`/`rw`) and makes it the root, then serves. Under an existing
//! init it only serves. Either way it listens on vsock port [`agent::AGENT_PORT`] and then
//! connects once to the host (CID 2) port [`agent::READY_PORT`] to say so.
//!
//! Usage: `vmm-agent [--port N]` (the port to listen on).

mod avx;
mod exec;
mod init;
mod reaper;
mod serve;
mod sys;

use agent::{Frame, Hello, AGENT_PORT, READY_PORT};

/// How this agent names itself in its hello.
pub const NAME: &str = concat!("vmm-agent ", env!("CARGO_PKG_VERSION"));

fn main() {
    avx::check();
    let pid1 = std::process::id() == 1;
    let mut port = AGENT_PORT;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--port", Some(p)) if !pid1 => port = p,
            _ if pid1 => {} // the kernel passes unknown boot parameters on; not ours.
            _ => {
                eprintln!("usage: vmm-agent [--port N]");
                std::process::exit(2);
            }
        }
    }
    // A problem preparing the guest is told to the host in the hello; the agent serves anyway.
    let (problem, guest_init) = match pid1 {
        true => match init::prepare() {
            Ok(guest_init) => (None, guest_init),
            Err(e) => (Some(e), None),
        },
        false => (None, None),
    };
    if let Some(p) = &problem {
        eprintln!("vmm-agent: {p}");
    }
    if let Some(path) = guest_init {
        // The guest's own init takes over PID 1 (`vmm --root-share`); the agent does not serve.
        let e = std::os::unix::process::CommandExt::exec(&mut std::process::Command::new(&path));
        fatal(pid1, &format!("cannot start the guest's init {path}: {e}"));
    }
    let reaper = match reaper::Reaper::start() {
        Ok(r) => r,
        Err(e) => fatal(pid1, &format!("cannot start the reaper: {e}")),
    };
    let listener = match sys::vsock_listen(port) {
        Ok(l) => l,
        Err(e) => fatal(pid1, &format!("cannot listen on vsock port {port}: {e}")),
    };
    let mut hello = Hello::new(NAME);
    hello.problem = problem;
    tell_host_ready(&hello);
    serve::accept_loop(&listener, reaper, hello);
}

/// Connects to the host's ready port and sends the hello; a host that does not listen there
/// (another embedder, or nobody waiting) is fine.
fn tell_host_ready(hello: &Hello) {
    match sys::vsock_connect(sys::HOST_CID, READY_PORT) {
        Ok(mut conn) => {
            if let Err(e) = Frame::Hello(hello.clone()).write_to(&mut conn) {
                eprintln!("vmm-agent: cannot tell the host it is ready: {e}");
            }
        }
        Err(e) => eprintln!("vmm-agent: nobody on host port {READY_PORT} ({e}); serving anyway"),
    }
}

/// Gives up: as PID 1 by powering the guest off (the host sees the agent never answered).
fn fatal(pid1: bool, message: &str) -> ! {
    eprintln!("vmm-agent: {message}");
    if pid1 {
        sys::power_off(false);
    }
    std::process::exit(1);
}
