/* Common entry code: from 32-bit protected mode (paging off) or from 64-bit
 * long mode, install our own GDT and an identity map of the first 4 GiB
 * (2 MiB pages; 3..4 GiB uncached for MMIO), zero .bss, switch to our stack and
 * call guest_main(boot, info, entry_rflags); then reset the machine. */
#include "boot_kinds.h"

#define STACK_SIZE 16384
#define PTE_P_RW 0x003
#define PDE_2M 0x083          /* present, writable, page size */
#define PDE_UC 0x018          /* PWT | PCD */
#define CR0_PG 0x80000000
#define CR4_PAE 0x20
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100

    .section .text.common, "ax"

/* enter_long32: 32-bit flat protected mode, paging off.
 * In: eax = boot kind, edi = boot info pointer.
 * Switches to long mode with bootstrap tables (first 1 GiB identity mapped,
 * like the VMM's 64-bit entry) and continues in enter_long64, so every guest
 * runs the same 64-bit set-up code whatever its entry. */
    .code32
    .globl enter_long32
enter_long32:
    movl $boot_stack_top, %esp
    pushfl
    popl %esi               /* entry eflags */
    cli
    cld
    movl %eax, %ebp         /* boot kind */
    movl %edi, %ebx         /* boot info */

    /* zero the bootstrap tables (outside .bss) */
    movl $boot_pml4, %edi
    movl $(3 * 4096 / 4), %ecx
    xorl %eax, %eax
    rep stosl
    movl $boot_pdpt, %eax
    orl $PTE_P_RW, %eax
    movl %eax, boot_pml4
    movl $boot_pd, %eax
    orl $PTE_P_RW, %eax
    movl %eax, boot_pdpt
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $PDE_2M, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jb 1b

    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $CR0_PG, %eax
    movl %eax, %cr0
    lgdt gdt_desc
    ljmp $0x08, $from32

    .code64
from32:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %esi, %r8d         /* entry eflags (zero-extended) */
    movl %ebp, %edi         /* boot kind */
    movl %ebx, %esi         /* info (zero-extended) */
    jmp enter_long64_flags_in_r8

/* enter_long64: 64-bit long mode (the VMM's identity map covers at least our
 * image).  In: edi = boot kind, rsi = boot info pointer. */
    .globl enter_long64
enter_long64:
    movq $stack_top, %rsp
    pushfq
    popq %r8                /* entry rflags */
enter_long64_flags_in_r8:
    cli
    cld
    movl %edi, %ebp
    movq %rsi, %rbx

    movq $__bss_start, %rdi
    movq $__bss_end, %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb

    movq $pdpt, %rax
    orq $PTE_P_RW, %rax
    movq %rax, pml4
    movq $pd, %rax
    orq $PTE_P_RW, %rax
    movq $pdpt, %rdx
    movl $4, %ecx
1:  movq %rax, (%rdx)
    addq $4096, %rax
    addq $8, %rdx
    loop 1b
    xorl %ecx, %ecx
    movq $pd, %rdx
2:  movq %rcx, %rax
    shlq $21, %rax
    orq $PDE_2M, %rax
    cmpl $1536, %ecx
    jb 3f
    orq $PDE_UC, %rax
3:  movq %rax, (%rdx,%rcx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    lgdt gdt_desc(%rip)
    movq $pml4, %rax
    movq %rax, %cr3
    pushq $0x08
    leaq 4f(%rip), %rax
    pushq %rax
    lretq
4:  movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movl %ebp, %edi
    movq %rbx, %rsi
    movq $stack_top, %rsp
    movq %r8, %rdx
    xorl %ebp, %ebp
    call guest_main
    call guest_reset
5:  cli
    hlt
    jmp 5b

    .section .rodata.gdt, "a"
    .p2align 3
    .globl gdt
gdt:
    .quad 0                       /* 0x00 null */
    .quad 0x00af9a000000ffff      /* 0x08 64-bit code */
    .quad 0x00cf92000000ffff      /* 0x10 flat data */
    .quad 0x00cf9a000000ffff      /* 0x18 32-bit flat code */
gdt_end:
    .p2align 3
    .globl gdt_desc
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt

    .section .bss.pgtables, "aw", @nobits
    .p2align 12
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4 * 4096
    .p2align 4
stack_bottom:
    .skip STACK_SIZE
stack_top:

    /* Bootstrap tables and stack of the 32-bit path: not in .bss, which
     * enter_long64 zeroes while they are in use. */
    .section .bootpgt, "aw", @nobits
    .p2align 12
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4096
    .skip 256
boot_stack_top:
