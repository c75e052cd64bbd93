//! Intel MultiProcessor Specification 1.4 tables, so that an `acpi=off` Linux guest finds its
//! CPUs, the IOAPIC and the ISA interrupt routing.
//!
//! Layout at [`MPTABLE_START`]: the 16-byte floating pointer, then the configuration table
//! header, one processor entry per vCPU, the ISA bus, the IOAPIC, one I/O interrupt entry per
//! IOAPIC pin (IRQ n → pin n) and the two local interrupt entries.

use crate::layout::{
    APIC_ADDR, IOAPIC_ADDR, IOAPIC_NUM_PINS, MAX_VCPUS, MPTABLE_LIMIT, MPTABLE_START,
};
use crate::{write_bytes, Error, GuestMemoryMmap, Result};

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;
/// MP spec revision 1.4.
const SPEC_REV: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Interrupt types of interrupt assignment entries.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BSP: u8 = 2;
/// Local APIC version of KVM's in-kernel LAPIC.
const APIC_VERSION: u8 = 0x14;
/// IOAPIC version of KVM's in-kernel IOAPIC.
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature (family 6) and feature flags (FPU, APIC) in processor entries.
const CPU_SIGNATURE: u32 = 6 << 8;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ISA_BUS_ID: u8 = 0;
/// Destination "all local APICs".
const ALL_APICS: u8 = 0xff;

/// Size in bytes of the MP floating pointer plus configuration table for `num_cpus` vCPUs.
pub const fn table_size(num_cpus: u8) -> usize {
    FLOATING_POINTER_SIZE
        + HEADER_SIZE
        + PROCESSOR_ENTRY_SIZE * num_cpus as usize
        + SMALL_ENTRY_SIZE * (1 + 1 + IOAPIC_NUM_PINS as usize + 2)
}

/// Byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

/// Builds the floating pointer and configuration table as they appear at [`MPTABLE_START`].
pub fn build(num_cpus: u8) -> Result<Vec<u8>> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(Error::InvalidCpuCount {
            num_cpus: num_cpus as usize,
            max: MAX_VCPUS,
        });
    }
    let size = table_size(num_cpus);
    if MPTABLE_START + size as u64 > MPTABLE_LIMIT {
        return Err(Error::MpTableTooLarge {
            size,
            num_cpus,
            start: MPTABLE_START,
            end: MPTABLE_LIMIT,
        });
    }
    let ioapic_id = num_cpus; // APIC IDs 0..num_cpus belong to the vCPUs.
    let config_addr = MPTABLE_START as u32 + FLOATING_POINTER_SIZE as u32;

    // Entries after the header.
    let mut entries = Vec::with_capacity(size);
    for cpu in 0..num_cpus {
        let flags = CPU_FLAG_ENABLED | if cpu == 0 { CPU_FLAG_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    for pin in 0..IOAPIC_NUM_PINS {
        // Flags 0: polarity and trigger conform to the bus (ISA: active high, edge).
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, pin, ioapic_id, pin]);
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, 0, ALL_APICS, lint]);
    }
    let entry_count = num_cpus as u16 + 1 + 1 + IOAPIC_NUM_PINS as u16 + 2;

    let mut table = Vec::with_capacity(size);
    // Floating pointer structure.
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&config_addr.to_le_bytes());
    table.extend_from_slice(&[1, SPEC_REV, 0]); // length in 16-byte units, revision, checksum
    table.extend_from_slice(&[0; 5]); // feature bytes: table present, virtual wire mode
    table[10] = checksum(&table[..FLOATING_POINTER_SIZE]);

    // Configuration table header.
    let base_len = (HEADER_SIZE + entries.len()) as u16;
    let header_start = table.len();
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&base_len.to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]); // revision, checksum
    table.extend_from_slice(b"VMM     "); // OEM ID
    table.extend_from_slice(b"RUST-VMM    "); // product ID
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[header_start + 7] = checksum(&table[header_start..]);
    debug_assert_eq!(table.len(), size);
    Ok(table)
}

/// Writes the MP tables for `num_cpus` vCPUs (APIC IDs `0..num_cpus`, the BSP 0, the IOAPIC
/// `num_cpus`) at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<()> {
    let table = build(num_cpus)?;
    write_bytes(mem, &table, MPTABLE_START, "the MP table")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::guest_mem;
    use vm_memory::{Bytes, GuestAddress};

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Parses the table read from guest memory the way a guest would; returns the entry types.
    fn check(mem: &GuestMemoryMmap, num_cpus: u8) -> Vec<u8> {
        let size = table_size(num_cpus);
        let mut t = vec![0u8; size];
        mem.read_slice(&mut t, GuestAddress(MPTABLE_START)).unwrap();
        // Floating pointer.
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[8], 1);
        assert_eq!(t[9], 4);
        assert_eq!(sum(&t[..16]), 0);
        assert_eq!(u32_at(&t, 4) as u64, MPTABLE_START + 16);
        // Header.
        let h = &t[16..];
        assert_eq!(&h[0..4], b"PCMP");
        let len = u16_at(h, 4) as usize;
        assert_eq!(len + 16, size);
        assert_eq!(h[6], 4);
        assert_eq!(sum(&h[..len]), 0);
        assert_eq!(u32_at(h, 36) as u64, APIC_ADDR);
        let count = u16_at(h, 34) as usize;
        // Walk the entries.
        let mut kinds = Vec::new();
        let mut at = 44;
        let mut cpu = 0u8;
        for _ in 0..count {
            let kind = h[at];
            kinds.push(kind);
            match kind {
                ENTRY_PROCESSOR => {
                    assert_eq!(h[at + 1], cpu, "APIC IDs in order");
                    let want = if cpu == 0 { 3 } else { 1 };
                    assert_eq!(h[at + 3], want, "enabled, BSP only for cpu 0");
                    cpu += 1;
                    at += 20;
                }
                ENTRY_IOAPIC => {
                    assert_eq!(h[at + 1], num_cpus);
                    assert_eq!(h[at + 3], 1);
                    assert_eq!(u32_at(h, at + 4) as u64, IOAPIC_ADDR);
                    at += 8;
                }
                ENTRY_IO_INTERRUPT => {
                    assert_eq!(h[at + 1], INT_TYPE_INT);
                    assert_eq!(h[at + 6], num_cpus, "routed to the IOAPIC");
                    assert_eq!(h[at + 5], h[at + 7], "IRQ n on pin n");
                    at += 8;
                }
                ENTRY_BUS => {
                    assert_eq!(&h[at + 2..at + 8], b"ISA   ");
                    at += 8;
                }
                ENTRY_LOCAL_INTERRUPT => {
                    let want = if h[at + 7] == 0 {
                        INT_TYPE_EXTINT
                    } else {
                        INT_TYPE_NMI
                    };
                    assert_eq!(h[at + 1], want);
                    assert_eq!(h[at + 6], 0xff);
                    at += 8;
                }
                other => panic!("unknown entry type {other}"),
            }
        }
        assert_eq!(at, len, "entries fill the table exactly");
        assert_eq!(cpu, num_cpus);
        kinds
    }

    fn count(kinds: &[u8], kind: u8) -> usize {
        kinds.iter().filter(|k| **k == kind).count()
    }

    #[test]
    fn tables_for_1_32_and_254_cpus() {
        for n in [1u8, 2, 32, 254] {
            let mem = guest_mem(2 << 20);
            setup_mptable(&mem, n).unwrap();
            let kinds = check(&mem, n);
            assert_eq!(count(&kinds, ENTRY_PROCESSOR), n as usize);
            assert_eq!(count(&kinds, ENTRY_BUS), 1);
            assert_eq!(count(&kinds, ENTRY_IOAPIC), 1);
            assert_eq!(count(&kinds, ENTRY_IO_INTERRUPT), 24);
            assert_eq!(count(&kinds, ENTRY_LOCAL_INTERRUPT), 2);
        }
    }

    #[test]
    fn too_many_or_no_cpus() {
        let mem = guest_mem(2 << 20);
        assert!(matches!(
            setup_mptable(&mem, 255),
            Err(Error::InvalidCpuCount { num_cpus: 255, .. })
        ));
        assert!(matches!(
            setup_mptable(&mem, 0),
            Err(Error::InvalidCpuCount { .. })
        ));
    }

    #[test]
    fn fails_when_memory_is_missing() {
        let mem = crate::test_util::guest_mem_ranges(&[(0, 0x9f000)]);
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(Error::GuestMemoryWrite { .. })
        ));
    }

    #[test]
    fn biggest_table_fits_below_1mib() {
        assert!(MPTABLE_START + table_size(MAX_VCPUS) as u64 <= MPTABLE_LIMIT);
    }
}
