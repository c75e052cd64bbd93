/* blk_bench: keeps the first virtio-blk disk's queue full and counts what it moves, with the
 * guest's own clock (the TSC, calibrated against the PIT's channel 0 counter, which vmm and QEMU
 * microvm both have). Polls; interrupts stay off; VERSION_1, FLUSH and EVENT_IDX (a notification
 * only when the device went idle; without EVENT_IDX one per batch of refills).
 *
 * Command line (all optional; numbers decimal or 0x hex, sizes with K/M):
 *   blk_mode=randread|randwrite|seqread|seqwrite   (default randread)
 *   blk_bs=BYTES      bytes per request, a multiple of 512, at most 1 MiB (default 4K for the
 *                     random modes, 1M for the sequential ones)
 *   blk_depth=N       requests kept in flight, 1..64 (default 32)
 *   blk_ms=MS         length of the measurement (default 2000)
 *   blk_count=N       or: stop after N requests measured (then blk_warm_ms defaults to 0)
 *   blk_warm_ms=MS    requests before the measurement (default 200)
 *   blk_verify=1      writes stamp every sector (see below) and are read back and checked after
 *                     the run; reads check the stamp of every sector they read
 *   blk_seed=N        the seed written in the stamps (default 1)
 *   blk_event_idx=0   do not take VIRTIO_F_EVENT_IDX (taken by default when offered: then a
 *                     notification only when the device has gone idle, and no interrupts)
 *
 * A stamp is the first 16 bytes of a sector: "VBLK", the seed (u32 LE), the sector (u64 LE). An
 * image whose every sector carries a stamp (any seed) passes a verified read.
 *
 * Buffers: request slot s uses guest-physical 16 MiB + s * bs (each request its own pages, as a
 * real driver's), so the guest needs 16 MiB + depth * bs of RAM.
 *
 * Prints `tsc_khz=` (`error=pit` if the counter never moved), `status=` (0xf), `capacity=`,
 * `mode=`, `bs=`, `depth=`, `warm_ops=`, `bench_start` (as the measurement starts) and
 * `bench_end` (as it ends), then `ops=` (requests completed in the window), `bytes=`,
 * `elapsed_us=`, `elapsed_tsc=`, `submitted=`, `answered=` (every request, warm-up and drain
 * included), `errors=` (status byte not OK), `bad_data=` (sectors read whose stamp was wrong), and
 * with blk_verify=1 after writes `verify_blocks=` (blocks read back) and `verify_bad=`. A request
 * not answered within 5 s prints `timeout=bench`. Then `done`, and the exit device (port 0x501)
 * with 0 when every request was answered OK and every check held, else 1; under QEMU the
 * isa-debug-exit port ends it instead (bench.h). */
#include "bench.h"
#include "vq.h"

#define EXIT_PORT 0x501
#define QSZ 256
#define MAX_DEPTH 64
#define MAX_BS (1u << 20)
#define BUF_BASE (16ULL << 20)
#define PIT_HZ 1193182ULL
#define STAMP_MAGIC 0x4b4c4256u /* "VBLK" */
#define BITMAP_BLOCKS (1u << 20)

static struct rings r0;
static struct dev disk;
static struct blk_hdr hdr[MAX_DEPTH] __attribute__((aligned(64)));
static volatile u8 st[MAX_DEPTH][16] __attribute__((aligned(64)));
static u64 slot_sector[MAX_DEPTH];
static u8 written[BITMAP_BLOCKS / 8];

static int is_write, is_seq, verify;
static u32 bs, seed;
static u64 cap, nblocks, next_block, rnd = 0x9e3779b97f4a7c15ULL;
static u64 submitted, answered, errors, bad_data;

static u8 *slot_buf(int s) { return (u8 *)(BUF_BASE + (u64)s * bs); }

static u64 param(const char *cmdline, const char *key, u64 def, u64 min, u64 max)
{
    const char *p = cmdline_find(cmdline, key);
    u64 v;
    if (!p || !parse_size(&p, &v) || v < min || v > max)
        return def;
    return v;
}

/* ---- clock ---- */

/* PIT channel 0's count, latched. */
static u16 pit0(void)
{
    outb(0x43, 0x00);
    u8 lo = inb(0x40);
    u8 hi = inb(0x40);
    return (u16)(lo | (hi << 8));
}

/* TSC ticks per second: channel 0 in mode 2 counting 65536 down, read (latched) in a loop for
 * about 100 ms; the median of three tries. 0 if the counter does not move. */
static u64 tsc_hz(void)
{
    u64 w[3];
    outb(0x43, 0x34); /* channel 0, lobyte/hibyte, mode 2, binary */
    outb(0x40, 0);
    outb(0x40, 0);
    for (int i = 0; i < 3; i++) {
        u64 t0 = rdtsc();
        u16 prev = pit0();
        u64 ticks = 0, t1 = t0;
        for (u64 n = 0; ticks < PIT_HZ / 10; n++) {
            if (n > 20000000ULL)
                return 0;
            u64 t = rdtsc();
            u16 c = pit0();
            ticks += (u16)(prev - c);
            prev = c;
            t1 = t;
        }
        w[i] = (t1 - t0) * PIT_HZ / ticks;
    }
    /* One-shot from here on: no periodic timer left behind. */
    outb(0x43, 0x30);
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    for (int i = 1; i < 3; i++)
        for (int j = i; j > 0 && w[j - 1] > w[j]; j--) {
            u64 t = w[j]; w[j] = w[j - 1]; w[j - 1] = t;
        }
    return w[1];
}

/* ---- stamps ---- */

static void stamp(u8 *b, u64 sector, u32 sd)
{
    for (u32 off = 0; off < bs; off += 512, sector++) {
        u32 m = STAMP_MAGIC;
        memcpy(b + off, &m, 4);
        memcpy(b + off + 4, &sd, 4);
        memcpy(b + off + 8, &sector, 8);
    }
}

/* Sectors of the `bs` bytes at `b` (read from `sector`) whose stamp is wrong; `want_seed` < 0
 * takes any seed. */
static u64 check(const u8 *b, u64 sector, i64 want_seed)
{
    u64 bad = 0;
    for (u32 off = 0; off < bs; off += 512, sector++) {
        u32 m, sd;
        u64 sec;
        memcpy(&m, b + off, 4);
        memcpy(&sd, b + off + 4, 4);
        memcpy(&sec, b + off + 8, 8);
        if (m != STAMP_MAGIC || sec != sector || (want_seed >= 0 && sd != (u32)want_seed))
            bad++;
    }
    return bad;
}

/* ---- requests ---- */

static u64 pick_block(void)
{
    if (is_seq) {
        u64 b = next_block++;
        if (next_block >= nblocks)
            next_block = 0;
        return b;
    }
    rnd ^= rnd << 13;
    rnd ^= rnd >> 7;
    rnd ^= rnd << 17;
    return rnd % nblocks;
}

/* Fills slot `s` with a request of `type` on `block` and puts it on the avail ring (unpublished). */
static void post_block(int s, u32 type, u64 block)
{
    struct vq *q = &disk.q[0];
    struct desc *d = &q->r->d[3 * s];
    u64 sector = block * (bs / 512);
    slot_sector[s] = sector;
    if (type == T_OUT && verify) {
        stamp(slot_buf(s), sector, seed);
        if (block < BITMAP_BLOCKS)
            written[block / 8] |= (u8)(1u << (block % 8));
    }
    hdr[s].type = type;
    hdr[s].reserved = 0;
    hdr[s].sector = sector;
    st[s][0] = 0xee;
    d[0].addr = (u64)&hdr[s];
    d[0].len = sizeof(struct blk_hdr);
    d[0].flags = D_NEXT;
    d[0].next = (u16)(3 * s + 1);
    d[1].addr = (u64)slot_buf(s);
    d[1].len = bs;
    d[1].flags = D_NEXT | (type == T_IN ? D_WRITE : 0);
    d[1].next = (u16)(3 * s + 2);
    d[2].addr = (u64)&st[s][0];
    d[2].len = 1;
    d[2].flags = D_WRITE;
    d[2].next = 0;
    q->r->a.ring[q->aidx % q->size] = (u16)(3 * s);
    q->aidx++;
    submitted++;
}

static int event_idx;

/* Publishes the posted requests; notifies unless EVENT_IDX says the device is still at work
 * (its avail_event lies before the new entries: it will see them without being told). */
static void publish(void)
{
    struct vq *q = &disk.q[0];
    u16 old = *(volatile u16 *)&q->r->a.idx;
    mb();
    *(volatile u16 *)&q->r->a.idx = q->aidx;
    mb();
    if (event_idx) {
        u16 ev = *(volatile u16 *)&q->r->u.avail_event;
        if ((u16)(q->aidx - ev - 1) >= (u16)(q->aidx - old))
            return;
    }
    dev_wr(&disk, VM_QUEUE_NOTIFY, q->sel);
}

/* Waits for completions and hands each slot to `done` (which may post it again). Returns the
 * number taken, or -1 after 5 s without one. */
static int reap(u64 hz, void (*done)(int s))
{
    struct vq *q = &disk.q[0];
    u64 start = rdtsc(), polls = 0;
    for (;;) {
        barrier();
        u16 idx = *(volatile u16 *)&q->r->u.idx;
        if (idx != q->useen) {
            mb();
            int n = 0;
            while (q->useen != idx) {
                struct used_elem *e = &q->r->u.ring[q->useen % q->size];
                q->useen++;
                int s = (int)(e->id / 3);
                if (e->id % 3 || s >= MAX_DEPTH)
                    continue;
                answered++;
                if (st[s][0] != 0)
                    errors++;
                done(s);
                n++;
            }
            if (event_idx) {
                /* No interrupts wanted (this driver polls): used_event stays far ahead. */
                *(volatile u16 *)&q->r->a.used_event = (u16)(q->useen + 0x7fff);
            } else {
                u32 isr = dev_rd(&disk, VM_INT_STATUS);
                if (isr)
                    dev_wr(&disk, VM_INT_ACK, isr);
            }
            return n;
        }
        if ((++polls & 1023) == 0 && rdtsc() - start > 5 * hz)
            return -1;
        cpu_relax();
    }
}

static int refill = 1;
static u64 counted;

static void bench_done(int s)
{
    if (!is_write && verify)
        bad_data += check(slot_buf(s), slot_sector[s], -1);
    counted++;
    if (refill)
        post_block(s, is_write ? T_OUT : T_IN, pick_block());
}

static void verify_done(int s)
{
    bad_data += check(slot_buf(s), slot_sector[s], seed);
}

/* Reads back every block written (one at a time through slot 0); returns 0 on a timeout. */
static int verify_writes(u64 hz)
{
    u64 blocks = 0;
    u64 n = nblocks < BITMAP_BLOCKS ? nblocks : BITMAP_BLOCKS;
    for (u64 b = 0; b < n; b++) {
        if (!(written[b / 8] & (1u << (b % 8))))
            continue;
        memset(slot_buf(0), 0, bs);
        post_block(0, T_IN, b);
        publish();
        if (reap(hz, verify_done) < 0)
            return 0;
        blocks++;
    }
    kv_hex("verify_blocks", blocks);
    return 1;
}

static int run(const char *cmdline)
{
    u64 hz = tsc_hz();
    if (!hz) {
        line("error=pit");
        hz = 3000000000ULL;
    }
    kv_hex("tsc_khz", hz / 1000);
    if (!dev_find(cmdline, ID_BLK, 0, &disk)) {
        line("error=no_disk");
        return 0;
    }
    if (cmdline_find(cmdline, "blk_event_idx=0") == 0)
        disk.want_features = 1ULL << 29; /* VIRTIO_F_EVENT_IDX */
    u32 status = dev_start(&disk, QSZ, &r0, NULL);
    event_idx = (disk.drv_features >> 29) & 1;
    disk.q[0].r->a.used_event = 0x7fff;
    kv_hex("status", status);
    if (status != 0xf)
        return 0;
    cap = (u64)dev_rd(&disk, VM_CONFIG) | ((u64)dev_rd(&disk, VM_CONFIG + 4) << 32);
    kv_hex("capacity", cap);

    const char *m = cmdline_find(cmdline, "blk_mode=");
    const char *mode = "randread";
    if (m && strncmp(m, "randwrite", 9) == 0)
        mode = "randwrite";
    else if (m && strncmp(m, "seqread", 7) == 0)
        mode = "seqread";
    else if (m && strncmp(m, "seqwrite", 8) == 0)
        mode = "seqwrite";
    is_write = mode[4] == 'w' || mode[3] == 'w';
    is_seq = mode[0] == 's';
    bs = (u32)param(cmdline, "blk_bs=", is_seq ? MAX_BS : 4096, 512, MAX_BS) & ~511u;
    int depth = (int)param(cmdline, "blk_depth=", 32, 1, MAX_DEPTH);
    u64 count = param(cmdline, "blk_count=", 0, 1, ~0ULL);
    u64 warm = param(cmdline, "blk_warm_ms=", count ? 0 : 200, 0, 600000) * hz / 1000;
    u64 span = param(cmdline, "blk_ms=", 2000, 1, 600000) * hz / 1000;
    verify = param(cmdline, "blk_verify=", 0, 0, 1) == 1;
    seed = (u32)param(cmdline, "blk_seed=", 1, 0, 0xffffffffULL);
    kv_str("mode", mode, 16);
    kv_hex("bs", bs);
    kv_hex("depth", (u64)depth);
    nblocks = cap / (bs / 512);
    if (nblocks < 1) {
        line("error=disk_too_small");
        return 0;
    }

    for (int s = 0; s < depth; s++) {
        if (is_write && !verify)
            stamp(slot_buf(s), 0, seed); /* something other than zeroes, once */
        post_block(s, is_write ? T_OUT : T_IN, pick_block());
    }
    publish();

    u64 start = rdtsc(), t_a = 0, t_b = 0, ops = 0;
    int measuring = 0;
    for (;;) {
        int n = reap(hz, bench_done);
        if (n < 0) {
            line("timeout=bench");
            return 0;
        }
        u64 now = rdtsc();
        if (!measuring && now - start >= warm) {
            kv_hex("warm_ops", counted);
            line("bench_start");
            /* The window starts at this completion; what completes after it is measured. */
            measuring = 1;
            t_a = rdtsc();
            counted = 0;
        } else if (measuring && (count ? counted >= count : now - t_a >= span)) {
            t_b = now;
            ops = counted;
            refill = 0;
            break;
        }
        publish();
    }
    /* Drain: every request posted (the last batch's refills too) is answered before anything
     * else. */
    publish();
    while (answered < submitted) {
        if (reap(hz, bench_done) < 0) {
            line("timeout=bench");
            return 0;
        }
    }
    line("bench_end");
    u64 ticks = t_b - t_a;
    kv_hex("ops", ops);
    kv_hex("bytes", ops * bs);
    kv_hex("elapsed_us", ticks * 1000 / (hz / 1000));
    kv_hex("elapsed_tsc", ticks);
    if (verify && is_write && !verify_writes(hz)) {
        line("timeout=bench");
        return 0;
    }
    kv_hex("submitted", submitted);
    kv_hex("answered", answered);
    kv_hex("errors", errors);
    kv_hex("bad_data", bad_data);
    if (verify && is_write)
        kv_hex("verify_bad", bad_data);
    return errors == 0 && bad_data == 0 && answered == submitted;
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    int ok = run(boot_cmdline(boot, info));
    /* Stop the device before the end so that it touches nothing more. */
    if (disk.base)
        dev_wr(&disk, VM_STATUS, 0);
    line("done");
    outb(EXIT_PORT, ok ? 0 : 1);
    bench_exit();
}
