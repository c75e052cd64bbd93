/* snap: a long deterministic computation that timer interrupts keep interrupting, for the snapshot
 * tests: a run that is paused, saved, killed and restored any number of times must print exactly
 * what an uninterrupted run prints.
 *
 * `rounds=` (default 1000) rounds; in each, `work=` (default 200) steps of a checksum that
 * scatters bytes over a 64 KiB buffer, then, with `sse` on the command line, the checksum folded
 * into an SSE register (xmm7, which nothing else touches: only a saved and restored FPU/XSAVE
 * state keeps it; a host that cannot run SSE in a guest's kernel mode stops the guest at its first
 * SSE instruction, `sse=0x0,0x0` without it), then one timer
 * interrupt waited for with `hlt`: on even rounds the local APIC timer (one-shot, vector 0x40), on
 * odd rounds PIT channel 0 in mode 0 (vector 0x30 through I/O APIC pin 0). Every 100 rounds it
 * prints `round=N sum=0x...`. At the end, one fact per line:
 *   result=     the checksum
 *   sse=        xmm7, high half then low half, in hex
 *   lapic_irqs= (rounds/2, rounded up)  pit_irqs= (rounds/2)
 *   other_irqs= (0)  spurious_irqs= (0)
 * then `done` and a reset. */
#include "apic.h"
#include "bench.h"

#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3e0

#define VEC_PIT 0x30
#define VEC_LAPIC 0x40
#define VEC_SPURIOUS 0xff

volatile u32 lapic_count, pit_count, other_count, spurious_count;

/* Interrupt stubs: count, EOI (not for the spurious vector), return. The APIC timer's also sets
 * the initial count to 0, as a kernel does when it stops an expired one-shot timer (Linux either
 * loads the next count or shuts the timer down). */
__asm__(
    ".text\n"
    ".macro snap_isr name, counter, eoi, stop_timer\n"
    ".globl \\name\n"
    "\\name:\n"
    "    pushq %rax\n"
    "    lock incl \\counter(%rip)\n"
    "    .if \\stop_timer\n"
    "    movq $0xfee00380, %rax\n"
    "    movl $0, (%rax)\n"
    "    .endif\n"
    "    .if \\eoi\n"
    "    movq $0xfee000b0, %rax\n"
    "    movl $0, (%rax)\n"
    "    .endif\n"
    "    popq %rax\n"
    "    iretq\n"
    ".endm\n"
    "snap_isr isr_lapic, lapic_count, 1, 1\n"
    "snap_isr isr_pit, pit_count, 1, 0\n"
    "snap_isr isr_other, other_count, 1, 0\n"
    "snap_isr isr_spurious, spurious_count, 0, 0\n");

void isr_lapic(void);
void isr_pit(void);
void isr_other(void);
void isr_spurious(void);

static u8 buf[65536];

/* SSE on: CR0.EM off, CR0.MP on, CR4.OSFXSR and CR4.OSXMMEXCPT on; xmm7 zeroed. */
static void sse_on(void)
{
    u64 cr0, cr4;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    cr0 = (cr0 & ~(1ULL << 2)) | (1ULL << 1);
    __asm__ volatile("mov %0, %%cr0" : : "r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    cr4 |= (1ULL << 9) | (1ULL << 10);
    __asm__ volatile("mov %0, %%cr4" : : "r"(cr4));
    __asm__ volatile("pxor %%xmm7, %%xmm7" : : : "memory");
}

/* xmm7 = swap_halves(xmm7 + v) ^ v, per 64-bit lane. */
static void sse_mix(u64 v)
{
    __asm__ volatile("movq %0, %%xmm6\n"
                     "punpcklqdq %%xmm6, %%xmm6\n"
                     "paddq %%xmm6, %%xmm7\n"
                     "pshufd $0x4e, %%xmm7, %%xmm7\n"
                     "pxor %%xmm6, %%xmm7\n"
                     "movq %1, %%xmm6\n"
                     "paddq %%xmm6, %%xmm7\n"
                     :
                     : "r"(v), "r"(v * 0x9e3779b97f4a7c15ULL)
                     : "memory");
}

static void sse_read(u64 *hi, u64 *lo)
{
    u64 h, l;
    __asm__ volatile("movq %%xmm7, %0\n"
                     "pshufd $0x4e, %%xmm7, %%xmm6\n"
                     "movq %%xmm6, %1\n"
                     : "=r"(l), "=r"(h)
                     :
                     : "memory");
    *hi = h;
    *lo = l;
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    u64 rounds = cmdline_num(boot, info, "rounds=", 1000);
    u64 work = cmdline_num(boot, info, "work=", 200);
    const char *cmdline = boot_cmdline(boot, info);
    int sse = cmdline && cmdline_find(cmdline, "sse");

    for (int v = 0x20; v < 256; v++)
        set_gate(v, isr_other);
    set_gate(VEC_LAPIC, isr_lapic);
    set_gate(VEC_PIT, isr_pit);
    set_gate(VEC_SPURIOUS, isr_spurious);
    load_idt();
    u32 apic_id = lapic_enable(VEC_SPURIOUS);
    /* The timer one-shot on its vector, counting at the bus clock (divide by 1). */
    lapic_write(LAPIC_TIMER_DIV, 0xb);
    lapic_write(LAPIC_LVT_TIMER, VEC_LAPIC);
    /* PIT interrupts: pin 0, edge, to this CPU. */
    ioapic_write(0x11, apic_id << 24);
    ioapic_write(0x10, VEC_PIT);
    if (sse)
        sse_on();

    for (u32 i = 0; i < sizeof(buf); i++)
        buf[i] = (u8)(i * 7 + 3);
    line("snap: start");
    u64 sum = 0xcbf29ce484222325ULL;
    for (u64 r = 0; r < rounds; r++) {
        for (u64 i = 0; i < work; i++) {
            u32 at = (u32)(sum >> 17) & (sizeof(buf) - 1);
            buf[at] ^= (u8)(sum >> 3);
            sum = (sum ^ buf[at] ^ i) * 0x100000001b3ULL;
        }
        if (sse)
            sse_mix(sum);
        volatile u32 *counter = (r & 1) ? &pit_count : &lapic_count;
        u32 before = *counter;
        if (r & 1) {
            /* Mode 0, binary, about 100 µs. */
            outb(0x43, 0x30);
            outb(0x40, 120);
            outb(0x40, 0);
        } else {
            lapic_write(LAPIC_TIMER_INIT, 100000);
        }
        while (*counter == before)
            __asm__ volatile("sti; hlt; cli" : : : "memory");
        if (r % 100 == 99) {
            puts("round=");
            put_dec(r + 1);
            puts(" sum=");
            put_hex(sum);
            nl();
        }
    }
    u64 sse_hi = 0, sse_lo = 0;
    if (sse)
        sse_read(&sse_hi, &sse_lo);
    kv_hex("result", sum);
    puts("sse=");
    put_hex(sse_hi);
    putc(',');
    put_hex(sse_lo);
    nl();
    kv_hex("lapic_irqs", lapic_count);
    kv_hex("pit_irqs", pit_count);
    kv_hex("other_irqs", other_count);
    kv_hex("spurious_irqs", spurious_count);
    line("done");
}
