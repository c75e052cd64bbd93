/* virtio_console: drives the first virtio-mmio slot holding a console (DeviceID 3), by
 * polling.  Facts go to COM1; the console's own traffic goes through its queues.
 *
 * Command line switches:
 *   console_flood=N  send N flood blocks through transmitq (nothing else), see flood()
 *   console_rx=1     wait (bounded) for a line of input on receiveq and echo it
 */
#include "vq.h"

#define F_SIZE (1ULL << 0)

#define QN 16
#define BUF 4096
#define RXQ 0
#define TXQ 1

static struct rings rings[2];
static struct dev con;
static struct vq *const vqs = con.q;
static u8 txbuf[QN][BUF] __attribute__((aligned(4096)));
static u8 rxbuf[QN][256] __attribute__((aligned(4096)));
static u8 txfree[QN];
/* In the flood, transmit slot n uses descriptors 2n and 2n+1. */
static int flooding;

static u32 rd(u32 off) { return dev_rd(&con, off); }
static void wr(u32 off, u32 v) { dev_wr(&con, off, v); }

static int find_console(const char *cmdline)
{
    const char *p = cmdline;
    u64 size, addr, irq;
    while (virtio_mmio_next(&p, &size, &addr, &irq)) {
        if (mmio_read32(addr + VM_MAGIC) != 0x74726976 || mmio_read32(addr + VM_DEVICE_ID) != ID_CONSOLE)
            continue;
        con.base = addr;
        con.type = ID_CONSOLE;
        kv_hex("virtio_base", addr);
        kv_hex("virtio_irq", irq);
        return 1;
    }
    return 0;
}

static int setup_queue(u32 index)
{
    wr(VM_QUEUE_SEL, index);
    u32 max = rd(VM_QUEUE_NUM_MAX);
    if (max == 0)
        return 0;
    vq_setup(&con, (int)index, index, vq_fit(max, QN), &rings[index]);
    return 1;
}

/* Makes descriptor `d` (one buffer) available on queue `index`. */
static void post(u32 index, u16 d, u64 addr, u32 len, u16 flags)
{
    struct vq *q = &vqs[index];
    q->r->d[d].addr = addr;
    q->r->d[d].len = len;
    q->r->d[d].flags = flags;
    q->r->d[d].next = 0;
    vq_publish(q, d);
}

/* Takes one used element of queue `index` if there is one. */
static int take_used(u32 index, struct used_elem *out) { return vq_take(&vqs[index], out); }

/* Waits until a transmit buffer is free; 0 on timeout. */
static int tx_wait_free(void)
{
    u64 start = rdtsc();
    for (u64 i = 0;; i++) {
        struct used_elem e;
        while (take_used(TXQ, &e)) {
            if (e.id < QN)
                txfree[flooding ? e.id / 2 : e.id] = 1;
        }
        for (u16 d = 0; d < vqs[TXQ].size; d++)
            if (txfree[d])
                return 1;
        if (!spin_continue(i, 20000000000ULL, start, 60000000000ULL))
            return 0;
        cpu_relax();
    }
}

static int tx_get(void)
{
    if (!tx_wait_free())
        return -1;
    for (u16 d = 0; d < vqs[TXQ].size; d++)
        if (txfree[d]) {
            txfree[d] = 0;
            return d;
        }
    return -1;
}

/* Sends `n` bytes as one chain. */
static int tx_send(const u8 *p, u32 n)
{
    int d = tx_get();
    if (d < 0)
        return 0;
    memcpy(txbuf[d], p, n);
    post(TXQ, (u16)d, (u64)txbuf[d], n, 0);
    wr(VM_QUEUE_NOTIFY, TXQ);
    return 1;
}

static int tx_str(const char *s) { return tx_send((const u8 *)s, (u32)strlen(s)); }

/* Waits until every transmit buffer is back. */
static int tx_drain(void)
{
    u64 start = rdtsc();
    for (u64 i = 0;; i++) {
        struct used_elem e;
        while (take_used(TXQ, &e))
            if (e.id < QN)
                txfree[flooding ? e.id / 2 : e.id] = 1;
        int all = 1;
        for (u16 d = 0; d < (flooding ? vqs[TXQ].size / 2 : vqs[TXQ].size); d++)
            all &= txfree[d];
        if (all)
            return 1;
        if (!spin_continue(i, 20000000000ULL, start, 60000000000ULL))
            return 0;
        cpu_relax();
    }
}

/* The flood: `blocks` chains of two buffers: the block number (u64, little endian), then
 * the same 64 KiB of u64 words 0..8191.  Cheap for the guest (on hosts where a tiny guest's
 * instructions are emulated one by one), unique per position for the checker. */
#define FLOOD_BLOCK 65536
static u64 flood_words[FLOOD_BLOCK / 8] __attribute__((aligned(4096)));
static u64 flood_hdr[QN];

static void flood(u64 blocks)
{
    u64 bytes = 0;
    u16 pairs = vqs[TXQ].size / 2;
    for (u64 w = 0; w < FLOOD_BLOCK / 8; w++)
        flood_words[w] = w;
    for (u16 d = 0; d < QN; d++)
        txfree[d] = d < pairs;
    for (u64 b = 0; b < blocks; b++) {
        int slot = tx_get();
        if (slot < 0) {
            line("timeout=flood");
            return;
        }
        struct vq *q = &vqs[TXQ];
        u16 d0 = (u16)(2 * slot), d1 = (u16)(2 * slot + 1);
        flood_hdr[slot] = b;
        q->r->d[d0].addr = (u64)&flood_hdr[slot];
        q->r->d[d0].len = 8;
        q->r->d[d0].flags = D_NEXT;
        q->r->d[d0].next = d1;
        q->r->d[d1].addr = (u64)flood_words;
        q->r->d[d1].len = FLOOD_BLOCK;
        q->r->d[d1].flags = 0;
        q->r->d[d1].next = 0;
        vq_push(&con, q, d0);
        bytes += 8 + FLOOD_BLOCK;
    }
    if (!tx_drain()) {
        line("timeout=flood_drain");
        return;
    }
    kv_hex("flood_bytes", bytes);
}

static void receive(int wait)
{
    /* Every receive buffer is already posted. */
    char text[128];
    u32 len = 0;
    u64 start = rdtsc();
    for (u64 i = 0;; i++) {
        struct used_elem e;
        while (take_used(RXQ, &e)) {
            u16 d = (u16)e.id;
            if (d >= QN || e.len > sizeof(rxbuf[0]))
                continue;
            for (u32 j = 0; j < e.len && len < sizeof(text) - 1; j++)
                text[len++] = (char)rxbuf[d][j];
            post(RXQ, d, (u64)rxbuf[d], sizeof(rxbuf[0]), D_WRITE);
            wr(VM_QUEUE_NOTIFY, RXQ);
        }
        int have_line = 0;
        for (u32 j = 0; j < len; j++)
            if (text[j] == '\n' || text[j] == '\r')
                have_line = 1;
        if (have_line || !wait ||
            !spin_continue(i, 20000000000ULL, start, 60000000000ULL))
            break;
        cpu_relax();
    }
    dev_ack_irq(&con);
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        len--;
    text[len] = 0;
    puts("rx=");
    line(text);
    char echo[160];
    u32 n = 0;
    memcpy(echo, "rx=", 3);
    n = 3;
    memcpy(echo + n, text, len);
    n += len;
    echo[n++] = '\n';
    tx_send((const u8 *)echo, n);
    tx_drain();
}

static void run(const char *cmdline)
{
    if (!cmdline || !find_console(cmdline)) {
        line("virtio=none");
        return;
    }
    kv_hex("device_id", rd(VM_DEVICE_ID));
    kv_hex("version", rd(VM_VERSION));
    wr(VM_STATUS, 0);
    wr(VM_STATUS, S_ACKNOWLEDGE);
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(VM_DEV_FEATURES_SEL, 0);
    u64 feat = rd(VM_DEV_FEATURES);
    wr(VM_DEV_FEATURES_SEL, 1);
    feat |= (u64)rd(VM_DEV_FEATURES) << 32;
    kv_hex("features", feat);
    u64 drv = feat & (F_VERSION_1 | F_SIZE);
    wr(VM_DRV_FEATURES_SEL, 0);
    wr(VM_DRV_FEATURES, (u32)drv);
    wr(VM_DRV_FEATURES_SEL, 1);
    wr(VM_DRV_FEATURES, (u32)(drv >> 32));
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(rd(VM_STATUS) & S_FEATURES_OK)) {
        line("error=features_not_ok");
        return;
    }
    if (feat & F_SIZE) {
        u32 cfg = rd(VM_CONFIG);
        kv_hex("cols", cfg & 0xffff);
        kv_hex("rows", cfg >> 16);
    }
    if (!setup_queue(RXQ) || !setup_queue(TXQ)) {
        line("error=no_queue");
        return;
    }
    kv_hex("queue_size", vqs[TXQ].size);
    for (u16 d = 0; d < vqs[RXQ].size; d++)
        post(RXQ, d, (u64)rxbuf[d], sizeof(rxbuf[0]), D_WRITE);
    for (u16 d = 0; d < vqs[TXQ].size; d++)
        txfree[d] = 1;
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    kv_hex("status", rd(VM_STATUS));
    wr(VM_QUEUE_NOTIFY, RXQ);

    const char *p = cmdline_find(cmdline, "console_flood=");
    u64 blocks = 0;
    if (p && parse_num(&p, &blocks) && blocks) {
        flooding = 1;
        flood(blocks);
    } else {
        if (!tx_str("hello from the virtio console\n") || !tx_drain()) {
            line("timeout=tx");
            return;
        }
        line("tx=ok");
        receive(cmdline_find(cmdline, "console_rx=1") != NULL);
    }
    dev_ack_irq(&con);
    wr(VM_STATUS, 0);
    kv_hex("reset_status", rd(VM_STATUS));
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    kv_str("boot", boot_name(boot), 16);
    run(boot_cmdline(boot, info));
    line("done");
}
