//! The boot sequence (see DESIGN.md): build a VM from a [`VmConfig`], then run it to an [`ExitReason`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use arch::layout;
use arch::regs::BootEntry;
use arch::GuestMemoryMmap;
use devices::bus::Bus;
use devices::chardev::Chardev;
use devices::legacy::{
    BootTimer, ChardevWriter, Ioapic, IrqRouter, MsiMessage, Pit, PitTimer, Serial, SerialInput,
    BOOT_TIMER_MMIO_ADDR, BOOT_TIMER_MMIO_LEN, BOOT_TIMER_PORT, BOOT_TIMER_PORT_LEN, I8042,
    IOAPIC_MMIO_ADDR, IOAPIC_MMIO_LEN, IOAPIC_NUM_PINS, PIT_PORT, PIT_PORT_LEN, SPEAKER_PORT,
};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::console::Console;
use devices::virtio::net::{Net, Tap};
use devices::virtio::{MmioTransport, VirtioDevice, NOTIFY_REG_OFFSET};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_pit_config, kvm_userspace_memory_region,
    KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use seccompiler::BpfProgram;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::config::{CharBackend, IrqChip, VmConfig, DEFAULT_CMDLINE, DEFAULT_CONSOLE_CMDLINE};
use crate::error::{Error, Result};
use crate::kernel::{build_cmdline, cmdline_has, load_initrd, load_kernel};
use crate::kvm_nr::KVM_REINJECT_CONTROL;
use crate::quirks;
use crate::seccomp::{self, Filters, SeccompMode, ThreadKind};
use crate::vcpu::{install_kick_handler, kick_signal, ExitState, ResetTrigger, StartGate, Vcpu};
use crate::ExitReason;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Where the TSS goes: three pages just below the BIOS area at the top of the 32-bit space.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// COM1.
const SERIAL_PORT: u64 = 0x3f8;
const SERIAL_PORT_LEN: u64 = 8;
/// i8042 data and command ports.
const I8042_DATA_PORT: u64 = 0x60;
const I8042_COMMAND_PORT: u64 = 0x64;
/// Capabilities the VMM cannot work without, whatever the irqchip.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];
/// What [`IrqChip::Split`] needs.
const SPLIT_CAPS: [(Cap, &str); 2] = [
    (Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP"),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
];
/// What [`IrqChip::Kernel`] needs.
const KERNEL_IRQCHIP_CAPS: [(Cap, &str); 2] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
];
/// The PIT's channel 0 output: IRQ 0, I/O APIC pin 0 (as the MP table says).
const PIT_IRQ: u32 = 0;
/// Room for KVM_GET_SUPPORTED_CPUID's answer.
const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// The `-v` start-up trace: each step with its time since the process started
/// ([`crate::process_start`]), the same reference as the first KVM_RUN and the boot timer.
struct Steps(Instant);

impl Steps {
    fn new() -> Steps {
        Steps(crate::process_start())
    }

    fn done(&self, step: &str) {
        log::info!("{:>8.3} ms  {step}", self.0.elapsed().as_secs_f64() * 1e3);
    }
}

/// A virtual machine ready to run: memory mapped, kernel loaded, devices wired, vCPUs configured.
pub struct Vm {
    // Field order matters on drop: vCPUs and devices before the VM fd, the VM fd before /dev/kvm.
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    event_manager: EventManager<Subscriber>,
    exit: Arc<ExitState>,
    exit_seen: Arc<AtomicBool>,
    /// Pseudo-terminals created for console backends: (device, secondary path).
    ptys: Vec<(&'static str, PathBuf)>,
    filters: Filters,
    vm_fd: Arc<VmFd>,
    /// Split or in-kernel (never `Auto` here).
    irqchip: IrqChip,
    _kvm: Arc<Kvm>,
    _mem: GuestMemoryMmap,
}

impl Vm {
    /// Builds the VM: checks the configuration and KVM, maps memory, loads the kernel, initrd and command
    /// line, writes the boot tables, creates the devices and the vCPUs. Nothing runs yet.
    pub fn new(config: VmConfig) -> Result<Vm> {
        let steps = Steps::new();
        let kvm = Arc::new(open_kvm()?);
        steps.done("opened /dev/kvm");
        validate(&config, &kvm)?;
        let irqchip = choose_irqchip(config.irqchip, &kvm)?;
        let prepared = Prepared::start(kvm.clone(), config.seccomp, irqchip == IrqChip::Kernel);

        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("create the VM"))?);
        // Memory before the irqchip: on some hosts the first memory slot added after
        // KVM_CREATE_IRQCHIP waits several milliseconds for an SRCU grace period; added before it,
        // both take microseconds.
        let mem = create_memory(&vm_fd, config.memory_bytes)?;
        steps.done(&format!(
            "mapped {} MiB of guest memory",
            config.memory_bytes >> 20
        ));
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set the TSS address"))?;
        create_irqchip(&vm_fd, irqchip)?;
        steps.done(match irqchip {
            IrqChip::Kernel => "created the in-kernel irqchip (LAPICs, I/O APIC, PICs) and PIT",
            _ => "created the split irqchip (LAPICs in KVM; I/O APIC and PIT here)",
        });

        let kernel = load_kernel(&mem, &config.kernel)?;
        steps.done(&format!(
            "loaded kernel {} ({})",
            config.kernel.display(),
            kernel.kind
        ));
        let initrd = match &config.initrd {
            Some(path) => {
                let initrd = load_initrd(&mem, path, kernel.end)?;
                steps.done(&format!(
                    "loaded initrd {} ({} bytes at {:#x})",
                    path.display(),
                    initrd.size,
                    initrd.addr.0
                ));
                Some(initrd)
            }
            None => None,
        };

        let exit = Arc::new(ExitState::new()?);
        let mut event_manager = EventManager::<Subscriber>::new().map_err(Error::EventLoop)?;
        let exit_seen = Arc::new(AtomicBool::new(false));
        event_manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher {
            evt: exit.event().try_clone().map_err(Error::EventFd)?,
            seen: exit_seen.clone(),
        })));

        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let mut ptys = Vec::new();
        let console_on = config.console.is_on();
        let serial = open_chardev("serial", config.serial)?;
        if let Some(path) = serial.pty_path() {
            ptys.push(("serial", path.to_path_buf()));
        }
        add_legacy_devices(&vm_fd, &mut pio, &mut event_manager, &exit, serial)?;
        if irqchip == IrqChip::Split {
            add_split_irqchip_devices(&vm_fd, &mut pio, &mut mmio, &mut event_manager)?;
        }
        if config.boot_timer {
            let timer = Arc::new(Mutex::new(BootTimer::new(crate::process_start())));
            let dev_err = |source| Error::Device {
                what: "boot timer",
                source,
            };
            pio.insert(timer.clone(), BOOT_TIMER_PORT, BOOT_TIMER_PORT_LEN)
                .map_err(dev_err)?;
            mmio.insert(timer, BOOT_TIMER_MMIO_ADDR, BOOT_TIMER_MMIO_LEN)
                .map_err(dev_err)?;
        }

        let mut virtio = VirtioSlots {
            vm_fd: &vm_fd,
            mem: &mem,
            mmio: &mut mmio,
            event_manager: &mut event_manager,
            cmdline: Vec::new(),
        };
        for (index, disk) in config.disks.iter().enumerate() {
            let disk_err = |source| Error::Disk {
                path: disk.path.clone(),
                source,
            };
            let block = Block::new(BlockConfig {
                path: disk.path.clone(),
                read_only: disk.read_only,
                id: disk.id.clone(),
            })
            .map_err(disk_err)?
            .with_rate_limiter(rate_limiter(&disk.rate_limit).map_err(disk_err)?);
            let (base, irq) = virtio.add("virtio-blk", block)?;
            steps.done(&format!(
                "disk {} as /dev/vd{} ({}) at {base:#x}, IRQ {irq}",
                disk.path.display(),
                (b'a' + (index % 26) as u8) as char,
                if disk.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            ));
        }
        for (index, nic) in config.nets.iter().enumerate() {
            let net_err = |source| Error::Net {
                tap: nic.tap.clone(),
                source,
            };
            let mac = nic.guest_mac();
            let tap = Tap::open(&nic.tap, nic.create).map_err(net_err)?;
            let net = Net::new(tap, mac).map_err(net_err)?.with_rate_limiters(
                rate_limiter(&nic.rate_limit).map_err(net_err)?,
                rate_limiter(&nic.rate_limit).map_err(net_err)?,
            );
            let (base, irq) = virtio.add("virtio-net", net)?;
            steps.done(&format!(
                "NIC eth{index} on tap {} (MAC {}) at {base:#x}, IRQ {irq}",
                nic.tap,
                devices::virtio::net::format_mac(&mac)
            ));
        }
        if console_on {
            let chardev = open_chardev("console", config.console)?;
            let pty = chardev.pty_path().map(Path::to_path_buf);
            let console = Console::new(chardev).map_err(|source| Error::Device {
                what: "console",
                source,
            })?;
            let size = console.size();
            let (base, irq) = virtio.add("virtio-console", console)?;
            steps.done(&format!(
                "virtio console (hvc0) at {base:#x}, IRQ {irq}{}",
                if size.0 > 0 {
                    format!(", {}x{}", size.0, size.1)
                } else {
                    String::new()
                }
            ));
            if let Some(path) = pty {
                ptys.push(("console", path));
            }
        }
        let cmdline_additions = virtio.cmdline;

        let Prepared {
            cpuid: supported_cpuid,
            filters,
        } = prepared.finish(&kvm)?;

        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let vcpu = vm_fd
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("create a vCPU"))?;
            let mut cpuid = supported_cpuid.clone();
            arch::cpuid::filter_cpuid(&mut cpuid, index, config.vcpus)
                .map_err(arch_err("set up CPUID"))?;
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
            arch::regs::setup_vcpu(&mem, &vcpu, &kernel.entry)
                .map_err(arch_err("set up vCPU registers"))?;
            vcpus.push(vcpu);
        }
        steps.done(&format!("configured {} vCPU(s)", config.vcpus));

        // The command line: the caller's or ours, then what the guest must be told.
        let default_cmdline = if console_on {
            DEFAULT_CONSOLE_CMDLINE
        } else {
            DEFAULT_CMDLINE
        };
        let base = config.cmdline.as_deref().unwrap_or(default_cmdline);
        let mut additions = Vec::new();
        if let Some(why) = quirks::cpuid_not_virtualized(&supported_cpuid) {
            let tsc_khz = vcpus.first().and_then(|v| v.get_tsc_khz().ok());
            let missing: Vec<String> = quirks::no_cpuid_virt_params(tsc_khz, config.vcpus)
                .into_iter()
                .filter(|p| !cmdline_has(base, p.split('=').next().unwrap_or(p)))
                .collect();
            if !missing.is_empty() {
                log::info!(
                    "this host does not virtualize CPUID ({why}); adding '{}' to the kernel command line",
                    missing.join(" ")
                );
            }
            additions.extend(missing);
        }
        if !config.disks.is_empty() && initrd.is_none() && !cmdline_has(base, "root") {
            additions.push("root=/dev/vda".to_string());
            if !cmdline_has(base, "ro") && !cmdline_has(base, "rw") {
                additions.push(
                    if config.disks[0].read_only {
                        "ro"
                    } else {
                        "rw"
                    }
                    .to_string(),
                );
            }
        }
        additions.extend(cmdline_additions);
        let cmdline = build_cmdline(base, &additions, kernel.cmdline_capacity)?;
        let cmdline_len = cmdline
            .as_cstring()
            .map_err(|e| Error::Cmdline(e.to_string()))?
            .as_bytes_with_nul()
            .len();
        linux_loader::loader::load_cmdline(&mem, GuestAddress(layout::CMDLINE_START), &cmdline)
            .map_err(|e| Error::Cmdline(e.to_string()))?;
        log::debug!(
            "kernel command line: {}",
            cmdline
                .as_cstring()
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default()
        );

        let cmdline_addr = GuestAddress(layout::CMDLINE_START);
        match kernel.entry {
            BootEntry::Pvh { .. } => {
                arch::boot::configure_pvh_boot(&mem, cmdline_addr, initrd.as_ref())
                    .map_err(arch_err("write the PVH start info"))?
            }
            BootEntry::Linux64 { .. } => arch::boot::configure_linux_boot(
                &mem,
                cmdline_addr,
                cmdline_len,
                initrd.as_ref(),
                kernel.setup_header,
            )
            .map_err(arch_err("write the zero page"))?,
        }
        arch::mptable::setup_mptable(&mem, config.vcpus).map_err(arch_err("write the MP table"))?;
        steps.done("wrote boot parameters and MP table");

        Ok(Vm {
            vcpus,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            event_manager,
            exit,
            exit_seen,
            ptys,
            filters,
            vm_fd,
            irqchip,
            _kvm: kvm,
            _mem: mem,
        })
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
        let steps = Steps::new();
        let mut filters = std::mem::take(&mut self.filters);
        // Joined with the vCPUs; it filters itself. Only the in-kernel PIT has reinjection.
        let helper_filter = filters.helper.take();
        let pit_helper = match self.irqchip {
            IrqChip::Kernel => pit_reinject_off(self.vm_fd.clone(), helper_filter),
            _ => None,
        };
        let gate = Arc::new(StartGate::default());
        let stop = Arc::new(AtomicBool::new(false));
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
        steps.done(&format!("started {} vCPU thread(s)", threads.len()));

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
        gate.open(ready.is_ok());
        steps.done("every VMM thread filtered; opened the vCPUs' start gate");
        let mut result = ready.and_then(|()| self.event_loop());

        stop.store(true, Ordering::Release);
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

/// Wakes the event loop when a vCPU or the i8042 asks the VM to stop.
struct ExitWatcher {
    evt: EventFd,
    seen: Arc<AtomicBool>,
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

/// Hands out virtio-mmio slots (4 KiB and one IRQ each, in order) and wires each device into KVM (irqfd,
/// one ioeventfd per queue), the MMIO bus and the event loop, collecting the `virtio_mmio.device=` entries
/// for the kernel command line.
struct VirtioSlots<'a> {
    vm_fd: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    event_manager: &'a mut EventManager<Subscriber>,
    cmdline: Vec<String>,
}

impl VirtioSlots<'_> {
    /// Adds `device` in the next free slot; returns the slot's base address and IRQ.
    fn add<D>(&mut self, what: &'static str, device: D) -> Result<(u64, u32)>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let slot = self.cmdline.len() as u64;
        let irq = layout::VIRTIO_MMIO_FIRST_IRQ + slot as u32;
        if irq > layout::IOAPIC_LAST_IRQ {
            return Err(Error::Config(format!(
                "too many virtio devices: at most {} fit",
                layout::IOAPIC_LAST_IRQ - layout::VIRTIO_MMIO_FIRST_IRQ + 1
            )));
        }
        let base = layout::VIRTIO_MMIO_BASE + slot * layout::VIRTIO_MMIO_SIZE;
        let device = Arc::new(Mutex::new(device));
        let device_err = |source| Error::Device { what, source };
        let transport = MmioTransport::new(self.mem.clone(), device.clone()).map_err(device_err)?;
        self.vm_fd
            .register_irqfd(transport.irq_event(), irq)
            .map_err(kvm_err("register a virtio irqfd"))?;
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            self.vm_fd
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET),
                    queue as u32,
                )
                .map_err(kvm_err("register a virtio ioeventfd"))?;
        }
        self.mmio
            .insert(
                Arc::new(Mutex::new(transport)),
                base,
                layout::VIRTIO_MMIO_SIZE,
            )
            .map_err(device_err)?;
        self.event_manager.add_subscriber(device);
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        Ok((base, irq))
    }
}

/// A limiter for `config`, or none when it sets no limit.
fn rate_limiter(
    config: &devices::rate_limiter::RateLimitConfig,
) -> std::result::Result<Option<devices::rate_limiter::RateLimiter>, devices::Error> {
    if config.is_unlimited() {
        return Ok(None);
    }
    devices::rate_limiter::RateLimiter::new(config).map(Some)
}

/// What building a VM needs but not from the VM: KVM's supported CPUID and the compiled seccomp
/// filters. A `prep` thread makes them while `Vm::new` creates the VM, maps memory and loads the
/// kernel, which takes the 0.25 ms they cost off the path to the first KVM_RUN (1.42 → 1.32 ms,
/// medians of 60 alternating null-guest runs). The thread is joined before `Vm::new` returns.
struct Prepared {
    cpuid: kvm_bindings::CpuId,
    filters: Filters,
}

/// [`Prepared`] in the making: on its thread, or not started yet if no thread could be.
enum Preparing {
    Thread(JoinHandle<Result<Prepared>>),
    Inline(SeccompMode, bool),
}

impl Prepared {
    /// `pit_helper`: also compile the filter of the in-kernel PIT's helper thread.
    fn make(kvm: &Kvm, mode: SeccompMode, pit_helper: bool) -> Result<Prepared> {
        Ok(Prepared {
            cpuid: kvm
                .get_supported_cpuid(MAX_CPUID_ENTRIES)
                .map_err(kvm_err("get the supported CPUID"))?,
            filters: Filters::new(mode, pit_helper)?,
        })
    }

    fn start(kvm: Arc<Kvm>, mode: SeccompMode, pit_helper: bool) -> Preparing {
        match thread::Builder::new()
            .name("prep".into())
            .spawn(move || Prepared::make(&kvm, mode, pit_helper))
        {
            Ok(handle) => Preparing::Thread(handle),
            Err(e) => {
                log::debug!("cannot start the prep thread ({e}); preparing inline");
                Preparing::Inline(mode, pit_helper)
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
            Preparing::Inline(mode, pit_helper) => Prepared::make(kvm, mode, pit_helper),
        }
    }
}

/// Turns off the in-kernel PIT's tick reinjection, on a short-lived thread of its own.
///
/// With reinjection on (KVM's default) every PIT tick waits for the guest's EOI before the next is
/// injected, and ticks a descheduled vCPU missed are replayed later: that is for guests that keep time
/// by counting ticks. Linux keeps time with the TSC and uses the PIT only early in boot. Turning it
/// off waits for two SRCU grace periods (0.1–35 ms on the development host); left on, the same two
/// grace periods are paid when the VM fd is closed, between the guest's exit and the process's. This
/// thread pays them while the VM starts. (Done on the event-loop thread once the gate opens, it
/// started later and the null guest's start → exit was 14–20 ms instead of 8–12.) A failure (no PIT,
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

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

fn arch_err(what: &'static str) -> impl Fn(arch::Error) -> Error {
    move |source| Error::Arch { what, source }
}

/// Resolves `asked` against what KVM offers (`Auto`: split when it can) and checks the
/// capabilities the result needs.
fn choose_irqchip(asked: IrqChip, kvm: &Kvm) -> Result<IrqChip> {
    let has_all = |caps: &[(Cap, &'static str)]| caps.iter().all(|(c, _)| kvm.check_extension(*c));
    let chosen = match asked {
        IrqChip::Auto if has_all(&SPLIT_CAPS) => IrqChip::Split,
        IrqChip::Auto => {
            log::info!("KVM has no split irqchip here; using the in-kernel one");
            IrqChip::Kernel
        }
        other => other,
    };
    let caps: &[(Cap, &'static str)] = match chosen {
        IrqChip::Kernel => &KERNEL_IRQCHIP_CAPS,
        _ => &SPLIT_CAPS,
    };
    for (cap, name) in caps {
        if !kvm.check_extension(*cap) {
            return Err(match chosen {
                IrqChip::Kernel => Error::KvmCapability(name),
                _ => Error::Config(format!(
                    "--irqchip split: KVM on this host lacks {name}; use --irqchip kernel"
                )),
            });
        }
    }
    Ok(chosen)
}

/// KVM's part of the irqchip: all of it (`Kernel`), or the local APICs with 24 routes reserved for
/// the user-space I/O APIC's pins (`Split`).
fn create_irqchip(vm_fd: &VmFd, irqchip: IrqChip) -> Result<()> {
    if irqchip == IrqChip::Kernel {
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        return vm_fd
            .create_pit2(pit)
            .map_err(kvm_err("create the in-kernel PIT"));
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = IOAPIC_NUM_PINS as u64;
    vm_fd
        .enable_cap(&cap)
        .map_err(kvm_err("create the split irqchip"))
}

/// The I/O APIC's routes as KVM's GSI routing table: GSI n is pin n.
struct KvmRoutes(Arc<VmFd>);

impl IrqRouter for KvmRoutes {
    fn set_routes(
        &mut self,
        routes: &[Option<MsiMessage>; IOAPIC_NUM_PINS],
    ) -> std::io::Result<()> {
        let fam_err = |e| std::io::Error::other(format!("{e:?}"));
        let mut table = KvmIrqRouting::new(0).map_err(fam_err)?;
        for (gsi, msi) in routes.iter().enumerate() {
            let Some(msi) = msi else { continue };
            let mut entry = kvm_irq_routing_entry {
                gsi: gsi as u32,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            entry.u.msi.address_lo = msi.address as u32;
            entry.u.msi.address_hi = (msi.address >> 32) as u32;
            entry.u.msi.data = msi.data;
            table.push(entry).map_err(fam_err)?;
        }
        self.0.set_gsi_routing(&table).map_err(std::io::Error::from)
    }
}

/// The user-space half of a split irqchip: the I/O APIC (MMIO 0xfec0_0000) and the PIT (ports
/// 0x40–0x43 and 0x61, channel 0 on IRQ 0 through an irqfd, its timer on the event loop).
fn add_split_irqchip_devices(
    vm_fd: &Arc<VmFd>,
    pio: &mut Bus,
    mmio: &mut Bus,
    event_manager: &mut EventManager<Subscriber>,
) -> Result<()> {
    let dev_err = |what| move |source| Error::Device { what, source };
    let ioapic = Ioapic::new(Box::new(KvmRoutes(vm_fd.clone())));
    mmio.insert(
        Arc::new(Mutex::new(ioapic)),
        IOAPIC_MMIO_ADDR,
        IOAPIC_MMIO_LEN,
    )
    .map_err(dev_err("I/O APIC"))?;
    let pit_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm_fd
        .register_irqfd(&pit_irq, PIT_IRQ)
        .map_err(kvm_err("register the PIT irqfd"))?;
    let pit = Pit::new(pit_irq).map_err(dev_err("PIT"))?;
    let (ports, speaker) = Pit::port_devices(&pit);
    pio.insert(Arc::new(Mutex::new(ports)), PIT_PORT, PIT_PORT_LEN)
        .map_err(dev_err("PIT"))?;
    pio.insert(Arc::new(Mutex::new(speaker)), SPEAKER_PORT, 1)
        .map_err(dev_err("PIT"))?;
    event_manager.add_subscriber(Arc::new(Mutex::new(PitTimer(pit))));
    Ok(())
}

fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(Error::KvmOpen)?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(Error::KvmApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmCapability(name));
        }
    }
    Ok(kvm)
}

fn validate(config: &VmConfig, kvm: &Kvm) -> Result<()> {
    if config.serial.owns_stdin() && config.console.owns_stdin() {
        return Err(Error::Config(
            "--serial stdio and --console stdio: only one of them can read stdin; move one to off, file=, pty or socket=".into(),
        ));
    }
    let max_vcpus = kvm.get_max_vcpus().min(usize::from(layout::MAX_VCPUS));
    if config.vcpus == 0 || usize::from(config.vcpus) > max_vcpus {
        return Err(Error::Config(format!(
            "--cpus {}: this host runs 1 to {max_vcpus} vCPUs per VM",
            config.vcpus
        )));
    }
    if config.memory_bytes < (1 << 20) {
        return Err(Error::Config(format!(
            "--memory {} bytes is too small; give the guest at least 1M",
            config.memory_bytes
        )));
    }
    let host = host_memory_bytes();
    if host > 0 && config.memory_bytes > host {
        return Err(Error::Config(format!(
            "--memory {} is more than this host's {} of RAM; ask for less",
            human_size(config.memory_bytes),
            human_size(host)
        )));
    }
    Ok(())
}

/// `bytes` in the largest binary unit that keeps one decimal, e.g. `100 TiB`, `23.5 GiB`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The host's physical RAM in bytes, or 0 if unknown.
fn host_memory_bytes() -> u64 {
    // SAFETY: sysinfo only writes into the zeroed struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return 0;
    }
    info.totalram.saturating_mul(u64::from(info.mem_unit))
}

fn create_memory(vm_fd: &VmFd, size: u64) -> Result<GuestMemoryMmap> {
    let mib = size >> 20;
    let regions = arch::ram_regions(size).map_err(|e| Error::GuestMemory {
        mib,
        reason: e.to_string(),
    })?;
    let mem = GuestMemoryMmap::from_ranges(&regions).map_err(|e| Error::GuestMemory {
        mib,
        reason: e.to_string(),
    })?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::GuestMemory {
                mib,
                reason: e.to_string(),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the Vm keeps until after the VM fd
        // (and with it KVM's use of the mapping) is gone.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(kvm_err("register guest memory"))?;
    }
    Ok(mem)
}

/// Opens the backend of the device `name` (`"serial"` or `"console"`).
fn open_chardev(name: &'static str, backend: CharBackend) -> Result<Chardev> {
    match backend {
        CharBackend::Off => Chardev::null(name),
        CharBackend::Stdio => Chardev::stdio(name, true),
        CharBackend::Stdout => Chardev::stdio(name, false),
        CharBackend::File(path) => Chardev::file(name, &path),
        CharBackend::Pty => Chardev::pty(name),
        CharBackend::Socket(path) => Chardev::socket(name, &path),
        CharBackend::Writer(w) => Chardev::writer(name, w),
    }
    .map_err(|source| Error::Device { what: name, source })
}

fn add_legacy_devices(
    vm_fd: &VmFd,
    pio: &mut Bus,
    event_manager: &mut EventManager<Subscriber>,
    exit: &Arc<ExitState>,
    chardev: Chardev,
) -> Result<()> {
    let dev_err = |what| move |source| Error::Device { what, source };
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm_fd
        .register_irqfd(&serial_irq, layout::SERIAL_IRQ)
        .map_err(kvm_err("register the serial irqfd"))?;
    let chardev = Arc::new(Mutex::new(chardev));
    let out = Box::new(ChardevWriter(chardev.clone()));
    let serial = Arc::new(Mutex::new(
        Serial::new(serial_irq, out).map_err(dev_err("serial"))?,
    ));
    pio.insert(serial.clone(), SERIAL_PORT, SERIAL_PORT_LEN)
        .map_err(dev_err("serial"))?;
    // The backend's event-loop side: input into the FIFO, socket clients, the output backlog.
    let input = SerialInput::new(serial, chardev).map_err(dev_err("serial input"))?;
    event_manager.add_subscriber(Arc::new(Mutex::new(input)));
    // Its data and command ports only: port 0x61 between them is the PIT's (split irqchip).
    let i8042 = Arc::new(Mutex::new(I8042::with_trigger(ResetTrigger(exit.clone()))));
    for port in [I8042_DATA_PORT, I8042_COMMAND_PORT] {
        pio.insert_at(i8042.clone(), port, 1, port - I8042_DATA_PORT)
            .map_err(dev_err("i8042"))?;
    }
    Ok(())
}
