//! The parsers the fuzz targets in `fuzz/` drive, reachable only with the `fuzzing` feature:
//! thin wrappers over the crate-private kernel and initrd loaders and the command-line builder,
//! so the targets run the real code and not a copy.

use std::path::Path;

use arch::regs::BootEntry;
use devices::GuestMemoryMmap;

use crate::error::Result;

/// What [`load_kernel`] reports about a kernel it accepted.
#[derive(Debug, Clone, Copy)]
pub struct KernelSummary {
    /// The guest-physical entry point.
    pub entry: u64,
    /// Whether the entry is PVH (32-bit) rather than the 64-bit boot protocol.
    pub pvh: bool,
    /// Whether the image carried a bzImage setup header.
    pub has_setup_header: bool,
    /// The longest command line the kernel accepts, NUL included.
    pub cmdline_capacity: usize,
    /// The first byte after the loaded image.
    pub end: u64,
}

/// Loads the kernel at `path` (ELF vmlinux or bzImage) into `mem`, as `Vm::new` does.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelSummary> {
    let k = crate::kernel::load_kernel(mem, path)?;
    let (entry, pvh) = match k.entry {
        BootEntry::Pvh { entry } => (entry.0, true),
        BootEntry::Linux64 { entry } => (entry.0, false),
    };
    Ok(KernelSummary {
        entry,
        pvh,
        has_setup_header: k.setup_header.is_some(),
        cmdline_capacity: k.cmdline_capacity,
        end: k.end,
    })
}

/// Loads the initrd at `path` into `mem` above `kernel_end`; returns its address and size.
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel_end: u64) -> Result<(u64, u64)> {
    let i = crate::kernel::load_initrd(mem, &crate::Initrd::File(path.to_path_buf()), kernel_end)?;
    Ok((i.addr.0, i.size))
}

/// Builds the kernel command line from `base` and `additions` within `capacity` bytes (NUL
/// included); returns it as text.
pub fn build_cmdline(base: &str, additions: &[String], capacity: usize) -> Result<String> {
    let c = crate::kernel::build_cmdline(base, additions, capacity)?;
    c.as_cstring()
        .map_err(|e| crate::error::Error::Cmdline(e.to_string()))?
        .into_string()
        .map_err(|e| crate::error::Error::Cmdline(e.to_string()))
}

/// Whether `cmdline` sets `key`.
pub fn cmdline_has(cmdline: &str, key: &str) -> bool {
    crate::kernel::cmdline_has(cmdline, key)
}
