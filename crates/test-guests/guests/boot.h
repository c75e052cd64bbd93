/* Boot protocol structures the guests read: PVH hvm_start_info and the Linux
 * zero page (boot_params), by offset. */
#ifndef BOOT_H
#define BOOT_H
#include "rt.h"

/* Everything below this address is identity mapped by the entry stubs. */
#define MAPPED_LIMIT 0x100000000ULL

#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr;    /* version >= 1 */
    u32 memmap_entries;  /* version >= 1 */
    u32 reserved;
};

struct hvm_modlist_entry {
    u64 paddr;
    u64 size;
    u64 cmdline_paddr;
    u64 reserved;
};

struct hvm_memmap_table_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
};

/* Zero page (struct boot_params) offsets. */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_SETUP_SECTS 0x1f1
#define BP_BOOT_FLAG 0x1fe
#define BP_HEADER 0x202
#define BP_VERSION 0x206
#define BP_TYPE_OF_LOADER 0x210
#define BP_LOADFLAGS 0x211
#define BP_CODE32_START 0x214
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
#define BP_E820_MAX 128
#define BP_E820_ENTRY_SIZE 20

static inline u8 bp_read8(u64 bp, u32 off) { return *(const volatile u8 *)(bp + off); }
static inline u16 bp_read16(u64 bp, u32 off) { return *(const volatile u16 *)(bp + off); }
static inline u32 bp_read32(u64 bp, u32 off) { return *(const volatile u32 *)(bp + off); }
static inline u64 bp_read64(u64 bp, u32 off) { return *(const volatile u64 *)(bp + off); }

#endif
