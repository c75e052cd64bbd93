/* AP start-up trampoline for the smp guest.  The BSP copies
 * [ap_tramp_start, ap_tramp_end) to AP_TRAMP (0x10000) and sends
 * INIT-SIPI-SIPI with vector 0x10.  Each AP: real mode -> 32-bit flat
 * protected mode (paging off), reads its LAPIC ID (MMIO 0xfee00020 >> 24),
 * takes a slot with lock xadd on ap_count, stores the ID in ap_ids[slot],
 * increments ap_done, then halts forever (cli; hlt loop).  No stack is used. */

#define AP_TRAMP 0x10000
#define T(x) ((x) - ap_tramp_start + AP_TRAMP)
#define MAX_APS 64

    .section .rodata.tramp, "a"
    .globl ap_tramp_start
    .globl ap_tramp_end
    .code16
ap_tramp_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (tgdt_desc - ap_tramp_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $T(ap_pm32)

    .code32
ap_pm32:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl 0xfee00020, %eax
    shrl $24, %eax
    movl $1, %ecx
    lock xaddl %ecx, ap_count
    cmpl $MAX_APS, %ecx
    jae 2f
    movl %eax, ap_ids(,%ecx,4)
2:  lock incl ap_done
1:  cli
    hlt
    jmp 1b

    .p2align 3
tgdt:
    .quad 0
    .quad 0x00cf9a000000ffff        /* 0x08 32-bit flat code */
    .quad 0x00cf92000000ffff        /* 0x10 flat data */
tgdt_end:
tgdt_desc:
    .word tgdt_end - tgdt - 1
    .long T(tgdt)
ap_tramp_end:
