/* virtio_net: drives the first virtio-mmio network device (DeviceID 1) named by
 * a virtio_mmio.device= entry of the command line, by polling (no interrupts).
 * Sends one broadcast frame and waits (bounded) for a frame of ethertype
 * 0x88b5 on RX; see the crate docs (VIRTIO_NET) for the lines it prints. */
#include "vq.h"

#define F_NET_MAC (1ULL << 5)

#define QSIZE 8
#define RX_BUF_LEN 2048
#define HDR_LEN 12
#define ETHERTYPE 0x88b5
#define MAX_FRAMES 32

static struct rings rings[2];
static struct dev net;
static struct vq *const rxq = &net.q[0];
static struct vq *const txq = &net.q[1];
static u8 rx_bufs[QSIZE][RX_BUF_LEN] __attribute__((aligned(4096)));
static u8 tx_hdr[HDR_LEN];
static u8 tx_frame[60];

static u32 rd(u32 off) { return dev_rd(&net, off); }
static void wr(u32 off, u32 v) { dev_wr(&net, off, v); }

static void put_bytes_hex(const char *key, const u8 *p, u32 n)
{
    static const char hex[] = "0123456789abcdef";
    puts(key);
    putc('=');
    for (u32 i = 0; i < n; i++) {
        putc(hex[p[i] >> 4]);
        putc(hex[p[i] & 15]);
    }
    nl();
}

static void put_mac(const char *key, const u8 *m)
{
    static const char hex[] = "0123456789abcdef";
    puts(key);
    putc('=');
    for (int i = 0; i < 6; i++) {
        if (i)
            putc(':');
        putc(hex[m[i] >> 4]);
        putc(hex[m[i] & 15]);
    }
    nl();
}

static int find_device(const char *cmdline)
{
    if (!dev_find(cmdline, ID_NET, 0, &net))
        return 0;
    kv_hex("virtio_base", net.base);
    return 1;
}

/* Sets up queue `index` with QSIZE entries; 0 if the device offers fewer. */
static int setup_queue(u32 index)
{
    wr(VM_QUEUE_SEL, index);
    if (rd(VM_QUEUE_NUM_MAX) < QSIZE)
        return 0;
    vq_setup(&net, (int)index, index, QSIZE, &rings[index]);
    return 1;
}

static void run(const char *cmdline)
{
    if (!find_device(cmdline)) {
        line("virtio=none");
        return;
    }
    kv_hex("version", rd(VM_VERSION));
    kv_hex("device_id", rd(VM_DEVICE_ID));

    wr(VM_STATUS, 0);
    wr(VM_STATUS, S_ACKNOWLEDGE);
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(VM_DEV_FEATURES_SEL, 0);
    u64 feat = rd(VM_DEV_FEATURES);
    wr(VM_DEV_FEATURES_SEL, 1);
    feat |= (u64)rd(VM_DEV_FEATURES) << 32;
    kv_hex("features", feat);
    u64 drv = feat & (F_VERSION_1 | F_NET_MAC);
    kv_hex("driver_features", drv);
    wr(VM_DRV_FEATURES_SEL, 0);
    wr(VM_DRV_FEATURES, (u32)drv);
    wr(VM_DRV_FEATURES_SEL, 1);
    wr(VM_DRV_FEATURES, (u32)(drv >> 32));
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(rd(VM_STATUS) & S_FEATURES_OK)) {
        line("error=features_not_ok");
        return;
    }
    if (!setup_queue(0) || !setup_queue(1)) {
        line("error=queue");
        return;
    }
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    kv_hex("status", rd(VM_STATUS));

    u8 mac[6];
    u32 gen;
    do {
        gen = rd(VM_CONFIG_GEN);
        for (int i = 0; i < 6; i++)
            mac[i] = mmio_read8(net.base + VM_CONFIG + i);
    } while (gen != rd(VM_CONFIG_GEN));
    put_mac("mac", mac);

    /* every RX descriptor is a one-buffer chain */
    for (u16 i = 0; i < QSIZE; i++) {
        rxq->r->d[i].addr = (u64)rx_bufs[i];
        rxq->r->d[i].len = RX_BUF_LEN;
        rxq->r->d[i].flags = D_WRITE;
        rxq->r->d[i].next = 0;
        vq_publish(rxq, i);
    }
    wr(VM_QUEUE_NOTIFY, 0);

    /* one broadcast frame, header and frame in two descriptors */
    memset(tx_hdr, 0, sizeof(tx_hdr));
    memset(tx_frame, 0, sizeof(tx_frame));
    memset(tx_frame, 0xff, 6);
    memcpy(tx_frame + 6, mac, 6);
    tx_frame[12] = ETHERTYPE >> 8;
    tx_frame[13] = ETHERTYPE & 0xff;
    memcpy(tx_frame + 14, "VMM-NET-TINY-GUEST-HELLO", 24);
    struct desc *td = txq->r->d;
    td[0].addr = (u64)tx_hdr;
    td[0].len = HDR_LEN;
    td[0].flags = D_NEXT;
    td[0].next = 1;
    td[1].addr = (u64)tx_frame;
    td[1].len = sizeof(tx_frame);
    td[1].flags = 0;
    td[1].next = 0;
    vq_push(&net, txq, 0);
    struct used_elem e;
    if (!vq_take_wait(&net, txq, 100000000000ULL, 10000000000ULL, &e)) {
        line("timeout=tx");
        return;
    }
    kv_hex("tx_used_len", e.len);
    line("tx=sent");

    /* receive until a frame of our ethertype arrives (the host may send others first) */
    int want_rx = !cmdline_find(cmdline, "net_rx=0");
    for (int n = 0; want_rx && n < MAX_FRAMES; n++) {
        if (!vq_take_wait(&net, rxq, 100000000000ULL, 60000000000ULL, &e)) {
            line("timeout=rx");
            return;
        }
        if (e.id >= QSIZE) {
            line("error=rx_id");
            return;
        }
        u8 *b = rx_bufs[e.id];
        u32 len = e.len;
        kv_hex("rx_len", len);
        if (len >= HDR_LEN + 14 && b[HDR_LEN + 12] == (ETHERTYPE >> 8) &&
            b[HDR_LEN + 13] == (ETHERTYPE & 0xff)) {
            kv_hex("rx_num_buffers", b[10] | (b[11] << 8));
            put_mac("rx_dst", b + HDR_LEN);
            put_mac("rx_src", b + HDR_LEN + 6);
            put_bytes_hex("rx_head", b + HDR_LEN, 32);
            kv_str("rx_text", (const char *)b + HDR_LEN + 14, len - HDR_LEN - 14 < 40 ? len - HDR_LEN - 14 : 40);
            break;
        }
        /* give the buffer back */
        vq_push(&net, rxq, (u16)e.id);
    }
    wr(VM_STATUS, 0);
    kv_hex("final_status", rd(VM_STATUS));
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    kv_str("boot", boot_name(boot), 16);
    run(boot_cmdline(boot, info));
    line("done");
}
