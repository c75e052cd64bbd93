/* exit_cost_pio: `count=N` (default 100000) one-byte reads of port `port=P` (default 0x3fd, the
 * COM1 line status register, served by every VMM's UART), then marks the boot timer and
 * ends the VM as null does; `count=0` is the baseline.  Each read is one
 * exit handled in the VMM's user space, so (time - time with count=0) / N is the cost of one exit. */
#include "bench.h"

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    u64 count = cmdline_num(boot, info, "count=", 100000);
    u16 port = (u16)cmdline_num(boot, info, "port=", 0x3fd);
    for (u64 i = 0; i < count; i++)
        (void)inb(port);
    boot_timer_mark(boot, info);
    bench_exit();
}
