/* Shared by the C benchmark guests (exit_cost_pio, exit_cost_mmio, park; null.S does the same in
 * a few instructions).
 *
 * The boot timer: one byte, BOOT_TIMER_MAGIC, to I/O port BOOT_TIMER_PORT; the VMM (with
 * --boot-timer) logs the time since its process started.  bench_exit() ends the VM the cheapest way
 * each VMM offers, without printing: the i8042 reset (vmm, Firecracker), then QEMU's isa-debug-exit
 * port 0xf4 (when the benchmark configured it), then a triple fault (anything else). */
#ifndef BENCH_H
#define BENCH_H

#include "rt.h"

#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_MAGIC 123
#define QEMU_DEBUG_EXIT_PORT 0xf4

static inline __attribute__((noreturn)) void bench_exit(void)
{
    __asm__ volatile("cli");
    outb(0x64, 0xfe);
    outb(QEMU_DEBUG_EXIT_PORT, 0);
    triple_fault();
}

/* The number after `key` (e.g. "count=") on the command line, or `dflt`. */
static inline u64 cmdline_num(u32 boot, u64 info, const char *key, u64 dflt)
{
    const char *cmdline = boot_cmdline(boot, info);
    const char *p = cmdline ? cmdline_find(cmdline, key) : NULL;
    u64 v;
    if (p && parse_num(&p, &v) > 0)
        return v;
    return dflt;
}

/* Marks the boot timer: a byte to its port, or with `boot_timer_mmio=A` on the command line a byte
 * write to MMIO address A (the path Linux user space takes through /dev/mem). */
static inline void boot_timer_mark(u32 boot, u64 info)
{
    u64 mmio = cmdline_num(boot, info, "boot_timer_mmio=", 0);
    if (mmio >= 0xc0000000 && mmio < 0x100000000ULL)
        mmio_write8(mmio, BOOT_TIMER_MAGIC);
    else
        outb(BOOT_TIMER_PORT, BOOT_TIMER_MAGIC);
}

#endif
