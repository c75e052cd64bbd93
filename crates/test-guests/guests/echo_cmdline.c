/* echo_cmdline: prints the protocol and the command line. */
#include "rt.h"

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    kv_str("boot", boot_name(boot), 16);
    kv_str("cmdline", boot_cmdline(boot, info), 4096);
    line("done");
}
