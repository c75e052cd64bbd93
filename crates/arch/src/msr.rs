//! The MSRs every vCPU gets before its first run.

use kvm_bindings::{kvm_msr_entry, Msrs};

use crate::{Error, Result};

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// IA32_STAR.
pub const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_CSTAR.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// IA32_FMASK (SYSCALL flag mask).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// IA32_KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE bit 0: fast string operations.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
pub const MTRR_ENABLE_DEFAULT_WB: u64 = (1 << 11) | 6;

/// The boot MSRs, in the order they are set: (index, name, value).
pub const BOOT_MSRS: &[(u32, &str, u64)] = &[
    (MSR_IA32_SYSENTER_CS, "IA32_SYSENTER_CS", 0),
    (MSR_IA32_SYSENTER_ESP, "IA32_SYSENTER_ESP", 0),
    (MSR_IA32_SYSENTER_EIP, "IA32_SYSENTER_EIP", 0),
    (MSR_STAR, "STAR", 0),
    (MSR_CSTAR, "CSTAR", 0),
    (MSR_KERNEL_GS_BASE, "KERNEL_GS_BASE", 0),
    (MSR_SYSCALL_MASK, "SYSCALL_MASK", 0),
    (MSR_LSTAR, "LSTAR", 0),
    (MSR_IA32_TSC, "TSC", 0),
    (
        MSR_IA32_MISC_ENABLE,
        "IA32_MISC_ENABLE",
        MISC_ENABLE_FAST_STRING,
    ),
    (MSR_MTRR_DEF_TYPE, "MTRR_DEF_TYPE", MTRR_ENABLE_DEFAULT_WB),
];

/// Name of a boot MSR, for messages.
pub fn msr_name(index: u32) -> &'static str {
    BOOT_MSRS
        .iter()
        .find(|(i, _, _)| *i == index)
        .map_or("unknown MSR", |(_, name, _)| name)
}

/// `Msrs` for `entries` (index, value).
pub fn msrs_from(entries: &[(u32, u64)]) -> Result<Msrs> {
    let list: Vec<kvm_msr_entry> = entries
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&list).map_err(|e| Error::MsrList {
        count: list.len(),
        reason: e.to_string(),
    })
}

/// The boot MSRs as a KVM list.
pub fn boot_msrs() -> Result<Msrs> {
    let entries: Vec<(u32, u64)> = BOOT_MSRS.iter().map(|&(i, _, v)| (i, v)).collect();
    msrs_from(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msr_list() {
        let msrs = boot_msrs().unwrap();
        let s = msrs.as_slice();
        assert_eq!(s.len(), BOOT_MSRS.len());
        let get = |index| s.iter().find(|e| e.index == index).unwrap().data;
        assert_eq!(get(MSR_IA32_MISC_ENABLE), 1);
        assert_eq!(get(MSR_IA32_TSC), 0);
        assert_eq!(get(MSR_LSTAR), 0);
        assert_eq!(get(MSR_MTRR_DEF_TYPE), 0x806);
        for required in [
            MSR_IA32_SYSENTER_CS,
            MSR_IA32_SYSENTER_ESP,
            MSR_IA32_SYSENTER_EIP,
            MSR_STAR,
            MSR_CSTAR,
            MSR_SYSCALL_MASK,
            MSR_KERNEL_GS_BASE,
        ] {
            assert_eq!(get(required), 0);
        }
        assert_eq!(msr_name(MSR_STAR), "STAR");
        assert_eq!(msr_name(0x1234), "unknown MSR");
    }
}
