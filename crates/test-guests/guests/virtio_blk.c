/* virtio_blk: drives the virtio-mmio (version 2) block device named by the
 * first usable virtio_mmio.device= entry of the command line, by polling.
 *
 * With `blk_inflight=N` (1..INFLIGHT_MAX) on the command line it then resets the device, starts it
 * again with a queue of 64 and keeps N requests in flight at once: N writes of distinct patterns
 * (4 KiB at sector INFLIGHT_SECTOR + 8i) posted before one notification, a FLUSH, then N reads of them back
 * posted the same way.  Prints inflight_n=, inflight_write_ok= (writes with status OK),
 * inflight_flush_status=, inflight_read_ok= (reads with status OK and the pattern intact) and
 * inflight_used_first= (chains used when the driver first saw the used index move). */
#include "vq.h"

#define F_BLK_RO (1ULL << 5)
#define F_BLK_DISCARD (1ULL << 13)
#define F_BLK_WRITE_ZEROES (1ULL << 14)
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define SEG_UNMAP 1

#define QSIZE_WANT 16
#define OOB_ADDR 0xF00000000000ULL

static struct rings rings __attribute__((aligned(4096)));
static struct dev blk;
static struct blk_hdr hdr __attribute__((aligned(16)));
static u8 data[512] __attribute__((aligned(512)));
static volatile u8 status_byte __attribute__((aligned(16)));

/* One DISCARD / WRITE_ZEROES segment. */
struct seg {
    u64 sector;
    u32 num_sectors;
    u32 flags;
};
static struct seg segs[2] __attribute__((aligned(16)));

static u32 rd(u32 off) { return dev_rd(&blk, off); }
static void wr(u32 off, u32 v) { dev_wr(&blk, off, v); }

static void put_text(const char *key, const u8 *p, u32 n)
{
    puts(key);
    putc('=');
    for (u32 i = 0; i < n; i++)
        putc(p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.');
    nl();
}

/* One request: header, optional data buffer, status.  Returns the status
 * byte (0..255), or -1 on timeout (after printing timeout=<name>). */
static int request(const char *name, u32 type, u64 sector, u64 buf, u32 len, int dev_writes)
{
    struct vq *q = &blk.q[0];
    struct used_elem e;
    blk_layout(q->r->d, &hdr, type, sector, buf, len, dev_writes, &status_byte);
    vq_push(&blk, q, 0);
    if (!vq_take_wait(&blk, q, 1000000000ULL, 10000000000ULL, &e)) {
        puts("timeout=");
        line(name);
        return -1;
    }

    puts(name);
    puts("_status=");
    put_hex(status_byte);
    nl();
    puts(name);
    puts("_len=");
    put_hex(e.len);
    nl();
    return status_byte;
}

/* Picks the first virtio_mmio.device= entry whose slot holds a device. */
static int find_device(const char *cmdline)
{
    const char *p = cmdline;
    u64 size, addr, irq;
    while (virtio_mmio_next(&p, &size, &addr, &irq)) {
        if (mmio_read32(addr + VM_MAGIC) == 0x74726976 && mmio_read32(addr + VM_DEVICE_ID) == 0)
            continue; /* empty slot */
        blk.base = addr;
        blk.type = ID_BLK;
        kv_hex("virtio_base", addr);
        kv_hex("virtio_size", size);
        kv_hex("virtio_irq", irq);
        return 1;
    }
    return 0;
}

/* 1 when all 512 bytes of data are zero. */
static int data_zero(void)
{
    for (u32 i = 0; i < sizeof(data); i++)
        if (data[i])
            return 0;
    return 1;
}

static int segment(const char *name, u32 type, u64 sector, u32 num, u32 flags, u32 len)
{
    segs[0].sector = sector;
    segs[0].num_sectors = num;
    segs[0].flags = flags;
    return request(name, type, 0, (u64)segs, len, 0);
}

/* DISCARD and WRITE_ZEROES (or, not negotiated, one DISCARD that must come back UNSUPP): writes
 * sector 1024, discards the second half of the disk (1024 sectors from 1024), reads zeroes
 * back; writes sector 2, zeroes it, reads zeroes back; then malformed ones.  Returns 0 on a
 * timeout. */
static int discard_tests(u64 capacity, u64 drv)
{
    if (!(drv & F_BLK_DISCARD))
        return segment("discard_unnegotiated", T_DISCARD, 0, 1, 0, 16) >= 0;
    memset(data, 0, sizeof(data));
    memcpy(data, "DISCARD-ME", 10);
    if (request("write1024", T_OUT, 1024, (u64)data, 512, 0) < 0)
        return 0;
    if (segment("discard", T_DISCARD, 1024, 1024, 0, 16) < 0)
        return 0;
    memset(data, 0xaa, sizeof(data));
    if (request("read1024", T_IN, 1024, (u64)data, 512, 1) < 0)
        return 0;
    kv_hex("discarded_zero", data_zero());

    memset(data, 0, sizeof(data));
    memcpy(data, "ZERO-ME", 7);
    if (request("write2", T_OUT, 2, (u64)data, 512, 0) < 0)
        return 0;
    if (segment("zeroes", T_WRITE_ZEROES, 2, 1, 0, 16) < 0)
        return 0;
    memset(data, 0xaa, sizeof(data));
    if (request("read2z", T_IN, 2, (u64)data, 512, 1) < 0)
        return 0;
    kv_hex("zeroed_zero", data_zero());

    /* Refused: unmap on a DISCARD (UNSUPP), a range past the end and a table of 8 bytes (IOERR). */
    if (segment("discard_unmap", T_DISCARD, 0, 1, SEG_UNMAP, 16) < 0)
        return 0;
    if (segment("discard_past_end", T_DISCARD, capacity - 1, 2, 0, 16) < 0)
        return 0;
    if (segment("discard_short", T_DISCARD, 0, 1, 0, 8) < 0)
        return 0;
    return 1;
}

#define INFLIGHT_MAX 20
#define INFLIGHT_SECTOR 64

static struct rings rings2 __attribute__((aligned(4096)));
static u8 ibuf[INFLIGHT_MAX][4096] __attribute__((aligned(4096)));
static struct blk_hdr ihdr[INFLIGHT_MAX + 1] __attribute__((aligned(16)));
static volatile u8 istatus[INFLIGHT_MAX + 1] __attribute__((aligned(16)));

static u8 ipattern(u32 i, u32 j) { return (u8)(i * 37 + j * 3 + 1); }

/* Posts request i (type, sector, 4 KiB buffer i) on descriptors 3i..3i+2, without notifying. */
static void ipost(struct vq *q, u32 i, u32 type, u64 sector, int dev_writes)
{
    blk_layout(&q->r->d[3 * i], &ihdr[i], type, sector, (u64)ibuf[i], dev_writes >= 0 ? 4096 : 0,
               dev_writes > 0, &istatus[i]);
    /* blk_layout links descriptors 0..2 of the table it is given: make the links absolute. */
    q->r->d[3 * i].next = (u16)(3 * i + 1);
    q->r->d[3 * i + 1].next = (u16)(3 * i + 2);
    vq_publish(q, (u16)(3 * i));
}

/* Waits for `n` used chains; returns how many arrived with the first move of the used index, or
 * 0 on a timeout. */
static u32 iwait(struct vq *q, u32 n)
{
    u16 start = q->useen;
    u32 first = 0;
    for (u64 i = 0; (u16)(q->useen - start) < n; i++) {
        if (vq_wait(&blk, q, LONG_WAIT) != WAIT_USED) {
            line("timeout=inflight");
            return 0;
        }
        if (!first)
            first = (u16)(q->useen - start);
    }
    return first;
}

static void inflight_tests(u32 n)
{
    kv_hex("inflight_n", n);
    if (!dev_negotiate(&blk)) {
        line("error=inflight_features");
        return;
    }
    wr(VM_QUEUE_SEL, 0);
    vq_setup(&blk, 0, 0, vq_fit(rd(VM_QUEUE_NUM_MAX), 64), &rings2);
    dev_driver_ok(&blk);
    struct vq *q = &blk.q[0];

    for (u32 i = 0; i < n; i++) {
        for (u32 j = 0; j < 4096; j++)
            ibuf[i][j] = ipattern(i, j);
        ipost(q, i, T_OUT, INFLIGHT_SECTOR + 8 * i, 0);
    }
    wr(VM_QUEUE_NOTIFY, 0);
    u32 first = iwait(q, n);
    if (!first)
        return;
    kv_hex("inflight_used_first", first);
    u32 ok = 0;
    for (u32 i = 0; i < n; i++)
        ok += istatus[i] == 0;
    kv_hex("inflight_write_ok", ok);

    ipost(q, INFLIGHT_MAX, T_FLUSH, 0, -1);
    wr(VM_QUEUE_NOTIFY, 0);
    if (!iwait(q, 1))
        return;
    kv_hex("inflight_flush_status", istatus[INFLIGHT_MAX]);

    for (u32 i = 0; i < n; i++) {
        memset(ibuf[i], 0, 4096);
        ipost(q, i, T_IN, INFLIGHT_SECTOR + 8 * (n - 1 - i), 1);
    }
    wr(VM_QUEUE_NOTIFY, 0);
    if (!iwait(q, n))
        return;
    ok = 0;
    for (u32 i = 0; i < n; i++) {
        int same = istatus[i] == 0;
        for (u32 j = 0; same && j < 4096; j++)
            same = ibuf[i][j] == ipattern(n - 1 - i, j);
        ok += same;
    }
    kv_hex("inflight_read_ok", ok);
}

static void run(const char *cmdline)
{
    if (!find_device(cmdline)) {
        line("virtio=none");
        return;
    }
    u32 magic = rd(VM_MAGIC), version = rd(VM_VERSION), dev = rd(VM_DEVICE_ID);
    kv_hex("magic", magic);
    kv_hex("version", version);
    kv_hex("device_id", dev);
    kv_hex("vendor_id", rd(VM_VENDOR_ID));
    if (magic != 0x74726976 || version != 2 || dev != 2) {
        line("error=not_a_modern_virtio_blk");
        return;
    }

    wr(VM_STATUS, 0);
    kv_hex("reset_status", rd(VM_STATUS));
    wr(VM_STATUS, S_ACKNOWLEDGE);
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);

    wr(VM_DEV_FEATURES_SEL, 0);
    u64 feat = rd(VM_DEV_FEATURES);
    wr(VM_DEV_FEATURES_SEL, 1);
    feat |= (u64)rd(VM_DEV_FEATURES) << 32;
    kv_hex("features", feat);
    kv_hex("ro", (feat & F_BLK_RO) ? 1 : 0);

    u64 drv = feat & (F_VERSION_1 | F_BLK_FLUSH | F_BLK_DISCARD | F_BLK_WRITE_ZEROES);
    kv_hex("driver_features", drv);
    wr(VM_DRV_FEATURES_SEL, 0);
    wr(VM_DRV_FEATURES, (u32)drv);
    wr(VM_DRV_FEATURES_SEL, 1);
    wr(VM_DRV_FEATURES, (u32)(drv >> 32));
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    u32 st = rd(VM_STATUS);
    kv_hex("features_ok", (st & S_FEATURES_OK) ? 1 : 0);
    if (!(st & S_FEATURES_OK))
        return;

    wr(VM_QUEUE_SEL, 0);
    u32 max = rd(VM_QUEUE_NUM_MAX);
    kv_hex("queue_num_max", max);
    if (max == 0) {
        line("error=no_queue");
        return;
    }
    kv_hex("queue_ready_before", rd(VM_QUEUE_READY));
    u16 qsize = vq_fit(max, QSIZE_WANT);
    kv_hex("queue_size", qsize);
    vq_setup(&blk, 0, 0, qsize, &rings);
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    kv_hex("status", rd(VM_STATUS));

    u32 gen, lo, hi;
    do {
        gen = rd(VM_CONFIG_GEN);
        lo = rd(VM_CONFIG);
        hi = rd(VM_CONFIG + 4);
    } while (gen != rd(VM_CONFIG_GEN));
    u64 capacity = ((u64)hi << 32) | lo;
    kv_hex("capacity", capacity);
    if (drv & F_BLK_DISCARD) {
        kv_hex("max_discard_sectors", rd(VM_CONFIG + 36));
        kv_hex("max_discard_seg", rd(VM_CONFIG + 40));
        kv_hex("discard_sector_alignment", rd(VM_CONFIG + 44));
        kv_hex("max_write_zeroes_sectors", rd(VM_CONFIG + 48));
        kv_hex("max_write_zeroes_seg", rd(VM_CONFIG + 52));
        kv_hex("write_zeroes_may_unmap", rd(VM_CONFIG + 56) & 0xff);
    }

    /* read sector 0 */
    memset(data, 0, sizeof(data));
    if (request("read", T_IN, 0, (u64)data, 512, 1) < 0)
        return;
    put_text("sector0", data, 16);

    /* write sector 1 */
    memset(data, 0, sizeof(data));
    memcpy(data, "WRITTEN-BY-GUEST", 16);
    if (request("write", T_OUT, 1, (u64)data, 512, 0) < 0)
        return;

    if (request("flush", T_FLUSH, 0, 0, 0, 0) < 0)
        return;

    /* read sector 1 back */
    memset(data, 0, sizeof(data));
    if (request("read1", T_IN, 1, (u64)data, 512, 1) < 0)
        return;
    put_text("sector1", data, 16);

    memset(data, 0, sizeof(data));
    if (request("id", T_GET_ID, 0, (u64)data, 20, 1) < 0)
        return;
    u32 idn = 0;
    while (idn < 20 && data[idn])
        idn++;
    put_text("id", data, idn);

    if (request("unsupp", 0xff, 0, (u64)data, 512, 1) < 0)
        return;

    if (request("oob", T_IN, 0, OOB_ADDR, 512, 1) < 0)
        return;

    if (!discard_tests(capacity, drv))
        return;

    memset(data, 0, sizeof(data));
    if (request("read2", T_IN, 0, (u64)data, 512, 1) < 0)
        return;
    put_text("sector0_again", data, 16);
    kv_hex("final_status", rd(VM_STATUS));

    const char *p = cmdline_find(cmdline, "blk_inflight=");
    u64 n;
    if (p && parse_size(&p, &n) && n >= 1 && n <= INFLIGHT_MAX)
        inflight_tests((u32)n);
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    kv_str("boot", boot_name(boot), 16);
    run(boot_cmdline(boot, info));
    line("done");
}
