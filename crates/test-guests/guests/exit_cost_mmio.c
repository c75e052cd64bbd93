/* exit_cost_mmio: `count=N` (default 100000) 32-bit reads of MMIO address `mmio=A` (default
 * 0xd0000000, vmm's first virtio-mmio slot: its MagicValue register; QEMU microvm's first slot is
 * at 0xfeb00000), then marks the boot timer and
 * ends the VM as null does; `count=0` is the baseline.  Each read is one MMIO exit served by the VMM's user space. */
#include "bench.h"

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    u64 count = cmdline_num(boot, info, "count=", 100000);
    u64 addr = cmdline_num(boot, info, "mmio=", 0xd0000000);
    if (addr < 0xc0000000 || addr > 0xfffffffc)
        addr = 0xd0000000; /* only the uncached 3..4 GiB window is MMIO */
    for (u64 i = 0; i < count; i++)
        (void)mmio_read32(addr);
    boot_timer_mark(boot, info);
    bench_exit();
}
