//! `vmm`: boot a Linux guest on KVM from the command line. All VM logic lives in the `vm` crate.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vm::{DiskConfig, SerialOutput, Vm, VmConfig};

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

fn main() -> ExitCode {
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

    let config = VmConfig {
        kernel: cli.kernel,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        vcpus: cli.cpus,
        memory_bytes: cli.memory,
        disks: cli.disk,
        serial_output: SerialOutput::Stdout,
        serial_input: true,
    };

    let result = Vm::new(config).and_then(|vm| {
        // Raw mode only while the guest owns the terminal; restored on every way out of this block.
        let _raw = std::io::stdin()
            .is_terminal()
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
