//! The boot GDT and IDT, and the KVM segment registers that match them.
//!
//! The GDT has the four slots that fit between [`BOOT_GDT_START`] and [`BOOT_IDT_START`]:
//! null, a TSS, the flat code segment at the selector the Linux boot protocol names
//! (`__BOOT_CS` = 0x10; 64-bit for the Linux entry, 32-bit for PVH) and the flat data segment
//! (`__BOOT_DS` = 0x18).

use kvm_bindings::kvm_segment;

use crate::layout::{BOOT_GDT_ENTRIES, BOOT_GDT_START, BOOT_IDT_START};
use crate::{write_obj, GuestMemoryMmap, Result};

/// GDT slot of the TSS.
pub const TSS_INDEX: usize = 1;
/// GDT slot of the flat code segment (Linux `__BOOT_CS`).
pub const CODE_INDEX: usize = 2;
/// GDT slot of the flat data segment (Linux `__BOOT_DS`).
pub const DATA_INDEX: usize = 3;

/// Selector of a GDT slot (RPL 0).
pub const fn selector(index: usize) -> u16 {
    (index * 8) as u16
}

// Access byte bits.
const ACCESS_PRESENT: u8 = 1 << 7;
const ACCESS_CODE_DATA: u8 = 1 << 4; // S: code/data rather than system
const TYPE_CODE_READ_ACCESSED: u8 = 0xb;
const TYPE_DATA_WRITE_ACCESSED: u8 = 0x3;
const TYPE_TSS_BUSY: u8 = 0xb;
// Flag nibble bits.
const FLAG_GRANULARITY_4K: u8 = 1 << 3;
const FLAG_DEFAULT_32: u8 = 1 << 2;
const FLAG_LONG_MODE: u8 = 1 << 1;

/// Encodes a segment descriptor from its access byte, flag nibble, base and 20-bit limit.
pub const fn descriptor(access: u8, flags: u8, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags & 0xf) as u64) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The boot GDT, slot by slot; the code segment is 64-bit when `long_mode`, else 32-bit.
pub fn boot_gdt(long_mode: bool) -> [u64; BOOT_GDT_ENTRIES] {
    let code = ACCESS_PRESENT | ACCESS_CODE_DATA | TYPE_CODE_READ_ACCESSED;
    let data = ACCESS_PRESENT | ACCESS_CODE_DATA | TYPE_DATA_WRITE_ACCESSED;
    let code_flags = if long_mode {
        FLAG_GRANULARITY_4K | FLAG_LONG_MODE
    } else {
        FLAG_GRANULARITY_4K | FLAG_DEFAULT_32
    };
    let mut gdt = [0u64; BOOT_GDT_ENTRIES];
    // A minimal busy TSS at address 0, there only because VMX insists on a usable TR. TR is
    // loaded from the register cache, never from this slot, so the 8-byte (32-bit style)
    // descriptor is enough even in long mode.
    gdt[TSS_INDEX] = descriptor(ACCESS_PRESENT | TYPE_TSS_BUSY, 0, 0, 0x67);
    gdt[CODE_INDEX] = descriptor(code, code_flags, 0, 0xfffff);
    gdt[DATA_INDEX] = descriptor(data, FLAG_GRANULARITY_4K | FLAG_DEFAULT_32, 0, 0xfffff);
    gdt
}

/// Decodes a descriptor into the segment register KVM expects (byte-granular limit).
pub fn segment_from_descriptor(index: usize, desc: u64) -> kvm_segment {
    let access = ((desc >> 40) & 0xff) as u8;
    let flags = ((desc >> 52) & 0xf) as u8;
    let base = ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24);
    let raw_limit = ((desc & 0xffff) | (((desc >> 48) & 0xf) << 16)) as u32;
    let g = flags & FLAG_GRANULARITY_4K != 0;
    let limit = if g {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = access >> 7;
    kvm_segment {
        base,
        limit,
        selector: selector(index),
        type_: access & 0xf,
        present,
        dpl: (access >> 5) & 0x3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g: g as u8,
        avl: flags & 1,
        unusable: (present == 0) as u8,
        padding: 0,
    }
}

/// Writes the boot GDT at [`BOOT_GDT_START`] and an empty IDT at [`BOOT_IDT_START`].
pub fn write_gdt_idt(mem: &GuestMemoryMmap, long_mode: bool) -> Result<()> {
    for (i, desc) in boot_gdt(long_mode).iter().enumerate() {
        write_obj(mem, *desc, BOOT_GDT_START + 8 * i as u64, "the boot GDT")?;
    }
    write_obj(mem, 0u64, BOOT_IDT_START, "the boot IDT")
}

/// `limit` of the GDTR for the boot GDT.
pub const GDT_LIMIT: u16 = (BOOT_GDT_ENTRIES * 8 - 1) as u16;
/// `limit` of the IDTR for the (empty) boot IDT.
pub const IDT_LIMIT: u16 = 7;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::guest_mem;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn descriptors_have_the_known_encodings() {
        let gdt = boot_gdt(true);
        assert_eq!(gdt[0], 0);
        assert_eq!(gdt[CODE_INDEX], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[DATA_INDEX], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[TSS_INDEX], 0x0000_8b00_0000_0067);
        let gdt32 = boot_gdt(false);
        assert_eq!(gdt32[CODE_INDEX], 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt32[DATA_INDEX], gdt[DATA_INDEX]);
        assert_eq!(
            descriptor(0x93, 0xc, 0x1234_5678, 0xabcde),
            0x12ca_9334_5678_bcde
        );
        assert_eq!(selector(CODE_INDEX), 0x10);
        assert_eq!(selector(DATA_INDEX), 0x18);
    }

    #[test]
    fn segments_decode_from_descriptors() {
        let gdt = boot_gdt(true);
        let cs = segment_from_descriptor(CODE_INDEX, gdt[CODE_INDEX]);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x10));
        assert_eq!((cs.type_, cs.present, cs.dpl, cs.s), (0xb, 1, 0, 1));
        assert_eq!((cs.l, cs.db, cs.g, cs.unusable), (1, 0, 1, 0));

        let cs32 = segment_from_descriptor(CODE_INDEX, boot_gdt(false)[CODE_INDEX]);
        assert_eq!((cs32.l, cs32.db, cs32.selector), (0, 1, 0x10));

        let ds = segment_from_descriptor(DATA_INDEX, gdt[DATA_INDEX]);
        assert_eq!((ds.type_, ds.db, ds.g, ds.limit), (3, 1, 1, 0xffff_ffff));

        let tr = segment_from_descriptor(TSS_INDEX, gdt[TSS_INDEX]);
        assert_eq!(
            (tr.type_, tr.s, tr.present, tr.limit, tr.g),
            (0xb, 0, 1, 0x67, 0)
        );

        let odd = segment_from_descriptor(1, descriptor(0x93, 0x4, 0x1234_5678, 0xabcde));
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0xabcde, 0));

        let null = segment_from_descriptor(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn gdt_and_idt_in_guest_memory() {
        let mem = guest_mem(1 << 20);
        // Dirty the IDT: it must be rewritten empty.
        mem.write_obj(u64::MAX, GuestAddress(BOOT_IDT_START))
            .unwrap();
        write_gdt_idt(&mem, true).unwrap();
        for (i, want) in boot_gdt(true).iter().enumerate() {
            let got: u64 = mem
                .read_obj(GuestAddress(BOOT_GDT_START + 8 * i as u64))
                .unwrap();
            assert_eq!(got, *want);
        }
        let idt: u64 = mem.read_obj(GuestAddress(BOOT_IDT_START)).unwrap();
        assert_eq!(idt, 0);
        assert_eq!(GDT_LIMIT, 31);
        assert_eq!(BOOT_GDT_START + 8 * BOOT_GDT_ENTRIES as u64, BOOT_IDT_START);
    }
}
