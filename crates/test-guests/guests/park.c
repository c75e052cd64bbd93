/* park: prints `parked` on COM1, marks the boot timer, then halts with interrupts off for good:
 * the vCPU sleeps in the host kernel and the VM stays up until it is killed.  The benchmark measures
 * the VMM's memory overhead with it. */
#include "bench.h"

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    line("parked");
    boot_timer_mark(boot, info);
    for (;;)
        __asm__ volatile("cli; hlt");
}
