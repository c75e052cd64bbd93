//! Snapshots of a paused VM and the restore of one (DESIGN.md, "Snapshots").
//!
//! Taking one ([`take`], on the control API's thread, the VM paused): the event loop is held
//! inside a handler of its own ([`Quiesce`]) after every device finished its host work, each
//! parked vCPU saves its own state on its own thread, the VM's KVM state and every device's
//! state are saved, guest memory goes to the memory file and the state to the state file (the
//! crate `snapshot` owns the file format). The event loop is let go at the end; the VM stays
//! paused.
//!
//! Restoring ([`crate::Vm::restore`]): the VM is built again from the [`Machine`] the snapshot
//! records (with the backends the caller gives: new disk files, taps, sockets), its memory mapped
//! privately from the memory file, no kernel loaded, then the states are put back: devices in
//! creation order, the VM's KVM state, each vCPU's.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use devices::seccomp::SyscallRule;
use devices::GuestMemoryMmap;
use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{DiskConfig, IrqChip, NetConfig, ShareConfig, VsockConfig};
use crate::device_manager::{Saved, Subscriber};
use crate::error::{Error, Result};
use crate::vcpu::Pause;

/// The version a snapshot records: only the same build's version restores it.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long [`Quiesce::hold`] waits for the event loop.
const HOLD_TIMEOUT: Duration = Duration::from_secs(2);

/// What the VM was built with, as a restore must build it again: the same memory, vCPUs,
/// interrupt controllers and devices in the same slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The irqchip chosen (never `Auto`).
    pub irqchip: IrqChip,
    /// ACPI tables and platform devices.
    pub acpi: bool,
    /// Whether the guest listens to the power button (it was not booted with `acpi=off`).
    pub guest_acpi: bool,
    /// The boot timer device.
    pub boot_timer: bool,
    /// The virtio console.
    pub console: bool,
    /// The disks, in slot order.
    pub disks: Vec<DiskConfig>,
    /// The NICs, in slot order.
    pub nets: Vec<NetConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// Shared host directories (a VM with any is never saved: see [`take`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareConfig>,
}

/// One device's saved state, in creation order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedDevice {
    /// The device's name (checked on restore).
    name: String,
    /// Its [`devices::persist::Versioned`] state.
    state: serde_json::Value,
}

/// The state file's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VmSnapshot {
    vmm_version: String,
    machine: Machine,
    vm: arch::state::VmState,
    vcpus: Vec<arch::state::VcpuState>,
    devices: Vec<SavedDevice>,
}

/// A snapshot read from its directory and checked, ready to restore.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    state: VmSnapshot,
}

impl Snapshot {
    /// Reads the state file of the snapshot in `dir` and checks its format, checksum and
    /// version, and that the memory file is there with the right length.
    pub fn open(dir: &Path) -> Result<Snapshot> {
        let value: serde_json::Value = snapshot::read_state(dir)?;
        let found = value
            .get("vmm_version")
            .and_then(|v| v.as_str())
            .unwrap_or("(none)");
        if found != VMM_VERSION {
            return Err(Error::SnapshotVersion {
                dir: dir.into(),
                found: found.into(),
                expected: VMM_VERSION.into(),
            });
        }
        let state: VmSnapshot =
            serde_json::from_value(value).map_err(|source| snapshot::Error::Body {
                path: dir.join(snapshot::STATE_FILE),
                source,
            })?;
        let snap = Snapshot {
            dir: dir.into(),
            state,
        };
        if snap.state.vcpus.len() != usize::from(snap.state.machine.vcpus) {
            return Err(snap.mismatch(format!(
                "the state holds {} vCPUs, its machine has {}",
                snap.state.vcpus.len(),
                snap.state.machine.vcpus
            )));
        }
        // Checked now, so that a missing memory file is reported before anything is built.
        drop(snapshot::open_memory(dir, snap.state.machine.memory_bytes)?);
        Ok(snap)
    }

    /// The machine the snapshot was taken of.
    pub fn machine(&self) -> &Machine {
        &self.state.machine
    }

    /// The snapshot's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn mismatch(&self, why: String) -> Error {
        Error::RestoreMismatch {
            dir: self.dir.clone(),
            why,
        }
    }

    /// The memory file, opened and checked again for mapping. Not kept open from
    /// [`Snapshot::open`]: a jailed VMM is built after the jail closed every descriptor but
    /// 0–2 (tests/jail.rs, `boot_jail_restores_a_snapshot`).
    pub(crate) fn memory_file(&self) -> Result<std::fs::File> {
        Ok(snapshot::open_memory(
            &self.dir,
            self.state.machine.memory_bytes,
        )?)
    }

    /// Puts the devices' states back, in creation order.
    pub(crate) fn restore_devices(&self, saved: &[Saved]) -> Result<()> {
        let states = &self.state.devices;
        if states.len() != saved.len() {
            return Err(self.mismatch(format!(
                "the snapshot holds {} device states, the VM built from it has {} devices",
                states.len(),
                saved.len()
            )));
        }
        for (device, state) in saved.iter().zip(states) {
            let mut device = device.lock().unwrap_or_else(|p| p.into_inner());
            if device.state_name() != state.name {
                return Err(self.mismatch(format!(
                    "the snapshot's next device is {}, the VM's is {}",
                    state.name,
                    device.state_name()
                )));
            }
            device
                .restore_json(state.state.clone())
                .map_err(|source| Error::RestoreDevice {
                    dir: self.dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The VM's KVM state.
    pub(crate) fn vm_state(&self) -> &arch::state::VmState {
        &self.state.vm
    }

    /// Each vCPU's state, by index.
    pub(crate) fn vcpu_states(&self) -> &[arch::state::VcpuState] {
        &self.state.vcpus
    }
}

/// What the control API's thread needs to take a snapshot.
pub(crate) struct SnapshotContext {
    pub vm_fd: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub saved: Vec<Saved>,
    pub machine: Machine,
    pub quiesce: Quiesce,
}

/// Takes a snapshot of the paused VM into `dir` (made 0700 if missing; a snapshot there is
/// replaced). Returns the bytes of guest memory written.
pub(crate) fn take(ctx: &SnapshotContext, pause: &Pause, dir: &Path) -> Result<u64> {
    if let Some(disk) = ctx.machine.disks.iter().find(|d| d.snapshot) {
        return Err(Error::Snapshot(format!(
            "disk '{}' has snapshot=on: its writes live only in a temporary overlay that a snapshot cannot hold",
            disk.path.display()
        )));
    }
    if let Some(share) = ctx.machine.shares.first() {
        return Err(Error::Snapshot(format!(
            "the VM shares {} (tag '{}'): what the guest holds of a share (open files, node ids) lives in its server, which a snapshot cannot hold",
            share.dir.display(),
            share.tag
        )));
    }
    let _held = ctx.quiesce.hold()?;
    let vcpus = pause.save_vcpus(usize::from(ctx.machine.vcpus))?;
    let vm = arch::state::VmState::save(&ctx.vm_fd)
        .map_err(|e| Error::Snapshot(format!("cannot save the VM's KVM state: {e}")))?;
    let mut devices = Vec::with_capacity(ctx.saved.len());
    for device in &ctx.saved {
        let device = device.lock().unwrap_or_else(|p| p.into_inner());
        let state = device
            .save_json()
            .map_err(|e| Error::Snapshot(format!("cannot save {}: {e}", device.state_name())))?;
        devices.push(SavedDevice {
            name: device.state_name().into(),
            state,
        });
    }
    let dir = snapshot::SnapshotDir::create(dir)?;
    let mut memory = dir.memory_writer()?;
    let mut buf = vec![0u8; 1 << 20];
    for region in ctx.mem.iter() {
        let (start, len) = (region.start_addr(), region.len());
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            ctx.mem
                .read_slice(&mut buf[..n], vm_memory::GuestAddress(start.0 + done))
                .map_err(|e| Error::Snapshot(format!("cannot read guest memory: {e}")))?;
            memory.write(&buf[..n])?;
            done += n as u64;
        }
    }
    let bytes = memory.commit()?;
    let state = VmSnapshot {
        vmm_version: VMM_VERSION.into(),
        machine: ctx.machine.clone(),
        vm,
        vcpus,
        devices,
    };
    dir.write_state(&state)?;
    log::info!(
        "snapshot of {} MiB written to {}",
        bytes >> 20,
        dir.path().display()
    );
    Ok(bytes)
}

/// The snapshot thread's system calls (see `seccomp.rs`), besides openat with
/// [`SNAPSHOT_OPEN_FLAGS`].
pub(crate) fn snapshot_syscalls() -> Vec<SyscallRule> {
    vec![
        SyscallRule::Any(libc::SYS_geteuid),
        SyscallRule::Any(libc::SYS_getdents64),
        SyscallRule::Any(libc::SYS_mkdir),
        SyscallRule::Any(libc::SYS_mkdirat),
        SyscallRule::Any(libc::SYS_lseek),
        SyscallRule::Any(libc::SYS_ftruncate),
        SyscallRule::Any(libc::SYS_fsync),
        SyscallRule::Any(libc::SYS_renameat),
        SyscallRule::Any(libc::SYS_unlinkat),
        SyscallRule::Any(libc::SYS_fstat),
        SyscallRule::Any(libc::SYS_statx),
        SyscallRule::Any(libc::SYS_newfstatat),
        SyscallRule::Ioctl(crate::kvm_nr::KVM_GET_IRQCHIP()),
        SyscallRule::Ioctl(crate::kvm_nr::KVM_GET_PIT2()),
        SyscallRule::Ioctl(crate::kvm_nr::KVM_GET_CLOCK()),
    ]
}

/// The only flags the snapshot thread may open files with: its directory, and a new file in it.
pub(crate) const SNAPSHOT_OPEN_FLAGS: [u64; 2] = [
    snapshot::DIR_OPEN_FLAGS as u64,
    snapshot::FILE_CREATE_FLAGS as u64,
];

/// One request to the snapshot thread: the directory, and where the answer goes.
type Request = (PathBuf, mpsc::SyncSender<Result<u64>>);

/// The control API's handle on the snapshot thread, which takes snapshots ([`take`]) under a
/// filter of its own: the API thread, which reads what clients send, opens no file and makes no
/// KVM call. The thread ends when this handle is dropped.
pub(crate) struct Snapshotter {
    requests: mpsc::Sender<Request>,
}

impl Snapshotter {
    /// Starts the thread. It installs `filter` first thing; the receiver hears once it has (or
    /// has ended).
    pub(crate) fn start(
        ctx: SnapshotContext,
        pause: Arc<Pause>,
        filter: Option<seccompiler::BpfProgram>,
    ) -> Result<(Snapshotter, mpsc::Receiver<()>)> {
        let (requests, incoming) = mpsc::channel::<Request>();
        let (filtered, ready) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                if let Some(program) = filter {
                    let kind = crate::seccomp::ThreadKind::Snapshot;
                    if let Err(e) = crate::seccomp::apply(kind, &program, "snapshot") {
                        log::error!("snapshot thread: {e}; snapshots cannot be taken");
                        return;
                    }
                }
                let _ = filtered.send(());
                for (dir, answer) in incoming {
                    let _ = answer.send(take(&ctx, &pause, &dir));
                }
            })
            .map_err(|source| Error::Thread {
                name: "snapshot".into(),
                source,
            })?;
        Ok((Snapshotter { requests }, ready))
    }

    /// Takes a snapshot into `dir` on the snapshot thread and waits for it.
    pub(crate) fn take(&self, dir: PathBuf) -> Result<u64> {
        let (answer, result) = mpsc::sync_channel(1);
        let gone = || Error::Snapshot("the snapshot thread is not running".into());
        self.requests.send((dir, answer)).map_err(|_| gone())?;
        result.recv().map_err(|_| gone())?
    }
}

/// Where the event loop is in a [`Quiesce::hold`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// Running.
    Free,
    /// Asked to stop.
    Asked,
    /// Stopped inside its handler, devices prepared.
    Held,
}

/// Holds the event loop still while a snapshot is written: the API thread asks, the event loop's
/// [`QuiesceWatcher`] prepares every device ([`devices::persist::Persist::prepare_save`]) and
/// waits inside its handler until the returned guard is dropped. No device then moves guest
/// memory or its own state.
#[derive(Clone)]
pub(crate) struct Quiesce {
    evt: Arc<EventFd>,
    state: Arc<(Mutex<Hold>, Condvar)>,
}

impl Quiesce {
    pub(crate) fn new() -> Result<Quiesce> {
        Ok(Quiesce {
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?),
            state: Arc::new((Mutex::new(Hold::Free), Condvar::new())),
        })
    }

    /// The event loop's side, to put on it.
    pub(crate) fn watcher(&self, saved: Vec<Saved>) -> Subscriber {
        Arc::new(Mutex::new(QuiesceWatcher {
            quiesce: self.clone(),
            saved,
        }))
    }

    /// Stops the event loop until the guard is dropped.
    pub(crate) fn hold(&self) -> Result<HoldGuard<'_>> {
        let (lock, changed) = &*self.state;
        let mut hold = lock.lock().unwrap_or_else(|p| p.into_inner());
        *hold = Hold::Asked;
        self.evt
            .write(1)
            .map_err(|e| Error::Snapshot(format!("cannot wake the event loop: {e}")))?;
        let (mut hold, timeout) = changed
            .wait_timeout_while(hold, HOLD_TIMEOUT, |h| *h == Hold::Asked)
            .unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() && *hold == Hold::Asked {
            *hold = Hold::Free;
            return Err(Error::Snapshot(
                "the event loop did not stop within 2 s".into(),
            ));
        }
        Ok(HoldGuard(self))
    }
}

/// The event loop stays held while this lives.
pub(crate) struct HoldGuard<'a>(&'a Quiesce);

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        let (lock, changed) = &*self.0.state;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = Hold::Free;
        changed.notify_all();
    }
}

/// The event loop's side of [`Quiesce`].
struct QuiesceWatcher {
    quiesce: Quiesce,
    saved: Vec<Saved>,
}

impl MutEventSubscriber for QuiesceWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.quiesce.evt.read();
        let (lock, changed) = &*self.quiesce.state;
        let mut hold = lock.lock().unwrap_or_else(|p| p.into_inner());
        if *hold != Hold::Asked {
            return;
        }
        for device in &self.saved {
            device.lock().unwrap_or_else(|p| p.into_inner()).prepare();
        }
        *hold = Hold::Held;
        changed.notify_all();
        while *hold == Hold::Held {
            hold = changed.wait(hold).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.quiesce.evt.as_ref(), EventSet::IN)) {
            log::error!("cannot watch snapshot requests: {e:?}");
        }
    }
}
