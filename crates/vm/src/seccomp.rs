//! seccomp-bpf filters: one allow-list per kind of VMM thread, so that a guest that breaks out of KVM
//! into the VMM process can make only the system calls that thread already makes.
//!
//! The kinds ([`ThreadKind`]):
//! - `vcpu`: a vCPU thread. KVM_RUN and the register reads of an error report, port/MMIO emulation
//!   (eventfd writes, console output, the tap's TUNSETOFFLOAD when the guest acks the net
//!   features, KVM_SET_GSI_ROUTING when it programs the split irqchip's I/O APIC, the PIT's
//!   timerfd), memory management, thread exit.
//! - `vmm`: the thread that runs [`crate::Vm::run`]'s event loop (the CLI's main thread). Device
//!   emulation (disk, tap, console I/O, the socket backend's accept), epoll, the rate limiters'
//!   timerfds, the kick signal to the vCPUs, terminal restore, and tearing the VM down.
//! - `helper`: with the in-kernel irqchip, a thread `Vm::run` starts for one ioctl (turning off the
//!   PIT's tick reinjection, see `vm.rs`) while the guest starts; it filters itself before that
//!   ioctl and then exits.
//!
//! There is no other thread (console input is read on the event loop). Every thread the VMM starts
//! is filtered unless seccomp is off; the caller's own thread only with [`SeccompMode::AllThreads`].
//!
//! When: each vCPU thread installs its filter first thing, then waits at a gate that the `vmm` thread
//! opens once it has installed its own, so no guest instruction runs while any VMM thread is
//! unfiltered. The `vmm` thread is filtered for the rest of its life (a filter cannot be removed):
//! embedders that want it ([`SeccompMode::AllThreads`]) run the VM on a thread of its own.
//!
//! A forbidden call traps (SECCOMP_RET_TRAP): the SIGSYS handler writes one line naming the thread
//! and the system call to stderr and ends the process with status 1 (the CLI's "VMM error" status),
//! e.g. `vmm: seccomp: thread 'vcpu0' made a forbidden system call: openat (257); stopping. Run
//! with --seccomp off to debug.`
//!
//! Argument filters where they matter: `ioctl` by request number, `mmap`/`mprotect` never with
//! PROT_EXEC (no new code), `fcntl` by command, `sendto` only without a destination (send on the
//! connected console client), `tgkill` only to this process and only with the kick signal or
//! SIGABRT (abort on panic).

mod syscall_names;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, Once};

use kvm_bindings::{kvm_irq_routing, kvm_regs, kvm_sregs};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::signal::register_signal_handler;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

use crate::error::{Error, Result};

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
}

impl ThreadKind {
    /// The kind's name, as in the filter descriptions and `VMM_SECCOMP_TEST_FORBIDDEN`.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Helper => "helper",
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
}

impl Filters {
    /// The filters of `mode`; the helper's only with `pit_helper` (the in-kernel irqchip).
    pub(crate) fn new(mode: SeccompMode, pit_helper: bool) -> Result<Filters> {
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
        })
    }
}

/// Holds the vCPU threads (each already filtered) until the event-loop thread has installed its own
/// filter, so the guest never runs while a VMM thread is unfiltered.
#[derive(Default)]
pub(crate) struct StartGate {
    /// `None` while closed; then whether the vCPUs may run.
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    /// Lets the waiting vCPU threads go (`run`) or sends them home.
    pub(crate) fn open(&self, run: bool) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
        self.opened.notify_all();
    }

    /// Waits for [`StartGate::open`]; returns whether to run.
    pub(crate) fn wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(run) = *state {
                return run;
            }
            state = self.opened.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The KVM ioctl type.
const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
// Takes a `kvm_reinject_control` although it is declared without a direction.
ioctl_io_nr!(KVM_REINJECT_CONTROL, KVMIO, 0x71);

/// The system calls every kind of thread makes: memory management (glibc's malloc), locks, the
/// return from a signal handler, logging to stderr, thread and process exit.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Console output: stdout readiness, the socket backend's client.
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvfrom,
];

/// The event loop's own calls, on top of [`COMMON`].
const VMM_ONLY: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    // virtio-blk.
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    // Rate limiters.
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    // The socket console backend: a client comes and goes; its socket file is removed at exit.
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_unlink,
];

/// `ioctl` requests each kind may make.
fn ioctls(kind: ThreadKind) -> Vec<u64> {
    // The tap's offloads are set when the guest acknowledges the features (a register write, on a
    // vCPU thread) and possibly again on a reset.
    let mut v: Vec<u64> = vec![libc::TUNSETOFFLOAD];
    match kind {
        ThreadKind::Vcpu => {
            // KVM_SET_GSI_ROUTING: the guest programs the split irqchip's I/O APIC.
            v.extend([
                KVM_RUN(),
                KVM_GET_REGS(),
                KVM_GET_SREGS(),
                KVM_SET_GSI_ROUTING(),
            ]);
        }
        ThreadKind::Helper => return vec![KVM_REINJECT_CONTROL()],
        ThreadKind::Vmm => v.extend([
            // Non-blocking sockets, the console size, the terminal's mode restored at exit.
            libc::FIONBIO,
            libc::TIOCGWINSZ,
            libc::TCGETS,
            libc::TCSETS,
            libc::TCSETSW,
            libc::TCSETSF,
        ]),
    }
    v
}

/// `fcntl` commands: flags (O_NONBLOCK), close-on-exec, and the debug-build check that a closed fd
/// was open (F_GETFD).
const FCNTL_CMDS: &[i32] = &[
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_GETFL,
    libc::F_SETFL,
    libc::F_DUPFD_CLOEXEC,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> std::result::Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

fn rule(conds: Vec<SeccompCondition>) -> std::result::Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

/// One rule per allowed value of argument `arg`.
fn one_of(arg: u8, values: &[u64]) -> std::result::Result<Vec<SeccompRule>, String> {
    values
        .iter()
        .map(|&v| rule(vec![cond(arg, SeccompCmpOp::Eq, v)?]))
        .collect()
}

/// The rules of a kind: syscall number to the rules (any of which allows it; none: always).
fn rules(kind: ThreadKind) -> std::result::Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in COMMON {
        map.insert(nr, Vec::new());
    }
    if kind == ThreadKind::Vmm {
        for &nr in VMM_ONLY {
            map.insert(nr, Vec::new());
        }
    }
    if kind == ThreadKind::Vcpu {
        // The guest (re)programs the PIT's channel 0, whose timer the event loop waits on.
        map.insert(libc::SYS_timerfd_settime, Vec::new());
    }
    map.insert(libc::SYS_ioctl, one_of(1, &ioctls(kind))?);
    let cmds: Vec<u64> = FCNTL_CMDS.iter().map(|&c| c as u64).collect();
    map.insert(libc::SYS_fcntl, one_of(1, &cmds)?);
    // No executable mappings: prot & PROT_EXEC == 0.
    let no_exec = || -> std::result::Result<Vec<SeccompRule>, String> {
        Ok(vec![rule(vec![cond(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    // send(2) on a connected socket: sendto with no destination address.
    map.insert(
        libc::SYS_sendto,
        vec![rule(vec![SeccompCondition::new(
            4,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::Eq,
            0,
        )
        .map_err(|e| e.to_string())?])?],
    );
    map.insert(libc::SYS_mmap, no_exec()?);
    map.insert(libc::SYS_mprotect, no_exec()?);
    // tgkill(this process, any thread, SIGABRT or, for the event loop, the vCPU kick signal).
    // The pid is checked with the process's own: a filter installed in a forked child is never
    // reused.
    let pid = std::process::id() as u64;
    let mut signals = vec![libc::SIGABRT as u64];
    if kind == ThreadKind::Vmm {
        signals.push(crate::vcpu::kick_signal() as u64);
    }
    let tgkill = signals
        .iter()
        .map(|&sig| {
            rule(vec![
                cond(0, SeccompCmpOp::Eq, pid)?,
                cond(2, SeccompCmpOp::Eq, sig)?,
            ])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    map.insert(libc::SYS_tgkill, tgkill);
    Ok(map)
}

/// Compiles the filter of `kind`: the allow-list, everything else traps.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram> {
    let err = |reason: String| Error::Seccomp {
        thread: kind.name(),
        reason,
    };
    let filter = SeccompFilter::new(
        rules(kind).map_err(err)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| err(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| err(e.to_string()))
}

thread_local! {
    /// This thread's name for the SIGSYS message (NUL-padded; set when its filter goes on).
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// Installs `program` on the calling thread, named `thread` in the SIGSYS message. Installs the
/// SIGSYS handler first if nobody did.
pub(crate) fn apply(kind: ThreadKind, program: &BpfProgram, thread: &str) -> Result<()> {
    install_sigsys_handler()?;
    let mut name = [0u8; 16];
    let n = thread.len().min(name.len());
    name[..n].copy_from_slice(&thread.as_bytes()[..n]);
    THREAD_NAME.with(|t| t.set(name));
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

/// Installs the SIGSYS handler (once per process) and names the calling thread `thread` in its
/// message, for a filter installed by other code (the CLI's jail supervisor).
pub fn report_forbidden_calls(thread: &str) -> Result<()> {
    install_sigsys_handler()?;
    let mut name = [0u8; 16];
    let n = thread.len().min(name.len());
    name[..n].copy_from_slice(&thread.as_bytes()[..n]);
    THREAD_NAME.with(|t| t.set(name));
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

/// The name of x86_64 system call `nr`, if it has one.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let nr = u32::try_from(nr).ok()?;
    syscall_names::SYSCALL_NAMES
        .binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .map(|i| syscall_names::SYSCALL_NAMES[i].1)
}

/// Installs the SIGSYS handler once per process.
fn install_sigsys_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(libc::SIGSYS, on_sigsys).map_err(|e| Error::Seccomp {
            thread: "any",
            reason: format!("cannot install the SIGSYS handler: {e}"),
        });
    });
    result
}

/// A fixed buffer to format the SIGSYS line without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// Formats the SIGSYS line for a forbidden call `nr` made by `thread`.
fn sigsys_line(thread: &[u8], nr: i64) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"vmm: seccomp: thread '");
    let n = thread.iter().position(|&b| b == 0).unwrap_or(thread.len());
    line.push(if n == 0 { b"?" } else { &thread[..n] });
    line.push(b"' made a forbidden system call: ");
    line.push(syscall_name(nr).unwrap_or("unknown").as_bytes());
    line.push(b" (");
    if nr < 0 {
        line.push(b"-");
    }
    line.push_num(nr.unsigned_abs());
    line.push(b"); stopping. Run with --seccomp off to debug.\n");
    line
}

/// `si_code` of a SIGSYS sent by seccomp.
const SYS_SECCOMP: i32 = 1;

/// The SIGSYS handler: async-signal-safe (no allocation, no locks): formats into a stack buffer,
/// writes it to stderr and exits with status 1. write(2) and exit_group(2) are in every filter.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // For SYS_SECCOMP, the union after the three ints (and padding) is {void *call_addr; int
    // syscall; unsigned arch}: the system call number is the int at byte 24 on x86_64.
    let nr = if code == SYS_SECCOMP {
        // SAFETY: siginfo_t is 128 bytes; offset 24 is inside it and 4-aligned.
        i64::from(unsafe { *(info as *const u8).add(24).cast::<i32>() })
    } else {
        -1
    };
    let line = sigsys_line(&THREAD_NAME.with(Cell::get), nr);
    // SAFETY: writes a valid buffer to stderr, then ends the process; both are async-signal-safe.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_every_kind() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Helper] {
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
        for nr in [
            libc::SYS_openat,
            libc::SYS_open,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_ptrace,
        ] {
            assert!(!vmm.contains_key(&nr) && !vcpu.contains_key(&nr), "{nr}");
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

    #[test]
    fn kvm_ioctl_numbers() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_REINJECT_CONTROL(), 0xae71);
    }

    #[test]
    fn syscall_names_are_sorted_and_known() {
        let names = syscall_names::SYSCALL_NAMES;
        assert!(names.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_name(libc::SYS_openat), Some("openat"));
        assert_eq!(syscall_name(libc::SYS_read), Some("read"));
        assert_eq!(syscall_name(libc::SYS_clone3), Some("clone3"));
        assert_eq!(syscall_name(100_000), None);
        assert_eq!(syscall_name(-1), None);
    }

    #[test]
    fn sigsys_line_names_thread_and_call() {
        let mut name = [0u8; 16];
        name[..5].copy_from_slice(b"vcpu0");
        let line = sigsys_line(&name, 257);
        assert_eq!(
            std::str::from_utf8(&line.buf[..line.len]).unwrap(),
            "vmm: seccomp: thread 'vcpu0' made a forbidden system call: openat (257); stopping. \
             Run with --seccomp off to debug.\n"
        );
        let line = sigsys_line(&[0; 16], 9999);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(
            text.contains("thread '?'") && text.contains("unknown (9999)"),
            "{text}"
        );
    }
}
