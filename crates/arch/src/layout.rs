//! The x86_64 guest's map: its physical memory layout, its I/O ports and its interrupt lines.
//!
//! Every address the VMM writes into guest memory before the first `KVM_RUN`, and every MMIO range,
//! port and IRQ a device is placed at, is named here, so that the VM crate (which places the
//! devices), the boot code (which describes them to the guest) and the tests agree on one map.
//! Device models do not know where they sit: the VMM hands them their place from here.

/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of 8-byte slots in the boot GDT (all that fit below the IDT).
pub const BOOT_GDT_ENTRIES: usize = 4;
/// Boot IDT: a single empty gate, so any exception before the guest loads its own IDT is a
/// triple fault (a reset) rather than a jump to garbage.
pub const BOOT_IDT_START: u64 = 0x520;

/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (`hvm_modlist_entry`; one entry for the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry` array).
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Maximum number of PVH memory map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;

/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer (RSP/RBP) for the Linux 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Page map level 4 of the boot identity mapping.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity mapping.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 x 2 MiB pages = the first 1 GiB) of the boot identity mapping.
pub const PDE_START: u64 = 0xb000;

/// Start of guest memory that is free for the guest's own use (e.g. an AP trampoline).
pub const GUEST_FREE_START: u64 = 0x10000;
/// End (exclusive) of the free low-memory window.
pub const GUEST_FREE_END: u64 = 0x20000;

/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command line size in bytes, including the terminating NUL, unless a bzImage header
/// announces another limit.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Extended BIOS data area; e820 RAM below 1 MiB ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// MP floating pointer + configuration table (in the EBDA, where Linux scans for it).
pub const MPTABLE_START: u64 = EBDA_START;
/// End (exclusive) of the reserved window 0x9fc00..0x100000 that holds the MP table.
pub const MPTABLE_LIMIT: u64 = HIMEM_START;

/// ACPI: the RSDP, where Linux also scans for it (0xe0000..0x100000, inside the reserved window
/// that holds the MP table); the other tables follow it.
pub const ACPI_RSDP_START: u64 = 0xe_0000;
/// End (exclusive) of the ACPI tables' area.
pub const ACPI_TABLES_END: u64 = HIMEM_START;

/// Start of high memory: the kernel is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap (3 GiB): low RAM ends here at the latest.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO gap (4 GiB): RAM above the gap continues here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Size of the 32-bit MMIO gap.
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;

/// Guest physical address width we allow RAM to reach (46 bits, as on common Intel hosts).
pub const PHYS_ADDR_LIMIT: u64 = 1 << 46;

/// The boot timer's MMIO page: the first page of the 32-bit MMIO gap.
pub const BOOT_TIMER_MMIO_ADDR: u64 = MMIO_GAP_START;

/// The exit device's MMIO page (the same device as [`EXIT_DEVICE_PORT`]), for guest user space
/// that can reach memory through /dev/mem but no I/O port: the second page of the MMIO gap.
pub const EXIT_DEVICE_MMIO_ADDR: u64 = MMIO_GAP_START + PAGE_SIZE;

/// First virtio-mmio slot.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IRQ of virtio-mmio slot 0; slot `n` uses `VIRTIO_MMIO_FIRST_IRQ + n`.
pub const VIRTIO_MMIO_FIRST_IRQ: u32 = 5;
/// Number of IOAPIC pins.
pub const IOAPIC_NUM_PINS: u8 = 24;
/// Highest IRQ an IOAPIC pin can carry.
pub const IOAPIC_LAST_IRQ: u32 = IOAPIC_NUM_PINS as u32 - 1;
/// How many virtio-mmio slots there are: one per IOAPIC pin from [`VIRTIO_MMIO_FIRST_IRQ`] on.
pub const VIRTIO_MMIO_SLOTS: u32 = IOAPIC_LAST_IRQ + 1 - VIRTIO_MMIO_FIRST_IRQ;

/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_ADDR: u64 = 0xfee0_0000;

/// KVM's TSS for real-mode emulation (KVM_SET_TSS_ADDR): three pages just below the BIOS area at
/// the top of the 32-bit space.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Size of the TSS area KVM uses.
pub const KVM_TSS_SIZE: u64 = 3 * PAGE_SIZE;

/// 8254 PIT channel ports 0x40–0x43 (split irqchip only).
pub const PIT_PORT_BASE: u16 = 0x40;
/// The PIT's IRQ: channel 0's output, IOAPIC pin 0 (as the MP table says).
pub const PIT_IRQ: u32 = 0;
/// Port 0x61, system control port B: PIT channel 2 gate and speaker (split irqchip only).
pub const SPEAKER_PORT: u16 = 0x61;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port (write 0xFE to reset).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// COM1 8250 UART I/O port base.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// COM1's eight registers.
pub const SERIAL_PORT_LEN: u16 = 8;
/// COM1 IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// The boot timer's I/O port (one byte).
pub const BOOT_TIMER_PORT: u16 = 0x440;
/// The ACPI platform registers (hardware-reduced ACPI): sleep control, sleep status, reset, and
/// the Generic Event Device's event selector, one byte each from here.
pub const ACPI_PM_PORT_BASE: u16 = 0x600;
/// How many ports the ACPI platform registers take.
pub const ACPI_PM_PORT_LEN: u16 = 4;
/// The Generic Event Device's interrupt (the power button): ISA IRQ 3, unused otherwise.
pub const ACPI_GED_IRQ: u32 = 3;
/// The exit device's I/O port: a guest's write ends the VM with the written byte as the status
/// (QEMU's isa-debug-exit port, without its shifted encoding).
pub const EXIT_DEVICE_PORT: u16 = 0x501;
/// The pvpanic device's I/O port (QEMU's, which Linux's pvpanic driver finds through ACPI).
pub const PVPANIC_PORT: u16 = 0x505;

/// Maximum number of vCPUs: the MP table uses 8-bit APIC IDs, 255 is broadcast and one ID
/// goes to the IOAPIC.
pub const MAX_VCPUS: u8 = 254;

/// Initrd and similar payloads are placed on this alignment.
pub const PAGE_SIZE: u64 = 0x1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_memory_areas_do_not_overlap() {
        // (start, end) of every fixed low-memory area.
        let areas = [
            (BOOT_GDT_START, BOOT_GDT_START + 8 * BOOT_GDT_ENTRIES as u64),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (PVH_INFO_START, PVH_INFO_START + 56),
            (PVH_MODLIST_START, PVH_MODLIST_START + 32),
            (
                PVH_MEMMAP_START,
                PVH_MEMMAP_START + 24 * PVH_MEMMAP_MAX_ENTRIES as u64,
            ),
            (ZERO_PAGE_START, ZERO_PAGE_START + 4096),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER + 1),
            (PML4_START, PML4_START + 4096),
            (PDPTE_START, PDPTE_START + 4096),
            (PDE_START, PDE_START + 4096),
            (GUEST_FREE_START, GUEST_FREE_END),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (
                MPTABLE_START,
                MPTABLE_START + crate::mptable::table_size(MAX_VCPUS) as u64,
            ),
            (ACPI_RSDP_START, ACPI_TABLES_END),
            (HIMEM_START, MMIO_GAP_START),
        ];
        assert_disjoint(areas.to_vec());
    }

    /// Fails if any two (start, end) ranges overlap.
    fn assert_disjoint(mut areas: Vec<(u64, u64)>) {
        areas.sort_unstable();
        for pair in areas.windows(2) {
            assert!(pair[0].0 < pair[0].1);
            assert!(
                pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn devices_sit_in_the_mmio_gap_apart() {
        let virtio_end = VIRTIO_MMIO_BASE + u64::from(VIRTIO_MMIO_SLOTS) * VIRTIO_MMIO_SIZE;
        let areas = vec![
            (BOOT_TIMER_MMIO_ADDR, BOOT_TIMER_MMIO_ADDR + PAGE_SIZE),
            (EXIT_DEVICE_MMIO_ADDR, EXIT_DEVICE_MMIO_ADDR + PAGE_SIZE),
            (VIRTIO_MMIO_BASE, virtio_end),
            (IOAPIC_ADDR, IOAPIC_ADDR + PAGE_SIZE),
            (APIC_ADDR, APIC_ADDR + PAGE_SIZE),
            (KVM_TSS_ADDRESS, KVM_TSS_ADDRESS + KVM_TSS_SIZE),
        ];
        for (start, end) in &areas {
            assert!(MMIO_GAP_START <= *start && *end <= MMIO_GAP_END);
        }
        assert_disjoint(areas);
        assert_eq!(MMIO_GAP_SIZE, 1 << 30);
    }

    #[test]
    fn ports_do_not_overlap() {
        let port = |base: u16, len: u16| (u64::from(base), u64::from(base) + u64::from(len));
        assert_disjoint(vec![
            port(PIT_PORT_BASE, 4),
            port(I8042_DATA_PORT, 1),
            port(SPEAKER_PORT, 1),
            port(I8042_COMMAND_PORT, 1),
            port(SERIAL_PORT_BASE, SERIAL_PORT_LEN),
            port(BOOT_TIMER_PORT, 1),
            port(ACPI_PM_PORT_BASE, ACPI_PM_PORT_LEN),
            port(PVPANIC_PORT, 1),
            port(EXIT_DEVICE_PORT, 1),
        ]);
    }

    #[test]
    fn irqs_are_ioapic_pins_and_distinct() {
        let mut irqs = vec![PIT_IRQ, SERIAL_IRQ, ACPI_GED_IRQ];
        irqs.extend((0..VIRTIO_MMIO_SLOTS).map(|slot| VIRTIO_MMIO_FIRST_IRQ + slot));
        assert!(irqs.iter().all(|&irq| irq <= IOAPIC_LAST_IRQ));
        let count = irqs.len();
        irqs.sort_unstable();
        irqs.dedup();
        assert_eq!(irqs.len(), count);
        assert_eq!(VIRTIO_MMIO_SLOTS, 19);
    }
}
