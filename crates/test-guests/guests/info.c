/* pvh_info / linux64_info / bzimage_info: report what the VMM handed over at
 * boot (protocol, command line, memory map, initrd) on the serial port. */
#include "rt.h"
#include "boot.h"

#define MAX_E820_PRINT 128
#define CMDLINE_MAX 4096

static void report_initrd(u64 addr, u64 size)
{
    kv_hex("initrd_addr", addr);
    kv_hex("initrd_size", size);
    if (size == 0) {
        kv_hex("initrd_sum", fnv1a32(NULL, 0));
    } else if (addr >= MAPPED_LIMIT || size > MAPPED_LIMIT - addr) {
        line("initrd_sum=unmapped");
    } else {
        kv_hex("initrd_sum", fnv1a32((const u8 *)addr, size));
    }
}

static void e820_line(u64 addr, u64 size, u32 type)
{
    puts("e820=");
    put_hex(addr);
    putc(',');
    put_hex(size);
    putc(',');
    put_hex(type);
    nl();
}

static void report_pvh(u64 info)
{
    const struct hvm_start_info *si = (const struct hvm_start_info *)info;
    kv_hex("magic", si->magic);
    if (si->magic != HVM_START_MAGIC) {
        line("error=bad_magic");
        return;
    }
    kv_hex("version", si->version);
    kv_str("cmdline", boot_cmdline(BOOT_PVH, info), CMDLINE_MAX);

    u32 n = si->version >= 1 ? si->memmap_entries : 0;
    kv_hex("e820_count", n);
    if (n && si->memmap_paddr && si->memmap_paddr < MAPPED_LIMIT) {
        const struct hvm_memmap_table_entry *m =
            (const struct hvm_memmap_table_entry *)si->memmap_paddr;
        for (u32 i = 0; i < n && i < MAX_E820_PRINT; i++)
            e820_line(m[i].addr, m[i].size, m[i].type);
    }

    kv_hex("modules", si->nr_modules);
    if (si->nr_modules && si->modlist_paddr && si->modlist_paddr < MAPPED_LIMIT) {
        const struct hvm_modlist_entry *mod = (const struct hvm_modlist_entry *)si->modlist_paddr;
        report_initrd(mod[0].paddr, mod[0].size);
    } else {
        report_initrd(0, 0);
    }
}

static void report_linux(u64 bp)
{
    kv_hex("hdr_magic", bp_read32(bp, BP_HEADER));
    kv_hex("boot_flag", bp_read16(bp, BP_BOOT_FLAG));
    kv_hex("loader_type", bp_read8(bp, BP_TYPE_OF_LOADER));
    kv_str("cmdline", boot_cmdline(BOOT_LINUX64, bp), CMDLINE_MAX);

    u32 n = bp_read8(bp, BP_E820_ENTRIES);
    kv_hex("e820_count", n);
    for (u32 i = 0; i < n && i < BP_E820_MAX; i++) {
        u64 e = bp + BP_E820_TABLE + i * BP_E820_ENTRY_SIZE;
        e820_line(*(const volatile u64 *)e, *(const volatile u64 *)(e + 8),
                  *(const volatile u32 *)(e + 16));
    }

    u64 addr = bp_read32(bp, BP_RAMDISK_IMAGE) | ((u64)bp_read32(bp, BP_EXT_RAMDISK_IMAGE) << 32);
    u64 size = bp_read32(bp, BP_RAMDISK_SIZE) | ((u64)bp_read32(bp, BP_EXT_RAMDISK_SIZE) << 32);
    report_initrd(addr, size);
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    switch (boot) {
    case BOOT_PVH: line("boot=pvh"); line("entry=32"); break;
    case BOOT_LINUX64: line("boot=linux64"); line("entry=64"); break;
    case BOOT_BZIMAGE64: line("boot=bzimage"); line("entry=64"); break;
    case BOOT_BZIMAGE32: line("boot=bzimage"); line("entry=32"); break;
    default: line("boot=unknown"); break;
    }
    kv_hex("entry_if", (entry_rflags >> 9) & 1);
    kv_hex("info_ptr", info);
    if (info == 0 || info >= MAPPED_LIMIT) {
        line("error=no_boot_info");
    } else if (boot == BOOT_PVH) {
        report_pvh(info);
    } else {
        report_linux(info);
    }
    line("done");
}
