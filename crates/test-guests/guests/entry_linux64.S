/* Linux 64-bit boot protocol entry (ELF e_entry, no PVH note): long mode, the
 * VMM's identity map of the first 1 GiB, RSI = boot_params. */
#include "boot_kinds.h"

    .section .text.head, "ax"
    .code64
    .globl linux64_start
linux64_start:
    movl $BOOT_LINUX64, %edi
    jmp enter_long64
