//! What the guest boots from: the kernel image, the initrd, the command line (the base and what
//! the VMM appends to it) and the boot tables that describe them.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use arch::layout;
use arch::regs::BootEntry;
use devices::GuestMemoryMmap;
use linux_loader::bootparam::setup_header;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::config::{DEFAULT_CMDLINE, DEFAULT_CONSOLE_CMDLINE};
use crate::error::{arch_err, Error, Result};
use crate::start::step_done;

/// Boot protocol bit in `xloadflags`: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// The 64-bit entry of a bzImage's protected-mode code, relative to where it is loaded.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Where and how the kernel was loaded.
pub(crate) struct LoadedKernel {
    /// How the boot vCPU enters it.
    pub entry: BootEntry,
    /// The bzImage's setup header, for the zero page.
    pub setup_header: Option<setup_header>,
    /// The longest command line the kernel accepts, including the terminating NUL.
    pub cmdline_capacity: usize,
    /// The first byte after the kernel image.
    pub end: u64,
    /// A short description for logs.
    pub kind: &'static str,
}

/// Loads an ELF vmlinux (PVH entry when it carries the note, else the 64-bit boot protocol) or a bzImage.
pub(crate) fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel> {
    let kernel = load_kernel_image(mem, path)?;
    step_done(&format!(
        "loaded kernel {} ({})",
        path.display(),
        kernel.kind
    ));
    Ok(kernel)
}

fn load_kernel_image(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel> {
    let open_err = |source| Error::KernelOpen {
        path: path.to_path_buf(),
        source,
    };
    let format_err = |reason: String| Error::KernelFormat {
        path: path.to_path_buf(),
        reason,
    };
    let (mut file, _) = open_regular(path)
        .map_err(open_err)?
        .map_err(|kind| format_err(format!("it is {kind}, not a regular file")))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(open_err)?;
    let highmem = Some(GuestAddress(layout::HIMEM_START));
    let elf = n == 4 && magic == *b"\x7fELF";
    if let Some((start, end)) = image_span(&file, elf) {
        check_fits(mem, path, start, end)?;
    }

    if elf {
        let loaded = Elf::load(mem, None, &mut file, highmem)
            .map_err(|e| format_err(format!("cannot load it as an ELF vmlinux: {e}")))?;
        let (entry, kind) = match loaded.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => {
                (BootEntry::Pvh { entry: addr }, "ELF vmlinux, PVH entry")
            }
            _ => (
                BootEntry::Linux64 {
                    entry: loaded.kernel_load,
                },
                "ELF vmlinux, 64-bit boot protocol",
            ),
        };
        return Ok(LoadedKernel {
            entry,
            setup_header: None,
            cmdline_capacity: layout::CMDLINE_MAX_SIZE,
            end: loaded.kernel_end,
            kind,
        });
    }

    let loaded = BzImage::load(mem, None, &mut file, highmem).map_err(|e| {
        use linux_loader::loader::{bzimage, Error as LoaderError};
        format_err(match e {
            LoaderError::Bzimage(bzimage::Error::InvalidBzImage) => {
                "it is neither an ELF file nor a bzImage (no valid setup header)".to_string()
            }
            other => format!("cannot load it as a bzImage: {other}"),
        })
    })?;
    let header = loaded
        .setup_header
        .ok_or_else(|| format_err("the bzImage has no setup header".into()))?;
    let (version, xloadflags) = (header.version, header.xloadflags);
    if version < 0x020c || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(format_err(format!(
            "the bzImage (boot protocol {}.{:02}) has no 64-bit entry point",
            version >> 8,
            version & 0xff
        )));
    }
    let cmdline_capacity = arch::boot::cmdline_limit(Some(&header));
    Ok(LoadedKernel {
        entry: BootEntry::Linux64 {
            entry: loaded
                .kernel_load
                .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
                .ok_or_else(|| format_err("load address overflows".into()))?,
        },
        setup_header: Some(header),
        cmdline_capacity,
        end: loaded.kernel_end,
        kind: "bzImage, 64-bit boot protocol",
    })
}

/// The guest addresses a kernel image occupies once loaded (ELF: its PT_LOAD segments from
/// their physical addresses, bss included; bzImage: its protected-mode code at `code32_start`),
/// read from its headers; `None` when they cannot be read, for the loader to report.
fn image_span(file: &File, elf: bool) -> Option<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let u16_at = |off: u64| {
        let mut b = [0u8; 2];
        file.read_exact_at(&mut b, off)
            .ok()
            .map(|_| u16::from_le_bytes(b))
    };
    let u32_at = |off: u64| {
        let mut b = [0u8; 4];
        file.read_exact_at(&mut b, off)
            .ok()
            .map(|_| u32::from_le_bytes(b))
    };
    let u64_at = |off: u64| {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, off)
            .ok()
            .map(|_| u64::from_le_bytes(b))
    };
    if elf {
        // ELFCLASS64, little-endian: the only ELF the loader takes.
        let mut ident = [0u8; 2];
        file.read_exact_at(&mut ident, 4).ok()?;
        if ident != [2, 1] {
            return None;
        }
        let phoff = u64_at(0x20)?;
        let phentsize = u64::from(u16_at(0x36)?);
        let phnum = u64::from(u16_at(0x38)?);
        let mut span: Option<(u64, u64)> = None;
        for i in 0..phnum {
            let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
            if u32_at(ph)? != 1 {
                continue; // not PT_LOAD
            }
            let start = u64_at(ph.checked_add(0x18)?)?;
            let end = start.checked_add(u64_at(ph.checked_add(0x28)?)?)?;
            span = Some(span.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
        }
        span
    } else {
        if u32_at(0x202)? != u32::from_le_bytes(*b"HdrS") {
            return None;
        }
        let mut setup_sects = [0u8; 1];
        file.read_exact_at(&mut setup_sects, 0x1f1).ok()?;
        // Setup sectors, then the boot sector; 0 means 4, as the boot protocol says.
        let sects = match setup_sects[0] {
            0 => 4,
            n => u64::from(n),
        };
        let setup = (sects + 1) * 512;
        let size = file.metadata().ok()?.len().checked_sub(setup)?;
        let start = u64::from(u32_at(0x214)?);
        Some((start, start.checked_add(size)?))
    }
}

/// Refuses a kernel whose image (guest addresses `start..end`) is not all in guest memory,
/// naming the memory it would need. An image that no memory size could hold (below high memory,
/// or reaching into the MMIO gap: a corrupt header) is left to the loader, which says what is
/// wrong with it.
fn check_fits(mem: &GuestMemoryMmap, path: &Path, start: u64, end: u64) -> Result<()> {
    if start < layout::HIMEM_START || end > layout::MMIO_GAP_START {
        return Ok(());
    }
    let fits =
        usize::try_from(end - start).is_ok_and(|len| mem.check_range(GuestAddress(start), len));
    if fits {
        return Ok(());
    }
    let memory = mem.iter().map(|r| r.len()).sum();
    Err(Error::KernelTooLarge {
        path: path.to_path_buf(),
        end,
        memory,
        needs_mib: end.div_ceil(1 << 20),
    })
}

/// Opens `path` for reading if it is a regular file: `Ok(Err(kind))` names what it is instead.
/// The open does not block (a FIFO would wait for a writer; a FIFO is refused).
pub(crate) fn open_regular(
    path: &Path,
) -> std::io::Result<std::result::Result<(File, u64), &'static str>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        // O_NOCTTY: a terminal named by mistake must not become vmm's controlling terminal.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if kind.is_file() {
        // O_NONBLOCK does not change reads of a regular file.
        return Ok(Ok((file, meta.len())));
    }
    Ok(Err(devices::file_kind(meta.mode())))
}

/// Loads the initrd at the top of low memory and says where it went.
pub(crate) fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &crate::Initrd,
    kernel_end: u64,
) -> Result<arch::boot::Initrd> {
    let path = initrd.name();
    let open_err = |source| Error::InitrdOpen {
        path: path.clone(),
        source,
    };
    let (file, size) = match initrd {
        crate::Initrd::File(file_path) => {
            let (file, size) = open_regular(file_path).map_err(open_err)?.map_err(|kind| {
                Error::InitrdNotAFile {
                    path: path.clone(),
                    kind,
                }
            })?;
            (Some(file), size)
        }
        crate::Initrd::Bytes(bytes) => (None, bytes.len() as u64),
    };
    if size == 0 {
        return Err(open_err(std::io::Error::other("the file is empty")));
    }
    let too_large = || Error::InitrdTooLarge {
        path: path.clone(),
        size,
    };
    let addr = arch::initrd_load_addr_above(mem, size, kernel_end).map_err(|_| too_large())?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    match (file, initrd) {
        (Some(mut file), _) => mem.read_exact_volatile_from(addr, &mut file, len),
        (None, crate::Initrd::Bytes(bytes)) => mem.write_slice(bytes, addr),
        (None, crate::Initrd::File(_)) => Ok(()), // not reached: a file was opened above.
    }
    .map_err(|e| open_err(std::io::Error::other(e.to_string())))?;
    step_done(&format!(
        "loaded initrd {} ({size} bytes at {:#x})",
        path.display(),
        addr.0
    ));
    Ok(arch::boot::Initrd { addr, size })
}

/// The command line the VMM starts from: the caller's, or the default for where the console is.
pub(crate) fn base_cmdline(custom: Option<&str>, virtio_console: bool) -> &str {
    match custom {
        Some(cmdline) => cmdline,
        None if virtio_console => DEFAULT_CONSOLE_CMDLINE,
        None => DEFAULT_CMDLINE,
    }
}

/// The guest's root file system, for the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Root {
    /// The first disk (/dev/vda), read-only or not.
    Disk(bool),
    /// The virtio-fs share with this tag, read-only or not.
    Share(String, bool),
}

/// What the VMM appends to `base`, in order: the host-quirk parameters (already filtered against
/// `base`), the root file system's (`root=`, with `rootfstype=virtiofs` for a share, and `ro` or
/// `rw`) unless `base` names it, then the devices' entries.
pub(crate) fn cmdline_additions(
    base: &str,
    quirks: Vec<String>,
    root: Option<Root>,
    devices: &[String],
) -> Vec<String> {
    let mut additions = quirks;
    if let Some(root) = root.filter(|_| !cmdline_has(base, "root")) {
        let read_only = match root {
            Root::Disk(read_only) => {
                additions.push("root=/dev/vda".to_string());
                read_only
            }
            Root::Share(tag, read_only) => {
                additions.push(format!("root={tag}"));
                additions.push("rootfstype=virtiofs".to_string());
                read_only
            }
        };
        if !cmdline_has(base, "ro") && !cmdline_has(base, "rw") {
            additions.push(if read_only { "ro" } else { "rw" }.to_string());
        }
    }
    additions.extend_from_slice(devices);
    additions
}

/// Builds the command line (`base`, then `additions`) within the kernel's `capacity`, writes it at
/// `layout::CMDLINE_START` and returns its length with the terminating NUL.
pub(crate) fn write_cmdline(
    mem: &GuestMemoryMmap,
    base: &str,
    additions: &[String],
    capacity: usize,
) -> Result<usize> {
    let cmdline = build_cmdline(base, additions, capacity)?;
    let text = cmdline
        .as_cstring()
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    log::debug!("kernel command line: {}", text.to_string_lossy());
    Ok(text.as_bytes_with_nul().len())
}

/// Writes what the kernel reads at its entry: the PVH start info or the zero page (each with the
/// e820 map, the command line's address and the initrd), the MP table for `vcpus` vCPUs, and the
/// ACPI tables for `acpi` (with their address in the start info or zero page) unless it is None.
pub(crate) fn write_boot_tables(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<&arch::boot::Initrd>,
    vcpus: u8,
    acpi: Option<&arch::acpi::Machine>,
) -> Result<()> {
    let cmdline_addr = GuestAddress(layout::CMDLINE_START);
    match kernel.entry {
        BootEntry::Pvh { .. } => arch::boot::configure_pvh_boot(mem, cmdline_addr, initrd)
            .map_err(arch_err("write the PVH start info"))?,
        BootEntry::Linux64 { .. } => arch::boot::configure_linux_boot(
            mem,
            cmdline_addr,
            cmdline_len,
            initrd,
            kernel.setup_header,
        )
        .map_err(arch_err("write the zero page"))?,
    }
    arch::mptable::setup_mptable(mem, vcpus).map_err(arch_err("write the MP table"))?;
    if let Some(machine) = acpi {
        let rsdp =
            arch::acpi::setup_acpi(mem, machine).map_err(arch_err("write the ACPI tables"))?;
        let pvh = matches!(kernel.entry, BootEntry::Pvh { .. });
        arch::boot::set_acpi_rsdp(mem, pvh, rsdp).map_err(arch_err("write the RSDP address"))?;
    }
    step_done("wrote boot parameters, MP and ACPI tables");
    Ok(())
}

/// Builds the final command line: the base (the caller's or the default), then what the VMM must add.
pub(crate) fn build_cmdline(base: &str, additions: &[String], capacity: usize) -> Result<Cmdline> {
    let mut text = base.trim().to_string();
    for a in additions {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(a);
    }
    // `capacity` counts the terminating NUL.
    let max = capacity.saturating_sub(1);
    if text.len() > max {
        return Err(Error::CmdlineTooLong {
            len: text.len(),
            max,
        });
    }
    let mut cmdline = Cmdline::new(capacity).map_err(|e| Error::Cmdline(e.to_string()))?;
    if !text.is_empty() {
        cmdline
            .insert_str(&text)
            .map_err(|e| Error::Cmdline(format!("{e} in '{text}'")))?;
    }
    Ok(cmdline)
}

/// Whether the guest uses ACPI: the VM offers it (`acpi`) and the command line does not turn it
/// off (`acpi=off`, or `acpi=ht`, which leaves the interpreter off too: Linux then ignores the
/// DSDT and reads the MP table). Words after `--` are init's, not the kernel's. A kernel with
/// `acpi=off` built into its own command line cannot be seen from here: give it `--acpi off`.
pub(crate) fn guest_uses_acpi(acpi: bool, cmdline: &str) -> bool {
    acpi && !cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .any(|w| w == "acpi=off" || w == "acpi=ht")
}

/// Whether the command line already sets `key` (as `key` or `key=…`).
pub(crate) fn cmdline_has(cmdline: &str, key: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| w == key || w.split_once('=').is_some_and(|(k, _)| k == key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_join_and_limit() {
        let c = build_cmdline("console=ttyS0", &["root=/dev/vda".into()], 100).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 root=/dev/vda"
        );
        // Exactly at the limit (capacity counts the NUL).
        let ok = "a".repeat(99);
        assert!(build_cmdline(&ok, &[], 100).is_ok());
        let long = "a".repeat(100);
        match build_cmdline(&long, &[], 100) {
            Err(Error::CmdlineTooLong { len: 100, max: 99 }) => {}
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
        assert!(build_cmdline("bad\u{7}char", &[], 100).is_err());
        assert!(build_cmdline("", &[], 100).is_ok());
    }

    #[test]
    fn base_is_the_callers_or_the_default_for_the_console() {
        assert_eq!(base_cmdline(Some("quiet"), true), "quiet");
        assert_eq!(base_cmdline(None, false), DEFAULT_CMDLINE);
        assert_eq!(base_cmdline(None, true), DEFAULT_CONSOLE_CMDLINE);
    }

    #[test]
    fn additions_quirks_then_root_then_devices() {
        let devices = ["virtio_mmio.device=4K@0xd0000000:5".to_string()];
        let quirks = vec!["noxsave".to_string()];
        assert_eq!(
            cmdline_additions(
                "console=ttyS0",
                quirks.clone(),
                Some(Root::Disk(false)),
                &devices
            ),
            [
                "noxsave",
                "root=/dev/vda",
                "rw",
                "virtio_mmio.device=4K@0xd0000000:5"
            ]
        );
        assert_eq!(
            cmdline_additions(
                "console=ttyS0",
                Vec::new(),
                Some(Root::Disk(true)),
                &devices
            ),
            ["root=/dev/vda", "ro", "virtio_mmio.device=4K@0xd0000000:5"]
        );
    }

    #[test]
    fn additions_respect_what_the_base_says() {
        // No root disk (no disk, or an initrd): no root=.
        assert!(cmdline_additions("console=ttyS0", Vec::new(), None, &[]).is_empty());
        // The caller's root= wins, and with it their choice of ro/rw.
        assert!(
            cmdline_additions("root=/dev/vdb", Vec::new(), Some(Root::Disk(false)), &[]).is_empty()
        );
        // Their ro/rw stays, root= is still added.
        assert_eq!(
            cmdline_additions("console=ttyS0 ro", Vec::new(), Some(Root::Disk(false)), &[]),
            ["root=/dev/vda"]
        );
        // A shared root: its tag and type, and ro unless the caller says otherwise.
        assert_eq!(
            cmdline_additions(
                "console=ttyS0",
                Vec::new(),
                Some(Root::Share("vmmroot".into(), true)),
                &[]
            ),
            ["root=vmmroot", "rootfstype=virtiofs", "ro"]
        );
    }

    #[test]
    fn acpi_off_on_the_command_line_wins() {
        assert!(guest_uses_acpi(true, "console=ttyS0 panic=1"));
        assert!(guest_uses_acpi(true, "xacpi=off acpi=on"));
        assert!(!guest_uses_acpi(true, "console=ttyS0 acpi=off"));
        assert!(!guest_uses_acpi(true, "acpi=ht console=ttyS0"));
        assert!(guest_uses_acpi(true, "console=ttyS0 -- acpi=off"));
        assert!(!guest_uses_acpi(false, "console=ttyS0"));
    }

    #[test]
    fn cmdline_keys() {
        assert!(cmdline_has("console=ttyS0 root=/dev/vdb rw", "root"));
        assert!(cmdline_has("quiet noxsave", "noxsave"));
        assert!(!cmdline_has("rootwait", "root"));
        assert!(!cmdline_has("", "root"));
    }
}
