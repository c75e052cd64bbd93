//! Host quirks the guest must be told about.
//!
//! On hosts whose KVM does not virtualize CPUID (the software-assisted `kvm_pvm` module), the guest's CPUID
//! instruction reports the host CPU whatever KVM_SET_CPUID2 says, so a Linux guest believes it has XSAVE,
//! POPCNT and friends and dies on the first one the host cannot emulate at CPL0. Such a guest needs
//! `noxsave` and a `clearcpuid=` list from its boot loader (both are parsed before a built-in command line is
//! merged), plus `no_int3_selftest` from our guest-kernel patch.

use std::path::Path;

use kvm_bindings::CpuId;

/// Boot parameters a Linux guest with `vcpus` vCPUs needs on a host that does not virtualize CPUID, given
/// the vCPUs' TSC frequency (KVM_GET_TSC_KHZ), if KVM reports one.
/// - `noxsave`, `clearcpuid=` (popcnt rdrand rdseed fsgsbase smap pcid invpcid rdpid pku umip): features the
///   guest sees in the host's CPUID but the host cannot emulate at CPL0.
/// - `nopv`, with more than one vCPU: the hypervisor leaves the guest reads are the host's own,
///   advertising paravirtual features (e.g. KVM_HC_SEND_IPI) that this KVM does not serve; an SMP
///   guest's first PV IPI hangs without it. Linux uses PV IPIs, TLB flushes and yields only with more
///   than one possible CPU, so a 1-vCPU guest keeps the rest (kvm-clock, PV EOI), which serve it: its
///   boot to init took 35.9 s with them and 40.5 s with `nopv`, in one run each.
/// - `tsc_early_khz=`: without kvm-clock (`nopv`) the guest cannot calibrate its TSC against the PIT here,
///   falls back to jiffies and its timers crawl; the VMM knows the frequency, so it says it.
/// - `no_int3_selftest`: from our guest-kernel patch (resources/kernel/patches); other kernels ignore it.
pub(crate) fn no_cpuid_virt_params(tsc_khz: Option<u32>, vcpus: u8) -> Vec<String> {
    let mut params = vec!["noxsave".to_string()];
    if vcpus > 1 {
        params.push("nopv".to_string());
    }
    if let Some(khz) = tsc_khz.filter(|k| *k > 0) {
        params.push(format!("tsc_early_khz={khz}"));
    }
    params.push("no_int3_selftest".to_string());
    params.push("clearcpuid=151,158,306,288,308,145,298,534,515,514".to_string());
    params
}

/// The parameters this host's quirks need on a command line starting with `base`, those `base` sets
/// already left out; logged when there are any. `tsc_khz` is asked only on such a host.
pub(crate) fn cmdline_params(
    base: &str,
    supported: &CpuId,
    tsc_khz: impl FnOnce() -> Option<u32>,
    vcpus: u8,
) -> Vec<String> {
    let Some(why) = cpuid_not_virtualized(supported) else {
        return Vec::new();
    };
    let missing = not_in(base, no_cpuid_virt_params(tsc_khz(), vcpus));
    if !missing.is_empty() {
        log::info!(
            "this host does not virtualize CPUID ({why}); adding '{}' to the kernel command line",
            missing.join(" ")
        );
    }
    missing
}

/// `params` whose key `base` does not set.
fn not_in(base: &str, params: Vec<String>) -> Vec<String> {
    params
        .into_iter()
        .filter(|p| !crate::kernel::cmdline_has(base, p.split('=').next().unwrap_or(p)))
        .collect()
}

const XSAVE_BIT: u32 = 1 << 26;

/// Why this host needs the parameters, or None when it virtualizes CPUID as real KVM does.
pub(crate) fn cpuid_not_virtualized(supported: &CpuId) -> Option<&'static str> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some("the kvm_pvm module is loaded");
    }
    let kvm_xsave = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 1 && e.index == 0)
        .map(|e| e.ecx & XSAVE_BIT != 0);
    let host_xsave = std::arch::x86_64::__cpuid(1).ecx & XSAVE_BIT != 0;
    if host_xsave && kvm_xsave == Some(false) {
        return Some("KVM withholds XSAVE that the host CPU has");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_the_base_sets_are_left_out() {
        let params = no_cpuid_virt_params(Some(1000), 2);
        let left = not_in("console=ttyS0 noxsave tsc_early_khz=5 nopv=1", params);
        assert!(!left
            .iter()
            .any(|p| p == "noxsave" || p.starts_with("tsc_early_khz")));
        assert!(!left.iter().any(|p| p == "nopv"));
        assert!(left.iter().any(|p| p == "no_int3_selftest"));
        assert!(left.iter().any(|p| p.starts_with("clearcpuid=")));
    }

    #[test]
    fn params_with_and_without_tsc() {
        let p = no_cpuid_virt_params(Some(2_000_000), 1);
        assert!(p.contains(&"tsc_early_khz=2000000".to_string()));
        assert!(p.contains(&"noxsave".to_string()));
        let p = no_cpuid_virt_params(None, 1);
        assert!(!p.iter().any(|x| x.starts_with("tsc_early_khz")));
        assert!(!no_cpuid_virt_params(Some(0), 1)
            .iter()
            .any(|x| x.starts_with("tsc_early_khz")));
    }

    #[test]
    fn nopv_only_with_more_than_one_vcpu() {
        assert!(!no_cpuid_virt_params(None, 1).contains(&"nopv".to_string()));
        assert!(no_cpuid_virt_params(None, 2).contains(&"nopv".to_string()));
    }
}
