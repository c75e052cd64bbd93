//! vCPU threads: one per vCPU, each looping on KVM_RUN and serving port and MMIO exits on the buses.
//!
//! Stopping: the VMM thread sets the shared stop flag and sends [`kick_signal`] to every vCPU thread. The
//! signal handler sets `immediate_exit` in the thread's own `kvm_run`, so KVM_RUN returns EINTR at once
//! whether the signal lands inside the guest or just before the thread enters it.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};

use arch::regs::BootEntry;
use devices::bus::Bus;
use devices::GuestMemoryMmap;
use kvm_bindings::{
    kvm_run, CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use seccompiler::BpfProgram;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::error::{arch_err, kvm_err, Error, Result};
use crate::seccomp::ThreadKind;
use crate::ExitReason;

/// The real-time signal offset used to kick vCPU threads out of KVM_RUN.
const KICK_SIGNAL_OFFSET: i32 = 0;

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub(crate) fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

thread_local! {
    /// This thread's `kvm_run` mapping, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set by `run_vcpu` and cleared before
            // the VcpuFd (and its mapping) is dropped; a volatile byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 1) };
        }
    });
}

/// Unblocks `signal` in the calling thread.
fn unblock_signal(signal: libc::c_int) {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Installs the kick handler once per process.
pub(crate) fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick).map_err(|e| Error::Kvm {
            what: "install the vCPU kick signal handler",
            source: e,
        });
    });
    result
}

/// How the VM ended, recorded by whoever saw it first, and the eventfd that wakes the event loop.
pub(crate) struct ExitState {
    evt: EventFd,
    outcome: Mutex<Option<Result<ExitReason>>>,
    finished: AtomicBool,
}

impl ExitState {
    pub(crate) fn new() -> Result<Self> {
        Ok(ExitState {
            evt: EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?,
            outcome: Mutex::new(None),
            finished: AtomicBool::new(false),
        })
    }

    /// The eventfd that fires when the VM should stop.
    pub(crate) fn event(&self) -> &EventFd {
        &self.evt
    }

    /// Whether an outcome was recorded: a vCPU checks this after each device access so that the one
    /// that asked for the reset stops at once instead of running on until it is kicked.
    pub(crate) fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Records the outcome (the first one wins) and wakes the event loop.
    pub(crate) fn finish(&self, outcome: Result<ExitReason>) {
        let mut slot = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(outcome);
        }
        drop(slot);
        self.finished.store(true, Ordering::Release);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal the VM exit event: {e}");
        }
    }

    /// The recorded outcome.
    pub(crate) fn take(&self) -> Result<ExitReason> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or(Ok(ExitReason::Reset))
    }
}

/// The i8042's reset line: ends the VM with [`ExitReason::Reset`].
pub(crate) struct ResetTrigger(pub Arc<ExitState>);

impl devices::legacy::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> std::result::Result<(), Self::E> {
        self.0.finish(Ok(ExitReason::Reset));
        Ok(())
    }
}

/// Creates `count` vCPUs, each with KVM's supported CPUID fixed up for its index and, when booting,
/// the registers (MSRs, FPU, segments, page tables, LAPIC) of the kernel's `entry`.
pub(crate) fn create_vcpus(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    supported_cpuid: &CpuId,
    entry: Option<&BootEntry>,
    count: u8,
) -> Result<Vec<VcpuFd>> {
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let vcpu = vm_fd
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("create a vCPU"))?;
        let mut cpuid = supported_cpuid.clone();
        arch::cpuid::filter_cpuid(&mut cpuid, index, count).map_err(arch_err("set up CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        // A restored vCPU gets its saved registers instead (and memory is the guest's own).
        if let Some(entry) = entry {
            arch::regs::setup_vcpu(mem, &vcpu, entry).map_err(arch_err("set up vCPU registers"))?;
        }
        vcpus.push(vcpu);
    }
    crate::start::step_done(&format!("configured {count} vCPU(s)"));
    Ok(vcpus)
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

/// Pausing the vCPUs (the control API's pause and resume): a paused vCPU parks on a condition
/// variable between two KVM_RUNs, so the guest makes no progress until [`Pause::resume`].
///
/// [`Pause::pause`] sets the request, kicks every vCPU thread out of KVM_RUN with
/// [`kick_signal`] (the same path as stopping, so a kick that lands just before KVM_RUN is not
/// lost) and waits until every vCPU still running has parked.
#[derive(Default)]
pub(crate) struct Pause {
    requested: AtomicBool,
    state: Mutex<PauseState>,
    changed: Condvar,
}

#[derive(Default)]
struct PauseState {
    /// vCPU threads that have not ended their run loop yet.
    running: usize,
    /// Of those, how many are parked.
    parked: usize,
    /// The VM is ending: nobody parks any more, the parked ones leave.
    stopping: bool,
    /// Goes up by one for each request that the parked vCPUs save their state.
    save_round: u64,
    /// What each vCPU saved in the current round, by index.
    saved: Vec<Option<std::result::Result<arch::state::VcpuState, String>>>,
}

/// A vCPU's state as a snapshot holds it: saved by the vCPU's own thread while parked.
pub(crate) type SaveVcpu<'a> = &'a mut dyn FnMut() -> Result<arch::state::VcpuState>;

/// How long [`Pause::pause`] waits for the vCPUs to park.
const PARK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Pause {
    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `n` vCPU threads as running (before they start).
    pub(crate) fn set_running(&self, n: usize) {
        self.lock().running = n;
    }

    /// Whether a pause is asked for.
    pub(crate) fn is_paused(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Parks every vCPU: `threads` are the vCPU threads to kick. Returns whether they all parked
    /// within [`PARK_TIMEOUT`] (they stay asked to park either way).
    pub(crate) fn pause(&self, threads: &[libc::pthread_t]) -> bool {
        self.requested.store(true, Ordering::Release);
        for &thread in threads {
            // SAFETY: pthread_kill with a handle of a vCPU thread that is not joined yet (the
            // VM joins its vCPU threads only after the control API's thread has ended); the
            // signal's handler only stores a byte (see `handle_kick`).
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
        let deadline = std::time::Instant::now() + PARK_TIMEOUT;
        let mut state = self.lock();
        while state.parked < state.running && !state.stopping {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Has every parked vCPU save its state, on its own thread, and returns the states by
    /// index. The VM must be paused (every vCPU parked, [`Pause::pause`] said so).
    pub(crate) fn save_vcpus(&self, count: usize) -> Result<Vec<arch::state::VcpuState>> {
        let failed = |why: String| Error::Snapshot(format!("cannot save the vCPUs' state: {why}"));
        let mut state = self.lock();
        if !self.is_paused() || state.parked < state.running || state.stopping {
            return Err(failed("the VM is not paused".into()));
        }
        state.saved = vec![None; count];
        state.save_round += 1;
        self.changed.notify_all();
        let deadline = std::time::Instant::now() + PARK_TIMEOUT;
        while state.saved.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || state.stopping {
                return Err(failed("a vCPU did not answer".into()));
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::take(&mut state.saved)
            .into_iter()
            .enumerate()
            .map(|(i, s)| match s {
                Some(Ok(saved)) => Ok(saved),
                Some(Err(why)) => Err(failed(format!("vCPU {i}: {why}"))),
                None => Err(failed(format!("vCPU {i} did not answer"))),
            })
            .collect()
    }

    /// Lets the parked vCPUs run again.
    pub(crate) fn resume(&self) {
        let _state = self.lock();
        self.requested.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// The VM is ending: wakes the parked vCPUs for good.
    pub(crate) fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }

    /// A vCPU's side: parks while a pause is asked for and the VM is not ending; saves its
    /// state with `save` when [`Pause::save_vcpus`] asks.
    fn park(&self, index: u8, save: SaveVcpu) {
        let mut state = self.lock();
        if state.stopping || !self.is_paused() {
            return;
        }
        state.parked += 1;
        log::debug!("vCPU {index}: parked");
        self.changed.notify_all();
        let mut round = state.save_round;
        while self.is_paused() && !state.stopping {
            if state.save_round != round {
                round = state.save_round;
                let saved = save().map_err(|e| e.to_string());
                if let Some(slot) = state.saved.get_mut(usize::from(index)) {
                    *slot = Some(saved);
                }
                self.changed.notify_all();
                continue;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
        log::debug!("vCPU {index}: resumed");
    }

    /// A vCPU's side: its run loop is over.
    fn left(&self) {
        let mut state = self.lock();
        state.running = state.running.saturating_sub(1);
        self.changed.notify_all();
    }
}

/// Everything one vCPU thread owns.
pub(crate) struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitState>,
    pub stop: Arc<AtomicBool>,
    /// The MSRs a saved state holds (KVM_GET_MSR_INDEX_LIST, read before seccomp).
    pub msrs: Arc<Vec<u32>>,
    /// The vCPU seccomp filter, installed before the first KVM_RUN (`None`: seccomp off).
    pub seccomp: Option<Arc<BpfProgram>>,
    /// Opened by the event-loop thread once it is filtered too.
    pub gate: Arc<StartGate>,
    /// Where this vCPU parks while the VM is paused.
    pub pause: Arc<Pause>,
}

impl Vcpu {
    /// The thread body: runs until the guest stops, an error, or the stop flag.
    pub(crate) fn run(mut self) {
        let pause = self.pause.clone();
        self.run_inner();
        pause.left();
    }

    fn run_inner(&mut self) {
        // The kick must reach this thread even if whoever spawned it had the signal blocked (a
        // mask is inherited across exec and thread creation): a blocked kick would leave a vCPU
        // in KVM_RUN after the VM stopped, and Vm::run waiting for it.
        unblock_signal(kick_signal());
        if let Some(program) = self.seccomp.take() {
            let name = format!("vcpu{}", self.index);
            if let Err(e) = crate::seccomp::apply(ThreadKind::Vcpu, &program, &name) {
                self.exit.finish(Err(e));
                return;
            }
        }
        if !self.gate.wait() {
            return;
        }
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run() as *mut kvm_run));
        // The start-up figure the benchmark reads (`-v`): process start to the first KVM_RUN.
        log::info!(
            "vCPU {}: first KVM_RUN at {} µs since process start",
            self.index,
            crate::start::micros_since_start()
        );
        let outcome = self.run_loop();
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
        if let Some(outcome) = outcome {
            self.exit.finish(outcome);
        }
    }

    /// Returns `Some` when this vCPU ends the VM, `None` when it was asked to stop.
    fn run_loop(&mut self) -> Option<Result<ExitReason>> {
        let index = self.index;
        // What kvm_run's immediate_exit holds (set only while paused, written only on a change).
        let mut immediate_exit = false;
        loop {
            if self.stop.load(Ordering::Acquire) || self.exit.finished() {
                return None;
            }
            // Paused: an entry that runs no guest code (immediate_exit) but completes the I/O
            // exit the guest is inside (an IN's data reaches its register only on the next
            // entry), so that a saved state is between two instructions. KVM may answer with
            // one more exit (the second half of an MMIO access split across pages): it is
            // served below, and the next round tries again. EINTR: nothing was pending; park.
            let paused = self.pause.is_paused();
            if paused != immediate_exit {
                self.fd.set_kvm_immediate_exit(u8::from(paused));
                immediate_exit = paused;
            }
            let result = self.fd.run();
            if paused && matches!(&result, Err(e) if e.errno() == libc::EINTR) {
                let (fd, msrs, pause) = (&self.fd, self.msrs.clone(), self.pause.clone());
                pause.park(index, &mut || {
                    arch::state::VcpuState::save(fd, &msrs).map_err(arch_err("save a vCPU"))
                });
                continue;
            }
            match result {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        if !self.pio.read(u64::from(port), data) {
                            data.fill(0xff);
                        }
                    }
                    VcpuExit::IoOut(port, data) => {
                        if !self.pio.write(u64::from(port), data) {
                            log::trace!("vCPU {index}: write to unclaimed port {port:#x}");
                        }
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        if !self.mmio.read(addr, data) {
                            log::debug!("vCPU {index}: read from unclaimed MMIO {addr:#x}");
                            data.fill(0xff);
                        }
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        if !self.mmio.write(addr, data) {
                            log::debug!("vCPU {index}: write to unclaimed MMIO {addr:#x}");
                        }
                    }
                    VcpuExit::Shutdown => {
                        log::info!("vCPU {index}: shutdown (triple fault)");
                        return Some(Ok(ExitReason::TripleFault));
                    }
                    VcpuExit::SystemEvent(kind, _) => {
                        return Some(match kind {
                            KVM_SYSTEM_EVENT_RESET => Ok(ExitReason::Reset),
                            KVM_SYSTEM_EVENT_SHUTDOWN => Ok(ExitReason::PowerOff),
                            KVM_SYSTEM_EVENT_CRASH => Err(self.unexpected("system event: crash")),
                            other => Err(self.unexpected(&format!("system event {other}"))),
                        });
                    }
                    VcpuExit::IoapicEoi(vector) => {
                        // Only level-triggered routes ask for these, and the I/O APIC makes none.
                        log::trace!("vCPU {index}: I/O APIC EOI for vector {vector:#x}");
                    }
                    VcpuExit::Hlt => {
                        // With the in-kernel LAPIC, KVM handles HLT itself; should one reach us, run on.
                        log::debug!("vCPU {index}: HLT exit");
                    }
                    VcpuExit::InternalError => return Some(Err(self.internal_error())),
                    VcpuExit::FailEntry(reason, cpu) => {
                        return Some(Err(self.unexpected(&format!(
                            "entry failure, hardware reason {reason:#x} on host CPU {cpu}"
                        ))))
                    }
                    other => {
                        let what = format!("{other:?}");
                        return Some(Err(self.unexpected(&what)));
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    return Some(Err(Error::VcpuRun {
                        vcpu: index,
                        source: e,
                    }))
                }
            }
        }
    }

    fn internal_error(&mut self) -> Error {
        // SAFETY: KVM_EXIT_INTERNAL_ERROR means KVM filled the `internal` member of the exit union.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        Error::VcpuInternalError {
            vcpu: self.index,
            suberror,
            state: self.state(),
        }
    }

    fn unexpected(&self, exit: &str) -> Error {
        Error::VcpuUnexpectedExit {
            vcpu: self.index,
            exit: exit.to_string(),
            state: self.state(),
        }
    }

    /// A one-line register summary for error reports.
    fn state(&self) -> String {
        let mut s = String::new();
        match self.fd.get_regs() {
            Ok(r) => {
                let _ = write!(
                    s,
                    "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}",
                    r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi
                );
            }
            Err(e) => {
                let _ = write!(s, "registers unavailable ({e})");
            }
        }
        if let Ok(sr) = self.fd.get_sregs() {
            let _ = write!(
                s,
                " cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                sr.cs.selector, sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer
            );
        }
        s
    }
}
