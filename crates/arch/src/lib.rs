//! x86_64 guest setup for `vmm`: the memory layout, RAM regions and the e820 map, the Linux zero
//! page and PVH start info, the MP table, CPUID fix-ups, MSRs, the boot GDT and page tables, and
//! the vCPU register state before the first `KVM_RUN`.
//!
//! Everything that only writes guest memory or edits a [`kvm_bindings::CpuId`] is pure and unit
//! tested without KVM; [`regs::setup_vcpu`] and [`regs::set_lint`] are the only functions that
//! issue vCPU ioctls.

#![deny(missing_docs)]

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
mod memory;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;
pub mod state;

pub use memory::{
    e820_map, initrd_load_addr, initrd_load_addr_above, low_ram_end, ram_regions, E820Entry,
    E820_RAM, E820_RESERVED,
};

// Guest memory as every crate of the VMM uses it (the devices crate names it for the others).
pub(crate) use vm_memory::GuestMemoryMmap;

/// Everything that can go wrong while preparing an x86_64 guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory size is zero or not a multiple of the page size.
    #[error("invalid guest memory size {size:#x}: must be a non-zero multiple of 4 KiB")]
    InvalidMemorySize {
        /// Requested size in bytes.
        size: u64,
    },
    /// Guest memory does not fit below the physical address limit.
    #[error("guest memory size {size:#x} is too large: RAM would end beyond {limit:#x}")]
    MemoryTooLarge {
        /// Requested size in bytes.
        size: u64,
        /// Highest allowed end address (exclusive).
        limit: u64,
    },
    /// Guest memory has no RAM at the addresses the boot code needs.
    #[error("guest memory has no RAM at {addr:#x}, which {what} needs")]
    MissingRam {
        /// What needed the address.
        what: &'static str,
        /// The guest physical address.
        addr: u64,
    },
    /// The initrd does not fit in low RAM.
    #[error("initrd of {size} bytes does not fit in low RAM ({available} bytes available between {start:#x} and {end:#x})")]
    InitrdTooLarge {
        /// Initrd size in bytes.
        size: u64,
        /// Bytes available for it.
        available: u64,
        /// Lowest address it may start at.
        start: u64,
        /// End (exclusive) of low RAM.
        end: u64,
    },
    /// The kernel command line is longer than the kernel accepts.
    #[error("kernel command line of {size} bytes (with NUL) exceeds the limit of {max} bytes")]
    CmdlineTooLong {
        /// Size including the NUL.
        size: usize,
        /// The limit including the NUL.
        max: usize,
    },
    /// The command line is placed where the kernel could not address it.
    #[error("kernel command line address {addr:#x} is invalid: {reason}")]
    CmdlineAddress {
        /// The guest physical address.
        addr: u64,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The initrd is placed where the boot protocol cannot describe it.
    #[error("initrd at {addr:#x} ({size} bytes) is invalid: {reason}")]
    InitrdAddress {
        /// Guest physical address.
        addr: u64,
        /// Size in bytes.
        size: u64,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The e820 map has more entries than the boot structure can carry.
    #[error("e820 map has {entries} entries; {what} holds at most {max}")]
    TooManyE820Entries {
        /// Entries in the map.
        entries: usize,
        /// The structure that would hold them.
        what: &'static str,
        /// Its capacity.
        max: usize,
    },
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write {what} at guest address {addr:#x}: {source}")]
    GuestMemoryWrite {
        /// What was being written.
        what: &'static str,
        /// The guest physical address.
        addr: u64,
        /// The vm-memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Invalid number of vCPUs.
    #[error("invalid vCPU count {num_cpus}: must be between 1 and {max}")]
    InvalidCpuCount {
        /// Requested count.
        num_cpus: usize,
        /// The maximum.
        max: u8,
    },
    /// A vCPU index outside the configured topology.
    #[error("vCPU id {vcpu_id} is out of range for {num_cpus} vCPUs")]
    InvalidVcpuId {
        /// The vCPU index.
        vcpu_id: u8,
        /// The vCPU count.
        num_cpus: u8,
    },
    /// The ACPI tables do not fit in their area.
    #[error("ACPI tables of {size} bytes do not fit in the {max} bytes of their area")]
    AcpiTablesTooLarge {
        /// Size of the tables in bytes.
        size: u64,
        /// Size of the area.
        max: u64,
    },
    /// The MP table does not fit in its window.
    #[error("MP table of {size} bytes for {num_cpus} vCPUs does not fit between {start:#x} and {end:#x}")]
    MpTableTooLarge {
        /// Table size in bytes.
        size: usize,
        /// vCPU count.
        num_cpus: u8,
        /// Start of the window.
        start: u64,
        /// End (exclusive) of the window.
        end: u64,
    },
    /// The CPUID table is full.
    #[error("cannot add CPUID leaf {function:#x} subleaf {index}: the table is full")]
    CpuidFull {
        /// Leaf.
        function: u32,
        /// Subleaf.
        index: u32,
    },
    /// A vCPU ioctl failed.
    #[error("vCPU ioctl {what} failed: {source}")]
    Vcpu {
        /// Which ioctl.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A VM ioctl failed.
    #[error("VM ioctl {what} failed: {source}")]
    Vm {
        /// Which ioctl.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A system ioctl on /dev/kvm failed.
    #[error("KVM ioctl {what} failed: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A saved state has another version than this build reads.
    #[error("saved {what} state has version {found}, this build reads version {expected}")]
    StateVersion {
        /// Whose state (vCPU, VM).
        what: &'static str,
        /// The version found.
        found: u16,
        /// The version this build reads.
        expected: u16,
    },
    /// A saved state does not fit where it is restored.
    #[error("saved {what} state does not fit: {why}")]
    StateMismatch {
        /// Whose state.
        what: &'static str,
        /// What does not fit, naming the values.
        why: String,
    },
    /// KVM refused to restore an MSR.
    #[error("KVM_SET_MSRS refused MSR {index:#x} = {value:#x}")]
    MsrRestore {
        /// The MSR.
        index: u32,
        /// The value saved.
        value: u64,
    },
    /// Building the MSR list failed.
    #[error("cannot build the list of {count} MSRs: {reason}")]
    MsrList {
        /// Number of MSRs.
        count: usize,
        /// The fam-wrapper error.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Writes `bytes` at `addr`, naming `what` in the error.
pub(crate) fn write_bytes(
    mem: &GuestMemoryMmap,
    bytes: &[u8],
    addr: u64,
    what: &'static str,
) -> Result<()> {
    use vm_memory::{Bytes, GuestAddress};
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| Error::GuestMemoryWrite { what, addr, source })
}

/// Writes a plain-data object at `addr`, naming `what` in the error.
pub(crate) fn write_obj<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    obj: T,
    addr: u64,
    what: &'static str,
) -> Result<()> {
    use vm_memory::{Bytes, GuestAddress};
    mem.write_obj(obj, GuestAddress(addr))
        .map_err(|source| Error::GuestMemoryWrite { what, addr, source })
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::GuestMemoryMmap;
    use vm_memory::GuestAddress;

    /// Guest memory laid out as the VM would for `size` bytes.
    pub fn guest_mem(size: u64) -> GuestMemoryMmap {
        let regions = super::ram_regions(size).unwrap();
        GuestMemoryMmap::from_ranges(&regions).unwrap()
    }

    /// Guest memory from explicit ranges.
    pub fn guest_mem_ranges(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
        let r: Vec<_> = ranges.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
        GuestMemoryMmap::from_ranges(&r).unwrap()
    }
}
