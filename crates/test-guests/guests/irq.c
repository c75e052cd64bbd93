/* irq: interrupts from the PIT and the UART, through the I/O APIC into the local APIC, the way a
 * kernel takes them (IDT, LAPIC enabled, I/O APIC redirection entries, EOI).  The same checks pass
 * whether the VMM emulates the I/O APIC and PIT itself (split irqchip) or KVM does.
 *
 * Prints, one fact per line (numbers in lowercase hex):
 *   lapic_id=, ioapic_version= (register 1), ioapic_id= (register 0 after writing ID 5)
 *   ioapic_rte0_readback= (entry 0's low half after writing it masked with vector 0x30: 0x10030)
 *   pit_periodic_ticks=   vector-0x30 interrupts from channel 0 in mode 2 at 1 kHz, counted
 *                         while channel 2 measured 50 ms
 *   pit_masked_ticks=     the same over 20 ms with entry 0 masked (0)
 *   pit_oneshot_ticks=    interrupts in the 30 ms after a 5 ms mode-0 count (1)
 *   pit_readback_status=  the read-back status of channel 0 in mode 2 (0x34 in bits 6:0: count
 *                         loaded, word access, mode 2; bit 7 is OUT)
 *   serial_irqs=          vector-0x34 interrupts after IER's THR-empty bit was set (>= 1)
 *   other_irqs=           interrupts on any other vector (0)
 *   spurious_irqs=        spurious-vector (0xff) interrupts
 * then `done` and a reset.  Bounded throughout: a window that never ends prints `timeout=NAME`.
 *
 * With `irq_attack` on the command line it then attacks both devices and checks they still work:
 * 20 000 random writes (and reads) at every I/O APIC offset and width, with random entries of every
 * delivery mode; 20 000 mask flips of one entry; every PIT control word with random counts and
 * random port 0x61 writes; then channel 0 in mode 2 with a count of 2 (600 kHz) for 100 ms:
 *   attack_storm_ticks=   interrupts that storm delivered (the VMM bounds the rate)
 * and the periodic check again: `after_periodic_ticks=`. */
#include "apic.h"

#define VEC_PIT 0x30
#define VEC_SERIAL 0x34
#define VEC_SPURIOUS 0xff

#define PIT_HZ 1193182ULL
#define COM1 0x3f8

volatile u32 pit_count, serial_count, other_count, spurious_count;

/* Interrupt stubs: count, EOI (not for the spurious vector), return. */
__asm__(
    ".text\n"
    ".macro isr name, counter, eoi\n"
    ".globl \\name\n"
    "\\name:\n"
    "    pushq %rax\n"
    "    lock incl \\counter(%rip)\n"
    "    .if \\eoi\n"
    "    movq $0xfee000b0, %rax\n"
    "    movl $0, (%rax)\n"
    "    .endif\n"
    "    popq %rax\n"
    "    iretq\n"
    ".endm\n"
    "isr isr_pit, pit_count, 1\n"
    "isr isr_serial, serial_count, 1\n"
    "isr isr_other, other_count, 1\n"
    "isr isr_spurious, spurious_count, 0\n");

void isr_pit(void);
void isr_serial(void);
void isr_other(void);
void isr_spurious(void);

/* Entry `pin`: `vector`, fixed delivery, physical destination `dest`, edge, active high. */
static void route(u32 pin, u32 vector, u32 dest, int masked)
{
    ioapic_write(0x11 + 2 * pin, dest << 24);
    ioapic_write(0x10 + 2 * pin, vector | (masked ? 1u << 16 : 0));
}

/* Waits `ms` milliseconds measured by PIT channel 2 (mode 0, OUT2 on port 0x61 bit 5); interrupts
 * are taken meanwhile.  Returns 0 if OUT2 never rose. */
static int wait_ms(u32 ms)
{
    u32 latch = (u32)(PIT_HZ * ms / 1000);
    outb(0x61, (u8)((inb(0x61) & ~0x02) | 0x01));
    outb(0x43, 0xb0);
    outb(0x42, (u8)latch);
    outb(0x42, (u8)(latch >> 8));
    u64 t0 = rdtsc();
    __asm__ volatile("sti");
    for (u64 i = 0; spin_continue(i, 50000000ULL, t0, 1ULL << 36); i++)
        if (inb(0x61) & 0x20)
            return 1;
    return 0;
}

static void pit0(u8 control, u32 count)
{
    outb(0x43, control);
    outb(0x40, (u8)count);
    outb(0x40, (u8)(count >> 8));
}

static u64 rng = 0x2545f4914f6cdd1dULL;

static u64 rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void mask_all(void)
{
    for (u32 pin = 0; pin < 24; pin++)
        route(pin, 0x20, 0, 1);
}

/* Nothing the guest writes may crash, hang or flood the VMM, and both devices work afterwards. */
static void attack(u32 apic_id)
{
    /* No interrupt source may fire into garbage entries: stop channel 0 and the UART's IER. */
    outb(0x43, 0x30);
    outb(COM1 + 1, 0x00);
    for (int i = 0; i < 20000; i++) {
        u64 off = rnd() % 0x100, v = rnd();
        switch (rnd() % 4) {
        case 0: mmio_write8(IOAPIC + off, (u8)v); break;
        case 1: mmio_write16(IOAPIC + (off & ~1ULL), (u16)v); break;
        case 2: mmio_write32(IOAPIC + (off & ~3ULL), (u32)v); break;
        default: (void)mmio_read32(IOAPIC + (off & ~3ULL)); break;
        }
        /* An entry of any delivery mode, vector and destination, left masked. */
        ioapic_write(0x10 + 2 * (u32)(rnd() % 24), (u32)v | (1u << 16));
        ioapic_write(0x11 + 2 * (u32)(rnd() % 24), (u32)(v >> 32));
    }
    mask_all();
    for (int i = 0; i < 20000; i++)
        route(7, 0x40 + (u32)(i & 0x3f), apic_id, i & 1);
    route(7, 0x40, apic_id, 1);
    for (int word = 0; word < 256; word++) {
        outb(0x43, (u8)word);
        outb((u16)(0x40 + rnd() % 3), (u8)rnd());
        outb((u16)(0x40 + rnd() % 3), (u8)rnd());
        (void)inb((u16)(0x40 + rnd() % 4));
        outb(0x61, (u8)rnd());
    }
    /* The storm: the shortest period the 8254 allows. */
    outb(0x43, 0x30);
    route(0, VEC_PIT, apic_id, 0);
    pit_count = 0;
    pit0(0x34, 2);
    if (!wait_ms(100))
        line("timeout=storm");
    route(0, VEC_PIT, apic_id, 1);
    outb(0x43, 0x30);
    kv_hex("attack_storm_ticks", pit_count);
    kv_hex("attack_other_irqs", other_count);

    /* Both still work. */
    wait_ms(3);
    route(0, VEC_PIT, apic_id, 0);
    pit0(0x34, (u32)(PIT_HZ / 1000));
    pit_count = 0;
    if (!wait_ms(50))
        line("timeout=after");
    kv_hex("after_periodic_ticks", pit_count);
    route(0, VEC_PIT, apic_id, 1);
    outb(0x43, 0x30);
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    const char *cmdline = boot_cmdline(boot, info);

    /* No 8259 may deliver anything: mask both (no PIC at all under a split irqchip). */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);

    for (int v = 0x20; v < 256; v++)
        set_gate(v, isr_other);
    set_gate(VEC_PIT, isr_pit);
    set_gate(VEC_SERIAL, isr_serial);
    set_gate(VEC_SPURIOUS, isr_spurious);
    load_idt();
    u32 apic_id = lapic_enable(VEC_SPURIOUS);
    kv_hex("lapic_id", apic_id);

    kv_hex("ioapic_version", ioapic_read(0x01));
    ioapic_write(0x00, 5u << 24);
    kv_hex("ioapic_id", ioapic_read(0x00));
    route(0, VEC_PIT, apic_id, 1);
    kv_hex("ioapic_rte0_readback", ioapic_read(0x10));

    /* Periodic: mode 2 at 1 kHz. */
    route(0, VEC_PIT, apic_id, 0);
    pit0(0x34, (u32)(PIT_HZ / 1000));
    pit_count = 0;
    if (!wait_ms(50))
        line("timeout=periodic");
    u32 periodic = pit_count;
    kv_hex("pit_periodic_ticks", periodic);

    outb(0x43, 0xe2); /* read-back, status of channel 0 only */
    kv_hex("pit_readback_status", inb(0x40));

    /* Masked: let what is already pending land, then count over 20 ms. */
    route(0, VEC_PIT, apic_id, 1);
    wait_ms(3);
    pit_count = 0;
    if (!wait_ms(20))
        line("timeout=masked");
    kv_hex("pit_masked_ticks", pit_count);

    /* One-shot: mode 0, 5 ms, then 30 ms of quiet. A control word alone does not stop KVM's
     * periodic timer (only a count does), so load a long count first while the pin is masked,
     * let what is pending land, then load the real one. */
    pit0(0x30, 0xffff);
    wait_ms(3);
    route(0, VEC_PIT, apic_id, 0);
    pit_count = 0;
    pit0(0x30, (u32)(PIT_HZ * 5 / 1000));
    if (!wait_ms(30))
        line("timeout=oneshot");
    kv_hex("pit_oneshot_ticks", pit_count);
    route(0, VEC_PIT, apic_id, 1);

    /* The UART: THR empty raises IRQ 4 as soon as the interrupt is enabled. */
    route(4, VEC_SERIAL, apic_id, 0);
    outb(COM1 + 1, 0x02);
    wait_ms(5);
    outb(COM1 + 1, 0x00);
    route(4, VEC_SERIAL, apic_id, 1);
    kv_hex("serial_irqs", serial_count);

    kv_hex("other_irqs", other_count);
    kv_hex("spurious_irqs", spurious_count);
    if (cmdline && cmdline_find(cmdline, "irq_attack"))
        attack(apic_id);
    __asm__ volatile("cli");
    line("done");
}
