/* virtio_blk: drives the virtio-mmio (version 2) block device named by the
 * first usable virtio_mmio.device= entry of the command line, by polling. */
#include "vq.h"

#define F_BLK_RO (1ULL << 5)
#define T_GET_ID 8

#define QSIZE_WANT 16
#define OOB_ADDR 0xF00000000000ULL

static struct rings rings __attribute__((aligned(4096)));
static struct dev blk;
static struct blk_hdr hdr __attribute__((aligned(16)));
static u8 data[512] __attribute__((aligned(512)));
static volatile u8 status_byte __attribute__((aligned(16)));

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

    u64 drv = feat & (F_VERSION_1 | F_BLK_FLUSH);
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
    kv_hex("capacity", ((u64)hi << 32) | lo);

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

    memset(data, 0, sizeof(data));
    if (request("read2", T_IN, 0, (u64)data, 512, 1) < 0)
        return;
    put_text("sector0_again", data, 16);
    kv_hex("final_status", rd(VM_STATUS));
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    kv_str("boot", boot_name(boot), 16);
    run(boot_cmdline(boot, info));
    line("done");
}
