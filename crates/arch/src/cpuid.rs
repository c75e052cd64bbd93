//! Per-vCPU fix-ups of the CPUID table KVM supports (`KVM_GET_SUPPORTED_CPUID`).
//!
//! The topology we present: one package, `num_cpus` cores, one thread per core, APIC ID =
//! vCPU index. Everything else is passed through as KVM reports it, except power management
//! (leaf 6) which a VM cannot honour.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::layout::MAX_VCPUS;
use crate::{Error, Result};

/// Leaf 1 ECX: TSC-deadline mode of the local APIC timer.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: the package has more than one logical processor (HTT).
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 6 EAX: APIC timer always running (the only power bit KVM reports).
const LEAF6_EAX_ARAT: u32 = 1 << 2;
/// Leaf 0x8000_0001 ECX (AMD): CmpLegacy, the core count in leaf 1 is meaningful.
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;

/// Extended topology level types (leaf 0xb / 0x1f ECX[15:8]).
const LEVEL_INVALID: u32 = 0;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// CPU vendor, from leaf 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD or HygonGenuine.
    Amd,
    /// Anything else.
    Other,
}

/// Options of [`filter_cpuid_with`].
#[derive(Clone, Copy, Debug)]
pub struct CpuidOptions {
    /// Announce the LAPIC TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER).
    pub tsc_deadline: bool,
}

impl Default for CpuidOptions {
    fn default() -> Self {
        // KVM's in-kernel LAPIC has emulated the TSC-deadline timer since Linux 3.x.
        CpuidOptions { tsc_deadline: true }
    }
}

/// The vendor named by leaf 0 of `cpuid`.
pub fn vendor(cpuid: &CpuId) -> Vendor {
    let Some(leaf0) = cpuid.as_slice().iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Number of bits needed to number `n` items (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Fixes up `cpuid` (as returned by `KVM_GET_SUPPORTED_CPUID`) for vCPU `vcpu_id` of
/// `num_cpus`. Pure: touches nothing but `cpuid`.
pub fn filter_cpuid(cpuid: &mut CpuId, vcpu_id: u8, num_cpus: u8) -> Result<()> {
    filter_cpuid_with(cpuid, vcpu_id, num_cpus, CpuidOptions::default())
}

/// [`filter_cpuid`] with explicit options.
pub fn filter_cpuid_with(
    cpuid: &mut CpuId,
    vcpu_id: u8,
    num_cpus: u8,
    options: CpuidOptions,
) -> Result<()> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(Error::InvalidCpuCount {
            num_cpus: num_cpus as usize,
            max: MAX_VCPUS,
        });
    }
    if vcpu_id >= num_cpus {
        return Err(Error::InvalidVcpuId { vcpu_id, num_cpus });
    }
    let apic_id = u32::from(vcpu_id);
    let cpus = u32::from(num_cpus);
    let vendor = vendor(cpuid);

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                // EBX: [31:24] initial APIC ID, [23:16] logical processors per package,
                // [15:8] CLFLUSH line size in 8-byte units (keep), [7:0] brand index (keep).
                entry.ebx = (apic_id << 24) | (cpus << 16) | (entry.ebx & 0xffff);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if options.tsc_deadline {
                    entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
                } else {
                    entry.ecx &= !LEAF1_ECX_TSC_DEADLINE;
                }
                if num_cpus > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 if vendor != Vendor::Amd => {
                // Deterministic cache parameters: EAX[31:26] cores per package - 1,
                // EAX[25:14] logical processors sharing the cache - 1. L1/L2 are per core
                // (one thread each); L3 and beyond are shared by the package.
                let cache_type = entry.eax & 0x1f;
                if cache_type != 0 {
                    let level = (entry.eax >> 5) & 0x7;
                    let sharing = if level >= 3 { cpus - 1 } else { 0 };
                    entry.eax = (entry.eax & 0x3fff)
                        | ((sharing & 0xfff) << 14)
                        | (((cpus - 1) & 0x3f) << 26);
                }
            }
            0x6 => {
                // No turbo, HWP, energy-performance bias or APERF/MPERF in a VM.
                entry.eax &= LEAF6_EAX_ARAT;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            0x8000_0001 if vendor == Vendor::Amd => {
                if num_cpus > 1 {
                    entry.ecx |= EXT1_ECX_CMP_LEGACY;
                } else {
                    entry.ecx &= !EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                // ECX: [15:12] APIC ID bits for cores, [7:0] cores per package - 1.
                entry.ecx = (entry.ecx & !0xf0ff) | (bits_for(cpus) << 12) | (cpus - 1);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                // Extended APIC ID, compute unit = core with one thread, one node.
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff;
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
    }

    for leaf in [0xb, 0x1f] {
        if cpuid.as_slice().iter().any(|e| e.function == leaf) {
            set_extended_topology(cpuid, leaf, apic_id, cpus)?;
        }
    }
    Ok(())
}

/// Replaces every subleaf of `leaf` (0xb or 0x1f) with the SMT level (one thread), the core
/// level (`cpus` cores) and the terminating invalid level.
fn set_extended_topology(cpuid: &mut CpuId, leaf: u32, apic_id: u32, cpus: u32) -> Result<()> {
    cpuid.retain(|e| e.function != leaf);
    let core_shift = bits_for(cpus);
    let levels = [
        // (EAX: APIC ID shift to the next level, EBX: processors at this level, level type)
        (0, 1, LEVEL_SMT),
        (core_shift, cpus, LEVEL_CORE),
        (0, 0, LEVEL_INVALID),
    ];
    for (index, (shift, count, kind)) in levels.into_iter().enumerate() {
        let index = index as u32;
        cpuid
            .push(kvm_cpuid_entry2 {
                function: leaf,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: shift,
                ebx: count,
                ecx: (kind << 8) | index,
                edx: apic_id,
                padding: [0; 3],
            })
            .map_err(|_| Error::CpuidFull {
                function: leaf,
                index,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            padding: [0; 3],
        }
    }

    /// Vendor string as leaf 0 EBX, EDX, ECX.
    fn leaf0(vendor: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().unwrap());
        entry(0, 0, [0x1f, word(0), word(8), word(4)])
    }

    /// Something like an Intel host's supported CPUID.
    fn intel() -> CpuId {
        CpuId::from_entries(&[
            leaf0(b"GenuineIntel"),
            entry(1, 0, [0x806f8, 0x0010_0800, 0x8020_2000, 0x078b_fbff]),
            // L1d, L1i, L2, L3 as the host reports them (sharing fields with host values).
            entry(4, 0, [0xfc00_4121, 0x01c0_003f, 0x3f, 0]),
            entry(4, 1, [0xfc00_4122, 0x01c0_003f, 0x3f, 0]),
            entry(4, 2, [0xfc00_4143, 0x03c0_003f, 0x7ff, 0]),
            entry(4, 3, [0xfc1f_c163, 0x0380_003f, 0xdfff, 4]),
            entry(4, 4, [0, 0, 0, 0]),
            entry(6, 0, [0x77, 0x2, 0x9, 0]),
            entry(0xb, 0, [1, 2, 0x100, 3]),
            entry(0xb, 1, [7, 56, 0x201, 3]),
            entry(0x8000_0001, 0, [0, 0, 0x121, 0x2c10_0800]),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf1_per_vcpu() {
        for (id, n) in [(0u8, 1u8), (0, 4), (3, 4), (253, 254)] {
            let mut c = intel();
            filter_cpuid(&mut c, id, n).unwrap();
            let l1 = find(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, id as u32, "initial APIC ID");
            assert_eq!((l1.ebx >> 16) & 0xff, n as u32, "logical CPUs");
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
            assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
            assert_eq!(l1.edx & LEAF1_EDX_HTT != 0, n > 1);
            assert_eq!(l1.eax, 0x806f8, "signature untouched");
        }
    }

    #[test]
    fn tsc_deadline_can_be_left_out() {
        let mut c = intel();
        let opts = CpuidOptions {
            tsc_deadline: false,
        };
        filter_cpuid_with(&mut c, 0, 1, opts).unwrap();
        assert_eq!(find(&c, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn extended_topology_levels() {
        let mut c = intel();
        filter_cpuid(&mut c, 5, 6).unwrap();
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        assert_eq!(smt.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        let end = find(&c, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, 5));
        assert_eq!(c.as_slice().iter().filter(|e| e.function == 0xb).count(), 3);
        // No 0x1f in the input: none added.
        assert!(!c.as_slice().iter().any(|e| e.function == 0x1f));
    }

    #[test]
    fn extended_topology_shifts() {
        for (n, shift) in [
            (1u8, 0u32),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (128, 7),
            (254, 8),
        ] {
            let mut c = intel();
            filter_cpuid(&mut c, 0, n).unwrap();
            assert_eq!(find(&c, 0xb, 1).eax, shift, "{n} cpus");
        }
    }

    #[test]
    fn leaf_0x1f_is_rewritten_when_present() {
        let mut c = intel();
        c.push(entry(0x1f, 0, [1, 2, 0x100, 0])).unwrap();
        filter_cpuid(&mut c, 1, 2).unwrap();
        let core = find(&c, 0x1f, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, 0x201, 1));
    }

    #[test]
    fn cache_topology_leaf4() {
        let mut c = intel();
        filter_cpuid(&mut c, 0, 4).unwrap();
        for sub in 0..4 {
            let e = find(&c, 4, sub);
            assert_eq!(e.eax >> 26, 3, "cores per package - 1");
            let level = (e.eax >> 5) & 7;
            let sharing = (e.eax >> 14) & 0xfff;
            assert_eq!(sharing, if level == 3 { 3 } else { 0 });
            assert_eq!(e.eax & 0x3fff, find(&intel(), 4, sub).eax & 0x3fff);
        }
        assert_eq!(find(&c, 4, 4).eax, 0, "terminator untouched");
    }

    #[test]
    fn no_power_management() {
        let mut c = intel();
        filter_cpuid(&mut c, 0, 1).unwrap();
        let l6 = find(&c, 6, 0);
        assert_eq!((l6.eax, l6.ebx, l6.ecx, l6.edx), (LEAF6_EAX_ARAT, 0, 0, 0));
    }

    #[test]
    fn amd_core_counts() {
        let mut c = CpuId::from_entries(&[
            leaf0(b"AuthenticAMD"),
            entry(1, 0, [0xa00f11, 0x0800, 0x8000_0000, 0]),
            entry(4, 0, [0x1234, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x700f, 0]),
            entry(0x8000_001e, 0, [9, 0x100, 0x300, 0]),
        ])
        .unwrap();
        assert_eq!(vendor(&c), Vendor::Amd);
        filter_cpuid(&mut c, 2, 3).unwrap();
        assert_eq!(find(&c, 4, 0).eax, 0x1234, "leaf 4 is Intel-only");
        assert_eq!(find(&c, 0x8000_0001, 0).ecx, EXT1_ECX_CMP_LEGACY);
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, (2 << 12) | 2);
        let e = find(&c, 0x8000_001e, 0);
        assert_eq!((e.eax, e.ebx, e.ecx), (2, 2, 0));
    }

    #[test]
    fn vendor_detection() {
        assert_eq!(vendor(&intel()), Vendor::Intel);
        let c = CpuId::from_entries(&[leaf0(b"SomethingNew")]).unwrap();
        assert_eq!(vendor(&c), Vendor::Other);
        assert_eq!(vendor(&CpuId::new(0).unwrap()), Vendor::Other);
    }

    #[test]
    fn invalid_topology() {
        let mut c = intel();
        assert!(matches!(
            filter_cpuid(&mut c, 0, 0),
            Err(Error::InvalidCpuCount { .. })
        ));
        assert!(matches!(
            filter_cpuid(&mut c, 4, 4),
            Err(Error::InvalidVcpuId {
                vcpu_id: 4,
                num_cpus: 4
            })
        ));
        assert!(matches!(
            filter_cpuid(&mut c, 0, 255),
            Err(Error::InvalidCpuCount { .. })
        ));
    }

    #[test]
    fn full_table() {
        let mut entries = vec![entry(0xb, 0, [0; 4])];
        entries
            .extend((1..KVM_MAX_CPUID_ENTRIES as u32).map(|f| entry(0x4000_0000 + f, 0, [0; 4])));
        let mut c = CpuId::from_entries(&entries).unwrap();
        assert!(matches!(
            filter_cpuid(&mut c, 0, 1),
            Err(Error::CpuidFull { function: 0xb, .. })
        ));
    }
}
