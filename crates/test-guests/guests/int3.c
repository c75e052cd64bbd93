/* pvh_hang_internal_error: executes int3 at CPL0 (a KVM internal error on
 * kvm_pvm hosts; elsewhere the VMM's boot IDT decides what happens). */
#include "rt.h"

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)boot;
    (void)info;
    (void)entry_rflags;
    line("int3=now");
    __asm__ volatile("int3" : : : "memory");
    line("int3=survived");
    line("done");
}
