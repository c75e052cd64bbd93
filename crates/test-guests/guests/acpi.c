/* acpi: finds the ACPI tables the way an OS does, checks them, dumps them, then
 * exercises the ACPI platform registers as the command line's `action=` asks. */
#include "rt.h"

#define RSDP_SCAN_START 0xe0000
#define RSDP_SCAN_END 0x100000
/* The registers vmm's FADT and DSDT name (checked against the tables below). */
#define PM_BASE 0x600
#define SLEEP_CONTROL (PM_BASE + 0)
#define RESET_REG (PM_BASE + 2)
#define GED_SELECTOR (PM_BASE + 3)
#define PVPANIC_PORT 0x505
/* Tables larger than this are reported but not dumped. */
#define MAX_DUMP 65536

static u8 sum(const u8 *p, u64 n)
{
    u8 s = 0;
    while (n--)
        s += *p++;
    return s;
}

static u32 rd32(const u8 *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }
static u64 rd64(const u8 *p) { return rd32(p) | (u64)rd32(p + 4) << 32; }

static void put_sig(const u8 *p)
{
    for (int i = 0; i < 4; i++)
        putc((p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?');
}

static void put_byte_hex(u8 b)
{
    static const char digits[] = "0123456789abcdef";
    putc(digits[b >> 4]);
    putc(digits[b & 15]);
}

/* `table=SIG,addr,len,ok|bad` and `dump=SIG,<hex of every byte>`. */
static void report_table(u64 addr)
{
    const u8 *t = (const u8 *)addr;
    u32 len = rd32(t + 4);
    puts("table=");
    put_sig(t);
    putc(',');
    put_hex(addr);
    putc(',');
    put_hex(len);
    puts(len >= 36 && len <= MAX_DUMP && sum(t, len) == 0 ? ",ok" : ",bad");
    nl();
    if (len < 36 || len > MAX_DUMP)
        return;
    puts("dump=");
    put_sig(t);
    putc(',');
    for (u32 i = 0; i < len; i++)
        put_byte_hex(t[i]);
    nl();
}

static u64 find_rsdp(void)
{
    for (u64 a = RSDP_SCAN_START; a < RSDP_SCAN_END; a += 16)
        if (memcmp((const void *)a, "RSD PTR ", 8) == 0)
            return a;
    return 0;
}

/* Polls the GED selector until the power button's bit shows (bounded), then powers off. */
static void wait_for_button(void)
{
    line("waiting_for_button");
    u64 start = rdtsc();
    for (u64 i = 0; spin_continue(i, 1ull << 32, start, 1ull << 40); i++) {
        u8 events = inb(GED_SELECTOR);
        if (events) {
            kv_hex("button", events);
            outb(SLEEP_CONTROL, 5 << 2 | 1 << 5);
            line("poweroff=ignored");
            return;
        }
        cpu_relax();
    }
    line("button=never");
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    if (boot == BOOT_PVH)
        kv_hex("start_info_rsdp", *(volatile u64 *)(info + 32));
    else
        kv_hex("start_info_rsdp", *(volatile u64 *)(info + 0x70));

    u64 rsdp = find_rsdp();
    kv_hex("rsdp", rsdp);
    if (rsdp) {
        const u8 *r = (const u8 *)rsdp;
        kv_str("rsdp_checksum", sum(r, 20) == 0 && sum(r, rd32(r + 20)) == 0 ? "ok" : "bad", 8);
        kv_hex("rsdp_revision", r[15]);
        u64 xsdt = rd64(r + 24);
        report_table(xsdt);
        const u8 *x = (const u8 *)xsdt;
        u32 xlen = rd32(x + 4);
        for (u32 at = 36; at + 8 <= xlen && at < 36 + 8 * 64; at += 8) {
            u64 addr = rd64(x + at);
            report_table(addr);
            /* The FADT's X_DSDT (offset 140) leads to the DSDT. */
            if (memcmp((const void *)addr, "FACP", 4) == 0 && rd32((const u8 *)addr + 4) >= 148)
                report_table(rd64((const u8 *)addr + 140));
        }
    }
    line("tables_done");

    const char *cmdline = boot_cmdline(boot, info);
    const char *action = cmdline ? cmdline_find(cmdline, "action=") : NULL;
    if (!action) {
        line("done");
        return;
    }
    if (strncmp(action, "poweroff", 8) == 0) {
        outb(SLEEP_CONTROL, 5 << 2 | 1 << 5);
        line("poweroff=ignored");
    } else if (strncmp(action, "reset", 5) == 0) {
        outb(RESET_REG, 1);
        line("reset=ignored");
    } else if (strncmp(action, "panic", 5) == 0) {
        kv_hex("pvpanic_features", inb(PVPANIC_PORT));
        outb(PVPANIC_PORT, 1);
        line("panic=ignored");
    } else if (strncmp(action, "button", 6) == 0) {
        wait_for_button();
    } else if (strncmp(action, "exit", 4) == 0) {
        /* action=exit: the exit device's port; action=exit_mmio: its MMIO page. */
        const char *p = cmdline_find(cmdline, "status=");
        u64 status = 0;
        if (p)
            parse_num(&p, &status);
        if (strncmp(action, "exit_mmio", 9) == 0)
            mmio_write8(0xc0001000, (u8)status);
        else
            outb(0x501, (u8)status);
        line("exit=ignored");
    } else if (strncmp(action, "hang", 4) == 0) {
        /* Ignores the power button: only a hard stop ends this guest. */
        line("hanging");
        u64 start = rdtsc();
        for (u64 i = 0; spin_continue(i, 1ull << 40, start, 1ull << 42); i++)
            cpu_relax();
        line("hang=over");
    }
    line("done");
}
