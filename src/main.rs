//! `vmm`: boot a Linux guest on KVM from the command line. All VM logic lives in the `vm` crate.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use vm::{CharBackend, DiskConfig, NetConfig, SeccompMode, Vm, VmConfig};

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

    /// A virtio-blk disk: [path=]PATH[,readonly=on][,id=NAME][,bw=RATE][,iops=N]. Repeatable:
    /// /dev/vda, /dev/vdb, … bw= limits bytes per second (K, M, G suffixes are binary: 50M =
    /// 50 MiB/s), iops= requests per second; bw_burst=SIZE and iops_burst=N set the bucket sizes
    /// (default: 100 ms worth of the rate, so a long transfer measures within about 1% of the
    /// limit). A throttled request waits; it never fails.
    #[arg(
        long,
        value_name = "PATH[,readonly=on][,id=NAME][,bw=RATE][,iops=N]",
        value_parser = parse_disk
    )]
    disk: Vec<DiskConfig>,

    /// Report once on stderr when the guest writes 123 to port 0x440 (or MMIO 0xc0000000):
    /// `boot-timer: <µs> µs since process start`.
    #[arg(long)]
    boot_timer: bool,

    /// A virtio-net NIC on a host tap device: tap=NAME[,mac=52:54:00:12:34:56][,create=on].
    /// Repeatable: eth0, eth1, … The tap must exist (ip tuntap add NAME mode tap) unless
    /// create=on; without mac= the MAC is derived from the tap name. bw=RATE (bytes per second,
    /// binary K, M, G suffixes) and pps=N (frames per second) limit each direction on its own,
    /// with bw_burst=SIZE and pps_burst=N as for --disk.
    #[arg(
        long,
        value_name = "tap=NAME[,mac=MAC][,create=on][,bw=RATE][,pps=N]",
        value_parser = parse_net
    )]
    net: Vec<NetConfig>,

    /// The virtio console (hvc0): off, stdio, file=PATH, pty or socket=PATH. When on, the default
    /// kernel command line uses console=hvc0 and --serial defaults to off.
    #[arg(long, value_name = "off|stdio|file=PATH|pty|socket=PATH", value_parser = check_backend)]
    console: Option<String>,

    /// The serial port COM1 (ttyS0): off, stdio, file=PATH, pty or socket=PATH. Default: stdio,
    /// or off when --console is on.
    #[arg(long, value_name = "off|stdio|file=PATH|pty|socket=PATH", value_parser = check_backend)]
    serial: Option<String>,

    /// Where the interrupt controllers and the PIT are emulated: split (KVM emulates the local
    /// APICs, vmm the I/O APIC and PIT; no 8259 PIC), kernel (all in KVM, PICs included), or auto
    /// (split when KVM supports it).
    #[arg(long, value_name = "auto|split|kernel", default_value = "auto")]
    irqchip: vm::IrqChip,

    /// More logging on stderr: -v for the boot steps with timings, -vv for debug.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// seccomp filters on every VMM thread (on), allowing only the system calls each kind of thread
    /// needs; a forbidden call stops the VMM with a message naming it. off is for debugging: the
    /// VMM then runs unconfined.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"])]
    seccomp: String,

    /// Run jailed, with DIR as the only file system the VMM sees (bound read-only): an empty
    /// directory owned by root that only root can write, on a path without symbolic links
    /// (mkdir -m 0755 DIR as root). After opening its files the VMM enters new mount, pid, ipc,
    /// uts and (without --net) net namespaces and its own cgroup vmm-ID, and runs as --uid/--gid
    /// with no capabilities; it inherits no descriptor but 0-2 and no environment variable.
    /// Needs root.
    #[arg(long, value_name = "DIR")]
    jail: Option<PathBuf>,

    /// The jail's id: its cgroup is vmm-ID (which must not exist), and the default --uid and
    /// --gid. Default: drawn at random from 2000000000 to 2147483646, an id of its own.
    #[arg(long, value_name = "ID", requires = "jail")]
    jail_id: Option<u32>,

    /// The user id the jailed VMM runs as, from 1 to 4294967294. Default: the jail's id.
    #[arg(long, value_name = "UID", requires = "jail")]
    uid: Option<u32>,

    /// The group id the jailed VMM runs as, from 1 to 4294967294. Default: the jail's id.
    #[arg(long, value_name = "GID", requires = "jail")]
    gid: Option<u32>,

    /// The jail's cgroup memory limit (128M, 2G or MiB). Default: --memory plus 128 MiB.
    #[arg(long, value_name = "SIZE", requires = "jail", value_parser = parse_memory)]
    memory_limit: Option<u64>,

    /// The jail's CPU quota in cores, e.g. 1.5; 0 for none. Default: --cpus plus 1.
    #[arg(long, value_name = "CORES", requires = "jail", value_parser = parse_cpu_quota)]
    cpu_quota: Option<f64>,
}

fn parse_cpu_quota(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v == 0.0 || (0.01..=4096.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not a CPU quota: give a number of cores from 0.01 to 4096, e.g. 1.5, or 0 for none"
        )),
    }
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
    vm::seccomp::set_forbidden_call_hint("Run with --seccomp off to debug.");
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    // virtio-queue logs an error for every malformed ring or chain a guest hands it, so a hostile
    // guest could fill the log; our devices report those themselves, once. Its own lines only at -vv.
    let queue_level = if cli.verbose >= 2 {
        level
    } else {
        log::LevelFilter::Off
    };
    env_logger::Builder::new()
        .filter_level(level)
        .filter_module("virtio_queue", queue_level)
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
        seccomp: if cli.seccomp == "off" {
            log::warn!(
                "--seccomp off: the VMM runs unconfined, with no seccomp filter on any thread"
            );
            SeccompMode::Off
        } else {
            SeccompMode::AllThreads
        },
        irqchip: cli.irqchip,
    };

    // The jail: the parent supervises and exits with the jailed child's status; the child builds
    // the VM with the host's files in view, then closes the jail before the guest runs.
    let mut jailed = None;
    if let Some(dir) = cli.jail {
        let jail = jail::JailConfig {
            dir,
            id: cli.jail_id,
            uid: cli.uid,
            gid: cli.gid,
            memory_limit: cli.memory_limit,
            cpu_quota: cli.cpu_quota,
        };
        match jail::Jail::new(&jail, &jail_spec(&config)).and_then(jail::Jail::fork) {
            Ok(jail::Forked::Supervisor(supervisor)) => {
                return ExitCode::from(supervisor.wait(jail_hint));
            }
            Ok(jail::Forked::Jailed(child)) => jailed = Some(child),
            Err(e) => {
                eprintln!("error: {}{}", error_chain(&e), jail_hint(&e));
                return ExitCode::FAILURE;
            }
        }
    }

    let result = Vm::new(config).map_err(AnyError::from).and_then(|vm| {
        for (device, path) in vm.ptys() {
            eprintln!("{device}: pty {}", path.display());
        }
        if let Some(jail) = jailed {
            jail.lock_down()?;
        }
        // Raw mode only while a guest console owns the terminal; restored on every way out of this
        // block.
        let _raw = (stdin_owned && std::io::stdin().is_terminal())
            .then(terminal::RawMode::enter)
            .flatten();
        vm.run().map_err(AnyError::from)
    });
    match result {
        Ok(reason) => {
            log::info!("guest stopped: {reason:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let hint = match (
                e.downcast_ref::<vm::Error>(),
                e.downcast_ref::<jail::JailError>(),
            ) {
                (Some(e), _) => flag_hint(e),
                (_, Some(e)) => jail_hint(e),
                _ => String::new(),
            };
            eprintln!("error: {}{hint}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

/// What to change on the command line about `e`, if an option is the fix: the `vm` library names
/// values, the CLI names its options.
fn flag_hint(e: &vm::Error) -> String {
    use vm::{DeviceError, Error};
    match e {
        Error::IrqchipUnsupported { .. } => "; use --irqchip kernel".into(),
        Error::VcpuCount { asked, max } => format!("; lower --cpus {asked} to at most {max}"),
        Error::MemoryTooSmall { .. } => "; give --memory 1M or more".into(),
        Error::MemoryExceedsHost { .. } | Error::GuestMemory { .. } => {
            "; ask for less with --memory".into()
        }
        Error::StdinTwice => {
            "; move --serial or --console to off, file=PATH, pty or socket=PATH".into()
        }
        Error::KernelFormat { .. } => "; give an ELF vmlinux or a bzImage with --kernel".into(),
        Error::InitrdTooLarge { .. } => {
            "; give the guest more --memory or a smaller --initrd".into()
        }
        Error::CmdlineTooLong { .. } => "; shorten --cmdline".into(),
        Error::TooManyVirtioDevices { .. } => {
            "; give fewer --disk, --net and --console devices".into()
        }
        Error::Net {
            source: DeviceError::TapMissing { name },
            ..
        } => format!(", or pass --net tap={name},create=on"),
        Error::Seccomp { .. } => " (--seccomp off runs the VMM unconfined)".into(),
        _ => String::new(),
    }
}

/// What to change on the command line about a jail error, if an option is the fix: the `jail`
/// library names values, the CLI names its options.
fn jail_hint(e: &jail::JailError) -> String {
    use jail::JailError;
    match e {
        JailError::DirUnusable { .. } => "; give an existing, empty directory with --jail".into(),
        JailError::NotADirectory { .. } | JailError::HostRoot => "; give one with --jail".into(),
        JailError::DirNotSafe { .. } => "; give such a directory with --jail".into(),
        JailError::BadId { kind, .. } => {
            let option = match *kind {
                "uid" => "--uid",
                "gid" => "--gid",
                _ => "--jail-id (or --uid and --gid)",
            };
            format!("; give {option} from 1 to 4294967294")
        }
        JailError::CgroupExists { .. } => "; give another --jail-id".into(),
        JailError::MemoryLimitTooLow {
            ram_mib,
            overhead_mib,
            ..
        } => format!(
            "; raise --memory-limit, which is less than the guest's --memory: give {}M or more",
            ram_mib + overhead_mib
        ),
        JailError::NeedRoot { .. } => "; run vmm as root, or without --jail".into(),
        JailError::ControllerMissing { controller: "cpu" } => ", or give --cpu-quota 0".into(),
        JailError::ControllerMissing { .. } => ", or run vmm without --jail".into(),
        JailError::ControllerNotOffered { value, .. }
            if value.split_whitespace().any(|c| c == "+cpu") =>
        {
            ", or give --cpu-quota 0 if it is cpu".into()
        }
        JailError::Seccomp(_) => " (--seccomp off runs the VMM unconfined)".into(),
        _ => String::new(),
    }
}

/// The VM's errors and the jail's, printed alike.
type AnyError = Box<dyn std::error::Error>;

/// What the jail needs to know of the VM, from its configuration.
fn jail_spec(config: &VmConfig) -> jail::VmSpec {
    let mut spec = jail::VmSpec {
        memory_bytes: config.memory_bytes,
        vcpus: config.vcpus,
        // A disk that cannot be read fails later with its own message, from Vm::new.
        disk_sizes: config
            .disks
            .iter()
            .map(|disk| std::fs::metadata(&disk.path).map_or(0, |m| m.len()))
            .collect(),
        host_network: !config.nets.is_empty(),
        seccomp: config.seccomp != SeccompMode::Off,
        ..jail::VmSpec::default()
    };
    for backend in [&config.serial, &config.console] {
        match backend {
            CharBackend::File(_) => spec.output_to_file = true,
            CharBackend::Socket(path) => spec.sockets.push(path.clone()),
            _ => {}
        }
    }
    spec
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(e: &vm::Error) -> String {
        format!("{}{}", error_chain(e), flag_hint(e))
    }

    #[test]
    fn the_cli_adds_the_option_to_the_librarys_value() {
        let e = vm::Error::IrqchipUnsupported {
            irqchip: "split",
            cap: "KVM_CAP_SPLIT_IRQCHIP",
        };
        assert_eq!(
            line(&e),
            "split irqchip: KVM on this host lacks KVM_CAP_SPLIT_IRQCHIP; use --irqchip kernel"
        );
        let e = vm::Error::VcpuCount {
            asked: 255,
            max: 254,
        };
        assert_eq!(
            line(&e),
            "255 vCPUs: this host runs 1 to 254 vCPUs per VM; lower --cpus 255 to at most 254"
        );
        let e = vm::Error::Net {
            tap: "t0".into(),
            source: vm::DeviceError::TapMissing { name: "t0".into() },
        };
        assert!(line(&e).ends_with("'ip link set t0 up'), or pass --net tap=t0,create=on"));
        let e = vm::Error::CmdlineTooLong {
            len: 3000,
            max: 2047,
        };
        assert!(line(&e).ends_with("at most 2047; shorten --cmdline"));
        // Errors with no option to change get no hint.
        assert_eq!(flag_hint(&vm::Error::ThreadPanicked("prep")), "");
    }

    fn jail_line(e: &jail::JailError) -> String {
        format!("{}{}", error_chain(e), jail_hint(e))
    }

    #[test]
    fn the_cli_adds_the_option_to_the_jails_value() {
        use jail::JailError;
        let e = JailError::MemoryLimitTooLow {
            limit_mib: 16,
            ram_mib: 128,
            overhead_mib: 128,
        };
        assert_eq!(
            jail_line(&e),
            "a memory limit of 16 MiB is less than the guest's 128 MiB of RAM plus the VMM's \
             128 MiB: the VMM would be killed once the guest touches its RAM; raise \
             --memory-limit, which is less than the guest's --memory: give 256M or more"
        );
        let e = JailError::BadId {
            kind: "gid",
            id: u32::MAX,
        };
        assert_eq!(
            jail_line(&e),
            "gid 4294967295: the jailed VMM runs as an unprivileged user and needs ids from 1 to \
             4294967294 (0 is root; 4294967295 is -1, which leaves the id unchanged); give --gid \
             from 1 to 4294967294"
        );
        let e = JailError::CgroupExists {
            dir: "/sys/fs/cgroup/pids/vmm-7".into(),
        };
        assert!(jail_line(&e).ends_with("(rmdir it); give another --jail-id"));
        let e = JailError::NotADirectory {
            path: "/etc/hostname".into(),
        };
        assert!(jail_line(&e).ends_with("VMM's root; give one with --jail"));
        let e = JailError::NeedRoot {
            step: "set up namespaces, a cgroup and a new root".into(),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(jail_line(&e)
            .ends_with("the jail needs root (CAP_SYS_ADMIN); run vmm as root, or without --jail"));
        let e = JailError::ControllerMissing { controller: "cpu" };
        assert!(jail_line(&e).ends_with("mount it, or give --cpu-quota 0"));
        let e = JailError::ControllerMissing { controller: "pids" };
        assert!(jail_line(&e).ends_with("mount it, or run vmm without --jail"));
        let e = JailError::Seccomp("no seccomp".into());
        assert!(jail_line(&e).ends_with("no seccomp (--seccomp off runs the VMM unconfined)"));
        // Errors with no option to change get no hint.
        let e = JailError::Threads {
            step: "enter the jail",
            threads: 2,
        };
        assert_eq!(jail_hint(&e), "");
    }
}
