/* Real-mode entry of the bzImage guest (16-bit boot protocol), placed by
 * build.rs at file offset 0x280, i.e. offset 0x80 from setup_seg+0x20:0 where
 * the loader jumps.  It fills the zero page's e820 table with BIOS int 0x15
 * E820 calls, switches to flat 32-bit protected mode (CS 0x10, DS/ES/SS 0x18 as
 * Linux's __BOOT_CS/__BOOT_DS) and jumps to hdr.code32_start with ESI = zero
 * page, i.e. to the 32-bit boot protocol entry of the protected-mode part. */

#define SMAP 0x534d4150
/* Our code and data are addressed through DS (= CS - 0x20 paragraphs): a
 * CS-relative offset x is DS offset x + 0x200.  (Writes with a %cs: override
 * do not work under this host's instruction emulator.) */
#define DS_OFF(x) ((x) + 0x200)

    .code16
    .section .text, "ax"
    .globl _start
_start:
    cli
    cld
    movw %cs, %ax
    subw $0x20, %ax          /* setup_seg: the zero page */
    movw %ax, %ds
    movw %ax, %es

    /* e820 via int 0x15, ax=0xe820, into es:0x2d0, at most 128 entries */
    xorl %ebx, %ebx
    xorw %bp, %bp
    movw $0x2d0, %di
1:  movl $0xe820, %eax
    movl $20, %ecx
    movl $SMAP, %edx
    int $0x15
    jc 2f
    cmpl $SMAP, %eax
    jne 2f
    incw %bp
    addw $20, %di
    testl %ebx, %ebx
    jz 2f
    cmpw $128, %bp
    jb 1b
2:  cli
    movw %bp, %ax
    movb %al, 0x1e8          /* e820_entries */

    xorl %esi, %esi
    movw %ds, %si
    shll $4, %esi            /* linear address of the zero page */

    xorl %eax, %eax
    movw %cs, %ax
    shll $4, %eax
    addl $gdt, %eax
    movl %eax, DS_OFF(gdt_desc + 2)
    movl 0x214, %eax         /* hdr.code32_start: patch the far jump below */
    movl %eax, DS_OFF(jump_offset)

    lgdtl DS_OFF(gdt_desc)
    movl %cr0, %eax
    orb $1, %al
    movl %eax, %cr0
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    /* ljmpl $0x10, $code32_start (immediate patched above) */
    .byte 0x66, 0xea
jump_offset:
    .long 0
    .word 0x10

    .p2align 3
gdt:
    .quad 0
    .quad 0
    .quad 0x00cf9a000000ffff     /* 0x10 32-bit flat code */
    .quad 0x00cf92000000ffff     /* 0x18 flat data */
gdt_desc:
    .word 31
    .long 0
