/* triple_fault: announces itself, then loads an empty IDT and executes ud2. */
#include "rt.h"

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)boot;
    (void)info;
    (void)entry_rflags;
    line("triple_fault=now");
    triple_fault();
}
