//! Guest RAM regions, the e820 map and where the initrd goes.

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{
    EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, PAGE_SIZE, PHYS_ADDR_LIMIT,
};
use crate::{Error, GuestMemoryMmap, Result};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the memory map the guest sees (e820 / PVH memmap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// RAM regions for `size` bytes of guest memory: `[0, min(size, MMIO_GAP_START))` and, when
/// `size` exceeds 3 GiB, the rest at 4 GiB.
///
/// Errors when `size` is zero or not a multiple of 4 KiB, or when RAM would end beyond the
/// 46-bit physical address limit.
pub fn ram_regions(size: u64) -> Result<Vec<(GuestAddress, usize)>> {
    if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
        return Err(Error::InvalidMemorySize { size });
    }
    let too_large = Error::MemoryTooLarge {
        size,
        limit: PHYS_ADDR_LIMIT,
    };
    let low = size.min(MMIO_GAP_START);
    let high = size - low;
    let end = if high == 0 {
        low
    } else {
        MMIO_GAP_END.checked_add(high).ok_or(too_large)?
    };
    if end > PHYS_ADDR_LIMIT {
        return Err(Error::MemoryTooLarge {
            size,
            limit: PHYS_ADDR_LIMIT,
        });
    }
    // Both sizes are below 2^46, so they fit in usize on x86_64.
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if high > 0 {
        regions.push((GuestAddress(MMIO_GAP_END), high as usize));
    }
    Ok(regions)
}

/// The e820 map the guest sees: RAM `[0, EBDA_START)`, RAM `[HIMEM_START, end of low RAM)` and
/// the RAM above 4 GiB, if any. The window `[EBDA_START, HIMEM_START)` (MP table, legacy VGA
/// and BIOS area) is left out of the map, as on a PC.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        for (lo, hi) in [(0, EBDA_START), (HIMEM_START, u64::MAX)] {
            let (s, e) = (start.max(lo), end.min(hi));
            if s < e {
                map.push(E820Entry {
                    addr: s,
                    size: e - s,
                    kind: E820_RAM,
                });
            }
        }
    }
    map
}

/// End (exclusive) of the RAM that is contiguous from `HIMEM_START` and below the MMIO gap, or
/// `None` if there is no RAM at `HIMEM_START`.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> Option<u64> {
    let region = mem.find_region(GuestAddress(HIMEM_START))?;
    let end = region.start_addr().raw_value() + region.len();
    Some(end.min(MMIO_GAP_START))
}

/// Highest page-aligned address at which an initrd of `size` bytes fits in low RAM (below the
/// MMIO gap, above `HIMEM_START`). The caller must still make sure it does not overlap the
/// kernel; [`initrd_load_addr_above`] does that given the kernel end.
pub fn initrd_load_addr(mem: &GuestMemoryMmap, size: u64) -> Result<GuestAddress> {
    initrd_load_addr_above(mem, size, HIMEM_START)
}

/// Like [`initrd_load_addr`], but the initrd must also start at or above `min_addr` (e.g. the
/// end of the loaded kernel).
pub fn initrd_load_addr_above(
    mem: &GuestMemoryMmap,
    size: u64,
    min_addr: u64,
) -> Result<GuestAddress> {
    let start = min_addr.max(HIMEM_START);
    let end = low_ram_end(mem).ok_or(Error::MissingRam {
        what: "the initrd",
        addr: HIMEM_START,
    })?;
    let too_large = || Error::InitrdTooLarge {
        size,
        available: end.saturating_sub(start),
        start,
        end,
    };
    let addr = end.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < start {
        return Err(too_large());
    }
    Ok(GuestAddress(addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{guest_mem, guest_mem_ranges};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn regions(size: u64) -> Vec<(u64, u64)> {
        ram_regions(size)
            .unwrap()
            .into_iter()
            .map(|(a, s)| (a.raw_value(), s as u64))
            .collect()
    }

    #[test]
    fn ram_regions_small_and_at_the_gap() {
        assert_eq!(regions(128 * MIB), [(0, 128 * MIB)]);
        assert_eq!(regions(3 * GIB), [(0, 3 * GIB)]);
        assert_eq!(regions(PAGE_SIZE), [(0, PAGE_SIZE)]);
    }

    #[test]
    fn ram_regions_split_around_the_gap() {
        assert_eq!(regions(4 * GIB), [(0, 3 * GIB), (4 * GIB, GIB)]);
        assert_eq!(regions(6 * GIB), [(0, 3 * GIB), (4 * GIB, 3 * GIB)]);
        assert_eq!(
            regions(3 * GIB + PAGE_SIZE),
            [(0, 3 * GIB), (4 * GIB, PAGE_SIZE)]
        );
    }

    #[test]
    fn ram_regions_rejects_bad_sizes() {
        assert!(matches!(
            ram_regions(0),
            Err(Error::InvalidMemorySize { size: 0 })
        ));
        assert!(matches!(
            ram_regions(MIB + 1),
            Err(Error::InvalidMemorySize { .. })
        ));
        // The largest size that still ends at 2^46, and one page more.
        let max = PHYS_ADDR_LIMIT - GIB;
        assert_eq!(
            regions(max).last().unwrap().0 + max - 3 * GIB,
            PHYS_ADDR_LIMIT
        );
        assert!(matches!(
            ram_regions(max + PAGE_SIZE),
            Err(Error::MemoryTooLarge { .. })
        ));
        assert!(matches!(
            ram_regions(!(PAGE_SIZE - 1)),
            Err(Error::MemoryTooLarge { .. })
        ));
        assert!(ram_regions(1 << 63).is_err());
    }

    #[test]
    fn e820_for_small_memory() {
        let mem = guest_mem(128 * MIB);
        assert_eq!(
            e820_map(&mem),
            [
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_for_memory_above_4g() {
        let mem = guest_mem(4 * GIB + 512 * MIB);
        assert_eq!(
            e820_map(&mem),
            [
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: 3 * GIB - MIB,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 4 * GIB,
                    size: 1536 * MIB,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_for_tiny_memory_has_no_high_entry() {
        let mem = guest_mem_ranges(&[(0, 0x8_0000)]);
        assert_eq!(
            e820_map(&mem),
            [E820Entry {
                addr: 0,
                size: 0x8_0000,
                kind: E820_RAM
            }]
        );
        assert!(low_ram_end(&mem).is_none());
        assert!(matches!(
            initrd_load_addr(&mem, 1),
            Err(Error::MissingRam { .. })
        ));
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let mem = guest_mem(128 * MIB);
        assert_eq!(
            initrd_load_addr(&mem, 0x1000).unwrap(),
            GuestAddress(128 * MIB - 0x1000)
        );
        // Not page-sized: rounded down to a page boundary.
        assert_eq!(
            initrd_load_addr(&mem, 0x1001).unwrap(),
            GuestAddress(128 * MIB - 0x2000)
        );
        // Above 3 GiB of RAM it stays below the MMIO gap.
        let mem = guest_mem(4 * GIB);
        assert_eq!(
            initrd_load_addr(&mem, 10 * MIB).unwrap(),
            GuestAddress(3 * GIB - 10 * MIB)
        );
    }

    #[test]
    fn initrd_too_large() {
        let mem = guest_mem(128 * MIB);
        // Exactly all of high low RAM fits; one byte more does not.
        assert_eq!(
            initrd_load_addr(&mem, 127 * MIB).unwrap(),
            GuestAddress(HIMEM_START)
        );
        assert!(matches!(
            initrd_load_addr(&mem, 127 * MIB + 1),
            Err(Error::InitrdTooLarge { .. })
        ));
        assert!(matches!(
            initrd_load_addr(&mem, u64::MAX),
            Err(Error::InitrdTooLarge { .. })
        ));
        // Above a 100 MiB kernel only 27 MiB are left.
        assert!(initrd_load_addr_above(&mem, 27 * MIB, 101 * MIB).is_ok());
        assert!(matches!(
            initrd_load_addr_above(&mem, 27 * MIB + 1, 101 * MIB),
            Err(Error::InitrdTooLarge { available, .. }) if available == 27 * MIB
        ));
    }
}
