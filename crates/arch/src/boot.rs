//! Boot information for the guest kernel: the Linux zero page (64-bit boot protocol) and the
//! PVH `hvm_start_info`.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use crate::layout::{
    CMDLINE_MAX_SIZE, MMIO_GAP_START, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::memory::e820_map;
use crate::{write_obj, Error, GuestMemoryMmap, Result};

/// `boot_flag` magic of the setup header.
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` magic of the setup header ("HdrS").
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: a loader without an assigned ID.
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `kernel_alignment` we announce for an ELF kernel (16 MiB, like other minimal VMMs).
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// Boot protocol version from which `cmdline_size` in the header is meaningful.
const BOOT_PROTOCOL_CMDLINE_SIZE: u16 = 0x0206;
/// PVH `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Number of e820 entries the zero page holds.
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// Where the initrd was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initrd {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Checks that `[addr, addr + size)` is guest RAM below the MMIO gap.
fn check_initrd(mem: &GuestMemoryMmap, initrd: &Initrd) -> Result<()> {
    let addr = initrd.addr.raw_value();
    let bad = |reason| Error::InitrdAddress {
        addr,
        size: initrd.size,
        reason,
    };
    let end = addr.checked_add(initrd.size).ok_or(bad("it overflows"))?;
    if end > MMIO_GAP_START {
        return Err(bad("it must end below the 32-bit MMIO gap"));
    }
    let len = usize::try_from(initrd.size).map_err(|_| bad("it is too large"))?;
    if initrd.size > 0 && !mem.check_range(initrd.addr, len) {
        return Err(bad("it is not inside guest RAM"));
    }
    Ok(())
}

fn check_cmdline(mem: &GuestMemoryMmap, addr: GuestAddress, size: usize, max: usize) -> Result<()> {
    if size > max {
        return Err(Error::CmdlineTooLong { size, max });
    }
    let raw = addr.raw_value();
    if raw
        .checked_add(size as u64)
        .is_none_or(|end| end > MMIO_GAP_START)
    {
        return Err(Error::CmdlineAddress {
            addr: raw,
            reason: "it must lie below the 32-bit MMIO gap",
        });
    }
    if !mem.check_range(addr, size.max(1)) {
        return Err(Error::CmdlineAddress {
            addr: raw,
            reason: "it is not inside guest RAM",
        });
    }
    Ok(())
}

/// Command line limit (with NUL) for a kernel with this header, or our default.
pub fn cmdline_limit(setup_header: Option<&setup_header>) -> usize {
    match setup_header {
        Some(hdr) if hdr.version >= BOOT_PROTOCOL_CMDLINE_SIZE && hdr.cmdline_size != 0 => {
            // The header's limit excludes the NUL.
            (hdr.cmdline_size as usize).saturating_add(1)
        }
        _ => CMDLINE_MAX_SIZE,
    }
}

/// Linux 64-bit boot protocol: writes `boot_params` at [`ZERO_PAGE_START`].
///
/// `setup_header` is the bzImage's header as linux-loader read it, or `None` for an ELF
/// vmlinux, in which case a minimal header is made up (boot flag, "HdrS", loader type, kernel
/// alignment). The command line (`cmdline_size` bytes including its NUL, already in guest
/// memory at `cmdline_addr`), the initrd and the e820 map are filled in.
pub fn configure_linux_boot(
    mem: &GuestMemoryMmap,
    cmdline_addr: GuestAddress,
    cmdline_size: usize,
    initrd: Option<&Initrd>,
    setup_header: Option<setup_header>,
) -> Result<()> {
    check_cmdline(
        mem,
        cmdline_addr,
        cmdline_size,
        cmdline_limit(setup_header.as_ref()),
    )?;

    let mut params = boot_params::default();
    match setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
    }
    // Fields the boot loader must fill in, whatever the kernel's header said.
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    let cmdline = cmdline_addr.raw_value();
    params.hdr.cmd_line_ptr = cmdline as u32;
    params.ext_cmd_line_ptr = (cmdline >> 32) as u32;
    params.hdr.cmdline_size = cmdline_size as u32;

    if let Some(initrd) = initrd {
        check_initrd(mem, initrd)?;
        let addr = initrd.addr.raw_value();
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }

    let map = e820_map(mem);
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(Error::TooManyE820Entries {
            entries: map.len(),
            what: "the zero page",
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    // At most 128 entries, checked above.
    params.e820_entries = map.len() as u8;

    write_obj(mem, params, ZERO_PAGE_START, "the zero page (boot_params)")
}

/// Tells the kernel where the ACPI RSDP is, once its boot information is written: the PVH start
/// info's `rsdp_paddr` (`pvh`), or the zero page's `acpi_rsdp_addr` (boot protocol 2.14). Linux
/// would also find the RSDP by scanning 0xe0000..0x100000; this spares it the scan.
pub fn set_acpi_rsdp(mem: &GuestMemoryMmap, pvh: bool, rsdp: u64) -> Result<()> {
    let (addr, what) = if pvh {
        let at = std::mem::offset_of!(hvm_start_info, rsdp_paddr) as u64;
        (PVH_INFO_START + at, "the PVH start info's RSDP address")
    } else {
        let at = std::mem::offset_of!(boot_params, acpi_rsdp_addr) as u64;
        (ZERO_PAGE_START + at, "the zero page's RSDP address")
    };
    write_obj(mem, rsdp, addr, what)
}

/// PVH boot: writes `hvm_start_info` at [`PVH_INFO_START`], the initrd's module entry at
/// [`PVH_MODLIST_START`] and the memory map at [`PVH_MEMMAP_START`].
pub fn configure_pvh_boot(
    mem: &GuestMemoryMmap,
    cmdline_addr: GuestAddress,
    initrd: Option<&Initrd>,
) -> Result<()> {
    check_cmdline(mem, cmdline_addr, 1, usize::MAX)?;

    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: cmdline_addr.raw_value(),
        memmap_paddr: PVH_MEMMAP_START,
        ..Default::default()
    };

    if let Some(initrd) = initrd {
        check_initrd(mem, initrd)?;
        let module = hvm_modlist_entry {
            paddr: initrd.addr.raw_value(),
            size: initrd.size,
            ..Default::default()
        };
        write_obj(mem, module, PVH_MODLIST_START, "the PVH module list")?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }

    let map = e820_map(mem);
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(Error::TooManyE820Entries {
            entries: map.len(),
            what: "the PVH memory map area",
            max: PVH_MEMMAP_MAX_ENTRIES,
        });
    }
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, entry) in map.iter().enumerate() {
        let table_entry = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        };
        let addr = PVH_MEMMAP_START + i as u64 * entry_size;
        write_obj(mem, table_entry, addr, "the PVH memory map")?;
    }
    info.memmap_entries = map.len() as u32;

    write_obj(mem, info, PVH_INFO_START, "the PVH start info")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{CMDLINE_START, EBDA_START, HIMEM_START};
    use crate::memory::{E820Entry, E820_RAM};
    use crate::test_util::guest_mem;
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn zero_page(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
    }

    #[test]
    fn linux_elf_zero_page() {
        let mem = guest_mem(128 * MIB);
        let initrd = Initrd {
            addr: GuestAddress(100 * MIB),
            size: 12345,
        };
        configure_linux_boot(&mem, GuestAddress(CMDLINE_START), 42, Some(&initrd), None).unwrap();
        let p = zero_page(&mem);
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.kernel_alignment }, 0x0100_0000);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ p.ext_cmd_line_ptr }, 0);
        assert_eq!({ hdr.ramdisk_image }, (100 * MIB) as u32);
        assert_eq!({ hdr.ramdisk_size }, 12345);
        assert_eq!({ p.ext_ramdisk_image }, 0);
        assert_eq!({ p.ext_ramdisk_size }, 0);
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table;
        assert_eq!((e[0].addr, e[0].size, e[0].r#type), (0, EBDA_START, 1));
        assert_eq!(
            (e[1].addr, e[1].size, e[1].r#type),
            (HIMEM_START, 127 * MIB, 1)
        );
        assert_eq!({ e[2].size }, 0);
        assert_eq!(p.sentinel, 0);
    }

    #[test]
    fn linux_bzimage_header_is_kept() {
        let mem = guest_mem(4 * GIB + 4 * MIB);
        let hdr = setup_header {
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            loadflags: 1,
            cmdline_size: 0x7ff,
            setup_sects: 27,
            type_of_loader: 0,
            ..Default::default()
        };
        configure_linux_boot(&mem, GuestAddress(CMDLINE_START), 2048, None, Some(hdr)).unwrap();
        let p = zero_page(&mem);
        let h = p.hdr;
        assert_eq!(h.setup_sects, 27);
        assert_eq!({ h.version }, 0x020f);
        assert_eq!({ h.kernel_alignment }, 0x20_0000);
        assert_eq!(h.loadflags, 1);
        assert_eq!(h.type_of_loader, 0xff);
        assert_eq!({ h.ramdisk_image }, 0);
        assert_eq!({ h.ramdisk_size }, 0);
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table;
        assert_eq!((e[2].addr, e[2].size), (4 * GIB, 1024 * MIB + 4 * MIB));
    }

    #[test]
    fn linux_cmdline_limits() {
        let mem = guest_mem(128 * MIB);
        let at = GuestAddress(CMDLINE_START);
        assert!(configure_linux_boot(&mem, at, 2048, None, None).is_ok());
        assert!(matches!(
            configure_linux_boot(&mem, at, 2049, None, None),
            Err(Error::CmdlineTooLong {
                size: 2049,
                max: 2048
            })
        ));
        // A bzImage announcing 4095 characters accepts 4096 bytes with the NUL.
        let hdr = setup_header {
            version: 0x020c,
            cmdline_size: 4095,
            ..Default::default()
        };
        assert!(configure_linux_boot(&mem, at, 4096, None, Some(hdr)).is_ok());
        assert!(configure_linux_boot(&mem, at, 4097, None, Some(hdr)).is_err());
        // Old protocols have no cmdline_size: the default applies.
        let old = setup_header {
            version: 0x0205,
            cmdline_size: 4095,
            ..Default::default()
        };
        assert!(configure_linux_boot(&mem, at, 4096, None, Some(old)).is_err());
        // Outside RAM.
        assert!(matches!(
            configure_linux_boot(&mem, GuestAddress(128 * MIB), 10, None, None),
            Err(Error::CmdlineAddress { .. })
        ));
    }

    #[test]
    fn linux_bad_initrd() {
        let mem = guest_mem(128 * MIB);
        let at = GuestAddress(CMDLINE_START);
        let outside = Initrd {
            addr: GuestAddress(127 * MIB),
            size: 2 * MIB,
        };
        assert!(matches!(
            configure_linux_boot(&mem, at, 1, Some(&outside), None),
            Err(Error::InitrdAddress { .. })
        ));
        let overflow = Initrd {
            addr: GuestAddress(u64::MAX - 5),
            size: 10,
        };
        assert!(configure_pvh_boot(&mem, at, Some(&overflow)).is_err());
    }

    #[test]
    fn pvh_start_info_memmap_and_modlist() {
        let mem = guest_mem(6 * GIB);
        let initrd = Initrd {
            addr: GuestAddress(2 * GIB),
            size: 3 * MIB,
        };
        configure_pvh_boot(&mem, GuestAddress(CMDLINE_START), Some(&initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.flags, 0);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_START);
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_START);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.rsdp_paddr, 0);

        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (2 * GIB, 3 * MIB));
        assert_eq!(module.cmdline_paddr, 0);

        let expected = [
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM,
            },
            E820Entry {
                addr: HIMEM_START,
                size: 3 * GIB - MIB,
                kind: E820_RAM,
            },
            E820Entry {
                addr: 4 * GIB,
                size: 3 * GIB,
                kind: E820_RAM,
            },
        ];
        for (i, want) in expected.iter().enumerate() {
            let e: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(PVH_MEMMAP_START + 24 * i as u64))
                .unwrap();
            assert_eq!((e.addr, e.size, e.type_), (want.addr, want.size, want.kind));
        }
    }

    #[test]
    fn pvh_without_initrd() {
        let mem = guest_mem(128 * MIB);
        configure_pvh_boot(&mem, GuestAddress(CMDLINE_START), None).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.nr_modules, 0);
        assert_eq!(info.modlist_paddr, 0);
        assert_eq!(info.memmap_entries, 2);
    }

    #[test]
    fn the_rsdp_address_lands_in_either_boot_structure() {
        let mem = guest_mem(128 * MIB);
        configure_pvh_boot(&mem, GuestAddress(CMDLINE_START), None).unwrap();
        set_acpi_rsdp(&mem, true, 0xe_0000).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        assert_eq!(info.memmap_entries, 2, "nothing else changed");

        configure_linux_boot(&mem, GuestAddress(CMDLINE_START), 42, None, None).unwrap();
        set_acpi_rsdp(&mem, false, 0xe_0000).unwrap();
        let p = zero_page(&mem);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!({ p.hdr.cmdline_size }, 42, "nothing else changed");
    }
}
