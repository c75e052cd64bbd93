//! The boot sequence (see DESIGN.md, "Boot sequence"): [`Vm::new`] runs the checklist, each step a
//! function of the module that owns it; [`Vm::run`] runs the VM to an [`ExitReason`].

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};

use devices::bus::Bus;
use devices::GuestMemoryMmap;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{Kvm, VmFd};
use seccompiler::BpfProgram;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;
use vmm_sys_util::timerfd::TimerFd;

use crate::config::{IrqChip, ShareConfig, VmConfig, ROOT_SHARE_TAG};
use crate::device_manager::{DeviceManager, Devices, Subscriber};
use crate::error::{kvm_err, Error, Result};
use crate::kvm_nr::KVM_REINJECT_CONTROL;
use crate::seccomp::{self, Filters, SeccompMode, ThreadKind};
use crate::snapshot::{Machine, Quiesce, Snapshot};
use crate::start::step_done;
use crate::vcpu::{install_kick_handler, kick_signal, ExitState, StartGate, Vcpu};
use crate::{kernel, kvm, memory, quirks, vcpu, ExitReason};

/// Room for KVM_GET_SUPPORTED_CPUID's answer.
const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// A virtual machine ready to run: memory mapped, kernel loaded, devices wired, vCPUs configured.
pub struct Vm {
    // Field order matters on drop: vCPUs and devices before the VM fd, the VM fd before /dev/kvm.
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    event_manager: EventManager<Subscriber>,
    exit: Arc<ExitState>,
    exit_seen: Arc<AtomicBool>,
    shutdown: ShutdownRequest,
    /// Pseudo-terminals created for console backends: (device, secondary path).
    ptys: Vec<(&'static str, PathBuf)>,
    filters: Filters,
    vm_fd: Arc<VmFd>,
    /// Split or in-kernel (never `Auto` here).
    irqchip: IrqChip,
    /// The control API's socket, served while the VM runs.
    api_socket: Option<crate::api::ApiSocket>,
    /// The configuration as the control API's info shows it.
    config_json: serde_json::Value,
    /// The devices' counters, for the control API's info.
    counters: Vec<crate::device_manager::DeviceCounters>,
    /// Every device with a state, for snapshots.
    saved: Vec<crate::device_manager::Saved>,
    /// What the VM was built with, as a snapshot records it.
    machine: Machine,
    /// Holds the event loop while a snapshot is written.
    quiesce: Quiesce,
    /// The MSRs a vCPU's saved state holds.
    msrs: Arc<Vec<u32>>,
    _kvm: Arc<Kvm>,
    mem: GuestMemoryMmap,
}

impl Vm {
    /// Builds the VM: checks the configuration and KVM, maps memory, loads the kernel and initrd,
    /// creates and wires the devices and the vCPUs, writes the command line and the boot tables.
    /// Nothing runs yet. Each step below is one item of DESIGN.md's boot checklist.
    pub fn new(config: VmConfig) -> Result<Vm> {
        Vm::build(config, None)
    }

    /// Builds the VM that `snapshot` was taken of, with the backends `config` names (it is
    /// [`Snapshot::machine`] with the caller's disks, taps, sockets and consoles; memory, vCPUs,
    /// irqchip and the device set must be the snapshot's), maps its memory privately from the
    /// snapshot's memory file and puts every saved state back. Nothing runs yet; [`Vm::run`]
    /// continues the guest where it was paused.
    pub fn restore(config: VmConfig, snapshot: &Snapshot) -> Result<Vm> {
        check_restore(&config, snapshot)?;
        Vm::build(config, Some(snapshot))
    }

    fn build(mut config: VmConfig, from: Option<&Snapshot>) -> Result<Vm> {
        // 1. KVM: open it, check the configuration against it, choose the irqchip; start the prep
        //    thread (supported CPUID, seccomp filters).
        let kvm = Arc::new(kvm::open()?);
        config.check(kvm::max_vcpus(&kvm), memory::host_ram_bytes())?;
        let irqchip = kvm::choose_irqchip(config.irqchip, &kvm)?;
        let mut config_json = crate::api::config_json(&config);
        // What was chosen, not what was asked (auto).
        config_json["irqchip"] = format!("{irqchip:?}").to_lowercase().into();
        let api_socket = config.api_socket.take().map(crate::api::ApiSocket);
        let with_api = api_socket.is_some();
        let prepared = Prepared::start(
            kvm.clone(),
            config.seccomp,
            irqchip == IrqChip::Kernel,
            with_api,
        );

        // 2. The VM and its memory (before the irqchip, see kvm::create_irqchip).
        let vm_fd = Arc::new(kvm::create_vm(&kvm)?);
        let mem = match from {
            Some(snap) => {
                memory::map_guest_memory_file(&vm_fd, config.memory_bytes, snap.memory_file()?)?
            }
            None => memory::create_guest_memory(&vm_fd, config.memory_bytes)?,
        };
        let msrs = Arc::new(
            arch::state::msrs_to_save(&kvm).map_err(crate::error::arch_err("list the MSRs"))?,
        );

        // 3. The TSS and KVM's part of the irqchip.
        kvm::create_irqchip(&vm_fd, irqchip)?;

        // 4. The kernel and the initrd (not for a restore: memory holds the running guest).
        let kernel = match from {
            Some(_) => None,
            None => Some(kernel::load_kernel(&mem, &config.kernel)?),
        };
        let initrd = match &kernel {
            Some(kernel) => (config.initrd.as_ref())
                .map(|initrd| kernel::load_initrd(&mem, initrd, kernel.end))
                .transpose()?,
            None => None,
        };

        // 5. The devices, placed by the device manager.
        let exit = Arc::new(ExitState::new()?);
        let exit_seen = Arc::new(AtomicBool::new(false));
        let mut devices = DeviceManager::new(vm_fd.clone(), mem.clone())?;
        devices.add_subscriber(ExitWatcher::subscriber(&exit, &exit_seen)?);
        devices.add_serial_console(config.serial)?;
        devices.add_i8042(&exit)?;
        if irqchip == IrqChip::Split {
            devices.add_split_irqchip()?;
        }
        // The guest's own `acpi=off` leaves the registers unused and the power button unheard: a
        // shutdown request then stops the VM at once instead of waiting for it.
        let base = kernel::base_cmdline(config.cmdline.as_deref(), config.console.is_on());
        let (console_on, guest_acpi) = match from {
            Some(snap) => (snap.machine().console, snap.machine().guest_acpi),
            None => (
                config.console.is_on(),
                kernel::guest_uses_acpi(config.acpi, base),
            ),
        };
        let acpi_platform = match config.acpi {
            true => Some(devices.add_acpi_platform(&exit)?),
            false => None,
        };
        let power_button = acpi_platform.filter(|_| guest_acpi);
        devices.add_pvpanic(&exit)?;
        devices.add_exit_device(&exit)?;
        let shutdown = ShutdownRequest(Arc::new(
            EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?,
        ));
        devices.add_subscriber(ShutdownWatcher::subscriber(
            &shutdown,
            power_button,
            &exit,
            config.shutdown_timeout,
        )?);
        if config.boot_timer {
            devices.add_boot_timer()?;
        }
        for disk in &config.disks {
            devices.add_block_device(disk)?;
        }
        for nic in &config.nets {
            devices.add_net_device(nic)?;
        }
        if console_on {
            devices.add_virtio_console(config.console)?;
        }
        if let Some(vsock) = &config.vsock {
            devices.add_vsock_device(vsock, config.vsock_socket)?;
        }
        // The root share first, then the others, named as `name_shares` names them.
        let mut shares: Vec<ShareConfig> = config
            .root_share
            .iter()
            .map(|share| ShareConfig {
                tag: ROOT_SHARE_TAG.into(),
                ..share.clone()
            })
            .collect();
        for share in crate::config::name_shares(&config.shares)? {
            if shares.iter().any(|s| s.tag == share.tag) {
                return Err(Error::ShareTagTwice { tag: share.tag });
            }
            shares.push(share);
        }
        for share in &shares {
            devices.add_fs_device(share)?;
        }

        let machine = Machine {
            memory_bytes: config.memory_bytes,
            vcpus: config.vcpus,
            irqchip,
            acpi: config.acpi,
            guest_acpi,
            boot_timer: config.boot_timer,
            console: console_on,
            // Absolute: a restore may run in another working directory.
            disks: config
                .disks
                .iter()
                .cloned()
                .map(|mut disk| {
                    disk.path = std::path::absolute(&disk.path).unwrap_or(disk.path);
                    disk
                })
                .collect(),
            nets: config.nets.clone(),
            vsock: config.vsock.clone().map(|mut vsock| {
                vsock.socket = std::path::absolute(&vsock.socket).unwrap_or(vsock.socket);
                vsock
            }),
            shares,
        };

        // 6. The vCPUs.
        let Prepared { cpuid, filters } = prepared.finish(&kvm)?;
        let entry = kernel.as_ref().map(|k| &k.entry);
        let vcpus = vcpu::create_vcpus(&vm_fd, &mem, &cpuid, entry, config.vcpus)?;

        let quiesce = Quiesce::new()?;
        devices.add_subscriber(quiesce.watcher(devices.saved().to_vec()));
        match kernel {
            // A restore: the saved states instead of a boot's command line and tables.
            None => {
                let snap = from.ok_or(Error::Snapshot("restore without a snapshot".into()))?;
                snap.restore_devices(devices.saved())?;
                snap.vm_state()
                    .restore(&vm_fd)
                    .map_err(crate::error::arch_err("restore the VM's KVM state"))?;
                for (vcpu, state) in vcpus.iter().zip(snap.vcpu_states()) {
                    state
                        .restore(vcpu)
                        .map_err(crate::error::arch_err("restore a vCPU's state"))?;
                }
                step_done("restored the saved state");
            }
            Some(kernel) => {
                // 7. The command line: the caller's or ours, then host quirks, the root disk, the devices.
                let tsc_khz = || vcpus.first().and_then(|v| v.get_tsc_khz().ok());
                let quirks = quirks::cmdline_params(base, &cpuid, tsc_khz, config.vcpus);
                // A root share is the root with or without an initrd (the agent's initramfs reads
                // root= too); the first disk only without one.
                let root = match (&config.root_share, config.disks.first(), &initrd) {
                    (Some(share), _, _) => {
                        Some(kernel::Root::Share(ROOT_SHARE_TAG.into(), share.read_only))
                    }
                    (None, Some(disk), None) => Some(kernel::Root::Disk(disk.read_only)),
                    _ => None,
                };
                // With ACPI the guest finds the virtio devices in the DSDT; without, on the command line.
                let device_entries = match guest_acpi {
                    true => &[][..],
                    false => devices.cmdline_entries(),
                };
                let additions = kernel::cmdline_additions(base, quirks, root, device_entries);
                let cmdline_len =
                    kernel::write_cmdline(&mem, base, &additions, kernel.cmdline_capacity)?;

                // 8. The boot tables: PVH start info or zero page, MP table, ACPI tables.
                let acpi = config.acpi.then(|| arch::acpi::Machine {
                    vcpus: config.vcpus,
                    legacy_pics: irqchip == IrqChip::Kernel,
                    virtio_mmio: devices.virtio_slots().to_vec(),
                });
                kernel::write_boot_tables(
                    &mem,
                    &kernel,
                    cmdline_len,
                    initrd.as_ref(),
                    config.vcpus,
                    acpi.as_ref(),
                )?;
            }
        }

        let Devices {
            pio,
            mmio,
            event_manager,
            ptys,
            counters,
            saved,
        } = devices.into_devices();
        Ok(Vm {
            vcpus,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            event_manager,
            exit,
            exit_seen,
            shutdown,
            ptys,
            filters,
            vm_fd,
            irqchip,
            api_socket,
            config_json,
            counters,
            saved,
            machine,
            quiesce,
            msrs,
            _kvm: kvm,
            mem,
        })
    }

    /// A handle that asks the guest to shut down (see [`ShutdownRequest`]); it stays valid, and
    /// harmless, after the VM has stopped.
    pub fn shutdown_request(&self) -> ShutdownRequest {
        self.shutdown.clone()
    }

    /// The pseudo-terminals created for `pty` console backends, as (`"serial"` or `"console"`,
    /// path of the secondary to open, e.g. `/dev/pts/3`).
    pub fn ptys(&self) -> &[(&'static str, PathBuf)] {
        &self.ptys
    }

    /// Runs the guest until it resets, powers off or fails: one thread per vCPU, the event loop on this
    /// thread. All vCPU threads are stopped and joined before this returns.
    ///
    /// With seccomp on ([`VmConfig::seccomp`]), every vCPU thread installs its filter before its
    /// first KVM_RUN and, with [`SeccompMode::AllThreads`], this thread installs its own (for good)
    /// before any vCPU runs guest code.
    pub fn run(mut self) -> Result<ExitReason> {
        install_kick_handler()?;
        let mut filters = std::mem::take(&mut self.filters);
        // Joined with the vCPUs; it filters itself. Only the in-kernel PIT has reinjection.
        let helper_filter = filters.helper.take();
        let pit_helper = match self.irqchip {
            IrqChip::Kernel => pit_reinject_off(self.vm_fd.clone(), helper_filter),
            _ => None,
        };
        let gate = Arc::new(StartGate::default());
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(vcpu::Pause::default());
        pause.set_running(self.vcpus.len());
        let mut threads: Vec<(u8, JoinHandle<()>)> = Vec::with_capacity(self.vcpus.len());
        let mut spawn_error = None;
        for (index, fd) in self.vcpus.drain(..).enumerate() {
            let vcpu = Vcpu {
                index: index as u8,
                fd,
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                exit: self.exit.clone(),
                stop: stop.clone(),
                seccomp: filters.vcpu.clone(),
                gate: gate.clone(),
                pause: pause.clone(),
                msrs: self.msrs.clone(),
            };
            let name = format!("vcpu{index}");
            match thread::Builder::new()
                .name(name.clone())
                .spawn(move || vcpu.run())
            {
                Ok(handle) => threads.push((index as u8, handle)),
                Err(source) => {
                    spawn_error = Some(Error::Thread { name, source });
                    break;
                }
            }
        }
        step_done(&format!("started {} vCPU thread(s)", threads.len()));

        // The control API's thread, which filters itself before the gate opens.
        let mut api = None;
        let mut snapshotter_filtered = None;
        if let (None, Some(socket)) = (&spawn_error, self.api_socket.take()) {
            use std::os::unix::thread::JoinHandleExt;
            let context = crate::snapshot::SnapshotContext {
                vm_fd: self.vm_fd.clone(),
                mem: self.mem.clone(),
                saved: self.saved.clone(),
                machine: self.machine.clone(),
                quiesce: self.quiesce.clone(),
            };
            let filter = filters.snapshot.take();
            match crate::snapshot::Snapshotter::start(context, pause.clone(), filter) {
                Err(e) => spawn_error = Some(e),
                Ok((snapshotter, filtered)) => {
                    snapshotter_filtered = Some(filtered);
                    let control = crate::api::Control {
                        pause: pause.clone(),
                        vcpu_threads: threads.iter().map(|(_, h)| h.as_pthread_t()).collect(),
                        shutdown: self.shutdown.clone(),
                        started: std::time::Instant::now(),
                        config: std::mem::take(&mut self.config_json),
                        devices: std::mem::take(&mut self.counters),
                        snapshot: snapshotter,
                    };
                    match crate::api::ApiThread::start(socket, control, filters.api.take()) {
                        Ok(started) => api = Some(started),
                        Err(e) => spawn_error = Some(e),
                    }
                }
            }
        }

        // This thread's filter goes on before the gate opens: no guest code runs unconfined.
        let ready = match (spawn_error, &filters.vmm) {
            (Some(e), _) => Err(e),
            (None, Some(program)) => seccomp::apply(ThreadKind::Vmm, program, "vmm"),
            (None, None) => Ok(()),
        };
        if let Some((_, filtered)) = &pit_helper {
            // Err: the thread ended without filtering itself, so it cannot be misused either.
            let _ = filtered.recv();
        }
        if let Some((_, filtered)) = &api {
            let _ = filtered.recv();
        }
        if let Some(filtered) = &snapshotter_filtered {
            let _ = filtered.recv();
        }
        gate.open(ready.is_ok());
        step_done("every VMM thread filtered; opened the vCPUs' start gate");
        let mut result = ready.and_then(|()| self.event_loop());

        // The API thread first: it kicks vCPU threads, which must not be joined before it ends.
        if let Some((api, _)) = api {
            api.stop();
        }
        stop.store(true, Ordering::Release);
        pause.stop();
        for (_, handle) in &threads {
            // A thread that already finished is gone; ESRCH is fine.
            let _ = handle.kill(kick_signal());
        }
        for (index, handle) in threads {
            if handle.join().is_err() && result.is_ok() {
                result = Err(Error::VcpuPanicked(index));
            }
        }
        if let Some((handle, _)) = pit_helper {
            let _ = handle.join();
        }
        let reason = result?;
        log::info!("guest exited: {reason:?}");
        Ok(reason)
    }

    fn event_loop(&mut self) -> Result<ExitReason> {
        loop {
            self.event_manager.run().map_err(Error::EventLoop)?;
            if self.exit_requested() {
                return self.exit.take();
            }
        }
    }

    fn exit_requested(&self) -> bool {
        self.exit_seen.load(Ordering::Acquire)
    }
}

/// Asks a running VM's guest to shut down, from any thread or from a signal handler.
///
/// The first request presses the ACPI power button; a guest that powers off within
/// [`VmConfig::shutdown_timeout`] ends the VM with [`ExitReason::PowerOff`], otherwise the VM is
/// stopped with [`ExitReason::Stopped`]. A second request, or one to a VM without ACPI (no power
/// button), stops the VM at once with [`ExitReason::Stopped`].
#[derive(Clone, Debug)]
pub struct ShutdownRequest(Arc<EventFd>);

/// What [`ShutdownRequest::stop_now`] adds to the request counter: more than any number of
/// separate requests that could pile up between two reads.
const STOP_NOW: u64 = 1 << 32;

impl ShutdownRequest {
    /// Makes the request.
    pub fn request(&self) -> std::io::Result<()> {
        self.0.write(1)
    }

    /// Stops the VM at once, without asking the guest (quietly: the caller decided it).
    pub fn stop_now(&self) -> std::io::Result<()> {
        self.0.write(STOP_NOW)
    }
}

impl AsRawFd for ShutdownRequest {
    /// The eventfd behind [`ShutdownRequest::request`]: a signal handler makes the request by
    /// writing a native-endian `1u64` to it (`write(2)` is async-signal-safe). Valid while this
    /// handle lives.
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The event loop's side of [`ShutdownRequest`]: presses the power button, then stops the VM
/// when the guest has not powered off in time.
struct ShutdownWatcher {
    requests: Arc<EventFd>,
    timer: TimerFd,
    power_button: Option<Arc<Mutex<devices::legacy::AcpiPm>>>,
    exit: Arc<ExitState>,
    timeout: std::time::Duration,
    pressed: bool,
}

impl ShutdownWatcher {
    fn subscriber(
        request: &ShutdownRequest,
        power_button: Option<Arc<Mutex<devices::legacy::AcpiPm>>>,
        exit: &Arc<ExitState>,
        timeout: std::time::Duration,
    ) -> Result<Subscriber> {
        Ok(Arc::new(Mutex::new(ShutdownWatcher {
            requests: request.0.clone(),
            timer: TimerFd::new().map_err(|e| Error::EventFd(e.into()))?,
            power_button,
            exit: exit.clone(),
            timeout,
            pressed: false,
        })))
    }

    fn stop(&self, why: &str) {
        log::warn!("stopping the VM: {why}");
        self.exit.finish(Ok(ExitReason::Stopped));
    }

    fn on_request(&mut self, count: u64) {
        let Some(button) = self.power_button.as_ref() else {
            return self.stop("shutdown requested and the VM has no power button (ACPI is off)");
        };
        if count >= STOP_NOW {
            log::info!("stopping the VM: asked to stop at once");
            return self.exit.finish(Ok(ExitReason::Stopped));
        }
        if self.pressed || count > 1 {
            return self.stop("shutdown requested again");
        }
        if self.timeout.is_zero() {
            return self.stop("shutdown requested with no time to power off");
        }
        self.pressed = true;
        let pressed = button
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .press_power_button();
        if let Err(e) = pressed {
            return self.stop(&format!("cannot raise the power button's interrupt: {e}"));
        }
        log::info!(
            "pressed the power button; the guest has {:?} to power off",
            self.timeout
        );
        if let Err(e) = self.timer.reset(self.timeout, None) {
            self.stop(&format!("cannot arm the shutdown timer: {e}"));
        }
    }
}

impl MutEventSubscriber for ShutdownWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.requests.as_raw_fd() {
            if let Ok(count) = self.requests.read() {
                self.on_request(count);
            }
        } else if self.timer.wait().is_ok() {
            let timeout = self.timeout;
            self.stop(&format!("the guest did not power off within {timeout:?}"));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.requests.as_raw_fd(), self.timer.as_raw_fd()] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, 0, EventSet::IN)) {
                log::error!("cannot watch the shutdown request: {e:?}");
            }
        }
    }
}

/// The shutdown watcher's calls, on the event loop: the request's eventfd and the timer's timerfd
/// are read, the timer armed, and the power button's irqfd written (declared by the device).
pub(crate) const SHUTDOWN_SYSCALLS: devices::seccomp::Syscalls = devices::seccomp::Syscalls {
    name: "shutdown request",
    vcpu: &[],
    event_loop: &[
        devices::seccomp::SyscallRule::Any(libc::SYS_read),
        devices::seccomp::SyscallRule::Any(libc::SYS_timerfd_settime),
    ],
};

/// Wakes the event loop when a vCPU or the i8042 asks the VM to stop.
struct ExitWatcher {
    evt: EventFd,
    seen: Arc<AtomicBool>,
}

impl ExitWatcher {
    /// A watcher of `exit`'s eventfd that sets `seen`, ready for the event loop.
    fn subscriber(exit: &ExitState, seen: &Arc<AtomicBool>) -> Result<Subscriber> {
        Ok(Arc::new(Mutex::new(ExitWatcher {
            evt: exit.event().try_clone().map_err(Error::EventFd)?,
            seen: seen.clone(),
        })))
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            let _ = self.evt.read();
        }
        self.seen.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("cannot watch the VM exit event: {e:?}");
        }
    }
}

/// What building a VM needs but not from the VM: KVM's supported CPUID and the compiled seccomp
/// filters. A `prep` thread makes them while `Vm::new` creates the VM, maps memory and loads the
/// kernel, which takes their cost off the path to the first KVM_RUN (DESIGN.md, "Start-up and exit
/// costs"). The thread is joined before `Vm::new` returns.
struct Prepared {
    cpuid: kvm_bindings::CpuId,
    filters: Filters,
}

/// [`Prepared`] in the making: on its thread, or not started yet if no thread could be.
enum Preparing {
    Thread(JoinHandle<Result<Prepared>>),
    Inline(SeccompMode, bool, bool),
}

impl Prepared {
    /// `pit_helper`: also compile the filter of the in-kernel PIT's helper thread; `api`: that
    /// of the control API's thread.
    fn make(kvm: &Kvm, mode: SeccompMode, pit_helper: bool, api: bool) -> Result<Prepared> {
        Ok(Prepared {
            cpuid: kvm
                .get_supported_cpuid(MAX_CPUID_ENTRIES)
                .map_err(kvm_err("get the supported CPUID"))?,
            filters: Filters::new(mode, pit_helper, api)?,
        })
    }

    fn start(kvm: Arc<Kvm>, mode: SeccompMode, pit_helper: bool, api: bool) -> Preparing {
        match thread::Builder::new()
            .name("prep".into())
            .spawn(move || Prepared::make(&kvm, mode, pit_helper, api))
        {
            Ok(handle) => Preparing::Thread(handle),
            Err(e) => {
                log::debug!("cannot start the prep thread ({e}); preparing inline");
                Preparing::Inline(mode, pit_helper, api)
            }
        }
    }
}

impl Preparing {
    fn finish(self, kvm: &Kvm) -> Result<Prepared> {
        match self {
            Preparing::Thread(handle) => {
                handle.join().unwrap_or(Err(Error::ThreadPanicked("prep")))
            }
            Preparing::Inline(mode, pit_helper, api) => Prepared::make(kvm, mode, pit_helper, api),
        }
    }
}

/// Checks that `config` builds the machine `snapshot` was taken of: the same memory, vCPUs,
/// irqchip and devices, each disk of the same kind (read-only or not, throw-away or not).
fn check_restore(config: &VmConfig, snapshot: &Snapshot) -> Result<()> {
    let m = snapshot.machine();
    let mismatch = |why: String| Err(snapshot.mismatch(why));
    if (config.memory_bytes, config.vcpus) != (m.memory_bytes, m.vcpus) {
        return mismatch(format!(
            "it has {} bytes of memory and {} vCPUs, not {} and {}",
            m.memory_bytes, m.vcpus, config.memory_bytes, config.vcpus
        ));
    }
    if config.irqchip != m.irqchip || config.acpi != m.acpi || config.boot_timer != m.boot_timer {
        return mismatch("its irqchip, ACPI or boot timer differ from the VM's".into());
    }
    if config.disks.len() != m.disks.len() {
        return mismatch(format!(
            "it has {} disks, {} were given",
            m.disks.len(),
            config.disks.len()
        ));
    }
    for (i, (new, old)) in config.disks.iter().zip(&m.disks).enumerate() {
        if new.read_only != old.read_only {
            return mismatch(format!(
                "disk {} ('{}') was {}, '{}' is given {}",
                i + 1,
                old.path.display(),
                if old.read_only {
                    "read-only"
                } else {
                    "writable"
                },
                new.path.display(),
                if new.read_only {
                    "read-only"
                } else {
                    "writable"
                },
            ));
        }
    }
    if config.nets.len() != m.nets.len() {
        return mismatch(format!(
            "it has {} NICs, {} were given",
            m.nets.len(),
            config.nets.len()
        ));
    }
    match (&config.vsock, &m.vsock) {
        (Some(new), Some(old)) if new.cid != old.cid => mismatch(format!(
            "its vsock device has CID {}, not {}",
            old.cid, new.cid
        )),
        (None, Some(_)) | (Some(_), None) => {
            mismatch("it has a vsock device exactly when the VM does not".into())
        }
        _ => Ok(()),
    }
}

/// Turns off the in-kernel PIT's tick reinjection, on a short-lived thread of its own.
///
/// With reinjection on (KVM's default) every PIT tick waits for the guest's EOI before the next is
/// injected, and ticks a descheduled vCPU missed are replayed later: that is for guests that keep time
/// by counting ticks. Linux keeps time with the TSC and uses the PIT only early in boot. Turning it
/// off waits for two SRCU grace periods; left on, the same two grace periods are paid when the VM fd
/// is closed, between the guest's exit and the process's. This thread pays them while the VM starts,
/// which DESIGN.md ("Threads") found faster than doing it on the event-loop thread once the gate
/// opens, and gives the figures. A failure (no PIT,
/// an old kernel) costs nothing but that saving, so it is logged and ignored. The ioctl holds the
/// PIT's lock across its grace periods and vCPU 0 takes that lock in its first KVM_RUN, so the guest's
/// first instruction may wait for this thread; the process's exit waits for it anyway.
///
/// The receiver hears once the thread is filtered (or gone): the vCPUs' start gate waits for it, so
/// no guest instruction runs while this thread is unconfined.
fn pit_reinject_off(
    vm_fd: Arc<VmFd>,
    filter: Option<BpfProgram>,
) -> Option<(JoinHandle<()>, mpsc::Receiver<()>)> {
    let (filtered, ready) = mpsc::sync_channel(1);
    let work = move || {
        if let Some(program) = filter {
            if let Err(e) = seccomp::apply(ThreadKind::Helper, &program, "pit") {
                log::warn!("PIT helper thread: {e}; leaving PIT tick reinjection on");
                return;
            }
        }
        let _ = filtered.send(());
        let control = kvm_bindings::kvm_reinject_control {
            pit_reinject: 0,
            ..Default::default()
        };
        // SAFETY: KVM_REINJECT_CONTROL reads one kvm_reinject_control, which outlives the call, from
        // a VM fd we own; it writes no memory of ours.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(vm_fd.as_ref(), KVM_REINJECT_CONTROL(), &control)
        };
        if ret < 0 {
            log::debug!(
                "cannot turn off PIT tick reinjection: {}",
                std::io::Error::last_os_error()
            );
        }
    };
    match thread::Builder::new().name("pit".into()).spawn(work) {
        Ok(handle) => Some((handle, ready)),
        Err(e) => {
            log::debug!("cannot start the PIT helper thread: {e}");
            None
        }
    }
}
