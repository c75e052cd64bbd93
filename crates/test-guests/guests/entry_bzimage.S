/* Protected-mode part of the bzImage guest, loaded at code32_start (0x100000).
 * Offset 0: 32-bit boot protocol entry (flat protected mode, paging off,
 * ESI = boot_params).  Offset 0x200: 64-bit boot protocol entry (long mode,
 * RSI = boot_params), as in a real kernel (startup_32 / startup_64). */
#include "boot_kinds.h"

    .section .text.head, "ax"
    .code32
    .globl bzimage_start32
bzimage_start32:
    movl $BOOT_BZIMAGE32, %eax
    movl %esi, %edi
    jmp enter_long32

    .org 0x200, 0xcc
    .code64
    .globl bzimage_start64
bzimage_start64:
    movl $BOOT_BZIMAGE64, %edi
    jmp enter_long64
