//! `vmm`: boot a Linux guest on KVM from the command line. All VM logic lives in the `vm` crate.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use vm::{CharBackend, DiskConfig, NetConfig, Vm, VmConfig};

mod terminal;

/// A minimal virtual machine monitor: boots a Linux kernel on KVM with a serial console and virtio disks.
///
/// Exit status: 0 when the guest resets or powers off, 1 on a VMM error, 2 on a usage error.
#[derive(Parser, Debug)]
#[command(name = "vmm", version, about, long_about = None)]
struct Cli {
    /// Kernel image: ELF vmlinux (PVH entry if present) or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,

    /// Initial ramdisk (cpio, optionally compressed).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Kernel command line, replacing the default; the VMM still appends the devices and root disk.
    #[arg(long, value_name = "STRING")]
    cmdline: Option<String>,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    cpus: u8,

    /// Guest memory: 128M, 2G, or a plain number of MiB.
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = parse_memory)]
    memory: u64,

    /// A virtio-blk disk: PATH[,readonly=on][,id=NAME]. Repeatable: /dev/vda, /dev/vdb, …
    #[arg(long, value_name = "PATH[,readonly=on][,id=NAME]", value_parser = parse_disk)]
    disk: Vec<DiskConfig>,

    /// Report once on stderr when the guest writes 123 to port 0x440 (or MMIO 0xc0000000):
    /// `boot-timer: <µs> µs since process start`.
    #[arg(long)]
    boot_timer: bool,

    /// A virtio-net NIC on a host tap device: tap=NAME[,mac=52:54:00:12:34:56][,create=on].
    /// Repeatable: eth0, eth1, … The tap must exist (ip tuntap add NAME mode tap) unless
    /// create=on; without mac= the MAC is derived from the tap name.
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,create=on]", value_parser = parse_net)]
    net: Vec<NetConfig>,

    /// The virtio console (hvc0): off, stdio, file=PATH, pty or socket=PATH. When on, the default
    /// kernel command line uses console=hvc0 and --serial defaults to off.
    #[arg(long, value_name = "off|stdio|file=PATH|pty|socket=PATH", value_parser = check_backend)]
    console: Option<String>,

    /// The serial port COM1 (ttyS0): off, stdio, file=PATH, pty or socket=PATH. Default: stdio,
    /// or off when --console is on.
    #[arg(long, value_name = "off|stdio|file=PATH|pty|socket=PATH", value_parser = check_backend)]
    serial: Option<String>,

    /// More logging on stderr: -v for the boot steps with timings, -vv for debug.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_memory(s: &str) -> Result<u64, String> {
    vm::parse_memory_size(s).map_err(|e| e.0)
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    s.parse::<DiskConfig>().map_err(|e| e.0)
}

/// Checks a console backend at parse time (usage errors); converted after parsing.
fn check_backend(s: &str) -> Result<String, String> {
    s.parse::<CharBackend>()
        .map(|_| s.to_string())
        .map_err(|e| e.0)
}

fn backend(s: &str) -> CharBackend {
    // Checked by clap with check_backend.
    s.parse().unwrap_or(CharBackend::Off)
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    s.parse::<NetConfig>().map_err(|e| e.0)
}

fn main() -> ExitCode {
    // First thing: the reference of the boot timer and of the `-v` start-up timings.
    vm::mark_process_start();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp_micros()
        .init();

    let console = cli.console.as_deref().map_or(CharBackend::Off, backend);
    let serial = match cli.serial.as_deref() {
        Some(s) => backend(s),
        None if console.is_on() => CharBackend::Off,
        None => CharBackend::Stdio,
    };
    if console.owns_stdin() && serial.owns_stdin() {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--console stdio and --serial stdio cannot both own stdin; give one of them off, file=PATH, pty or socket=PATH",
            )
            .exit();
    }
    let stdin_owned = console.owns_stdin() || serial.owns_stdin();

    let config = VmConfig {
        kernel: cli.kernel,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        vcpus: cli.cpus,
        memory_bytes: cli.memory,
        disks: cli.disk,
        nets: cli.net,
        serial,
        console,
        boot_timer: cli.boot_timer,
    };

    let result = Vm::new(config).and_then(|vm| {
        for (device, path) in vm.ptys() {
            eprintln!("{device}: pty {}", path.display());
        }
        // Raw mode only while a guest console owns the terminal; restored on every way out of this
        // block.
        let _raw = (stdin_owned && std::io::stdin().is_terminal())
            .then(terminal::RawMode::enter)
            .flatten();
        vm.run()
    });
    match result {
        Ok(reason) => {
            log::info!("guest stopped: {reason:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its sources on one line, without repeating a source its parent already printed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}
