/* smp: reads the MP table, then starts the APs with INIT-SIPI-SIPI and reports
 * which LAPIC IDs came up. */
#include "rt.h"

#define LAPIC 0xfee00000ULL
#define LAPIC_ID 0x020
#define LAPIC_SVR 0x0f0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_PENDING (1u << 12)
/* destination shorthand "all excluding self" | level assert | delivery mode */
#define ICR_INIT_ALL_BUT_SELF 0x000c4500u
#define ICR_SIPI_ALL_BUT_SELF 0x000c4600u
#define AP_TRAMP 0x10000
#define MAX_APS 64

extern const u8 ap_tramp_start[], ap_tramp_end[];
volatile u32 ap_count;
volatile u32 ap_done;
volatile u32 ap_ids[MAX_APS];

static u8 checksum(const u8 *p, u32 n)
{
    u8 s = 0;
    for (u32 i = 0; i < n; i++)
        s = (u8)(s + p[i]);
    return s;
}

static const u8 *find_mpfp(u64 from, u64 to)
{
    for (u64 a = from; a + 16 <= to; a += 16) {
        const u8 *p = (const u8 *)a;
        if (p[0] == '_' && p[1] == 'M' && p[2] == 'P' && p[3] == '_')
            return p;
    }
    return NULL;
}

/* Returns the number of enabled processor entries; *ok = both checksums and
 * signatures valid. */
static u32 parse_mp(int *ok)
{
    *ok = 0;
    const u8 *fp = find_mpfp(0x9fc00, 0xa0000);
    if (!fp)
        fp = find_mpfp(0xf0000, 0x100000);
    if (!fp) {
        line("mp_found=0");
        return 0;
    }
    kv_hex("mp_fp", (u64)fp);
    u32 fp_len = fp[8] ? fp[8] * 16u : 16u;
    int good = checksum(fp, fp_len) == 0;
    u32 cfg = *(const u32 *)(fp + 4);
    kv_hex("mp_config", cfg);
    if (cfg == 0 || cfg >= 0xfee00000u) {
        return 0;
    }
    const u8 *ct = (const u8 *)(u64)cfg;
    if (!(ct[0] == 'P' && ct[1] == 'C' && ct[2] == 'M' && ct[3] == 'P'))
        return 0;
    u16 base_len = *(const u16 *)(ct + 4);
    u16 count = *(const u16 *)(ct + 0x22);
    kv_hex("mp_lapic", *(const u32 *)(ct + 0x24));
    kv_hex("mp_entries", count);
    kv_hex("mp_length", base_len);
    if (base_len < 0x2c || checksum(ct, base_len) != 0)
        good = 0;
    u32 cpus = 0;
    const u8 *e = ct + 0x2c, *end = ct + base_len;
    /* Walk by the base table length, as Linux does (some firmware leaves the
     * entry count at 0). */
    while (e < end) {
        if (e[0] == 0) {
            puts("mp_cpu=");
            put_hex(e[1]);
            putc(',');
            put_hex(e[3]);
            nl();
            if (e[3] & 1)
                cpus++;
            e += 20;
        } else if (e[0] <= 4) {
            e += 8;
        } else {
            good = 0;
            break;
        }
    }
    *ok = good;
    return cpus;
}

static void delay_ticks(u64 ticks)
{
    u64 start = rdtsc();
    for (u64 i = 0; spin_continue(i, ticks / 4 + 1000, start, ticks); i++)
        cpu_relax();
}

static void send_ipi(u32 lo)
{
    mmio_write32(LAPIC + LAPIC_ICR_HI, 0);
    mmio_write32(LAPIC + LAPIC_ICR_LO, lo);
    u64 start = rdtsc();
    for (u64 i = 0; spin_continue(i, 1000000, start, 100000000ULL); i++) {
        if (!(mmio_read32(LAPIC + LAPIC_ICR_LO) & ICR_PENDING))
            break;
        cpu_relax();
    }
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)info;
    (void)entry_rflags;
    kv_str("boot", boot_name(boot), 16);
    int ok;
    u32 mp_cpus = parse_mp(&ok);
    kv_hex("mp_cpus", mp_cpus);
    kv_hex("mp_ok", (u64)ok);

    u32 bsp = mmio_read32(LAPIC + LAPIC_ID) >> 24;
    kv_hex("bsp_apic_id", bsp);

    memcpy((void *)AP_TRAMP, ap_tramp_start, (usize)(ap_tramp_end - ap_tramp_start));
    mb();
    /* software-enable the LAPIC (spurious vector 0xff) */
    mmio_write32(LAPIC + LAPIC_SVR, mmio_read32(LAPIC + LAPIC_SVR) | 0x1ff);

    send_ipi(ICR_INIT_ALL_BUT_SELF);
    delay_ticks(10000000ULL);
    send_ipi(ICR_SIPI_ALL_BUT_SELF | (AP_TRAMP >> 12));
    delay_ticks(1000000ULL);
    send_ipi(ICR_SIPI_ALL_BUT_SELF | (AP_TRAMP >> 12));

    /* Wait for the APs: until as many as the MP table announces have checked
     * in, or the bound (about a second at a few GHz) runs out. */
    u32 expect = (ok && mp_cpus >= 1) ? mp_cpus - 1 : MAX_APS;
    u64 start = rdtsc();
    for (u64 i = 0; spin_continue(i, 2000000000ULL, start, 4000000000ULL); i++) {
        if (ap_done >= expect)
            break;
        cpu_relax();
    }
    /* let stragglers finish their store (bounded) */
    delay_ticks(10000000ULL);

    u32 seen = ap_done;
    if (seen > MAX_APS)
        seen = MAX_APS;
    for (u32 i = 0; i < seen; i++)
        kv_hex("ap_apic_id", ap_ids[i]);
    kv_hex("cpus_seen", 1 + seen);
    line("done");
}
