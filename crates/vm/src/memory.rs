//! Guest memory: map the RAM regions of arch's layout and register each as a KVM memory slot.

use devices::GuestMemoryMmap;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{kvm_err, Error, Result};
use crate::start::step_done;

/// The smallest guest memory a VM may have.
pub(crate) const MIN_MEMORY_BYTES: u64 = 1 << 20;

/// Maps `size` bytes of guest RAM (split around the 32-bit MMIO gap when it does not fit below it)
/// and registers one KVM memory slot per region.
pub(crate) fn create_guest_memory(vm_fd: &VmFd, size: u64) -> Result<GuestMemoryMmap> {
    let mib = size >> 20;
    let map_err = |reason: String| Error::GuestMemory { mib, reason };
    let regions = arch::ram_regions(size).map_err(|e| map_err(e.to_string()))?;
    let mem = GuestMemoryMmap::from_ranges(&regions).map_err(|e| map_err(e.to_string()))?;
    register(vm_fd, &mem, mib)?;
    step_done(&format!("mapped {mib} MiB of guest memory"));
    Ok(mem)
}

/// Maps `size` bytes of guest RAM from `file` (a snapshot's memory file: the regions back to
/// back) privately: pages load when the guest first touches them, clones of one snapshot share
/// the page cache, and each VM's writes stay its own. Registers the KVM memory slots.
pub(crate) fn map_guest_memory_file(
    vm_fd: &VmFd,
    size: u64,
    file: std::fs::File,
) -> Result<GuestMemoryMmap> {
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::{FileOffset, GuestRegionMmap};
    let mib = size >> 20;
    let map_err = |reason: String| Error::GuestMemory { mib, reason };
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (start, len) in arch::ram_regions(size).map_err(|e| map_err(e.to_string()))? {
        let mapping = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, start)
            .ok_or_else(|| map_err(format!("region at {start:?} wraps around")))?;
        regions.push(region);
        offset += len as u64;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))?;
    register(vm_fd, &mem, mib)?;
    step_done(&format!(
        "mapped {mib} MiB of guest memory from the snapshot"
    ));
    Ok(mem)
}

/// Registers one KVM memory slot per region of `mem`.
fn register(vm_fd: &VmFd, mem: &GuestMemoryMmap, mib: u64) -> Result<()> {
    let map_err = |reason: String| Error::GuestMemory { mib, reason };
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| map_err(e.to_string()))?;
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
    Ok(())
}

/// Checks a guest memory size against the minimum and the host's RAM (`host_ram`: 0 if unknown).
pub(crate) fn check_size(bytes: u64, host_ram: u64) -> Result<()> {
    if bytes < MIN_MEMORY_BYTES {
        return Err(Error::MemoryTooSmall { bytes });
    }
    if host_ram > 0 && bytes > host_ram {
        return Err(Error::MemoryExceedsHost {
            asked: bytes,
            host: host_ram,
        });
    }
    Ok(())
}

/// The host's physical RAM in bytes, or 0 if unknown.
pub(crate) fn host_ram_bytes() -> u64 {
    // SAFETY: sysinfo only writes into the zeroed struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return 0;
    }
    info.totalram.saturating_mul(u64::from(info.mem_unit))
}

/// `bytes` in the largest binary unit that keeps one decimal, e.g. `100 TiB`, `23.5 GiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!(
        "{} {}",
        text.strip_suffix(".0").unwrap_or(&text),
        UNITS[unit]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(128 << 20), "128 MiB");
        assert_eq!(human_size(100 << 40), "100 TiB");
        assert_eq!(human_size((23 << 30) + (512 << 20)), "23.5 GiB");
        assert_eq!(human_size(5000 << 40), "5000 TiB");
        // Just under a whole number: rounded, without a ".0".
        assert_eq!(human_size(17_179_869_183 << 30), "16777216 TiB");
        assert_eq!(human_size(u64::MAX), "16777216 TiB");
    }

    #[test]
    fn size_checks_name_the_values() {
        assert!(check_size(1 << 20, 0).is_ok());
        assert!(check_size(128 << 20, 1 << 30).is_ok());
        let err = check_size(4096, 1 << 30).unwrap_err();
        assert_eq!(
            err.to_string(),
            "4096 bytes of guest memory is too small: a guest needs at least 1 MiB"
        );
        let err = check_size(100 << 40, 16 << 30).unwrap_err();
        assert_eq!(
            err.to_string(),
            "100 TiB of guest memory is more than this host's 16 GiB of RAM"
        );
        // An unknown host size does not refuse anything.
        assert!(check_size(100 << 40, 0).is_ok());
    }
}
