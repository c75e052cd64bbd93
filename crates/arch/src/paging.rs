//! Identity page tables for the Linux 64-bit entry: the first 1 GiB mapped with 2 MiB pages.

use crate::layout::{PDE_START, PDPTE_START, PML4_START};
use crate::{write_bytes, GuestMemoryMmap, Result};

/// Present + writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page size bit: a 2 MiB page in a page directory entry.
const PTE_PAGE_SIZE: u64 = 0x80;
/// 2 MiB.
const LARGE_PAGE_SIZE: u64 = 0x20_0000;
/// Entries in one page table page.
const ENTRIES: usize = 512;

fn table_bytes(entries: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut page = vec![0u8; ENTRIES * 8];
    for (chunk, entry) in page.chunks_exact_mut(8).zip(entries) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    page
}

/// Writes PML4, PDPT and PD at their layout addresses; returns the value for CR3.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u64> {
    let pml4 = table_bytes(std::iter::once(PDPTE_START | PTE_PRESENT_RW));
    let pdpt = table_bytes(std::iter::once(PDE_START | PTE_PRESENT_RW));
    let pd = table_bytes(
        (0..ENTRIES as u64).map(|i| (i * LARGE_PAGE_SIZE) | PTE_PRESENT_RW | PTE_PAGE_SIZE),
    );
    write_bytes(mem, &pml4, PML4_START, "the boot PML4")?;
    write_bytes(mem, &pdpt, PDPTE_START, "the boot PDPT")?;
    write_bytes(mem, &pd, PDE_START, "the boot page directory")?;
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::guest_mem;
    use vm_memory::{Bytes, GuestAddress};

    fn entry(mem: &GuestMemoryMmap, table: u64, i: u64) -> u64 {
        mem.read_obj(GuestAddress(table + 8 * i)).unwrap()
    }

    #[test]
    fn identity_map_of_the_first_gib() {
        let mem = guest_mem(16 << 20);
        // Dirty the area first: the tables must be fully rewritten.
        mem.write_slice(&[0xffu8; 0x3000], GuestAddress(PML4_START))
            .unwrap();
        assert_eq!(write_identity_page_tables(&mem).unwrap(), PML4_START);
        assert_eq!(entry(&mem, PML4_START, 0), 0xa003);
        assert_eq!(entry(&mem, PDPTE_START, 0), 0xb003);
        for i in 1..512 {
            assert_eq!(entry(&mem, PML4_START, i), 0);
            assert_eq!(entry(&mem, PDPTE_START, i), 0);
        }
        assert_eq!(entry(&mem, PDE_START, 0), 0x83);
        assert_eq!(entry(&mem, PDE_START, 1), 0x20_0083);
        assert_eq!(entry(&mem, PDE_START, 511), 0x3fe0_0083);
        for i in 0..512 {
            assert_eq!(entry(&mem, PDE_START, i), (i << 21) | 0x83);
        }
    }

    #[test]
    fn fails_without_memory() {
        let mem = crate::test_util::guest_mem_ranges(&[(0, 0x9000)]);
        assert!(write_identity_page_tables(&mem).is_err());
    }
}
