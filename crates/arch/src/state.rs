//! Saving and restoring the KVM state of a vCPU and of a VM, for snapshots.
//!
//! [`VcpuState`] holds what KVM keeps for one x86 vCPU: registers, system registers, FPU, XSAVE
//! area and XCRs, the MSRs KVM reports, the local APIC, pending events, the MP state and the debug
//! registers. [`VmState`] holds what KVM keeps for the whole VM: the in-kernel irqchip (both PICs
//! and the I/O APIC) and PIT when the VM has them, and the KVM clock. Each is a plain serde struct
//! whose shape is versioned ([`VcpuState::VERSION`], [`VmState::VERSION`]); restoring checks the
//! version first.
//!
//! Restore into a VM created the same way (memory, irqchip mode, CPUID on every vCPU): the VM's
//! state first, then every vCPU's.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use log::debug;
use serde::{Deserialize, Serialize};

use crate::msr::MSR_IA32_TSC;
use crate::{Error, Result};

/// IA32_APIC_BASE: saved in the system registers (`apic_base`), not with the MSRs.
const MSR_IA32_APIC_BASE: u32 = 0x1b;

fn vcpu_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Vcpu { what, source }
}

fn vm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Vm { what, source }
}

/// The legacy FPU state (KVM_GET_FPU), field for field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// x87 registers ST0–ST7.
    pub fpr: [[u8; 16]; 8],
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftwx: u8,
    /// Last instruction's opcode.
    pub last_opcode: u16,
    /// Last instruction pointer.
    pub last_ip: u64,
    /// Last data pointer.
    pub last_dp: u64,
    /// XMM0–XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control and status.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// The MSRs to save for every vCPU: those KVM_GET_MSR_INDEX_LIST reports (the TSC among them),
/// less IA32_APIC_BASE, which the system registers carry.
pub fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>> {
    let list = kvm.get_msr_index_list().map_err(|source| Error::Kvm {
        what: "KVM_GET_MSR_INDEX_LIST",
        source,
    })?;
    Ok(list
        .as_slice()
        .iter()
        .copied()
        .filter(|&i| i != MSR_IA32_APIC_BASE)
        .collect())
}

/// A vCPU's KVM state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    /// [`VcpuState::VERSION`] of the build that saved it.
    pub version: u16,
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87 and SSE state.
    pub fpu: FpuState,
    /// The XSAVE area (KVM_GET_XSAVE's 4 KiB), when KVM has XSAVE.
    pub xsave: Option<Vec<u32>>,
    /// The extended control registers (XCR0), when KVM has them.
    pub xcrs: Option<kvm_xcrs>,
    /// Every readable MSR of the list given to [`VcpuState::save`], in its order.
    pub msrs: Vec<kvm_msr_entry>,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs and SMIs, and the interrupt shadow.
    pub events: kvm_vcpu_events,
    /// Running, halted, waiting for INIT or SIPI.
    pub mp_state: kvm_mp_state,
    /// DR0–DR3, DR6, DR7.
    pub debug_regs: kvm_debugregs,
}

impl VcpuState {
    /// The version of this struct's shape; bump it on any change.
    pub const VERSION: u16 = 1;

    /// Saves `vcpu`'s state, with the MSRs of `msr_indices` (see [`msrs_to_save`]) that KVM can
    /// read for this vCPU (one it cannot read is left out and logged at debug level).
    pub fn save(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState> {
        let xsave = match vcpu.get_xsave() {
            Ok(x) => Some(x.region.to_vec()),
            Err(e) if e.errno() == libc::ENXIO || e.errno() == libc::EINVAL => {
                debug!("KVM_GET_XSAVE: {e}; XSAVE state not saved");
                None
            }
            Err(e) => return Err(vcpu_err("KVM_GET_XSAVE")(e)),
        };
        let xcrs = match vcpu.get_xcrs() {
            Ok(x) => Some(x),
            Err(e) if e.errno() == libc::ENXIO || e.errno() == libc::EINVAL => {
                debug!("KVM_GET_XCRS: {e}; XCRs not saved");
                None
            }
            Err(e) => return Err(vcpu_err("KVM_GET_XCRS")(e)),
        };
        Ok(VcpuState {
            version: Self::VERSION,
            regs: vcpu.get_regs().map_err(vcpu_err("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(vcpu_err("KVM_GET_SREGS"))?,
            fpu: FpuState::from(&vcpu.get_fpu().map_err(vcpu_err("KVM_GET_FPU"))?),
            xsave,
            xcrs,
            msrs: read_msrs(vcpu, msr_indices)?,
            lapic: settle_expired_timer(vcpu.get_lapic().map_err(vcpu_err("KVM_GET_LAPIC"))?),
            events: vcpu
                .get_vcpu_events()
                .map_err(vcpu_err("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu.get_mp_state().map_err(vcpu_err("KVM_GET_MP_STATE"))?,
            debug_regs: vcpu
                .get_debug_regs()
                .map_err(vcpu_err("KVM_GET_DEBUGREGS"))?,
        })
    }

    /// Puts the state back into `vcpu`, created with the same CPUID as the saved one.
    ///
    /// The order matters to KVM:
    /// * the system registers before the local APIC: setting `apic_base` can reset the APIC
    ///   (and switches x2APIC mode, which changes how its registers read);
    /// * the XCRs before the XSAVE area, so that the components the area holds are enabled, and
    ///   the XSAVE area after the FPU, because it holds the same x87/SSE state and is the more
    ///   complete copy (some hosts' KVM_GET_FPU reads MXCSR as 0 and KVM_SET_FPU ignores it:
    ///   DESIGN.md, "State hooks");
    /// * the local APIC before the MSRs: a write to IA32_TSC_DEADLINE is dropped unless the
    ///   APIC timer is in TSC-deadline mode; and among the MSRs the TSC first, since the
    ///   deadline counts in TSC ticks;
    /// * the MP state and then the events last: setting the registers clears a pending
    ///   exception, and setting the APIC can change what is pending, so the events saved are
    ///   put back once nothing else will touch them.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<()> {
        check_version("vCPU", self.version, Self::VERSION)?;
        vcpu.set_sregs(&self.sregs)
            .map_err(vcpu_err("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs)
            .map_err(vcpu_err("KVM_SET_REGS"))?;
        vcpu.set_fpu(&kvm_fpu::from(&self.fpu))
            .map_err(vcpu_err("KVM_SET_FPU"))?;
        if let Some(xcrs) = &self.xcrs {
            vcpu.set_xcrs(xcrs).map_err(vcpu_err("KVM_SET_XCRS"))?;
        }
        if let Some(region) = &self.xsave {
            let mut xsave = kvm_xsave::default();
            if region.len() != xsave.region.len() {
                return Err(Error::StateMismatch {
                    what: "vCPU",
                    why: format!(
                        "XSAVE area of {} words, KVM_SET_XSAVE takes {}",
                        region.len(),
                        xsave.region.len()
                    ),
                });
            }
            xsave.region.copy_from_slice(region);
            // SAFETY: `xsave` is a whole 4 KiB kvm_xsave; KVM_SET_XSAVE reads no more than that,
            // as no larger XSAVE buffer (KVM_CAP_XSAVE2) was enabled for this vCPU.
            unsafe { vcpu.set_xsave(&xsave) }.map_err(vcpu_err("KVM_SET_XSAVE"))?;
        }
        vcpu.set_debug_regs(&self.debug_regs)
            .map_err(vcpu_err("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic)
            .map_err(vcpu_err("KVM_SET_LAPIC"))?;
        write_msrs(vcpu, &self.msrs)?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(vcpu_err("KVM_SET_MP_STATE"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(vcpu_err("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

/// Local APIC registers (offsets into `kvm_lapic_state::regs`).
const APIC_ISR: usize = 0x100;
const APIC_IRR: usize = 0x200;
const APIC_LVTT: usize = 0x320;
const APIC_TMICT: usize = 0x380;
const APIC_TMCCT: usize = 0x390;

/// A saved one-shot APIC timer that has expired and whose interrupt the saved registers already
/// hold (in the IRR or the ISR) gets an initial count of 0. KVM_SET_LAPIC restarts an expired
/// one-shot timer for a whole period (it reads a current count of 0 as "not started"), which
/// would raise that interrupt a second time in the restored guest. An expired timer whose
/// interrupt is in neither register (delivered and acknowledged, or still inside KVM) keeps its
/// count: one interrupt too many is what the guest might then see, never one too few.
fn settle_expired_timer(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    use crate::regs::{lapic_reg, set_lapic_reg};
    let lvtt = lapic_reg(&lapic, APIC_LVTT);
    let one_shot = (lvtt >> 17) & 0b11 == 0;
    let expired = lapic_reg(&lapic, APIC_TMICT) != 0 && lapic_reg(&lapic, APIC_TMCCT) == 0;
    let vector = (lvtt & 0xff) as usize;
    // Bit `vector` of a 256-bit register kept as eight 32-bit words 16 bytes apart.
    let raised =
        |base: usize| lapic_reg(&lapic, base + (vector / 32) * 16) & (1 << (vector % 32)) != 0;
    if one_shot && expired && (raised(APIC_IRR) || raised(APIC_ISR)) {
        set_lapic_reg(&mut lapic, APIC_TMICT, 0);
    }
    lapic
}

/// Reads the MSRs of `indices` that KVM can read: KVM_GET_MSRS stops at the first MSR it cannot
/// read, which is skipped.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| Error::MsrList {
            count: entries.len(),
            reason: format!("{e:?}"),
        })?;
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(vcpu_err("KVM_GET_MSRS"))?
            .min(batch.len());
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        if read < batch.len() {
            debug!("MSR {:#x} cannot be read; not saved", batch[read]);
            rest = &rest[read + 1..];
        } else {
            rest = &rest[read..];
        }
    }
    Ok(saved)
}

/// Writes `entries`, the TSC first; fails naming the first MSR KVM refuses.
fn write_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<()> {
    let mut ordered: Vec<kvm_msr_entry> = entries
        .iter()
        .filter(|e| e.index == MSR_IA32_TSC)
        .copied()
        .collect();
    ordered.extend(entries.iter().filter(|e| e.index != MSR_IA32_TSC));
    for batch in ordered.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(batch).map_err(|e| Error::MsrList {
            count: batch.len(),
            reason: format!("{e:?}"),
        })?;
        let written = vcpu.set_msrs(&msrs).map_err(vcpu_err("KVM_SET_MSRS"))?;
        if written < batch.len() {
            return Err(Error::MsrRestore {
                index: batch[written].index,
                value: batch[written].data,
            });
        }
    }
    Ok(())
}

fn check_version(what: &'static str, found: u16, expected: u16) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::StateVersion {
            what,
            found,
            expected,
        })
    }
}

/// The VM-wide KVM state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// [`VmState::VERSION`] of the build that saved it.
    pub version: u16,
    /// The in-kernel PIC master, PIC slave and I/O APIC (KVM_GET_IRQCHIP), in that order; none
    /// for a VM without the full in-kernel irqchip (a split irqchip keeps them in user space).
    pub irqchip: Option<Vec<kvm_irqchip>>,
    /// The in-kernel PIT, for a VM that has one.
    pub pit: Option<kvm_pit_state2>,
    /// The KVM clock (the guest's kvmclock time base).
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("version", &self.version)
            .field(
                "irqchip",
                &self
                    .irqchip
                    .as_ref()
                    .map(|c| c.iter().map(|c| c.chip_id).collect::<Vec<_>>()),
            )
            .field("pit", &self.pit)
            .field("clock", &self.clock)
            .finish()
    }
}

/// The irqchips of KVM_GET_IRQCHIP, in the order they are saved.
const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

impl VmState {
    /// The version of this struct's shape; bump it on any change.
    pub const VERSION: u16 = 1;

    /// Saves `vm`'s state. A VM without the in-kernel irqchip or PIT (KVM answers ENXIO) saves
    /// none.
    pub fn save(vm: &VmFd) -> Result<VmState> {
        let mut irqchip = Some(Vec::with_capacity(CHIPS.len()));
        for chip_id in CHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            match vm.get_irqchip(&mut chip) {
                Ok(()) => {
                    if let Some(chips) = irqchip.as_mut() {
                        chips.push(chip);
                    }
                }
                Err(e) if e.errno() == libc::ENXIO => {
                    irqchip = None;
                    break;
                }
                Err(e) => return Err(vm_err("KVM_GET_IRQCHIP")(e)),
            }
        }
        let pit = match vm.get_pit2() {
            Ok(pit) => Some(pit),
            Err(e) if e.errno() == libc::ENXIO => None,
            Err(e) => return Err(vm_err("KVM_GET_PIT2")(e)),
        };
        Ok(VmState {
            version: Self::VERSION,
            irqchip,
            pit,
            clock: vm.get_clock().map_err(vm_err("KVM_GET_CLOCK"))?,
        })
    }

    /// Puts the state back into `vm`, created the same way (an irqchip and PIT where the saved
    /// VM had them), before the vCPUs' states. The irqchip goes first, so that the PIT's and
    /// the clock's interrupts find their routes. The clock restarts from the saved value: the
    /// guest sees no time pass between save and restore (KVM's realtime correction is not asked
    /// for). KVM reloads each in-kernel PIT counter from its initial count.
    pub fn restore(&self, vm: &VmFd) -> Result<()> {
        check_version("VM", self.version, Self::VERSION)?;
        if let Some(chips) = &self.irqchip {
            if chips.iter().map(|c| c.chip_id).ne(CHIPS) {
                return Err(Error::StateMismatch {
                    what: "VM",
                    why: format!(
                        "irqchips {:?}, expected {CHIPS:?}",
                        chips.iter().map(|c| c.chip_id).collect::<Vec<_>>()
                    ),
                });
            }
            for chip in chips {
                vm.set_irqchip(chip).map_err(vm_err("KVM_SET_IRQCHIP"))?;
            }
        }
        if let Some(pit) = &self.pit {
            vm.set_pit2(pit).map_err(vm_err("KVM_SET_PIT2"))?;
        }
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(vm_err("KVM_SET_CLOCK"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_one_shot_timer_whose_interrupt_is_raised_is_not_restarted() {
        use crate::regs::{lapic_reg, set_lapic_reg};
        let timer = |lvtt: u32, tmcct: u32, irr: bool, isr: bool| {
            let mut lapic = kvm_lapic_state::default();
            set_lapic_reg(&mut lapic, APIC_LVTT, lvtt);
            set_lapic_reg(&mut lapic, APIC_TMICT, 100_000);
            set_lapic_reg(&mut lapic, APIC_TMCCT, tmcct);
            // Vector 0x40: word 2 of each register, bit 0.
            set_lapic_reg(&mut lapic, APIC_IRR + 0x20, u32::from(irr));
            set_lapic_reg(&mut lapic, APIC_ISR + 0x20, u32::from(isr));
            lapic_reg(&settle_expired_timer(lapic), APIC_TMICT)
        };
        // Expired, its interrupt in the IRR or the ISR: not started again.
        assert_eq!(timer(0x40, 0, true, false), 0);
        assert_eq!(timer(0x40, 0, false, true), 0);
        // Still counting, expired with nothing raised, periodic or TSC-deadline: kept.
        assert_eq!(timer(0x40, 5, true, false), 100_000);
        assert_eq!(timer(0x40, 0, false, false), 100_000);
        assert_eq!(timer(0x2_0040, 0, true, false), 100_000);
        assert_eq!(timer(0x4_0040, 0, true, false), 100_000);
        // Another vector raised: kept.
        assert_eq!(timer(0x41, 0, true, true), 100_000);
    }

    #[test]
    fn fpu_state_converts_both_ways_and_through_json() {
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x1234,
            ftwx: 0x81,
            last_opcode: 0x7ff,
            last_ip: 0xffff_8000_0000_1000,
            last_dp: 0x2000,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fpu.fpr[7] = [0xab; 16];
        fpu.xmm[15] = [0xcd; 16];
        let state = FpuState::from(&fpu);
        let text = serde_json::to_string(&state).unwrap();
        let back: FpuState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
        assert_eq!(kvm_fpu::from(&back), fpu);
    }

    #[test]
    fn another_version_is_refused() {
        assert!(check_version("vCPU", 1, 1).is_ok());
        let err = check_version("VM", 2, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "saved VM state has version 2, this build reads version 1"
        );
    }
}
