//! seccomp-bpf filters: one allow-list per kind of VMM thread, so that a guest that breaks out of KVM
//! into the VMM process can make only the system calls that thread already makes.
//!
//! The kinds ([`ThreadKind`]):
//! - `vcpu`: a vCPU thread. KVM_RUN and the register reads of an error report, then what the
//!   devices declare for their register handlers (eventfd writes, console output, the tap's
//!   TUNSETOFFLOAD when the guest acks the net features, the PIT's timerfd, KVM_SET_GSI_ROUTING
//!   when the guest programs the split irqchip's I/O APIC), memory management, thread exit.
//! - `vmm`: the thread that runs [`crate::Vm::run`]'s event loop (the CLI's main thread). epoll,
//!   then what the devices declare for their event-loop work (disk, tap, console I/O, the socket
//!   backend's accept, the rate limiters' timerfds, terminal restore), the kick signal to the
//!   vCPUs, and tearing the VM down.
//! - `helper`: with the in-kernel irqchip, a thread `Vm::run` starts for one ioctl (turning off the
//!   PIT's tick reinjection, see `vm.rs`) while the guest starts; it filters itself before that
//!   ioctl and then exits.
//! - `api`: the control API's thread (`--api-socket`, see `api.rs`): poll, accept4, reading and
//!   writing its clients' sockets, the vCPU kick signal (pause) and the shutdown request's
//!   eventfd. No KVM ioctl, no file or socket made.
//! - `snapshot`: with the control API, the thread that writes a snapshot when the API asks
//!   (`snapshot.rs`): the VM's KVM_GET_IRQCHIP, KVM_GET_PIT2 and KVM_GET_CLOCK, and the files of
//!   the snapshot directory: mkdir, openat with exactly two sets of flags (the directory, not
//!   through a link; a new file, O_EXCL, not through a link: no existing file can be opened),
//!   writes, seeks, ftruncate, fsync, renameat and unlinkat inside that directory. The vCPUs'
//!   state is read by each vCPU thread itself, while parked.
//!
//! Where the lists come from: each device and backend declares the calls it makes once the guest
//! runs, per thread, next to its code ([`devices::seccomp`]); the router the I/O APIC calls declares
//! its KVM ioctl beside the KVM numbers (`kvm_nr.rs`). This module adds what the VMM core needs
//! (`COMMON` on every thread, KVM_RUN on the vCPUs, epoll on the event loop, the argument rules
//! below) and compiles the union per kind; `COMMON`, the common `fcntl` commands, the argument
//! rules and the compilation are shared with the jail's supervisor ([`seccomp_rules`]). The
//! filters depend on the kind of thread only, not on the VM's configuration: every device type's
//! declaration is in them.
//!
//! There is no other thread (console input is read on the event loop) but the control API's, when
//! the VM has one. Every thread the VMM starts
//! is filtered unless seccomp is off; the caller's own thread only with [`SeccompMode::AllThreads`].
//!
//! When: each vCPU thread installs its filter first thing, then waits at a gate that the `vmm` thread
//! opens once it has installed its own, so no guest instruction runs while any VMM thread is
//! unfiltered. The `vmm` thread is filtered for the rest of its life (a filter cannot be removed):
//! embedders that want it ([`SeccompMode::AllThreads`]) run the VM on a thread of its own.
//!
//! A forbidden call traps (SECCOMP_RET_TRAP): the SIGSYS handler (in [`seccomp_rules`], shared with
//! the jail's supervisor) writes one line naming the thread and the system call to stderr and ends
//! the process with status 1 (the CLI's "VMM error" status), e.g. `vmm: seccomp: thread 'vcpu0'
//! made a forbidden system call: openat (257); stopping. Run with --seccomp off to debug.`
//!
//! Argument filters where they matter: `ioctl` by request number, `mmap`/`mprotect` never with
//! PROT_EXEC (no new code), `fcntl` by command, `sendto` only without a destination (send on the
//! connected console client), `tgkill` only to this process and only with the kick signal or
//! SIGABRT (abort on panic).

use std::sync::Arc;

use devices::seccomp::{SyscallRule, Syscalls, Thread};
use seccomp_rules::{
    no_exec, one_of, send_connected, tgkill_self, unix_stream_socket, Rules, COMMON, FCNTL_CMDS,
};
use seccompiler::{BackendError, BpfProgram};

pub use seccomp_rules::{set_forbidden_call_hint, syscall_name};

use crate::error::{Error, Result};
use crate::kvm_nr::{
    GSI_ROUTER_SYSCALLS, KVM_GET_DEBUGREGS, KVM_GET_FPU, KVM_GET_LAPIC, KVM_GET_MP_STATE,
    KVM_GET_MSRS, KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_VCPU_EVENTS, KVM_GET_XCRS, KVM_GET_XSAVE,
    KVM_REINJECT_CONTROL, KVM_RUN,
};

/// Which of the VM's threads get a seccomp filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// None: the VMM runs unconfined (for debugging; the CLI warns).
    Off,
    /// The vCPU threads only; the thread that calls [`crate::Vm::run`] stays unfiltered and can
    /// build and run more VMs. The library default.
    #[default]
    VcpusOnly,
    /// The vCPU threads and the thread that calls [`crate::Vm::run`], which stays filtered for
    /// the rest of its life (run the VM on a thread of its own). The CLI default
    /// (`--seccomp on`).
    AllThreads,
}

/// A kind of VMM thread, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread running the event loop (`Vm::run`'s caller).
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// The short-lived thread that turns off the PIT's tick reinjection while the guest starts
    /// (one ioctl, then it exits).
    Helper,
    /// The control API's thread.
    Api,
    /// The thread that writes snapshots for the control API (`snapshot.rs`).
    Snapshot,
}

impl ThreadKind {
    /// The kind's name, as in the filter descriptions and `VMM_SECCOMP_TEST_FORBIDDEN`.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Helper => "helper",
            ThreadKind::Api => "api",
            ThreadKind::Snapshot => "snapshot",
        }
    }
}

/// The compiled filters a VM's threads install, per [`SeccompMode`]. The default has none.
#[derive(Default)]
pub(crate) struct Filters {
    /// For the vCPU threads.
    pub vcpu: Option<Arc<BpfProgram>>,
    /// For the thread running the event loop.
    pub vmm: Option<BpfProgram>,
    /// For the PIT helper thread (compiled here so that the helper allocates nothing).
    pub helper: Option<BpfProgram>,
    /// For the control API's thread.
    pub api: Option<BpfProgram>,
    /// For the snapshot thread (with the control API).
    pub snapshot: Option<BpfProgram>,
}

impl Filters {
    /// The filters of `mode`; the helper's only with `pit_helper` (the in-kernel irqchip), the
    /// control API's only with `api`.
    pub(crate) fn new(mode: SeccompMode, pit_helper: bool, api: bool) -> Result<Filters> {
        if mode == SeccompMode::Off {
            return Ok(Filters::default());
        }
        Ok(Filters {
            vcpu: Some(Arc::new(compile(ThreadKind::Vcpu)?)),
            vmm: match mode {
                SeccompMode::AllThreads => Some(compile(ThreadKind::Vmm)?),
                _ => None,
            },
            helper: pit_helper
                .then(|| compile(ThreadKind::Helper))
                .transpose()?,
            api: api.then(|| compile(ThreadKind::Api)).transpose()?,
            snapshot: api.then(|| compile(ThreadKind::Snapshot)).transpose()?,
        })
    }
}

/// The event loop's own calls (the VMM core's; devices declare theirs): epoll.
const VMM_CORE: &[SyscallRule] = &[
    SyscallRule::Any(libc::SYS_epoll_wait),
    SyscallRule::Any(libc::SYS_epoll_pwait),
    SyscallRule::Any(libc::SYS_epoll_ctl),
];

/// A vCPU thread's own calls (the VMM core's; devices declare theirs): KVM_RUN, the register
/// reads of an error report, and the reads of its whole state when a snapshot is taken.
fn vcpu_core() -> [SyscallRule; 11] {
    [
        SyscallRule::Ioctl(KVM_RUN()),
        SyscallRule::Ioctl(KVM_GET_REGS()),
        SyscallRule::Ioctl(KVM_GET_SREGS()),
        SyscallRule::Ioctl(KVM_GET_FPU()),
        SyscallRule::Ioctl(KVM_GET_MSRS()),
        SyscallRule::Ioctl(KVM_GET_LAPIC()),
        SyscallRule::Ioctl(KVM_GET_MP_STATE()),
        SyscallRule::Ioctl(KVM_GET_VCPU_EVENTS()),
        SyscallRule::Ioctl(KVM_GET_DEBUGREGS()),
        SyscallRule::Ioctl(KVM_GET_XSAVE()),
        SyscallRule::Ioctl(KVM_GET_XCRS()),
    ]
}

/// The declarations of every device and backend, and of the VMM's own device-side code (the
/// split irqchip's router).
fn device_syscalls() -> impl Iterator<Item = &'static Syscalls> {
    devices::seccomp::ALL
        .iter()
        .copied()
        .chain([&GSI_ROUTER_SYSCALLS, &crate::vm::SHUTDOWN_SYSCALLS])
}

/// What a kind of thread may call on top of [`COMMON`] and the rules every kind shares: the core's
/// own calls plus, for the vCPU and event-loop threads, every device's declaration for that thread.
fn declared(kind: ThreadKind) -> Vec<SyscallRule> {
    let mut v = Vec::new();
    let thread = match kind {
        ThreadKind::Vcpu => {
            v.extend(vcpu_core());
            Thread::Vcpu
        }
        ThreadKind::Vmm => {
            v.extend_from_slice(VMM_CORE);
            Thread::EventLoop
        }
        ThreadKind::Helper => return vec![SyscallRule::Ioctl(KVM_REINJECT_CONTROL())],
        ThreadKind::Api => return crate::api::API_SYSCALLS.to_vec(),
        ThreadKind::Snapshot => return crate::snapshot::snapshot_syscalls(),
    };
    for decl in device_syscalls() {
        v.extend_from_slice(decl.on(thread));
    }
    v
}

/// `ioctl` requests each kind may make: its [`declared`] requests, each once.
fn ioctls(kind: ThreadKind) -> Vec<u64> {
    let mut v = Vec::new();
    for rule in declared(kind) {
        if let SyscallRule::Ioctl(request) = rule {
            if !v.contains(&request) {
                v.push(request);
            }
        }
    }
    v
}

/// The `fcntl` commands of a kind: [`FCNTL_CMDS`] (every kind's) and its [`declared`] ones, each
/// once.
fn fcntl_cmds(kind: ThreadKind) -> Vec<u64> {
    let mut v: Vec<u64> = FCNTL_CMDS.iter().map(|&c| c as u64).collect();
    for rule in declared(kind) {
        if let SyscallRule::Fcntl(cmd) = rule {
            if !v.contains(&(cmd as u64)) {
                v.push(cmd as u64);
            }
        }
    }
    v
}

/// The rules of a kind: syscall number to the rules (any of which allows it; none: always).
fn rules(kind: ThreadKind) -> std::result::Result<Rules, BackendError> {
    let mut map = Rules::new();
    for &nr in COMMON {
        map.insert(nr, Vec::new());
    }
    for rule in declared(kind) {
        if let SyscallRule::Any(nr) = rule {
            map.insert(nr, Vec::new());
        }
    }
    // No rule at all would allow every ioctl: a kind that declares none (the API thread) has no
    // ioctl in its filter.
    let requests = ioctls(kind);
    if !requests.is_empty() {
        map.insert(libc::SYS_ioctl, one_of(1, &requests)?);
    }
    map.insert(libc::SYS_fcntl, one_of(1, &fcntl_cmds(kind))?);
    // send(2) on a connected socket (`SyscallRule::SendConnected`, the socket console backend).
    // Every kind has it.
    map.insert(libc::SYS_sendto, send_connected()?);
    // socket(2) for Unix stream sockets only (`SyscallRule::UnixStreamSocket`, virtio-vsock's
    // guest connections), on the threads that declare it.
    if declared(kind).contains(&SyscallRule::UnixStreamSocket) {
        map.insert(libc::SYS_socket, unix_stream_socket()?);
    }
    map.insert(libc::SYS_mmap, no_exec()?);
    map.insert(libc::SYS_mprotect, no_exec()?);
    // openat(2) on the snapshot thread with the exact flags of its two opens: a directory, not
    // through a link, and a new file (O_EXCL), not through a link. No existing file can be
    // opened, neither to read nor to write.
    if kind == ThreadKind::Snapshot {
        map.insert(
            libc::SYS_openat,
            one_of(2, &crate::snapshot::SNAPSHOT_OPEN_FLAGS)?,
        );
    }
    // tgkill(this process, any thread, SIGABRT or, for the event loop, the vCPU kick signal).
    let mut signals = vec![libc::SIGABRT as u64];
    if kind == ThreadKind::Vmm || kind == ThreadKind::Api {
        signals.push(crate::vcpu::kick_signal() as u64);
    }
    map.insert(libc::SYS_tgkill, tgkill_self(&signals)?);
    Ok(map)
}

/// Compiles the filter of `kind`: the allow-list, everything else traps.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram> {
    rules(kind)
        .and_then(seccomp_rules::compile)
        .map_err(|e| Error::Seccomp {
            thread: kind.name(),
            reason: e.to_string(),
        })
}

/// Installs `program` on the calling thread, named `thread` in the SIGSYS message
/// ([`seccomp_rules::report_forbidden_calls`]). Installs the SIGSYS handler first if nobody did.
pub(crate) fn apply(kind: ThreadKind, program: &BpfProgram, thread: &str) -> Result<()> {
    seccomp_rules::report_forbidden_calls(thread).map_err(|e| Error::Seccomp {
        thread: "any",
        reason: e.to_string(),
    })?;
    seccompiler::apply_filter(program).map_err(|e| Error::Seccomp {
        thread: kind.name(),
        reason: e.to_string(),
    })?;
    log::debug!(
        "seccomp: filter of kind '{}' on thread '{thread}'",
        kind.name()
    );
    provoke_for_tests(kind);
    Ok(())
}

/// Debug builds only: with `VMM_SECCOMP_TEST_FORBIDDEN=vcpu` (or `vmm`), a thread of that kind
/// makes a forbidden call (opens a host file, as an escaped guest would) right after its filter
/// went on, so tests can check that the VMM stops with the named message. Release builds have no
/// such switch: a variable that turned an attack into the documented exit would be useless to an
/// attacker but is still code nobody needs there.
#[cfg(debug_assertions)]
fn provoke_for_tests(kind: ThreadKind) {
    if std::env::var("VMM_SECCOMP_TEST_FORBIDDEN").is_ok_and(|v| v == kind.name()) {
        // SAFETY: openat with a valid C string; the filter traps it before the kernel runs it.
        unsafe { libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
    }
}

#[cfg(not(debug_assertions))]
fn provoke_for_tests(_: ThreadKind) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_every_kind() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Helper,
            ThreadKind::Api,
            ThreadKind::Snapshot,
        ] {
            let program = compile(kind).unwrap();
            assert!(!program.is_empty(), "{kind:?}");
            // seccomp programs are limited to 4096 instructions.
            assert!(
                program.len() < 4096,
                "{kind:?}: {} instructions",
                program.len()
            );
        }
    }

    #[test]
    fn kinds_differ_where_they_should() {
        let vmm = rules(ThreadKind::Vmm).unwrap();
        let vcpu = rules(ThreadKind::Vcpu).unwrap();
        for nr in [libc::SYS_epoll_wait, libc::SYS_pwrite64, libc::SYS_accept4] {
            assert!(vmm.contains_key(&nr) && !vcpu.contains_key(&nr), "{nr}");
        }
        for &nr in seccomp_rules::NEVER_ALLOWED {
            assert!(!vmm.contains_key(&nr) && !vcpu.contains_key(&nr), "{nr}");
        }
        // Sockets: never on the vCPUs; on the event loop, for virtio-vsock.
        for &nr in seccomp_rules::SOCKET_CALLS {
            assert!(!vcpu.contains_key(&nr) && vmm.contains_key(&nr), "{nr}");
        }
        assert!(ioctls(ThreadKind::Vcpu).contains(&KVM_RUN()));
        assert!(!ioctls(ThreadKind::Vmm).contains(&KVM_RUN()));
        // The PIT helper: one ioctl, none of the event loop's I/O.
        let helper = rules(ThreadKind::Helper).unwrap();
        assert_eq!(ioctls(ThreadKind::Helper), vec![KVM_REINJECT_CONTROL()]);
        for nr in [libc::SYS_epoll_wait, libc::SYS_pwrite64, libc::SYS_openat] {
            assert!(!helper.contains_key(&nr), "{nr}");
        }
    }

    /// `SECCOMP_RET_ALLOW` and `SECCOMP_RET_TRAP`, the two actions of our filters.
    const ALLOW: u32 = 0x7fff_0000;
    const TRAP: u32 = 0x0003_0000;

    /// Runs a compiled filter on one system call as the kernel would (a classic-BPF interpreter
    /// for the instructions seccompiler emits) and returns its action.
    fn run_bpf(program: &BpfProgram, nr: i64, args: [u64; 6]) -> u32 {
        // struct seccomp_data: nr, arch, instruction_pointer, args[6].
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        // AUDIT_ARCH_X86_64.
        data[4..8].copy_from_slice(&0xc000_003e_u32.to_le_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let ins = &program[pc];
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { ins.jt } else { ins.jf });
            match ins.code {
                // BPF_LD | BPF_W | BPF_ABS
                0x20 => {
                    let at = ins.k as usize;
                    acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                }
                // BPF_JMP | BPF_JA
                0x05 => pc += ins.k as usize,
                // BPF_JMP | BPF_JEQ / BPF_JGT / BPF_JGE / BPF_JSET, with BPF_K
                0x15 => pc += jump(acc == ins.k),
                0x25 => pc += jump(acc > ins.k),
                0x35 => pc += jump(acc >= ins.k),
                0x45 => pc += jump(acc & ins.k != 0),
                // BPF_ALU | BPF_AND | BPF_K
                0x54 => acc &= ins.k,
                // BPF_RET | BPF_K
                0x06 => return ins.k,
                code => panic!("unexpected BPF instruction {code:#x} at {}", pc - 1),
            }
        }
    }

    /// A call that `rule` admits, as (number, arguments).
    fn example(rule: SyscallRule) -> (i64, [u64; 6]) {
        match rule {
            SyscallRule::Any(nr) => (nr, [0; 6]),
            SyscallRule::Ioctl(request) => (libc::SYS_ioctl, [3, request, 0, 0, 0, 0]),
            SyscallRule::Fcntl(cmd) => (libc::SYS_fcntl, [3, cmd as u64, 0, 0, 0, 0]),
            SyscallRule::SendConnected => (libc::SYS_sendto, [3, 0x1000, 1, 0, 0, 0]),
            SyscallRule::UnixStreamSocket => (
                libc::SYS_socket,
                [
                    libc::AF_UNIX as u64,
                    (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64,
                    0,
                    0,
                    0,
                    0,
                ],
            ),
        }
    }

    fn name(nr: i64) -> &'static str {
        syscall_name(nr).unwrap_or("?")
    }

    #[test]
    fn every_device_call_passes_the_filter_of_its_thread() {
        for (kind, thread) in [
            (ThreadKind::Vcpu, Thread::Vcpu),
            (ThreadKind::Vmm, Thread::EventLoop),
        ] {
            let program = compile(kind).unwrap();
            let core: Vec<SyscallRule> = match kind {
                ThreadKind::Vcpu => vcpu_core().to_vec(),
                _ => VMM_CORE.to_vec(),
            };
            let common = COMMON.iter().map(|&nr| SyscallRule::Any(nr));
            let core = core.into_iter().chain(common).map(|r| ("VMM core", r));
            let devices = device_syscalls().flat_map(|d| d.on(thread).iter().map(|&r| (d.name, r)));
            for (what, rule) in core.chain(devices) {
                let (nr, args) = example(rule);
                assert_eq!(
                    run_bpf(&program, nr, args),
                    ALLOW,
                    "{what}: {rule:?} ({}) is not in the {} filter",
                    name(nr),
                    kind.name()
                );
            }
        }
    }

    #[test]
    fn every_api_call_passes_the_api_filter() {
        let program = compile(ThreadKind::Api).unwrap();
        let common = COMMON.iter().map(|&nr| SyscallRule::Any(nr));
        for rule in common.chain(crate::api::API_SYSCALLS.iter().copied()) {
            let (nr, args) = example(rule);
            assert_eq!(
                run_bpf(&program, nr, args),
                ALLOW,
                "{rule:?} ({}) is not in the api filter",
                name(nr)
            );
        }
        // Pausing kicks the vCPU threads.
        let pid = u64::from(std::process::id());
        let kick = crate::vcpu::kick_signal() as u64;
        let tgkill = [pid, 1, kick, 0, 0, 0];
        assert_eq!(run_bpf(&program, libc::SYS_tgkill, tgkill), ALLOW);
    }

    #[test]
    fn the_snapshot_thread_opens_only_its_directory_and_new_files() {
        let snap = compile(ThreadKind::Snapshot).unwrap();
        let open = |flags: i32| {
            run_bpf(
                &snap,
                libc::SYS_openat,
                [3, 0x1000, flags as u64, 0o600, 0, 0],
            )
        };
        assert_eq!(open(snapshot::DIR_OPEN_FLAGS), ALLOW);
        assert_eq!(open(snapshot::FILE_CREATE_FLAGS), ALLOW);
        for flags in [
            libc::O_RDONLY,
            libc::O_RDWR,
            libc::O_RDONLY | libc::O_CLOEXEC,
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
            libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
            snapshot::FILE_CREATE_FLAGS & !libc::O_NOFOLLOW,
        ] {
            assert_eq!(open(flags), TRAP, "{flags:#o}");
        }
        for nr in [
            libc::SYS_open,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_execve,
        ] {
            assert_eq!(run_bpf(&snap, nr, [0; 6]), TRAP, "{}", name(nr));
        }
        let run = [3, KVM_RUN(), 0, 0, 0, 0];
        assert_eq!(run_bpf(&snap, libc::SYS_ioctl, run), TRAP);
        let clock = [3, crate::kvm_nr::KVM_GET_CLOCK(), 0, 0, 0, 0];
        assert_eq!(run_bpf(&snap, libc::SYS_ioctl, clock), ALLOW);
    }

    #[test]
    fn the_api_filter_has_no_kvm_files_or_new_sockets() {
        let api = compile(ThreadKind::Api).unwrap();
        for nr in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_unlink,
            libc::SYS_newfstatat,
            libc::SYS_epoll_wait,
            libc::SYS_pwrite64,
        ] {
            assert_eq!(run_bpf(&api, nr, [0; 6]), TRAP, "{}", name(nr));
        }
        let run = [3, KVM_RUN(), 0, 0, 0, 0];
        assert_eq!(run_bpf(&api, libc::SYS_ioctl, run), TRAP);
    }

    #[test]
    fn filters_trap_what_nothing_declares() {
        let vcpu = compile(ThreadKind::Vcpu).unwrap();
        let vmm = compile(ThreadKind::Vmm).unwrap();
        let helper = compile(ThreadKind::Helper).unwrap();
        let api = compile(ThreadKind::Api).unwrap();
        for program in [&vcpu, &vmm, &helper, &api] {
            for nr in [
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_clone3,
                libc::SYS_ptrace,
            ] {
                assert_eq!(run_bpf(program, nr, [0; 6]), TRAP, "{}", name(nr));
            }
            // Sockets other than Unix stream sockets (virtio-vsock's, on the event loop only):
            // IPv4 TCP, a Unix datagram socket, raw packets, netlink.
            let stream = libc::SOCK_STREAM as u64;
            for args in [
                [libc::AF_INET as u64, stream, 0, 0, 0, 0],
                [libc::AF_INET6 as u64, stream, 0, 0, 0, 0],
                [libc::AF_UNIX as u64, libc::SOCK_DGRAM as u64, 0, 0, 0, 0],
                [libc::AF_PACKET as u64, libc::SOCK_RAW as u64, 0, 0, 0, 0],
                [libc::AF_NETLINK as u64, libc::SOCK_RAW as u64, 0, 0, 0, 0],
                [libc::AF_UNIX as u64, stream, 1, 0, 0, 0],
            ] {
                assert_eq!(run_bpf(program, libc::SYS_socket, args), TRAP, "{args:?}");
            }
            // An ioctl nobody declares (the tap's set-up, done before the filters go on).
            let tunsetiff = [3, libc::TUNSETIFF, 0, 0, 0, 0];
            assert_eq!(run_bpf(program, libc::SYS_ioctl, tunsetiff), TRAP);
            // Executable mappings, sendto with a destination, fcntl(F_SETOWN).
            let exec = [0, 4096, libc::PROT_EXEC as u64, 0, 0, 0];
            assert_eq!(run_bpf(program, libc::SYS_mmap, exec), TRAP);
            assert_eq!(run_bpf(program, libc::SYS_mprotect, exec), TRAP);
            let to = [3, 0x1000, 1, 0, 0x2000, 16];
            assert_eq!(run_bpf(program, libc::SYS_sendto, to), TRAP);
            let setown = [3, libc::F_SETOWN as u64, 0, 0, 0, 0];
            assert_eq!(run_bpf(program, libc::SYS_fcntl, setown), TRAP);
        }
        // Event-loop work stays off the vCPU threads, and KVM_RUN off the event loop.
        for nr in [libc::SYS_preadv, libc::SYS_accept4, libc::SYS_epoll_wait] {
            assert_eq!(run_bpf(&vcpu, nr, [0; 6]), TRAP, "{}", name(nr));
        }
        // A Unix stream socket: the event loop (virtio-vsock) only.
        let unix = [libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
        assert_eq!(run_bpf(&vmm, libc::SYS_socket, unix), ALLOW);
        assert_eq!(run_bpf(&vcpu, libc::SYS_socket, unix), TRAP);
        assert_eq!(run_bpf(&helper, libc::SYS_socket, unix), TRAP);
        assert_eq!(run_bpf(&vcpu, libc::SYS_connect, [0; 6]), TRAP);
        let run = [3, KVM_RUN(), 0, 0, 0, 0];
        assert_eq!(run_bpf(&vmm, libc::SYS_ioctl, run), TRAP);
        assert_eq!(run_bpf(&vcpu, libc::SYS_ioctl, run), ALLOW);
        // tgkill: this process only; the kick signal from the event loop only.
        let pid = u64::from(std::process::id());
        let kick = crate::vcpu::kick_signal() as u64;
        assert_eq!(
            run_bpf(&vmm, libc::SYS_tgkill, [pid, 1, kick, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            run_bpf(&vcpu, libc::SYS_tgkill, [pid, 1, kick, 0, 0, 0]),
            TRAP
        );
        assert_eq!(run_bpf(&vmm, libc::SYS_tgkill, [1, 1, kick, 0, 0, 0]), TRAP);
    }
}
