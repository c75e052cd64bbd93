//! ACPI tables (hardware-reduced ACPI 6.5), built with the rust-vmm `acpi_tables` crate: how a
//! guest finds its vCPUs, interrupt controllers and devices, powers off, resets, and hears the
//! power button.
//!
//! Layout from [`ACPI_RSDP_START`] (where Linux also scans for it), each table 16-byte aligned:
//! the RSDP, the XSDT, the FADT, the MADT and the DSDT, all below [`ACPI_TABLES_END`]. There is
//! no FACS: a hardware-reduced machine has no firmware waking vector or global lock.
//!
//! The XSDT lists the FADT and the MADT; the DSDT is reached through the FADT's X_DSDT.
//!
//! - **FADT**: the HW_REDUCED_ACPI flag (no PM1 blocks, no SCI, no PM timer), the sleep control and
//!   status registers and the reset register on the ports of [`ACPI_PM_PORT_BASE`], no VGA, no
//!   CMOS RTC, no MSI.
//! - **MADT**: one enabled local APIC per vCPU (APIC ID = index), the I/O APIC with ID `vcpus` and
//!   GSI base 0, LINT1 as NMI on every processor (as the MP table says), PCAT_COMPAT when KVM
//!   emulates the 8259 PICs.
//! - **DSDT**: in `\_SB`, COM1 (`PNP0501`), one `LNRO0005` device per virtio-mmio slot in use (the
//!   binding Linux's virtio-mmio driver has), pvpanic (`QEMU0001`, port [`PVPANIC_PORT`]), the power
//!   button (`PNP0C0C`) and a Generic Event Device (`ACPI0013`) whose interrupt
//!   ([`ACPI_GED_IRQ`]) makes it read the event selector and notify the power button; `\_S5`
//!   gives the sleep type the guest writes to power off.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::layout::{
    ACPI_GED_IRQ, ACPI_PM_PORT_BASE, ACPI_RSDP_START, ACPI_TABLES_END, APIC_ADDR, IOAPIC_ADDR,
    MAX_VCPUS, PVPANIC_PORT, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN, VIRTIO_MMIO_SIZE,
};
use crate::{write_bytes, Error, GuestMemoryMmap, Result};

/// The sleep control register (write `SLP_TYP << 2 | SLP_EN`), offset from [`ACPI_PM_PORT_BASE`].
pub const SLEEP_CONTROL_OFFSET: u16 = 0;
/// The sleep status register (reads 0), offset from [`ACPI_PM_PORT_BASE`].
pub const SLEEP_STATUS_OFFSET: u16 = 1;
/// The reset register, offset from [`ACPI_PM_PORT_BASE`].
pub const RESET_OFFSET: u16 = 2;
/// The Generic Event Device's event selector (read: pending events, cleared by the read), offset
/// from [`ACPI_PM_PORT_BASE`].
pub const GED_SELECTOR_OFFSET: u16 = 3;
/// The value the guest writes to the reset register.
pub const RESET_VALUE: u8 = 1;
/// The sleep type `\_S5` (soft off) names: SLP_TYP in bits 2..5 of the sleep control register.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN: bit 5 of the sleep control register.
pub const SLEEP_ENABLE: u8 = 1 << 5;
/// The event selector's bit for the power button.
pub const GED_EVENT_POWER_BUTTON: u8 = 1;
/// The byte a pvpanic read returns: the events the device supports (bit 0, "panicked").
pub const PVPANIC_PANICKED: u8 = 1;

const OEM_ID: [u8; 6] = *b"VMM   ";
const OEM_TABLE_ID: [u8; 8] = *b"VMM     ";
const OEM_REVISION: u32 = 1;
/// IAPC_BOOT_ARCH: VGA not present, MSI not supported, CMOS RTC not present.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);
/// MADT flags: PCAT_COMPAT, the machine has 8259 PICs (to be masked by the guest).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT local APIC NMI structure: type 4, length 6, processor UID 0xff (all), flags 0
/// (conforming polarity and trigger), LINT1.
const LAPIC_NMI_ALL_LINT1: [u8; 6] = [4, 6, 0xff, 0, 0, 1];
/// Offset of the MADT's flags and of every table's checksum byte.
const MADT_FLAGS_OFFSET: usize = 40;
const CHECKSUM_OFFSET: usize = 9;
/// Every table starts on this alignment.
const TABLE_ALIGN: u64 = 16;

/// What the tables describe: the parts of the machine that vary from VM to VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    /// Number of vCPUs (1 to [`MAX_VCPUS`]).
    pub vcpus: u8,
    /// Whether KVM emulates the 8259 PICs (the in-kernel irqchip): the MADT then says PCAT_COMPAT.
    pub legacy_pics: bool,
    /// The virtio-mmio devices, as (MMIO base, IRQ), in slot order.
    pub virtio_mmio: Vec<(u64, u32)>,
}

/// The tables as laid out in guest memory from [`ACPI_RSDP_START`].
#[derive(Debug, Clone)]
pub struct Tables {
    /// The bytes to write at [`ACPI_RSDP_START`] (gaps between tables are zero).
    pub bytes: Vec<u8>,
    /// Each table's signature, guest address and length, the RSDP first.
    pub tables: Vec<([u8; 4], u64, usize)>,
}

impl Tables {
    /// The RSDP's guest address.
    pub fn rsdp_addr(&self) -> u64 {
        ACPI_RSDP_START
    }
}

/// Byte that makes `bytes` sum to zero once stored at `CHECKSUM_OFFSET`.
fn fix_checksum(table: &mut [u8]) {
    table[CHECKSUM_OFFSET] = 0;
    let sum = table.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    table[CHECKSUM_OFFSET] = 0u8.wrapping_sub(sum);
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io = |offset: u16| {
        let port = u64::from(ACPI_PM_PORT_BASE + offset);
        GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // The power button is a control-method device (PNP0C0C); there is no sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io(RESET_OFFSET);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io(SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io(SLEEP_STATUS_OFFSET);
    to_bytes(&fadt.finalize())
}

fn madt(machine: &Machine) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_ADDR as u32),
    );
    for id in 0..machine.vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(machine.vcpus, IOAPIC_ADDR as u32, 0));
    let mut bytes = to_bytes(&madt);
    // The local APIC NMI structure (the crate has none): every processor's LINT1 is the NMI
    // input, as the MP table says and the vCPUs' LAPICs are set up.
    bytes.extend_from_slice(&LAPIC_NMI_ALL_LINT1);
    let len = bytes.len() as u32;
    bytes[4..8].copy_from_slice(&len.to_le_bytes());
    if machine.legacy_pics {
        bytes[MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4]
            .copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    }
    fix_checksum(&mut bytes);
    bytes
}

/// An `Interrupt()` resource: edge-triggered, active high, exclusive, as every interrupt here is
/// delivered (irqfd pulses).
fn edge_irq(irq: u32) -> aml::Interrupt {
    aml::Interrupt::new(true, true, false, false, irq)
}

fn dsdt(machine: &Machine) -> Vec<u8> {
    let zero_uid = aml::Name::new("_UID".into(), &aml::ZERO);

    let serial_io = aml::IO::new(SERIAL_PORT_BASE, SERIAL_PORT_BASE, 1, SERIAL_PORT_LEN as u8);
    let serial_irq = edge_irq(SERIAL_IRQ);
    let serial_crs = aml::ResourceTemplate::new(vec![&serial_io, &serial_irq]);
    let serial_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let serial_crs = aml::Name::new("_CRS".into(), &serial_crs);
    let serial = aml::Device::new("COM1".into(), vec![&serial_hid, &zero_uid, &serial_crs]);

    // One device per virtio-mmio slot: VR00, VR01, ...
    let slots: Vec<u32> = (0..machine.virtio_mmio.len() as u32).collect();
    let memories: Vec<aml::Memory32Fixed> = (machine.virtio_mmio.iter())
        .map(|&(base, _)| aml::Memory32Fixed::new(true, base as u32, VIRTIO_MMIO_SIZE as u32))
        .collect();
    let irqs: Vec<aml::Interrupt> = (machine.virtio_mmio.iter())
        .map(|&(_, irq)| edge_irq(irq))
        .collect();
    let templates: Vec<aml::ResourceTemplate> = (memories.iter().zip(&irqs))
        .map(|(mem, irq)| aml::ResourceTemplate::new(vec![mem, irq]))
        .collect();
    let crss: Vec<aml::Name> = (templates.iter())
        .map(|crs| aml::Name::new("_CRS".into(), crs))
        .collect();
    let uids: Vec<aml::Name> = (slots.iter())
        .map(|slot| aml::Name::new("_UID".into(), slot))
        .collect();
    let virtio_hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let virtio: Vec<aml::Device> = (slots.iter().zip(uids.iter().zip(&crss)))
        .map(|(slot, (uid, crs))| {
            let name = format!("VR{slot:02X}");
            aml::Device::new(name.as_str().into(), vec![&virtio_hid, uid, crs])
        })
        .collect();

    let pvpanic_io = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let pvpanic_crs = aml::ResourceTemplate::new(vec![&pvpanic_io]);
    let pvpanic_crs = aml::Name::new("_CRS".into(), &pvpanic_crs);
    let pvpanic_hid = aml::Name::new("_HID".into(), &"QEMU0001");
    let pvpanic = aml::Device::new("PEVT".into(), vec![&pvpanic_hid, &zero_uid, &pvpanic_crs]);

    let button_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    let power_button = aml::Device::new("PWRB".into(), vec![&button_hid, &zero_uid]);

    // The GED: on its interrupt, _EVT reads the selector (which clears it) and notifies the power
    // button (0x80: "pressed") if its bit is set.
    let ged_irq = edge_irq(ACPI_GED_IRQ);
    let ged_crs = aml::ResourceTemplate::new(vec![&ged_irq]);
    let ged_crs = aml::Name::new("_CRS".into(), &ged_crs);
    let ged_hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let selector_port = ACPI_PM_PORT_BASE + GED_SELECTOR_OFFSET;
    let ged_region = aml::OpRegion::new(
        "GDST".into(),
        aml::OpRegionSpace::SystemIO,
        &selector_port,
        &1u8,
    );
    let ged_field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 8)],
    );
    let events = aml::Local(0);
    let selector = aml::Path::new("GDAT");
    let read = aml::Store::new(&events, &selector);
    let button_bit = aml::And::new(&aml::ZERO, &events, &GED_EVENT_POWER_BUTTON);
    let pressed = aml::Equal::new(&button_bit, &GED_EVENT_POWER_BUTTON);
    let button = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&button, &0x80u8);
    let on_button = aml::If::new(&pressed, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &on_button]);
    let ged = aml::Device::new(
        "GED0".into(),
        vec![&ged_hid, &zero_uid, &ged_crs, &ged_region, &ged_field, &evt],
    );

    let mut children: Vec<&dyn Aml> = vec![&serial];
    children.extend(virtio.iter().map(|d| d as &dyn Aml));
    children.extend([&pvpanic as &dyn Aml, &power_button, &ged]);
    let sb = aml::Scope::new("\\_SB_".into(), children);
    let s5_package = aml::Package::new(vec![&S5_SLEEP_TYPE, &aml::ZERO]);
    let s5 = aml::Name::new("_S5_".into(), &s5_package);

    let mut body = Vec::new();
    sb.to_aml_bytes(&mut body);
    s5.to_aml_bytes(&mut body);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

fn align(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

/// Builds the tables for `machine`, laid out from [`ACPI_RSDP_START`].
pub fn build(machine: &Machine) -> Result<Tables> {
    if machine.vcpus == 0 || machine.vcpus > MAX_VCPUS {
        return Err(Error::InvalidCpuCount {
            num_cpus: usize::from(machine.vcpus),
            max: MAX_VCPUS,
        });
    }
    let rsdp_len = Rsdp::len() as u64;
    let xsdt_addr = align(ACPI_RSDP_START + rsdp_len);
    // The XSDT's size is known up front: a header and two 8-byte entries (the FADT and the MADT;
    // the DSDT is found through the FADT only).
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align(xsdt_addr + xsdt_len);
    let madt_bytes = madt(machine);
    let dsdt_bytes = dsdt(machine);
    let madt_addr = align(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let dsdt_addr = align(madt_addr + madt_bytes.len() as u64);
    let fadt_bytes = fadt(dsdt_addr);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr] {
        xsdt.add_entry(addr);
    }
    let xsdt_bytes = to_bytes(&xsdt);
    let rsdp_bytes = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    debug_assert_eq!(xsdt_bytes.len() as u64, xsdt_len);

    let placed = [
        (*b"RSD ", ACPI_RSDP_START, rsdp_bytes),
        (*b"XSDT", xsdt_addr, xsdt_bytes),
        (*b"FACP", fadt_addr, fadt_bytes),
        (*b"APIC", madt_addr, madt_bytes),
        (*b"DSDT", dsdt_addr, dsdt_bytes),
    ];
    let end = dsdt_addr + placed[4].2.len() as u64;
    if end > ACPI_TABLES_END {
        return Err(Error::AcpiTablesTooLarge {
            size: end - ACPI_RSDP_START,
            max: ACPI_TABLES_END - ACPI_RSDP_START,
        });
    }
    let mut bytes = vec![0u8; (end - ACPI_RSDP_START) as usize];
    let mut tables = Vec::with_capacity(placed.len());
    for (signature, addr, table) in placed {
        let at = (addr - ACPI_RSDP_START) as usize;
        bytes[at..at + table.len()].copy_from_slice(&table);
        tables.push((signature, addr, table.len()));
    }
    Ok(Tables { bytes, tables })
}

/// Writes the tables for `machine` at [`ACPI_RSDP_START`] and returns the RSDP's address.
pub fn setup_acpi(mem: &GuestMemoryMmap, machine: &Machine) -> Result<u64> {
    let tables = build(machine)?;
    write_bytes(mem, &tables.bytes, ACPI_RSDP_START, "the ACPI tables")?;
    Ok(tables.rsdp_addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn machine(vcpus: u8, slots: u32) -> Machine {
        Machine {
            vcpus,
            legacy_pics: false,
            virtio_mmio: (0..slots)
                .map(|s| (0xd000_0000 + u64::from(s) * 0x1000, 5 + s))
                .collect(),
        }
    }

    /// The table at `addr`, found the way a guest does: through its own length field.
    fn table_at(t: &Tables, addr: u64) -> &[u8] {
        let at = (addr - ACPI_RSDP_START) as usize;
        let len = u32_at(&t.bytes, at + 4) as usize;
        &t.bytes[at..at + len]
    }

    #[test]
    fn every_table_sums_to_zero_and_the_pointers_chain() {
        for (vcpus, slots) in [(1, 0), (4, 3), (32, 19), (MAX_VCPUS, 19)] {
            let t = build(&machine(vcpus, slots)).unwrap();
            let rsdp = &t.bytes[..36];
            assert_eq!(&rsdp[..8], b"RSD PTR ");
            assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
            assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
            let xsdt = table_at(&t, u64_at(rsdp, 24));
            assert_eq!(&xsdt[..4], b"XSDT");
            assert_eq!(sum(xsdt), 0);
            let entries: Vec<u64> = (36..xsdt.len())
                .step_by(8)
                .map(|at| u64_at(xsdt, at))
                .collect();
            let signatures: Vec<&[u8]> = entries.iter().map(|&a| &table_at(&t, a)[..4]).collect();
            assert_eq!(
                signatures,
                [b"FACP", b"APIC"],
                "the DSDT only through the FADT"
            );
            // The FADT's X_DSDT (offset 140) leads to the DSDT.
            let dsdt = u64_at(table_at(&t, entries[0]), 140);
            assert_eq!(&table_at(&t, dsdt)[..4], b"DSDT");
            for addr in entries.into_iter().chain([dsdt]) {
                assert_eq!(sum(table_at(&t, addr)), 0);
                assert_eq!(addr % TABLE_ALIGN, 0);
            }
            assert!(ACPI_RSDP_START + t.bytes.len() as u64 <= ACPI_TABLES_END);
        }
    }

    #[test]
    fn madt_has_one_local_apic_per_vcpu_and_the_ioapic() {
        for vcpus in [1u8, 4, 32, MAX_VCPUS] {
            let t = build(&machine(vcpus, 1)).unwrap();
            let madt = table_at(&t, t.tables[3].1);
            assert_eq!(&madt[..4], b"APIC");
            assert_eq!(u32_at(madt, 36), APIC_ADDR as u32);
            assert_eq!(u32_at(madt, MADT_FLAGS_OFFSET), 0);
            let mut at = 44;
            let mut apic_ids = Vec::new();
            let mut ioapics = Vec::new();
            let mut nmis = Vec::new();
            while at < madt.len() {
                let (kind, len) = (madt[at], madt[at + 1] as usize);
                match kind {
                    4 => nmis.push(madt[at..at + len].to_vec()),
                    0 => {
                        assert_eq!(u32_at(madt, at + 4), 1, "enabled");
                        apic_ids.push(madt[at + 3]);
                    }
                    1 => ioapics.push((madt[at + 2], u32_at(madt, at + 4), u32_at(madt, at + 8))),
                    other => panic!("unexpected MADT entry type {other}"),
                }
                at += len;
            }
            assert_eq!(apic_ids, (0..vcpus).collect::<Vec<_>>());
            assert_eq!(ioapics, [(vcpus, IOAPIC_ADDR as u32, 0)]);
            assert_eq!(
                nmis,
                [LAPIC_NMI_ALL_LINT1.to_vec()],
                "LINT1 is NMI on every CPU"
            );
            assert_eq!(at, madt.len(), "the entries fill the table");
        }
        let mut with_pics = machine(2, 0);
        with_pics.legacy_pics = true;
        let t = build(&with_pics).unwrap();
        let madt = table_at(&t, t.tables[3].1);
        assert_eq!(u32_at(madt, MADT_FLAGS_OFFSET), MADT_PCAT_COMPAT);
        assert_eq!(sum(madt), 0);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_our_registers() {
        let t = build(&machine(1, 0)).unwrap();
        let fadt = table_at(&t, t.tables[2].1);
        assert_eq!(fadt.len(), 276);
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // Generic addresses: space 1 (I/O), 8 bits, byte access, then the port.
        let gas = |at: usize| (fadt[at], fadt[at + 1], fadt[at + 3], u64_at(fadt, at + 4));
        let port = |offset: u16| u64::from(ACPI_PM_PORT_BASE + offset);
        assert_eq!(gas(116), (1, 8, 1, port(RESET_OFFSET)));
        assert_eq!(fadt[128], RESET_VALUE);
        assert_eq!(gas(244), (1, 8, 1, port(SLEEP_CONTROL_OFFSET)));
        assert_eq!(gas(256), (1, 8, 1, port(SLEEP_STATUS_OFFSET)));
    }

    /// Counts `needle` in `hay`.
    fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    #[test]
    fn dsdt_names_the_devices() {
        for slots in [0u32, 1, 3, 19] {
            let t = build(&machine(1, slots)).unwrap();
            let dsdt = table_at(&t, t.tables[4].1);
            assert_eq!(&dsdt[..4], b"DSDT");
            assert_eq!(count(dsdt, b"LNRO0005\0"), slots as usize);
            for s in 0..slots {
                assert_eq!(count(dsdt, format!("VR{s:02X}").as_bytes()), 1);
                // Memory32Fixed: tag 0x86, length 9, read-write, then the base.
                let base = (0xd000_0000u32 + s * 0x1000).to_le_bytes();
                let descriptor = [&[0x86, 9, 0, 1][..], &base].concat();
                assert_eq!(count(dsdt, &descriptor), 1);
            }
            for name in [&b"QEMU0001\0"[..], b"ACPI0013\0", b"COM1", b"GED0", b"_S5_"] {
                assert_eq!(count(dsdt, name), 1, "{}", String::from_utf8_lossy(name));
            }
            // The power button: its definition, and the GED's Notify.
            assert_eq!(count(dsdt, b"PWRB"), 2);
        }
    }

    #[test]
    fn no_or_too_many_cpus() {
        assert!(build(&machine(0, 0)).is_err());
        assert!(build(&machine(MAX_VCPUS + 1, 0)).is_err());
    }
}
