/* ticker: counts for good and prints `tick=N` on COM1 each time the TSC has advanced by
 * `tick_tsc=` (default 50000000, about 20 ms at 2.5 GHz), N = 1, 2, 3, ...  It never stops on its
 * own and ignores the power button: the control API's tests pause it (no new line may come),
 * resume it (lines come again) and stop it.  (The TSC paces it: a plain counting loop runs at
 * very different speeds on different hosts.) */
#include "bench.h"

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    u64 period = cmdline_num(boot, info, "tick_tsc=", 50000000);
    line("ticking");
    u64 last = rdtsc();
    for (u64 n = 1;; n++) {
        while (rdtsc() - last < period)
            cpu_relax();
        last = rdtsc();
        puts("tick=");
        put_dec(n);
        nl();
    }
}
