/* serial_flood: 64 KiB of a deterministic pattern, 1024 lines of 64 chars.
 * Line i (0..1023): 4 lowercase hex digits of i, then 60 chars where char k
 * (0..59) is B64[(i + k) % 64], B64 = "A-Za-z0-9+/" (the base64 alphabet). */
#include "rt.h"

#define FLOOD_LINES 1024

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)boot;
    (void)info;
    (void)entry_rflags;
    line("flood_begin");
    for (u32 i = 0; i < FLOOD_LINES; i++) {
        for (int s = 12; s >= 0; s -= 4)
            putc("0123456789abcdef"[(i >> s) & 0xf]);
        for (u32 k = 0; k < 60; k++)
            putc(B64[(i + k) % 64]);
        nl();
    }
    line("flood_end");
    line("done");
}
