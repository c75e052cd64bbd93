/* Boot protocol a guest was entered with (shared by C and the entry stubs). */
#ifndef BOOT_KINDS_H
#define BOOT_KINDS_H
#define BOOT_PVH 1       /* PVH: 32-bit, paging off, EBX = hvm_start_info */
#define BOOT_LINUX64 2   /* ELF without PVH note, Linux 64-bit protocol, RSI = boot_params */
#define BOOT_BZIMAGE64 3 /* bzImage, 64-bit entry at load + 0x200, RSI = boot_params */
#define BOOT_BZIMAGE32 4 /* bzImage, 32-bit entry at load + 0, ESI = boot_params */
#endif
