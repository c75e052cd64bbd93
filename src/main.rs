//! `vmm`: boot a Linux guest on KVM from the command line. All VM logic lives in the `vm` crate.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};

use clap::{Args, CommandFactory, Parser, Subcommand};
use vm::{
    CharBackend, DiskConfig, ExitReason, NetConfig, SeccompMode, ShareConfig, Vm, VmConfig,
    VsockConfig,
};

mod ctl;
mod run;
mod terminal;

/// A minimal virtual machine monitor: boots a Linux kernel on KVM with a serial console and virtio disks.
///
/// Exit status: 0 when the guest powers off or resets, 1 on a VMM error, 2 on a usage error, 3 when
/// the guest triple-faults, 4 when the guest kernel panics (pvpanic), 143 when SIGTERM had to stop
/// a guest that did not power off in time, 128+N when signal N killed vmm, and N when the guest
/// writes the byte N to the exit device: I/O port 0x501 (`outb` of N, no shifted encoding) or the
/// byte at MMIO 0xc000_1000 (`devmem 0xc0001000 8 N` from a Linux init).
#[derive(Parser, Debug)]
#[command(
    name = "vmm",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    vm: Option<VmArgs>,

    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run COMMAND in a fresh guest and exit with its status: vmm boots the kernel with an
    /// initramfs of its own holding the guest agent, which mounts the first --disk as / and runs
    /// COMMAND there; COMMAND's stdout and stderr are vmm's, vmm's stdin is COMMAND's. The guest
    /// kernel needs virtio-mmio and virtio-vsock built in; nothing is installed in the image.
    ///
    /// Exit status: COMMAND's (128+N when signal N killed it), or, as timeout(1) and env(1) do:
    /// 124 when --timeout ran out, 125 when vmm or the guest failed (the guest stopped first, or
    /// its agent never answered: one `error:` line says which), 126 when COMMAND cannot be
    /// executed, 127 when it is not found.
    Run(RunArgs),

    /// Talk to a running vmm's control API (the socket it was started with --api-socket PATH):
    /// `info` prints the VM's state, configuration, uptime and device counters as JSON; `pause`
    /// stops every vCPU, `resume` lets them go on; `shutdown` presses the guest's power button
    /// and stops the VM after its --shutdown-timeout (a second `shutdown` stops it at once);
    /// `snapshot DIR` saves the paused VM to DIR for `vmm --restore DIR`. Prints one line (the JSON for info); exit status
    /// 0 on success, 1 with one `error:` line otherwise. The API itself is HTTP/1.1 with JSON
    /// bodies (docs/API.md): `curl --unix-socket PATH http://localhost/vm`.
    Ctl(ctl::CtlArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    vm: VmArgs,

    /// Stop COMMAND (and the VM) after this long (30s, 500ms, 2m or seconds; not 0), counted
    /// from when it starts: exit 124.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    timeout: Option<std::time::Duration>,

    /// How long the guest may take to boot and its agent to answer (30s, 500ms, 2m or seconds;
    /// not 0).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_positive_duration)]
    ready_timeout: std::time::Duration,

    /// Set the variable K to V in COMMAND's environment (which starts as PATH and HOME only).
    /// Repeatable.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// COMMAND's working directory in the guest, an absolute path (default /).
    #[arg(long, value_name = "DIR", value_parser = parse_workdir)]
    workdir: Option<String>,

    /// Run no command: once the agent is ready, save the guest to DIR (as `vmm ctl snapshot`
    /// does) and stop it, leaving its disks as they were at that moment. `vmm run --restore DIR
    /// -- COMMAND` then starts from the ready guest instead of booting; keep the disk images
    /// unchanged while DIR is used.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["command", "restore"])]
    save: Option<PathBuf>,

    /// The command and its arguments, after `--` (UTF-8: the agent's protocol carries text).
    #[arg(last = true, required_unless_present = "save", value_name = "COMMAND", value_parser = clap::value_parser!(std::ffi::OsString))]
    command: Vec<std::ffi::OsString>,
}

/// The options that describe the VM, for `vmm` and `vmm run` alike.
#[derive(Args, Debug)]
struct VmArgs {
    /// Kernel image: ELF vmlinux (PVH entry if present) or bzImage.
    #[arg(long, value_name = "PATH", required_unless_present = "restore")]
    kernel: Option<PathBuf>,

    /// Continue the VM saved in DIR (by `vmm ctl snapshot DIR`) instead of booting one: its
    /// memory is mapped privately from the snapshot (pages load as the guest touches them; many
    /// VMs restored from one snapshot share the pages none of them wrote), its vCPUs, interrupt
    /// controllers, clock and devices carry on where they were paused. Memory, vCPUs, irqchip,
    /// ACPI and the device set are the snapshot's; backends can be new: the Nth --disk replaces
    /// the snapshot's Nth disk (same size and readonly=), the Nth --net its Nth NIC, --vsock its
    /// socket (same cid=), and --serial, --console, --api-socket, --jail are this run's. The
    /// guest's vsock connections are reset.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["kernel", "initrd", "cmdline", "cpus", "memory", "irqchip", "acpi", "boot_timer"]
    )]
    restore: Option<PathBuf>,

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

    /// A virtio-blk disk: [path=]PATH[,format=raw|qcow2][,readonly=on][,snapshot=on][,id=NAME][,bw=RATE][,iops=N].
    /// Repeatable: /dev/vda, /dev/vdb, … The format is read from the image's header (qcow2 v2
    /// or v3, with its backing files, opened read-only; else raw), never from its name;
    /// format= forces one (format=raw serves a qcow2 file's bytes as they are). snapshot=on: the guest sees a writable disk whose
    /// writes go to an unnamed temporary file (in the image's directory, else $TMPDIR, else
    /// /var/tmp) and are gone when vmm exits, however it ends; the image is only read (and
    /// locked as a reader, so it may be shared with other readers). bw= limits bytes per second (K, M, G suffixes are binary: 50M =
    /// 50 MiB/s), iops= requests per second; bw_burst=SIZE and iops_burst=N set the bucket sizes
    /// (default: 100 ms worth of the rate, so a long transfer measures within about 1% of the
    /// limit). A throttled request waits; it never fails. aio=io_uring keeps a raw image's reads,
    /// writes and flushes in flight at once; aio=sync serves one request at a time; by default
    /// io_uring where the kernel allows it (snapshot=on disks and qcow2 images are always served synchronously).
    #[arg(
        long,
        value_name = "PATH[,format=raw|qcow2][,readonly=on][,snapshot=on][,aio=sync|io_uring][,id=NAME][,bw=RATE][,iops=N]",
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
    /// kernel command line uses console=hvc0 and --serial defaults to off. file=PATH[,max=SIZE]
    /// [,truncate=on]: a new file is created mode 0600; an existing regular file is appended to
    /// (emptied first with truncate=on); a symbolic link is never followed, and a FIFO, device
    /// (but /dev/null) or file with several hard links is refused; output beyond max (default 1G;
    /// K, M, G suffixes) is dropped and counted. socket=PATH: created mode 0600; refused if
    /// anything is at PATH (a stale socket from a killed vmm included: remove it yourself);
    /// removed at exit if it is still vmm's. --serial and --console cannot share a PATH.
    #[arg(
        long,
        value_name = "off|stdio|file=PATH[,max=SIZE][,truncate=on]|pty|socket=PATH",
        value_parser = check_backend
    )]
    console: Option<String>,

    /// A virtio-vsock device: cid=N (the guest's CID, 3 or more), socket=PATH (a Unix socket
    /// vmm creates mode 0600, refused if anything is at PATH, removed at exit if still vmm's). A
    /// host program connects to PATH, writes `CONNECT <port>\n` and, once the guest's listener
    /// on that port accepts, reads `OK <host port>\n` (it is closed if its line or the guest's
    /// answer takes over 5 s); the socket is then a byte stream to the guest. A guest connection
    /// to CID 2, port P, connects to the Unix socket PATH_P. With --jail the VMM reaches PATH's
    /// directory only (a symbolic link there that leads out of it goes nowhere) and runs as
    /// --uid/--gid: PATH_P must be connectable by them (e.g. group --gid with mode 0660) in a
    /// directory they may search; give PATH a directory of its own.
    #[arg(long, value_name = "cid=N,socket=PATH", value_parser = parse_vsock)]
    vsock: Option<VsockConfig>,

    /// Share a host directory with the guest over virtio-fs (repeatable): HOSTDIR,tag=NAME
    /// [,readonly=on]; in the guest, `mount -t virtiofs NAME /mnt`. Served by a process of
    /// vmm's own, confined to HOSTDIR (its own mount namespace rooted there, a seccomp filter,
    /// only the capabilities of file operations); readonly=on refuses every write. Files the
    /// guest makes belong to the guest's uid and gid on the host (vmm as root) or to vmm's user.
    /// A VM with shares cannot be snapshotted.
    #[arg(long, value_name = "HOSTDIR,tag=NAME[,readonly=on]", value_parser = parse_share, conflicts_with = "restore")]
    share: Vec<ShareConfig>,

    /// The guest's root file system from a host directory, over virtio-fs: DIR[,readonly=off].
    /// Read-only by default, with the writes going to a tmpfs overlay in the guest (nothing
    /// reaches DIR); readonly=off writes through. The guest's first program is vmm's small init
    /// (brought in its own initramfs, unless --initrd is given), which mounts it and starts
    /// vmm.init=PATH from the command line (default /sbin/init); `vmm run` starts COMMAND instead.
    /// `vmm run --root-share / -- CMD` runs a host program in the guest kernel.
    #[arg(long, value_name = "DIR[,readonly=off]", value_parser = parse_root_share, conflicts_with = "restore")]
    root_share: Option<ShareConfig>,

    /// The serial port COM1 (ttyS0): off, stdio, file=PATH[,max=SIZE][,truncate=on], pty or
    /// socket=PATH, as for --console. Default: stdio, or off when --console is on.
    #[arg(
        long,
        value_name = "off|stdio|file=PATH[,max=SIZE][,truncate=on]|pty|socket=PATH",
        value_parser = check_backend
    )]
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

    /// Describe the machine to the guest with ACPI tables (on): the kernel finds the virtio
    /// devices, the power button and pvpanic there, and `poweroff` ends the VM. off: the MP table
    /// and `virtio_mmio.device=` entries on the command line only, for kernels built without
    /// ACPI (a guest's own `acpi=off` does the same).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"])]
    acpi: String,

    /// On SIGTERM vmm presses the guest's power button and waits this long (30s, 500ms, 2m or
    /// seconds) for it to power off before stopping it (exit 143); a second SIGTERM stops it at
    /// once.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    shutdown_timeout: std::time::Duration,

    /// Serve the control API (HTTP/1.1 with JSON bodies, docs/API.md) on a Unix socket at PATH,
    /// for `vmm ctl --api-socket PATH info|pause|resume|shutdown` or `curl --unix-socket PATH
    /// http://localhost/vm`. The socket is created mode 0600 (its owner only) before --jail
    /// confines vmm, and removed at exit if it is still vmm's. Anything at PATH is refused and
    /// left alone, except a socket of this user's that nobody listens on (left by a vmm that was
    /// killed), which is replaced.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,

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

/// A duration: a number with `ms`, `s` or `m`, or a plain number of seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (number, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        (t, 1000)
    };
    match number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
    {
        Some(ms) if ms <= 24 * 3600 * 1000 => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(format!(
            "'{s}' is not a duration: give a whole number with ms, s or m (e.g. 30s), at most a day"
        )),
    }
}

/// A duration above zero (for a time limit, where 0 would end everything at once).
fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!(
            "'{s}' is no time at all: give a duration above 0 (or leave the option out)"
        )),
        d => Ok(d),
    }
}

/// An absolute path in the guest, for --workdir.
fn parse_workdir(s: &str) -> Result<String, String> {
    match s.starts_with('/') {
        true => Ok(s.to_string()),
        false => Err(format!(
            "'{s}' is not an absolute path: give the directory in the guest from / (e.g. /tmp)"
        )),
    }
}

/// `K=V` for --env: K non-empty, without `=` or NUL.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !s.contains('\0') => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not K=V: give a name, '=', and the value")),
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

fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    s.parse::<VsockConfig>().map_err(|e| e.0)
}

fn parse_share(s: &str) -> Result<ShareConfig, String> {
    s.parse::<ShareConfig>().map_err(|e| e.0)
}

/// A root share: as --share (without GUESTDIR and tag), read-only unless it says otherwise.
fn parse_root_share(s: &str) -> Result<ShareConfig, String> {
    let mut share = s.parse::<ShareConfig>().map_err(|e| e.0)?;
    if share.guest_dir.is_some() || !share.tag.is_empty() {
        return Err(format!(
            "root share '{s}': the form is DIR[,readonly=off] (no :GUESTDIR, no tag)"
        ));
    }
    let says = |p: &str| p.starts_with("readonly=") || p.starts_with("ro=");
    if !s.split(',').skip(1).any(says) {
        share.read_only = true;
    }
    Ok(share)
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    s.parse::<NetConfig>().map_err(|e| e.0)
}

fn main() -> ExitCode {
    // First thing: the reference of the boot timer and of the `-v` start-up timings.
    vm::mark_process_start();
    // A share's server: this executable started again by vmm (see the `share` crate).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == share::SERVER_ARG) {
        init_logging(0);
        return share::server_main(&args[2..]);
    }
    vm::seccomp::set_forbidden_call_hint("Run with --seccomp off to debug.");
    handle_sigterm();
    // `vmm run`'s own failures must not look like COMMAND's statuses: a usage error is 125 there.
    let run_mode = std::env::args_os().nth(1).is_some_and(|a| a == "run");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if run_mode && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(run::EXIT_FAILED);
        }
        Err(e) => e.exit(),
    };
    match cli.command {
        Some(Command::Run(args)) => {
            init_logging(args.vm.verbose);
            run::run(args)
        }
        Some(Command::Ctl(args)) => ctl::ctl(args),
        None => match cli.vm {
            Some(args) => {
                init_logging(args.verbose);
                boot(args)
            }
            None => Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "give the guest's kernel with --kernel PATH (or a subcommand: vmm run, vmm ctl)",
                )
                .exit(),
        },
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    // virtio-queue logs an error for every malformed ring or chain a guest hands it, so a hostile
    // guest could fill the log; our devices report those themselves, once. Its own lines only at -vv.
    let queue_level = if verbose >= 2 {
        level
    } else {
        log::LevelFilter::Off
    };
    env_logger::Builder::new()
        .filter_level(level)
        .filter_module("virtio_queue", queue_level)
        .format_timestamp_micros()
        .init();
}

/// A root share's boot without `vmm run`: vmm's init in its initramfs (unless --initrd is given)
/// mounts the root share and the shares (each at GUESTDIR, or at HOSTDIR's path), then starts
/// `vmm.init=PATH` (default /sbin/init).
fn shared_root_init(config: &mut VmConfig) -> Result<(), sandbox::SandboxError> {
    let words = sandbox::share_cmdline(&config.shares)?;
    if config.initrd.is_none() {
        config.initrd = Some(vm::Initrd::Bytes(sandbox::agent_initramfs()));
    }
    let mut cmdline = config.base_cmdline().to_string();
    if !cmdline
        .split_whitespace()
        .any(|w| w.starts_with("vmm.init="))
    {
        cmdline.push_str(" vmm.init=/sbin/init");
    }
    for word in words {
        cmdline.push(' ');
        cmdline.push_str(&word);
    }
    config.cmdline = Some(cmdline);
    Ok(())
}

/// The VM the options describe, with these console backends.
fn vm_config(cli: &VmArgs, serial: CharBackend, console: CharBackend) -> VmConfig {
    VmConfig {
        kernel: cli.kernel.clone().unwrap_or_default(),
        initrd: cli.initrd.clone().map(vm::Initrd::File),
        cmdline: cli.cmdline.clone(),
        vcpus: cli.cpus,
        memory_bytes: cli.memory,
        disks: cli.disk.clone(),
        nets: cli.net.clone(),
        serial,
        console,
        vsock: cli.vsock.clone(),
        shares: cli.share.clone(),
        root_share: cli.root_share.clone(),
        vsock_socket: None,
        api_socket: None,
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
        acpi: cli.acpi == "on",
        shutdown_timeout: cli.shutdown_timeout,
    }
}

/// Opens the snapshot in `dir` and makes `config` the machine it holds, with the backends the
/// options give: the Nth `--disk` or `--net` replaces the snapshot's Nth, `--vsock` its socket.
fn restore_config(
    cli: &VmArgs,
    dir: &std::path::Path,
    config: &mut VmConfig,
    default_console: CharBackend,
) -> Result<vm::Snapshot, vm::Error> {
    let snapshot = vm::Snapshot::open(dir)?;
    let machine = snapshot.machine();
    let replace = |what: &str, given: usize, saved: usize| -> Result<(), vm::Error> {
        match given > saved {
            true => Err(snapshot.mismatch(format!(
                "it has {saved} {what}, {given} were given to replace them"
            ))),
            false => Ok(()),
        }
    };
    replace("disk(s)", cli.disk.len(), machine.disks.len())?;
    replace("NIC(s)", cli.net.len(), machine.nets.len())?;
    let mut disks = machine.disks.clone();
    for (slot, disk) in disks.iter_mut().zip(&cli.disk) {
        *slot = disk.clone();
    }
    let mut nets = machine.nets.clone();
    for (slot, net) in nets.iter_mut().zip(&cli.net) {
        *slot = net.clone();
    }
    config.memory_bytes = machine.memory_bytes;
    config.vcpus = machine.vcpus;
    config.irqchip = machine.irqchip;
    config.acpi = machine.acpi;
    config.boot_timer = machine.boot_timer;
    config.disks = disks;
    config.nets = nets;
    config.vsock = cli.vsock.clone().or_else(|| machine.vsock.clone());
    if machine.console && !config.console.is_on() {
        // The guest writes to its console: somewhere it must go.
        config.console = default_console;
        if cli.serial.is_none() {
            config.serial = CharBackend::Off;
        }
    }
    if !machine.console && config.console.is_on() {
        return Err(
            snapshot.mismatch("it has no virtio console; give --restore without --console".into())
        );
    }
    Ok(snapshot)
}

/// `vmm [OPTIONS]`: boot the guest and run it to its end.
fn boot(cli: VmArgs) -> ExitCode {
    let console = cli.console.as_deref().map_or(CharBackend::Off, backend);
    let serial = match cli.serial.as_deref() {
        Some(s) => backend(s),
        None if console.is_on() => CharBackend::Off,
        None => CharBackend::Stdio,
    };
    let mut config = vm_config(&cli, serial, console);
    if config.root_share.is_some() {
        if let Err(e) = shared_root_init(&mut config) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let snapshot = match &cli.restore {
        Some(dir) => match restore_config(&cli, dir, &mut config, CharBackend::Stdio) {
            Ok(snapshot) => Some(snapshot),
            Err(e) => {
                eprintln!("error: {}{}", error_chain(&e), flag_hint(&e));
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    if config.console.owns_stdin() && config.serial.owns_stdin() {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--console stdio and --serial stdio cannot both own stdin; give one of them off, file=PATH, pty or socket=PATH",
            )
            .exit();
    }
    let stdin_owned = config.console.owns_stdin() || config.serial.owns_stdin();

    // The jail: the parent supervises and exits with the jailed child's status; the child builds
    // the VM with the host's files in view, then closes the jail before the guest runs.
    if let Err(e) = config.check_backend_paths() {
        eprintln!("error: {e}{}", flag_hint(&e));
        return ExitCode::FAILURE;
    }
    if let Err(e) = bind_api_socket(&cli, &mut config) {
        eprintln!("error: {}{}", error_chain(&e), flag_hint(&e));
        return ExitCode::FAILURE;
    }
    let mut jailed = None;
    // Debug builds only, for tests/jail.rs: a FIFO the jailed VMM reads to its end after building
    // the VM and before entering the jail (read now: the jailed VMM starts with no environment).
    let pause_before_jail = cfg!(debug_assertions)
        .then(|| std::env::var_os("VMM_TEST_JAIL_PAUSE"))
        .flatten();
    if let Some(dir) = cli.jail {
        // Sockets are bound before the fork, so the supervisor knows which inode is the VMM's.
        if let Err(e) = bind_sockets(&mut config) {
            remove_bound_sockets(&config);
            eprintln!("error: {}{}", error_chain(&e), flag_hint(&e));
            return ExitCode::FAILURE;
        }
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
                // Closes the supervisor's copies of the listening sockets.
                drop(config);
                return ExitCode::from(supervisor.wait(jail_hint));
            }
            Ok(jail::Forked::Jailed(child)) => {
                handle_sigterm();
                jailed = Some(child);
            }
            Err(e) => {
                remove_bound_sockets(&config);
                eprintln!("error: {}{}", error_chain(&e), jail_hint(&e));
                return ExitCode::FAILURE;
            }
        }
    }

    let vm = match &snapshot {
        Some(snapshot) => Vm::restore(config, snapshot),
        None => Vm::new(config),
    };
    let result = vm.map_err(AnyError::from).and_then(|vm| {
        for (device, path) in vm.ptys() {
            eprintln!("{device}: pty {}", path.display());
        }
        if let Some(jail) = jailed {
            if let Some(fifo) = &pause_before_jail {
                let _ = std::fs::read(fifo);
            }
            jail.lock_down()?;
        }
        // Raw mode only while a guest console owns the terminal; restored on every way out of this
        // block.
        let _raw = (stdin_owned && std::io::stdin().is_terminal())
            .then(terminal::RawMode::enter)
            .flatten();
        let _sigterm = shutdown_on_sigterm(vm.shutdown_request());
        vm.run().map_err(AnyError::from)
    });
    match result {
        Ok(reason) => {
            log::info!("guest stopped: {reason:?}");
            ExitCode::from(exit_status(reason))
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

/// vmm's exit status for how the guest ended (README, "Exit status"), with a line on stderr for
/// the endings that are not the guest's own choice.
fn exit_status(reason: ExitReason) -> u8 {
    match reason {
        ExitReason::PowerOff | ExitReason::Reset => 0,
        ExitReason::TripleFault => {
            eprintln!("guest triple-faulted (a crash: x86 resets on a triple fault)");
            EXIT_TRIPLE_FAULT
        }
        ExitReason::Panic => {
            eprintln!("guest kernel panicked");
            EXIT_PANIC
        }
        ExitReason::Stopped => EXIT_STOPPED,
        ExitReason::GuestStatus(status) => status,
    }
}

/// The guest triple-faulted.
const EXIT_TRIPLE_FAULT: u8 = 3;
/// The guest kernel panicked (pvpanic).
const EXIT_PANIC: u8 = 4;
/// SIGTERM stopped a guest that did not power off in time: the status of a process SIGTERM ended.
const EXIT_STOPPED: u8 = 128 + libc::SIGTERM as u8;

/// The shutdown request's eventfd, for the SIGTERM handler; -1 while there is none.
static SHUTDOWN_FD: AtomicI32 = AtomicI32::new(-1);
/// SIGTERMs that came before the VM could take them (while it was being built).
static EARLY_SIGTERMS: AtomicU32 = AtomicU32::new(0);
/// A SIGTERM came (for `vmm run`, which then ends with [`EXIT_STOPPED`]).
static SIGTERM_SEEN: AtomicBool = AtomicBool::new(false);
/// The VM has stopped: SIGTERM ends vmm, as its default action would (which seccomp no longer
/// lets this process restore).
static VM_GONE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    SIGTERM_SEEN.store(true, Ordering::Release);
    let fd = SHUTDOWN_FD.load(Ordering::Acquire);
    if fd < 0 {
        if VM_GONE.load(Ordering::Acquire) {
            // SAFETY: _exit is async-signal-safe and ends the process.
            unsafe { libc::_exit(i32::from(EXIT_STOPPED)) };
        }
        EARLY_SIGTERMS.fetch_add(1, Ordering::AcqRel);
        return;
    }
    let one = 1u64;
    // SAFETY: write(2) is async-signal-safe; the buffer is 8 valid bytes; the fd stays open while
    // the handle in `SigtermShutdown` lives, and is unset before that handle drops.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Makes SIGTERM a shutdown request: counted until the VM exists, then its power button (see
/// [`shutdown_on_sigterm`]). Called first thing, and again in the jailed VMM, which the jail
/// starts with default signal actions (and which, as its pid namespace's init, would otherwise
/// ignore SIGTERM).
fn handle_sigterm() {
    // SAFETY: a zeroed sigaction and sigset are valid once initialised by sigemptyset; the
    // handler only touches atomics and calls write(2). SIGTERM is also unblocked: a mask the
    // caller left blocked survives exec, and every thread vmm starts inherits this one's.
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) == 0
    };
    if !installed {
        log::warn!(
            "cannot handle SIGTERM: {}; it will kill vmm",
            std::io::Error::last_os_error()
        );
    }
}

/// While this lives, SIGTERM asks the guest to shut down (the power button, then a hard stop
/// after --shutdown-timeout); when it drops, SIGTERM ends vmm (status 143) again.
struct SigtermShutdown {
    request: Option<vm::ShutdownRequest>,
}

/// Points the SIGTERM handler at `request`. A SIGTERM that came while the VM was being built
/// stops it before it runs (two requests: no guest is there yet to press a button for).
fn shutdown_on_sigterm(request: vm::ShutdownRequest) -> SigtermShutdown {
    use std::os::fd::AsRawFd;
    SHUTDOWN_FD.store(request.as_raw_fd(), Ordering::Release);
    if EARLY_SIGTERMS.swap(0, Ordering::AcqRel) > 0 {
        for _ in 0..2 {
            if let Err(e) = request.request() {
                log::warn!("cannot pass on an early SIGTERM: {e}");
            }
        }
    }
    SigtermShutdown {
        request: Some(request),
    }
}

impl Drop for SigtermShutdown {
    fn drop(&mut self) {
        VM_GONE.store(true, Ordering::Release);
        SHUTDOWN_FD.store(-1, Ordering::Release);
        // The eventfd stays open for the rest of the process: a handler that loaded its number
        // on another thread just before this may still write to it, and must not reach a file
        // that reused the number.
        std::mem::forget(self.request.take());
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
        Error::SameBackendPath { .. } => {
            "; give --serial, --console and --vsock's socket different paths".into()
        }
        Error::StdinTwice => {
            "; move --serial or --console to off, file=PATH, pty or socket=PATH".into()
        }
        Error::KernelFormat { .. } => "; give an ELF vmlinux or a bzImage with --kernel".into(),
        Error::InitrdTooLarge { .. } => {
            "; give the guest more --memory or a smaller --initrd".into()
        }
        Error::KernelTooLarge { needs_mib, .. } => format!("; give --memory {needs_mib}M or more"),
        Error::InitrdNotAFile { .. } => "; give a regular file with --initrd".into(),
        Error::DiskTwice { .. } => "; give each image to one --disk only".into(),
        Error::Disk {
            source: DeviceError::DiskModeReadOnly { .. },
            ..
        } => "; add readonly=on (or snapshot=on, for throw-away writes) to its --disk".into(),
        Error::Disk {
            source: DeviceError::DiskOpen { error, .. },
            ..
        } if error.raw_os_error() == Some(libc::EROFS) => {
            "; add readonly=on (or snapshot=on, for throw-away writes) to its --disk".into()
        }
        Error::Disk {
            source: DeviceError::DiskUring { .. },
            ..
        } => "; give aio=sync to its --disk (or leave aio out: io_uring where it works)".into(),
        Error::Disk {
            source: DeviceError::DiskUringUnsupported { option, .. },
            ..
        } => format!("; drop aio=io_uring (or {option}) from its --disk"),
        Error::Disk {
            source: DeviceError::DiskOverlay { .. },
            ..
        } => "; set TMPDIR to a directory with room for the disk's writes".into(),
        Error::Disk {
            source: DeviceError::DiskNotAFile { .. },
            ..
        } => "; give a raw or qcow2 image file or a block device with --disk".into(),
        Error::Disk {
            source: DeviceError::DiskFormat { .. },
            ..
        } => "; `qemu-img info` and `qemu-img check` show what is in the image (format=raw serves its bytes as they are)".into(),
        Error::CmdlineTooLong { .. } => "; shorten --cmdline".into(),
        Error::TooManyVirtioDevices { .. } => {
            "; give fewer --disk, --net, --console, --vsock and --share devices".into()
        }
        Error::Share { .. } => {
            "; --share and --root-share take a directory the VMM's user can read".into()
        }
        Error::ShareTagTwice { .. } => "; give each --share its own tag=NAME".into(),
        Error::Net {
            source: DeviceError::TapMissing { name },
            ..
        } => format!(", or pass --net tap={name},create=on"),
        Error::Seccomp { .. } => " (--seccomp off runs the VMM unconfined)".into(),
        Error::Device {
            what: "vsock",
            source:
                DeviceError::SocketInUse { .. }
                | DeviceError::SocketStale { .. }
                | DeviceError::PathTaken { .. },
        } => "; give --vsock another socket=PATH".into(),
        Error::Device {
            what: "api",
            source:
                DeviceError::SocketInUse { .. }
                | DeviceError::SocketStale { .. }
                | DeviceError::PathTaken { .. }
                | DeviceError::Chardev { .. },
        } => "; give --api-socket another PATH".into(),
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
            // A qcow2 image grows as the guest writes: its bound, not its size now.
            .map(|disk| vm::disk_growth_bound(&disk.path))
            .collect(),
        host_network: !config.nets.is_empty(),
        seccomp: config.seccomp != SeccompMode::Off,
        // Room for virtio-vsock's host sockets and the control API's clients.
        extra_fds: if config.vsock.is_some() {
            vm::VSOCK_MAX_CONNS as u64
        } else {
            0
        } + if config.api_socket.is_some() {
            vm::api::MAX_CLIENTS as u64
        } else {
            0
        },
        shutdown_timeout: config.shutdown_timeout,
        ..jail::VmSpec::default()
    };
    for backend in [&config.serial, &config.console] {
        match backend {
            CharBackend::File(_, options) => {
                let max = spec.output_file_max.unwrap_or(0).max(options.max_bytes);
                spec.output_file_max = Some(max);
            }
            CharBackend::BoundSocket(socket) => spec.sockets.push(jail::SocketSpec {
                path: socket.path().to_path_buf(),
                dev: socket.id().dev,
                ino: socket.id().ino,
                fd: std::os::fd::AsRawFd::as_raw_fd(socket.listener()),
            }),
            _ => {}
        }
    }
    if let Some(socket) = &config.api_socket {
        spec.sockets.push(jail::SocketSpec {
            path: socket.path().to_path_buf(),
            dev: socket.id().dev,
            ino: socket.id().ino,
            fd: std::os::fd::AsRawFd::as_raw_fd(socket.listener()),
        });
    }
    if let Some(socket) = &config.vsock_socket {
        // The guest's connections go to PATH_<port>, by name in PATH's directory.
        let socket = jail::SocketSpec {
            path: socket.path().to_path_buf(),
            dev: socket.id().dev,
            ino: socket.id().ino,
            fd: std::os::fd::AsRawFd::as_raw_fd(socket.listener()),
        };
        spec.sockets.push(socket.clone());
        spec.connect_beside = Some(socket);
    }
    spec
}

/// Binds the socket backends and the vsock's socket now (see [`CharBackend::BoundSocket`]).
fn bind_sockets(config: &mut VmConfig) -> Result<(), vm::Error> {
    for (what, backend) in [
        ("serial", &mut config.serial),
        ("console", &mut config.console),
    ] {
        if let CharBackend::Socket(path) = backend {
            let socket =
                vm::SocketFile::bind(path).map_err(|source| vm::Error::Device { what, source })?;
            *backend = CharBackend::BoundSocket(socket);
        }
    }
    if let Some(vsock) = &mut config.vsock {
        let socket = vm::SocketFile::bind(&vsock.socket).map_err(|source| vm::Error::Device {
            what: "vsock",
            source,
        })?;
        config.vsock_socket = Some(socket);
        // Inside the jail PATH is out of reach; its directory is the working directory.
        vsock.connect_by_name = true;
    }
    Ok(())
}

/// Removes the sockets [`bind_sockets`] made, when the VM will not run.
fn remove_bound_sockets(config: &VmConfig) {
    for backend in [&config.serial, &config.console] {
        if let CharBackend::BoundSocket(socket) = backend {
            socket.remove();
        }
    }
    if let Some(socket) = &config.vsock_socket {
        socket.remove();
    }
    if let Some(socket) = &config.api_socket {
        socket.remove();
    }
}

/// Binds `--api-socket` (before a jail confines vmm, so the API is reachable at PATH).
fn bind_api_socket(cli: &VmArgs, config: &mut VmConfig) -> Result<(), vm::Error> {
    if let Some(path) = &cli.api_socket {
        let socket = vm::api::bind(path).map_err(|source| vm::Error::Device {
            what: "api",
            source,
        })?;
        config.api_socket = Some(socket);
    }
    Ok(())
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
