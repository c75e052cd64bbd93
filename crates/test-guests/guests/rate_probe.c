/* rate_probe: measures from inside the guest how fast the first virtio-blk disk serves reads (or the
 * first virtio-net NIC sends frames), with the guest's own clock: the TSC, calibrated against
 * channel 2 of the PIT (gated through port 0x61).
 *
 * Command line (all optional):
 *   probe_dev=blk|net  what to measure: blk reads or net TX frames        (default blk)
 *   probe_size=BYTES   bytes per read, a multiple of 512, at most 256 KiB (default 65536); for net
 *                      the frame's length without the vnet header, 60..1514 (default 60)
 *   probe_depth=N      requests kept in flight, 1..16                     (default 8)
 *   probe_warm_ms=MS   requests before the measurement, to spend a burst  (default 500)
 *   probe_ms=MS        length of the measurement                          (default 2000)
 *
 * Prints `tsc_khz=` (the median of five 50 ms PIT windows whose edges the guest saw to 0.1%, out of
 * at most 40; `error=pit_timeout` if the PIT never counts down), `tsc_sharp_windows=` (how many
 * windows were that sharp, 5 when all went well), `status=`, `capacity=` (blk only), `probe_size=`,
 * `probe_depth=`, `warm_ops=`, then the measurement, from the first completion after the warm-up to
 * the first one at least probe_ms later: `probe_ops=` requests completed, `probe_us=` microseconds,
 * `probe_errors=` reads whose status byte was not OK (always 0 for net), `bw_bytes_per_s=` and
 * `iops=` (all numbers in lowercase hex, as everywhere).  A request not answered within 5 s prints
 * `timeout=probe`.  Always ends with `done` and a reset. */
#include "vq.h"

#define QSZ 64
#define MAX_DEPTH 16
#define MAX_SIZE (256u << 10)
#define PIT_HZ 1193182ULL
#define PIT_WINDOW_MS 50
#define PIT_WINDOWS 5

#define VNET_HDR 12
#define MAX_FRAME 1514

static struct rings r0, r1;
static struct dev disk;
static int is_net;
static u8 frame[VNET_HDR + MAX_FRAME] __attribute__((aligned(64)));
static u8 buf[MAX_SIZE] __attribute__((aligned(4096)));
static struct blk_hdr hdr[MAX_DEPTH] __attribute__((aligned(64)));
static volatile u8 st[MAX_DEPTH][16] __attribute__((aligned(64)));

/* One PIT window: PIT channel 2 counts `ms` milliseconds down in mode 0 (OUT2, port 0x61 bit 5,
 * rises at terminal count).  Returns the TSC ticks between the count's load and OUT2's rise, or 0 if
 * OUT2 never rises; *slack = how uncertain both edges are in TSC ticks (the time around the
 * loading write, plus the time from before the last read that saw OUT2 low to after the first one
 * that saw it high), large when the vCPU was descheduled at an edge. */
static u64 pit_window(u32 ms, u64 *slack)
{
    u32 latch = (u32)(PIT_HZ * ms / 1000);
    outb(0x61, (u8)((inb(0x61) & ~0x02) | 0x01)); /* gate 2 on, speaker off */
    outb(0x43, 0xb0);                              /* channel 2, lobyte/hibyte, mode 0, binary */
    outb(0x42, (u8)latch);
    u64 t0a = rdtsc();
    outb(0x42, (u8)(latch >> 8)); /* counting starts at this write */
    u64 t0b = rdtsc();
    u64 prev = t0b;
    for (u64 i = 0; i < 200000000ULL; i++) {
        u64 before = rdtsc();
        u8 v = inb(0x61);
        u64 after = rdtsc();
        if (v & 0x20) {
            *slack = (t0b - t0a) + (after - prev);
            return after - t0a;
        }
        prev = before;
    }
    return 0;
}

/* TSC frequency in Hz: the median of PIT_WINDOWS windows whose edges are known to 0.1% (up to 40
 * tries; if too few are that sharp, the median of the sharpest ones).  *sharp = sharp windows. */
static u64 tsc_hz(u64 *sharp)
{
    u64 w[40], sl[40];
    int n = 0, good = 0;
    u32 latch = (u32)(PIT_HZ * PIT_WINDOW_MS / 1000);
    while (n < 40 && good < PIT_WINDOWS) {
        u64 slack;
        u64 t = pit_window(PIT_WINDOW_MS, &slack);
        if (!t)
            return 0;
        w[n] = t * PIT_HZ / latch;
        sl[n] = slack * 1000 / t; /* per mille of the window */
        if (sl[n] < 1)
            good++;
        n++;
    }
    *sharp = (u64)good;
    /* Sort by slack, keep the PIT_WINDOWS sharpest, then take their median. */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && sl[j - 1] > sl[j]; j--) {
            u64 t = sl[j]; sl[j] = sl[j - 1]; sl[j - 1] = t;
            t = w[j]; w[j] = w[j - 1]; w[j - 1] = t;
        }
    int k = n < PIT_WINDOWS ? n : PIT_WINDOWS;
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && w[j - 1] > w[j]; j--) {
            u64 t = w[j]; w[j] = w[j - 1]; w[j - 1] = t;
        }
    return w[k / 2];
}

static u64 param(const char *cmdline, const char *key, u64 def, u64 min, u64 max)
{
    const char *p = cmdline_find(cmdline, key);
    u64 v;
    if (!p || !parse_size(&p, &v) || v < min || v > max)
        return def;
    return v;
}

static u64 next_sector, cap_sectors;

static struct vq *probe_q(void) { return data_q(&disk); }

/* Fills slot `s` with the next request and puts it on the avail ring (not yet published).  blk:
 * descriptors 3s..3s+2, a read of `size` bytes at the next sector; net: descriptor 3s, one frame
 * of `size` bytes after a zero vnet header. */
static void post(int s, u32 size)
{
    struct vq *q = probe_q();
    if (is_net) {
        struct desc *d = &q->r->d[3 * s];
        d->addr = (u64)frame;
        d->len = VNET_HDR + size;
        d->flags = 0;
        d->next = 0;
        q->r->a.ring[q->aidx % q->size] = (u16)(3 * s);
        q->aidx++;
        return;
    }
    struct desc *d = &q->r->d[3 * s];
    u64 n = size / 512;
    if (next_sector + n > cap_sectors)
        next_sector = 0;
    hdr[s].type = T_IN;
    hdr[s].reserved = 0;
    hdr[s].sector = next_sector;
    next_sector += n;
    st[s][0] = 0xee;
    d[0].addr = (u64)&hdr[s];
    d[0].len = sizeof(struct blk_hdr);
    d[0].flags = D_NEXT;
    d[0].next = (u16)(3 * s + 1);
    d[1].addr = (u64)buf;
    d[1].len = size;
    d[1].flags = D_NEXT | D_WRITE;
    d[1].next = (u16)(3 * s + 2);
    d[2].addr = (u64)&st[s][0];
    d[2].len = 1;
    d[2].flags = D_WRITE;
    d[2].next = 0;
    q->r->a.ring[q->aidx % q->size] = (u16)(3 * s);
    q->aidx++;
}

static void publish(void)
{
    struct vq *q = probe_q();
    mb();
    *(volatile u16 *)&q->r->a.idx = q->aidx;
    mb();
    dev_wr(&disk, VM_QUEUE_NOTIFY, q->sel);
}

static void run(const char *cmdline)
{
    u64 sharp = 0;
    u64 hz = tsc_hz(&sharp);
    if (!hz) {
        line("error=pit_timeout");
        return;
    }
    kv_hex("tsc_khz", hz / 1000);
    kv_hex("tsc_sharp_windows", sharp);
    const char *kind = cmdline_find(cmdline, "probe_dev=");
    is_net = kind && strncmp(kind, "net", 3) == 0;
    if (!dev_find(cmdline, is_net ? ID_NET : ID_BLK, 0, &disk)) {
        line(is_net ? "error=no_nic" : "error=no_disk");
        return;
    }
    u32 status = dev_start(&disk, QSZ, &r0, &r1);
    kv_hex("status", status);
    if (status != 0xf)
        return;
    u32 size;
    if (is_net) {
        size = (u32)param(cmdline, "probe_size=", 60, 60, MAX_FRAME);
        /* A broadcast frame of ethertype 0x88b5 (local experimental) after the zero vnet header. */
        memset(frame + VNET_HDR, 0xff, 6);
        frame[VNET_HDR + 6] = 0x52;
        frame[VNET_HDR + 12] = 0x88;
        frame[VNET_HDR + 13] = 0xb5;
        memcpy(frame + VNET_HDR + 14, "RATE-PROBE", 10);
        cap_sectors = ~0ULL;
    } else {
        cap_sectors = (u64)dev_rd(&disk, VM_CONFIG) | ((u64)dev_rd(&disk, VM_CONFIG + 4) << 32);
        kv_hex("capacity", cap_sectors);
        size = (u32)param(cmdline, "probe_size=", 65536, 512, MAX_SIZE) & ~511u;
    }
    int depth = (int)param(cmdline, "probe_depth=", 8, 1, MAX_DEPTH);
    u64 warm = param(cmdline, "probe_warm_ms=", 500, 0, 60000) * hz / 1000;
    u64 span = param(cmdline, "probe_ms=", 2000, 1, 60000) * hz / 1000;
    kv_hex("probe_size", size);
    kv_hex("probe_depth", (u64)depth);
    if (cap_sectors < size / 512) {
        line("error=disk_too_small");
        return;
    }

    struct vq *q = probe_q();
    for (int s = 0; s < depth; s++)
        post(s, size);
    publish();

    u64 start = rdtsc(), t_a = 0, t_b = 0, warm_ops = 0, ops = 0, errors = 0;
    int measuring = 0;
    u64 last = start;
    for (;;) {
        barrier();
        u16 idx = *(volatile u16 *)&q->r->u.idx;
        u64 now = rdtsc();
        if (idx == q->useen) {
            if (now - last > 5 * hz) {
                line("timeout=probe");
                break;
            }
            cpu_relax();
            continue;
        }
        mb();
        last = now;
        while (q->useen != idx) {
            struct used_elem *e = &q->r->u.ring[q->useen % q->size];
            int s = (int)(e->id / 3);
            q->useen++;
            if (s >= depth)
                continue;
            if (measuring) {
                ops++;
                if (!is_net && st[s][0] != 0)
                    errors++;
            } else {
                warm_ops++;
            }
            post(s, size);
        }
        u32 isr = dev_rd(&disk, VM_INT_STATUS);
        if (isr)
            dev_wr(&disk, VM_INT_ACK, isr);
        if (!measuring && now - start >= warm) {
            /* The window starts at this completion; what completes after it is measured. */
            measuring = 1;
            t_a = now;
        } else if (measuring && now - t_a >= span) {
            t_b = now;
            break;
        }
        publish();
    }
    kv_hex("warm_ops", warm_ops);
    if (!t_b)
        return;
    u64 us = (t_b - t_a) * 1000000ULL / hz;
    kv_hex("probe_ops", ops);
    kv_hex("probe_us", us);
    kv_hex("probe_errors", errors);
    kv_hex("bw_bytes_per_s", ops * size * 1000000ULL / us);
    kv_hex("iops", ops * 1000000ULL / us);
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    run(boot_cmdline(boot, info));
    /* Stop the device before the reset so that it touches nothing more. */
    if (disk.base)
        dev_wr(&disk, VM_STATUS, 0);
    line("done");
}
