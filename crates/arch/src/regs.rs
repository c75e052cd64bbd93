//! vCPU state before the first `KVM_RUN`: FPU, MSRs, segment/control registers, general
//! registers and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, GuestAddress};

use crate::gdt::{
    boot_gdt, segment_from_descriptor, write_gdt_idt, CODE_INDEX, DATA_INDEX, GDT_LIMIT, IDT_LIMIT,
    TSS_INDEX,
};
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PVH_INFO_START, ZERO_PAGE_START,
};
use crate::msr::{boot_msrs, msrs_from, BOOT_MSRS};
use crate::paging::write_identity_page_tables;
use crate::{Error, GuestMemoryMmap, Result};

/// CR0: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type (hard-wired to 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS: the reserved bit 1 that is always set.
pub const RFLAGS_RESERVED: u64 = 0x2;

/// FPU control word after FNINIT.
pub const FPU_FCW: u16 = 0x37f;
/// MXCSR after reset.
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// Local APIC LVT LINT0 register offset.
const APIC_LVT0: usize = 0x350;
/// Local APIC LVT LINT1 register offset.
const APIC_LVT1: usize = 0x360;
/// LVT delivery modes.
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// How the vCPU enters the guest kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh {
        /// Entry point (XEN_ELFNOTE_PHYS32_ENTRY).
        entry: GuestAddress,
    },
    /// Linux 64-bit boot protocol: long mode, identity-mapped first 1 GiB, RSI = zero page.
    Linux64 {
        /// 64-bit entry point.
        entry: GuestAddress,
    },
}

impl BootEntry {
    /// Whether the vCPU starts in long mode.
    pub fn long_mode(&self) -> bool {
        matches!(self, BootEntry::Linux64 { .. })
    }

    /// The entry point.
    pub fn entry(&self) -> GuestAddress {
        match self {
            BootEntry::Pvh { entry } | BootEntry::Linux64 { entry } => *entry,
        }
    }
}

fn vcpu_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Vcpu { what, source }
}

/// FPU state after FNINIT with SSE defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

/// Sets the FPU to its boot state ([`boot_fpu`]).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    vcpu.set_fpu(&boot_fpu()).map_err(vcpu_err("KVM_SET_FPU"))
}

/// Setup for an application processor of a guest that starts its APs itself (INIT/SIPI, as
/// Linux does): FPU, MSRs and LAPIC LINT pins; its registers are left to the SIPI.
pub fn setup_ap_vcpu(vcpu: &VcpuFd) -> Result<()> {
    setup_fpu(vcpu)?;
    setup_msrs(vcpu)?;
    set_lint(vcpu)
}

/// Sets the boot MSRs. KVM stops at the first MSR it refuses; those are retried one by one
/// and the refused ones are named in a warning rather than failing the boot.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let msrs = boot_msrs()?;
    let set = vcpu.set_msrs(&msrs).map_err(vcpu_err("KVM_SET_MSRS"))?;
    if set >= BOOT_MSRS.len() {
        return Ok(());
    }
    let mut refused = Vec::new();
    for &(index, name, value) in &BOOT_MSRS[set..] {
        let one = msrs_from(&[(index, value)])?;
        match vcpu.set_msrs(&one) {
            Ok(1) => {}
            _ => refused.push(format!("{name} ({index:#x})")),
        }
    }
    if !refused.is_empty() {
        log::warn!(
            "KVM refused {} of {} boot MSRs: {}",
            refused.len(),
            BOOT_MSRS.len(),
            refused.join(", ")
        );
    }
    Ok(())
}

/// Fills `sregs` for the entry mode: the boot GDT's segments, the IDT, control registers.
/// Pure; [`setup_vcpu`] writes the GDT/IDT and page tables these refer to.
pub fn boot_sregs(sregs: &mut kvm_sregs, entry: &BootEntry, cr3: u64) {
    let gdt = boot_gdt(entry.long_mode());
    let data = segment_from_descriptor(DATA_INDEX, gdt[DATA_INDEX]);
    sregs.cs = segment_from_descriptor(CODE_INDEX, gdt[CODE_INDEX]);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_descriptor(TSS_INDEX, gdt[TSS_INDEX]);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = IDT_LIMIT;

    match entry {
        BootEntry::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootEntry::Linux64 { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = cr3;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
}

/// General registers for the entry mode.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    match entry {
        BootEntry::Pvh { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry.raw_value(),
            rbx: PVH_INFO_START,
            ..Default::default()
        },
        BootEntry::Linux64 { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry.raw_value(),
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// Everything for one vCPU before its first `KVM_RUN`, in order: FPU, MSRs, sregs (writing the
/// boot GDT/IDT and, for Linux64, the identity page tables into guest memory), regs, LAPIC
/// LINT0/LINT1. Needs the in-kernel irqchip (for the LAPIC).
pub fn setup_vcpu(mem: &GuestMemoryMmap, vcpu: &VcpuFd, entry: &BootEntry) -> Result<()> {
    setup_fpu(vcpu)?;
    setup_msrs(vcpu)?;

    write_gdt_idt(mem, entry.long_mode())?;
    let cr3 = match entry {
        BootEntry::Linux64 { .. } => write_identity_page_tables(mem)?,
        BootEntry::Pvh { .. } => 0,
    };
    let mut sregs = vcpu.get_sregs().map_err(vcpu_err("KVM_GET_SREGS"))?;
    boot_sregs(&mut sregs, entry, cr3);
    vcpu.set_sregs(&sregs).map_err(vcpu_err("KVM_SET_SREGS"))?;

    vcpu.set_regs(&boot_regs(entry))
        .map_err(vcpu_err("KVM_SET_REGS"))?;
    set_lint(vcpu)
}

pub(crate) fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let r = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8])
}

pub(crate) fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as std::os::raw::c_char;
    }
}

/// Replaces the delivery mode (bits 10:8) of an LVT register.
fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in `lapic` (pure part of [`set_lint`]).
pub fn configure_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Local APIC virtual-wire setup: LINT0 = ExtINT (the PIC), LINT1 = NMI. Needs the in-kernel
/// irqchip.
pub fn set_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(vcpu_err("KVM_GET_LAPIC"))?;
    configure_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(vcpu_err("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpu_defaults() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
        assert_eq!(fpu.fsw, 0);
    }

    #[test]
    fn linux64_state() {
        let entry = BootEntry::Linux64 {
            entry: GuestAddress(0x100_0000),
        };
        let mut s = kvm_sregs::default();
        boot_sregs(&mut s, &entry, 0x9000);
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (0x10, 1, 0));
        assert_eq!((s.ds.selector, s.ss.selector), (0x18, 0x18));
        assert_eq!(s.tr.selector, 0x08);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!((s.idt.base, s.idt.limit), (0x520, 7));
        assert_eq!(s.cr0, 0x8000_0011);
        assert_eq!((s.cr3, s.cr4, s.efer), (0x9000, 0x20, 0x500));
        let r = boot_regs(&entry);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rbp, r.rflags),
            (0x100_0000, 0x7000, 0x8ff0, 0x8ff0, 2)
        );
    }

    #[test]
    fn pvh_state() {
        let entry = BootEntry::Pvh {
            entry: GuestAddress(0x10_0200),
        };
        let mut s = kvm_sregs::default();
        boot_sregs(&mut s, &entry, 0);
        assert_eq!(
            (s.cs.selector, s.cs.l, s.cs.db, s.cs.limit),
            (0x10, 0, 1, 0xffff_ffff)
        );
        assert_eq!((s.es.selector, s.ds.base), (0x18, 0));
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (0x11, 0, 0, 0));
        let r = boot_regs(&entry);
        assert_eq!((r.rip, r.rbx, r.rflags, r.rsi), (0x10_0200, 0x6000, 2, 0));
    }

    #[test]
    fn lint_delivery_modes() {
        let mut lapic = kvm_lapic_state::default();
        // Reset state: both LVTs masked.
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x1_0000);
        set_lapic_reg(&mut lapic, APIC_LVT1, 0x1_0700);
        configure_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x1_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x1_0400);
        assert_eq!(lapic.regs[APIC_LVT0 + 1], 7);
    }
}
