/* null: the smallest complete boot, for start-to-exit and VM-creation-rate figures.  No entry
 * stub, no long mode, no memory writes: at the PVH entry (32-bit protected mode, paging off) it
 * marks the boot timer (123 to port 0x440), then ends the VM as bench.h's bench_exit does: i8042
 * reset (0xfe to port 0x64), QEMU isa-debug-exit (port 0xf4), then a triple fault (empty IDT). */
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
    cli
    movb $123, %al
    movw $0x440, %dx
    outb %al, %dx
    movb $0xfe, %al
    outb %al, $0x64
    xorl %eax, %eax
    outb %al, $0xf4
    lidt empty_idt
    ud2
1:  hlt
    jmp 1b

    .section .rodata
    .p2align 3
empty_idt:
    .word 0
    .long 0
