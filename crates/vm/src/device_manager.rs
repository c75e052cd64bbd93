//! The device manager: creates the devices, places them at the ports, MMIO ranges and IRQs of
//! `arch::layout`, wires them into KVM (irqfds, ioeventfds), puts them on the buses and the event
//! loop, and collects what the kernel command line must say about them.
//!
//! Device models do not know where they sit; everything here that is an address, a port or an IRQ
//! comes from `arch::layout`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arch::layout;
use devices::bus::Bus;
use devices::chardev::{Chardev, SocketFile};
use devices::legacy::{
    AcpiPm, BootTimer, ChardevWriter, ExitDevice, Ioapic, IoapicTimer, Pit, PitTimer, PowerRequest,
    Pvpanic, Serial, SerialInput, ACPI_PM_PORT_LEN, BOOT_TIMER_MMIO_LEN, BOOT_TIMER_PORT_LEN,
    I8042, IOAPIC_MMIO_LEN, PIT_PORT_LEN,
};
use devices::persist::SaveState;
use devices::rate_limiter::{RateLimitConfig, RateLimiter};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::console::Console;
use devices::virtio::fs::Fs;
use devices::virtio::net::{Net, Tap};
use devices::virtio::vsock::Vsock;
use devices::virtio::{MmioTransport, VirtioDevice, NOTIFY_REG_OFFSET};
use devices::GuestMemoryMmap;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{CharBackend, DiskConfig, NetConfig, ShareConfig, VsockConfig};
use crate::error::{kvm_err, Error, Result};
use crate::kvm::KvmRoutes;
use crate::start::step_done;
use crate::vcpu::{ExitState, ResetTrigger};
use crate::ExitReason;

/// What the event loop serves.
pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A virtio-mmio slot: the device's register page and its IRQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MmioSlot {
    /// The first byte of the slot's page.
    pub base: u64,
    /// Its IRQ (= GSI = I/O APIC pin).
    pub irq: u32,
}

impl MmioSlot {
    /// How the guest learns of the slot: a `virtio_mmio.device=SIZE@BASE:IRQ` kernel parameter.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            layout::VIRTIO_MMIO_SIZE >> 10,
            self.base,
            self.irq
        )
    }
}

/// Hands out the virtio-mmio slots of `arch::layout` in order: slot n at
/// `VIRTIO_MMIO_BASE + n · VIRTIO_MMIO_SIZE` on IRQ `VIRTIO_MMIO_FIRST_IRQ + n`, while there are
/// I/O APIC pins for them.
#[derive(Debug, Default)]
pub(crate) struct MmioSlots {
    used: u32,
}

impl MmioSlots {
    /// The next free slot.
    pub fn allocate(&mut self) -> Result<MmioSlot> {
        if self.used >= layout::VIRTIO_MMIO_SLOTS {
            return Err(Error::TooManyVirtioDevices {
                max: layout::VIRTIO_MMIO_SLOTS,
            });
        }
        let slot = MmioSlot {
            base: layout::VIRTIO_MMIO_BASE + u64::from(self.used) * layout::VIRTIO_MMIO_SIZE,
            irq: layout::VIRTIO_MMIO_FIRST_IRQ + self.used,
        };
        self.used += 1;
        Ok(slot)
    }
}

/// What makes two disk paths the same disk: the device and inode of a file, the device number
/// of a block device (two nodes may name one device). `None` if the path cannot be read.
fn disk_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).ok()?;
    Some(if meta.file_type().is_block_device() {
        (meta.rdev(), 0)
    } else {
        (meta.dev(), meta.ino())
    })
}

/// What the device manager leaves to the running VM.
pub(crate) struct Devices {
    /// The port I/O bus.
    pub pio: Bus,
    /// The MMIO bus.
    pub mmio: Bus,
    /// The event loop, with every device's subscriber on it.
    pub event_manager: EventManager<Subscriber>,
    /// Pseudo-terminals created for console backends: (device, secondary path).
    pub ptys: Vec<(&'static str, PathBuf)>,
    /// The counters of the devices that keep some, for the control API's info.
    pub counters: Vec<DeviceCounters>,
    /// Every device with a state, in creation order (a virtio transport before its device):
    /// what a snapshot saves, and the order a restore puts the states back in.
    pub saved: Vec<Saved>,
}

/// A device whose state a snapshot holds.
pub(crate) type Saved = Arc<Mutex<dyn SaveState>>;

/// One device's counters, read on demand (the control API's info).
pub(crate) struct DeviceCounters {
    /// The guest's name for it (eth0, …).
    pub name: String,
    /// The device type.
    pub kind: &'static str,
    /// Reads the counters now, as a JSON object.
    pub read: Box<dyn Fn() -> serde_json::Value + Send>,
}

impl DeviceCounters {
    /// `{"name", "kind", "counters": {…}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "name": self.name, "kind": self.kind, "counters": (self.read)() })
    }
}

/// Creates, places and wires the VM's devices (see the module's description).
pub(crate) struct DeviceManager {
    vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    devices: Devices,
    slots: MmioSlots,
    cmdline: Vec<String>,
    /// The virtio-mmio slots in use, as (base, IRQ), for the ACPI tables.
    virtio_slots: Vec<(u64, u32)>,
    disks: usize,
    nics: usize,
    /// The files behind the disks so far ([`disk_identity`]) and their paths.
    disk_files: Vec<((u64, u64), PathBuf)>,
}

impl DeviceManager {
    /// Empty buses and an event loop for the VM `vm_fd` with guest memory `mem`.
    pub fn new(vm_fd: Arc<VmFd>, mem: GuestMemoryMmap) -> Result<Self> {
        Ok(DeviceManager {
            vm_fd,
            mem,
            devices: Devices {
                pio: Bus::new(),
                mmio: Bus::new(),
                event_manager: EventManager::new().map_err(Error::EventLoop)?,
                ptys: Vec::new(),
                counters: Vec::new(),
                saved: Vec::new(),
            },
            slots: MmioSlots::default(),
            cmdline: Vec::new(),
            virtio_slots: Vec::new(),
            disks: 0,
            nics: 0,
            disk_files: Vec::new(),
        })
    }

    /// Puts `subscriber` on the event loop.
    pub fn add_subscriber(&mut self, subscriber: Subscriber) {
        self.devices.event_manager.add_subscriber(subscriber);
    }

    /// The COM1 8250 UART on `backend`: its ports, its IRQ (irqfd) and, on the event loop, the
    /// backend's side (input into the FIFO, socket clients, the output backlog).
    pub fn add_serial_console(&mut self, backend: CharBackend) -> Result<()> {
        let chardev = open_chardev("serial", backend)?;
        if let Some(path) = chardev.pty_path() {
            self.devices.ptys.push(("serial", path.to_path_buf()));
        }
        let irq = self.irqfd(layout::SERIAL_IRQ, "register the serial irqfd")?;
        let chardev = Arc::new(Mutex::new(chardev));
        let out = Box::new(ChardevWriter(chardev.clone()));
        let serial = Arc::new(Mutex::new(
            Serial::new(irq, out).map_err(dev_err("serial"))?,
        ));
        self.devices
            .pio
            .insert(
                serial.clone(),
                u64::from(layout::SERIAL_PORT_BASE),
                u64::from(layout::SERIAL_PORT_LEN),
            )
            .map_err(dev_err("serial"))?;
        self.devices.saved.push(serial.clone());
        let input = SerialInput::new(serial, chardev).map_err(dev_err("serial input"))?;
        self.add_subscriber(Arc::new(Mutex::new(input)));
        Ok(())
    }

    /// The i8042's data and command ports (only those: port 0x61 between them is the PIT's); its
    /// reset line stops the VM through `exit`.
    pub fn add_i8042(&mut self, exit: &Arc<ExitState>) -> Result<()> {
        let i8042 = Arc::new(Mutex::new(I8042::with_trigger(ResetTrigger(exit.clone()))));
        self.devices.saved.push(i8042.clone());
        let data = u64::from(layout::I8042_DATA_PORT);
        for port in [layout::I8042_DATA_PORT, layout::I8042_COMMAND_PORT] {
            let port = u64::from(port);
            self.devices
                .pio
                .insert_at(i8042.clone(), port, 1, port - data)
                .map_err(dev_err("i8042"))?;
        }
        Ok(())
    }

    /// The user-space half of a split irqchip: the I/O APIC (its routes go to KVM's GSI routing
    /// table; its pacing timer on the event loop) and the 8254 PIT (its ports and port 0x61, channel 0 on its IRQ through an irqfd, its
    /// timer on the event loop).
    pub fn add_split_irqchip(&mut self) -> Result<()> {
        let ioapic = Arc::new(Mutex::new(Ioapic::new(Box::new(KvmRoutes(
            self.vm_fd.clone(),
        )))));
        self.devices
            .mmio
            .insert(ioapic.clone(), layout::IOAPIC_ADDR, IOAPIC_MMIO_LEN)
            .map_err(dev_err("I/O APIC"))?;
        self.devices.saved.push(ioapic.clone());
        self.add_subscriber(Arc::new(Mutex::new(IoapicTimer(ioapic))));
        let irq = self.irqfd(layout::PIT_IRQ, "register the PIT irqfd")?;
        let pit = Pit::new(irq).map_err(dev_err("PIT"))?;
        self.devices.saved.push(pit.clone());
        let (ports, speaker) = Pit::port_devices(&pit);
        let pio = &mut self.devices.pio;
        pio.insert(
            Arc::new(Mutex::new(ports)),
            u64::from(layout::PIT_PORT_BASE),
            PIT_PORT_LEN,
        )
        .map_err(dev_err("PIT"))?;
        pio.insert(
            Arc::new(Mutex::new(speaker)),
            u64::from(layout::SPEAKER_PORT),
            1,
        )
        .map_err(dev_err("PIT"))?;
        self.add_subscriber(Arc::new(Mutex::new(PitTimer(pit))));
        Ok(())
    }

    /// The ACPI platform registers (sleep control and status, reset, the GED's event selector)
    /// on their ports, the GED's IRQ (irqfd); power-off and reset stop the VM through `exit`.
    /// Returns the device, whose power button the VM presses on a shutdown request.
    pub fn add_acpi_platform(&mut self, exit: &Arc<ExitState>) -> Result<Arc<Mutex<AcpiPm>>> {
        let irq = self.irqfd(layout::ACPI_GED_IRQ, "register the ACPI GED irqfd")?;
        let exit = exit.clone();
        let pm = Arc::new(Mutex::new(AcpiPm::new(
            irq,
            Box::new(move |request| {
                exit.finish(Ok(match request {
                    PowerRequest::PowerOff => ExitReason::PowerOff,
                    PowerRequest::Reset => ExitReason::Reset,
                }))
            }),
        )));
        self.devices
            .pio
            .insert(
                pm.clone(),
                u64::from(layout::ACPI_PM_PORT_BASE),
                ACPI_PM_PORT_LEN,
            )
            .map_err(dev_err("ACPI platform registers"))?;
        self.devices.saved.push(pm.clone());
        Ok(pm)
    }

    /// The pvpanic port: a guest kernel's panic stops the VM through `exit`.
    pub fn add_pvpanic(&mut self, exit: &Arc<ExitState>) -> Result<()> {
        let exit = exit.clone();
        let pvpanic = Pvpanic::new(Box::new(move || exit.finish(Ok(ExitReason::Panic))));
        self.devices
            .pio
            .insert(
                Arc::new(Mutex::new(pvpanic)),
                u64::from(layout::PVPANIC_PORT),
                1,
            )
            .map_err(dev_err("pvpanic"))?;
        Ok(())
    }

    /// The exit device, on its port and its MMIO page: a guest's write stops the VM through `exit`
    /// with the value as the status.
    pub fn add_exit_device(&mut self, exit: &Arc<ExitState>) -> Result<()> {
        let exit = exit.clone();
        let device = Arc::new(Mutex::new(ExitDevice::new(Box::new(move |status| {
            exit.finish(Ok(ExitReason::GuestStatus(status)))
        }))));
        self.devices
            .pio
            .insert(device.clone(), u64::from(layout::EXIT_DEVICE_PORT), 1)
            .map_err(dev_err("exit device"))?;
        self.devices
            .mmio
            .insert(
                device.clone(),
                layout::EXIT_DEVICE_MMIO_ADDR,
                layout::PAGE_SIZE,
            )
            .map_err(dev_err("exit device"))?;
        self.devices.saved.push(device);
        Ok(())
    }

    /// The boot timer, the same device on its port and its MMIO page.
    pub fn add_boot_timer(&mut self) -> Result<()> {
        let timer = Arc::new(Mutex::new(BootTimer::new(crate::process_start())));
        self.devices
            .pio
            .insert(
                timer.clone(),
                u64::from(layout::BOOT_TIMER_PORT),
                BOOT_TIMER_PORT_LEN,
            )
            .map_err(dev_err("boot timer"))?;
        self.devices
            .mmio
            .insert(
                timer.clone(),
                layout::BOOT_TIMER_MMIO_ADDR,
                BOOT_TIMER_MMIO_LEN,
            )
            .map_err(dev_err("boot timer"))?;
        self.devices.saved.push(timer);
        Ok(())
    }

    /// A virtio-blk disk in the next virtio-mmio slot (/dev/vda, /dev/vdb, … in order). The same
    /// image twice (by any path, hard link or device node) is refused.
    pub fn add_block_device(&mut self, disk: &DiskConfig) -> Result<()> {
        let disk_err = |source| Error::Disk {
            path: disk.path.clone(),
            source,
        };
        // A path that cannot be read is reported by the open below.
        if let Some(identity) = disk_identity(&disk.path) {
            if let Some((_, first)) = self.disk_files.iter().find(|(id, _)| *id == identity) {
                return Err(Error::DiskTwice {
                    first: first.clone(),
                    second: disk.path.clone(),
                    dev: identity.0,
                    ino: identity.1,
                });
            }
            self.disk_files.push((identity, disk.path.clone()));
        }
        let block = Block::new(BlockConfig {
            path: disk.path.clone(),
            format: disk.format,
            read_only: disk.read_only,
            id: disk.id.clone(),
            snapshot: disk.snapshot,
            aio: disk.aio,
        })
        .map_err(disk_err)?
        .with_rate_limiter(rate_limiter(&disk.rate_limit).map_err(disk_err)?);
        let aio = if block.uses_io_uring() {
            "io_uring"
        } else {
            "synchronous I/O"
        };
        let block = Arc::new(Mutex::new(block));
        let slot = self.add_virtio_shared("virtio-blk", block.clone())?;
        self.devices.counters.push(DeviceCounters {
            name: format!("vd{}", (b'a' + (self.disks % 26) as u8) as char),
            kind: "virtio-blk",
            read: Box::new(move || {
                let block = block.lock().unwrap_or_else(|p| p.into_inner());
                let throttled = block.rate_limiter().map(|l| l.throttled_count());
                serde_json::json!({ "requests": block.stats().requests, "throttled": throttled })
            }),
        });
        step_done(&format!(
            "disk {} as /dev/vd{} ({}, {aio}) at {:#x}, IRQ {}",
            disk.path.display(),
            (b'a' + (self.disks % 26) as u8) as char,
            if disk.read_only {
                "read-only"
            } else if disk.snapshot {
                "read-write, writes thrown away at exit"
            } else {
                "read-write"
            },
            slot.base,
            slot.irq
        ));
        self.disks += 1;
        Ok(())
    }

    /// A virtio-net NIC on its tap in the next virtio-mmio slot (eth0, eth1, … in order).
    pub fn add_net_device(&mut self, nic: &NetConfig) -> Result<()> {
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
        let net = Arc::new(Mutex::new(net));
        let slot = self.add_virtio_shared("virtio-net", net.clone())?;
        self.devices.counters.push(DeviceCounters {
            name: format!("eth{}", self.nics),
            kind: "virtio-net",
            read: Box::new(move || {
                let net = net.lock().unwrap_or_else(|p| p.into_inner());
                let (rx, tx) = net.rate_limiters();
                let s = net.stats();
                serde_json::json!({
                    "rx_throttled": rx.map(|l| l.throttled_count()),
                    "tx_throttled": tx.map(|l| l.throttled_count()),
                    "rx_bytes": s.rx_bytes,
                    "rx_frames": s.rx_frames,
                    "rx_dropped": s.rx_dropped,
                    "rx_bad_chains": s.rx_bad_chains,
                    "tx_bytes": s.tx_bytes,
                    "tx_frames": s.tx_frames,
                    "tx_dropped": s.tx_dropped,
                })
            }),
        });
        step_done(&format!(
            "NIC eth{} on tap {} (MAC {}) at {:#x}, IRQ {}",
            self.nics,
            nic.tap,
            devices::virtio::net::format_mac(&mac),
            slot.base,
            slot.irq
        ));
        self.nics += 1;
        Ok(())
    }

    /// The virtio console (hvc0) on `backend` in the next virtio-mmio slot.
    pub fn add_virtio_console(&mut self, backend: CharBackend) -> Result<()> {
        let chardev = open_chardev("console", backend)?;
        let pty = chardev.pty_path().map(Path::to_path_buf);
        let console = Console::new(chardev).map_err(dev_err("console"))?;
        let (columns, rows) = console.size();
        let slot = self.add_virtio("virtio-console", console)?;
        let size = if columns > 0 {
            format!(", {columns}x{rows}")
        } else {
            String::new()
        };
        step_done(&format!(
            "virtio console (hvc0) at {:#x}, IRQ {}{size}",
            slot.base, slot.irq
        ));
        if let Some(path) = pty {
            self.devices.ptys.push(("console", path));
        }
        Ok(())
    }

    /// The virtio-vsock device for guest `config.cid`, listening at `config.socket` (on `bound`,
    /// if it was bound beforehand), in the next virtio-mmio slot.
    pub fn add_vsock_device(
        &mut self,
        config: &VsockConfig,
        bound: Option<SocketFile>,
    ) -> Result<()> {
        let mut vsock = match bound {
            Some(socket) => Vsock::with_socket(config.cid, socket),
            None => Vsock::new(config.cid, &config.socket),
        }
        .map_err(dev_err("vsock"))?;
        if config.connect_by_name {
            vsock.connect_by_name();
        }
        let slot = self.add_virtio("virtio-vsock", vsock)?;
        step_done(&format!(
            "vsock CID {} on {} at {:#x}, IRQ {}",
            config.cid,
            config.socket.display(),
            slot.base,
            slot.irq
        ));
        Ok(())
    }

    /// A virtio-fs device for `share` in the next virtio-mmio slot, with its server process
    /// started and confined (see the `share` crate).
    pub fn add_fs_device(&mut self, share: &ShareConfig) -> Result<()> {
        let server = share::spawn(&share.dir, share.read_only).map_err(|source| Error::Share {
            tag: share.tag.clone(),
            source,
        })?;
        let pid = server.child.id();
        let fs =
            Fs::new(&share.tag, server.socket, Some(server.child)).map_err(dev_err("virtio-fs"))?;
        let fs = Arc::new(Mutex::new(fs));
        let slot = self.add_virtio_shared("virtio-fs", fs.clone())?;
        self.devices.counters.push(DeviceCounters {
            name: format!("share {}", share.tag),
            kind: "virtio-fs",
            read: Box::new(move || {
                let fs = fs.lock().unwrap_or_else(|p| p.into_inner());
                let s = fs.stats();
                serde_json::json!({
                    "requests": s.requests,
                    "replies": s.replies,
                    "in_flight": fs.in_flight(),
                    "failed": s.failed,
                    "bad_chains": s.bad_chains,
                })
            }),
        });
        step_done(&format!(
            "share {} as '{}'{} (server pid {pid}) at {:#x}, IRQ {}",
            share.dir.display(),
            share.tag,
            if share.read_only { ", read-only" } else { "" },
            slot.base,
            slot.irq
        ));
        Ok(())
    }

    /// The kernel command-line entries of the devices added so far, in slot order.
    pub fn cmdline_entries(&self) -> &[String] {
        &self.cmdline
    }

    /// The virtio-mmio slots used so far, as (MMIO base, IRQ), in slot order.
    pub fn virtio_slots(&self) -> &[(u64, u32)] {
        &self.virtio_slots
    }

    /// Every device with a state so far, in creation order.
    pub fn saved(&self) -> &[Saved] {
        &self.devices.saved
    }

    /// The buses, the event loop and the ptys, for the VM to run.
    pub fn into_devices(self) -> Devices {
        self.devices
    }

    /// Puts `device` in the next virtio-mmio slot: its transport on the MMIO bus, its interrupt on
    /// the slot's IRQ (irqfd), one ioeventfd per queue on the notify register, the device on the
    /// event loop, and its `virtio_mmio.device=` entry on the command line.
    fn add_virtio<D>(&mut self, what: &'static str, device: D) -> Result<MmioSlot>
    where
        D: VirtioDevice + MutEventSubscriber + SaveState + 'static,
    {
        self.add_virtio_shared(what, Arc::new(Mutex::new(device)))
    }

    /// As [`DeviceManager::add_virtio`], for a device the caller keeps a handle to.
    fn add_virtio_shared<D>(
        &mut self,
        what: &'static str,
        device: Arc<Mutex<D>>,
    ) -> Result<MmioSlot>
    where
        D: VirtioDevice + MutEventSubscriber + SaveState + 'static,
    {
        let slot = self.slots.allocate()?;
        let transport =
            MmioTransport::new(self.mem.clone(), device.clone()).map_err(dev_err(what))?;
        self.vm_fd
            .register_irqfd(transport.irq_event(), slot.irq)
            .map_err(kvm_err("register a virtio irqfd"))?;
        let notify = IoEventAddress::Mmio(slot.base + NOTIFY_REG_OFFSET);
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            self.vm_fd
                .register_ioevent(evt, &notify, queue as u32)
                .map_err(kvm_err("register a virtio ioeventfd"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.devices
            .mmio
            .insert(transport.clone(), slot.base, layout::VIRTIO_MMIO_SIZE)
            .map_err(dev_err(what))?;
        // The transport's state first: restoring it activates the device again.
        self.devices.saved.push(transport);
        self.devices.saved.push(device.clone());
        self.add_subscriber(device);
        self.cmdline.push(slot.cmdline_entry());
        self.virtio_slots.push((slot.base, slot.irq));
        Ok(slot)
    }

    /// A new eventfd registered as the irqfd of `irq`.
    fn irqfd(&self, irq: u32, what: &'static str) -> Result<EventFd> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        self.vm_fd
            .register_irqfd(&evt, irq)
            .map_err(kvm_err(what))?;
        Ok(evt)
    }
}

fn dev_err(what: &'static str) -> impl Fn(devices::Error) -> Error {
    move |source| Error::Device { what, source }
}

/// Opens the backend of the device `name` (`"serial"` or `"console"`).
fn open_chardev(name: &'static str, backend: CharBackend) -> Result<Chardev> {
    match backend {
        CharBackend::Off => Chardev::null(name),
        CharBackend::Stdio => Chardev::stdio(name, true),
        CharBackend::Stdout => Chardev::stdio(name, false),
        CharBackend::File(path, options) => Chardev::file(name, &path, options),
        CharBackend::Pty => Chardev::pty(name),
        CharBackend::Socket(path) => Chardev::socket(name, &path),
        CharBackend::BoundSocket(socket) => Chardev::listen(name, socket),
        CharBackend::Writer(w) => Chardev::writer(name, w),
    }
    .map_err(|source| Error::Device { what: name, source })
}

/// A limiter for `config`, or none when it sets no limit.
fn rate_limiter(
    config: &RateLimitConfig,
) -> std::result::Result<Option<RateLimiter>, devices::Error> {
    if config.is_unlimited() {
        return Ok(None);
    }
    RateLimiter::new(config).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ACPI tables (arch) describe the registers the devices serve: the same offsets and values.
    #[test]
    fn acpi_tables_and_devices_agree() {
        use arch::acpi;
        use devices::legacy as dev;
        assert_eq!(u64::from(acpi::SLEEP_CONTROL_OFFSET), dev::SLEEP_CONTROL);
        assert_eq!(u64::from(acpi::SLEEP_STATUS_OFFSET), dev::SLEEP_STATUS);
        assert_eq!(u64::from(acpi::RESET_OFFSET), dev::RESET);
        assert_eq!(u64::from(acpi::GED_SELECTOR_OFFSET), dev::GED_SELECTOR);
        assert_eq!(acpi::RESET_VALUE, dev::RESET_VALUE);
        assert_eq!(acpi::S5_SLEEP_TYPE, dev::S5_SLEEP_TYPE);
        assert_eq!(acpi::SLEEP_ENABLE, dev::SLEEP_ENABLE);
        assert_eq!(acpi::GED_EVENT_POWER_BUTTON, dev::GED_EVENT_POWER_BUTTON);
        assert_eq!(acpi::PVPANIC_PANICKED, dev::PVPANIC_PANICKED);
        assert_eq!(u64::from(layout::ACPI_PM_PORT_LEN), dev::ACPI_PM_PORT_LEN);
    }

    #[test]
    fn slots_follow_the_layout_in_order() {
        let mut slots = MmioSlots::default();
        let first = slots.allocate().unwrap();
        assert_eq!(
            first,
            MmioSlot {
                base: 0xd000_0000,
                irq: 5
            }
        );
        let second = slots.allocate().unwrap();
        assert_eq!(
            second,
            MmioSlot {
                base: 0xd000_1000,
                irq: 6
            }
        );
        assert_eq!(first.cmdline_entry(), "virtio_mmio.device=4K@0xd0000000:5");
        assert_eq!(second.cmdline_entry(), "virtio_mmio.device=4K@0xd0001000:6");
    }

    #[test]
    fn slots_end_with_the_io_apic_pins() {
        let mut slots = MmioSlots::default();
        let all: Vec<MmioSlot> = (0..19).map(|_| slots.allocate().unwrap()).collect();
        assert_eq!(all.last().map(|s| s.irq), Some(layout::IOAPIC_LAST_IRQ));
        let err = slots.allocate().unwrap_err();
        assert!(matches!(err, Error::TooManyVirtioDevices { max: 19 }));
        assert_eq!(err.to_string(), "too many virtio devices: at most 19 fit");
        // Exhausted stays exhausted.
        assert!(slots.allocate().is_err());
    }

    #[test]
    fn slots_do_not_overlap_the_serial_or_pit_irqs() {
        let mut slots = MmioSlots::default();
        while let Ok(slot) = slots.allocate() {
            assert_ne!(slot.irq, layout::SERIAL_IRQ);
            assert_ne!(slot.irq, layout::PIT_IRQ);
        }
    }

    /// A device manager on a fresh VM with a split irqchip, or None where there is no usable KVM.
    fn manager() -> Option<DeviceManager> {
        let kvm = kvm_ioctls::Kvm::new().ok()?;
        let vm_fd = kvm.create_vm().ok()?;
        crate::kvm::create_irqchip(&vm_fd, crate::IrqChip::Split).ok()?;
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).ok()?;
        DeviceManager::new(Arc::new(vm_fd), mem).ok()
    }

    #[test]
    fn virtio_devices_take_the_slots_in_order_and_say_so_on_the_cmdline() {
        let Some(mut manager) = manager() else { return };
        let dir = std::env::temp_dir().join(format!("vmm-dm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["a.img", "b.img"] {
            let path = dir.join(name);
            std::fs::write(&path, vec![0u8; 4096]).unwrap();
            let disk: DiskConfig = path.to_str().unwrap().parse().unwrap();
            manager.add_block_device(&disk).unwrap();
        }
        assert_eq!(
            manager.cmdline_entries(),
            [
                "virtio_mmio.device=4K@0xd0000000:5",
                "virtio_mmio.device=4K@0xd0001000:6"
            ]
        );
        let devices = manager.into_devices();
        for base in [0xd000_0000, 0xd000_1000] {
            let mut magic = [0u8; 4];
            assert!(devices.mmio.read(base, &mut magic));
            assert_eq!(&magic, b"virt", "slot {base:#x}");
        }
        assert!(!devices.mmio.read(0xd000_2000, &mut [0; 4]));
        drop(devices);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn devices_sit_where_the_layout_says() {
        // Needs /dev/kvm for the irqfds; skipped where there is none.
        let Some(mut manager) = manager() else { return };
        manager.add_serial_console(CharBackend::Off).unwrap();
        manager.add_split_irqchip().unwrap();
        manager.add_boot_timer().unwrap();
        let devices = manager.into_devices();
        for port in [0x3f8, 0x3ff, 0x40, 0x43, 0x61, 0x440] {
            assert!(devices.pio.read(port, &mut [0]), "port {port:#x}");
        }
        for addr in [0xfec0_0000, 0xc000_0000] {
            assert!(devices.mmio.read(addr, &mut [0; 4]), "MMIO {addr:#x}");
        }
        assert!(!devices.pio.read(0x3f7, &mut [0]));
    }
}
