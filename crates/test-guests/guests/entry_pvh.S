/* PVH entry: the ELF note XEN_ELFNOTE_PHYS32_ENTRY (name "Xen", type 18) holds
 * the 32-bit physical entry address.  Entered in 32-bit protected mode, paging
 * off, EBX = hvm_start_info. */
#include "boot_kinds.h"

    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                 /* namesz: "Xen\0" */
    .long 4                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_start

    .section .text.head, "ax"
    .code32
    .globl pvh_start
pvh_start:
    movl $BOOT_PVH, %eax
    movl %ebx, %edi
    jmp enter_long32
