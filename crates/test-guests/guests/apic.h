/* Interrupt plumbing shared by the guests that take interrupts (irq.c, snap.c): an IDT of
 * interrupt gates, the local APIC in xAPIC mode at its default base, the I/O APIC's registers. */
#ifndef APIC_H
#define APIC_H

#include "rt.h"

#define LAPIC 0xfee00000ULL
#define LAPIC_ID 0x20
#define LAPIC_TPR 0x80
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_LVT0 0x350
#define IOAPIC 0xfec00000ULL

struct gate {
    u16 off0, sel;
    u8 ist, type;
    u16 off1;
    u32 off2, zero;
} __attribute__((packed));

static struct gate idt[256] __attribute__((aligned(16)));

/* Vector `v` is an interrupt gate to `fn` in the current code segment. */
static inline void set_gate(int v, void (*fn)(void))
{
    u64 a = (u64)fn;
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[v] = (struct gate){(u16)a, cs, 0, 0x8e, (u16)(a >> 16), (u32)(a >> 32), 0};
}

static inline void load_idt(void)
{
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) idtr = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

static inline void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC + reg, v); }
static inline u32 lapic_read(u32 reg) { return mmio_read32(LAPIC + reg); }

static inline u32 ioapic_read(u32 reg)
{
    mmio_write32(IOAPIC, reg);
    return mmio_read32(IOAPIC + 0x10);
}

static inline void ioapic_write(u32 reg, u32 v)
{
    mmio_write32(IOAPIC, reg);
    mmio_write32(IOAPIC + 0x10, v);
}

/* xAPIC on at its default base; software-enabled with `spurious` as its spurious vector, TPR 0,
 * LINT0 masked. Returns the local APIC's ID. */
static inline u32 lapic_enable(u32 spurious)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x1b));
    lo = (lo & 0xfff) | 0x800 | (u32)LAPIC;
    __asm__ volatile("wrmsr" : : "a"(lo), "d"(hi), "c"(0x1b));
    lapic_write(LAPIC_SVR, 0x100 | spurious);
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT0, 1u << 16);
    return lapic_read(LAPIC_ID) >> 24;
}

#endif
