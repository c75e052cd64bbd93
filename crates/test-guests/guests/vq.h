/* vq.h: a tiny polling virtio-mmio (version 2) driver core shared by the test guests (virtio_blk,
 * virtio_net, virtio_console, vsock, hostile, blk_writer, rate_probe): device discovery, start-up, split
 * virtqueues with rings in .bss, bounded waits and one valid request per device type.  Everything is static inline so a guest links only what it uses. */
#ifndef VQ_H
#define VQ_H

#include "rt.h"
#include "virtio_mmio.h"

#define VQ_MAX 256
#define D_INDIRECT 4
#define S_FAILED 0x80
#define S_NEEDS_RESET 0x40
#define F_BLK_FLUSH (1ULL << 9)
#define ID_NET 1
#define ID_BLK 2
#define ID_CONSOLE 3
#define ID_VSOCK 19
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4

struct desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct avail {
    u16 flags;
    u16 idx;
    u16 ring[VQ_MAX];
    u16 used_event;
};

struct used_elem {
    u32 id;
    u32 len;
};

struct used {
    u16 flags;
    u16 idx;
    struct used_elem ring[VQ_MAX];
    u16 avail_event;
};

/* One set of rings per (device, queue) pair a guest uses: 4 of them. */
struct rings {
    struct desc d[VQ_MAX] __attribute__((aligned(4096)));
    struct avail a __attribute__((aligned(4096)));
    struct used u __attribute__((aligned(4096)));
};

struct vq {
    u32 sel;
    u16 size;
    struct rings *r;
    u16 aidx;  /* next avail index the driver publishes */
    u16 useen; /* used index last seen */
};

struct dev {
    u64 base;
    u32 type;
    u64 drv_features;
    u64 want_features; /* offered features the driver takes beyond the defaults below */
    int nq;         /* queues set up by dev_start */
    struct vq q[3]; /* blk: q[0] = requestq; console/net/vsock: q[0] = receive, q[1] = transmit;
                       vsock: q[2] = event */
    struct rings *r2; /* vsock: the event queue's rings (dev_start sets that queue up when given) */
};

static inline u32 dev_rd(struct dev *d, u32 off) { return mmio_read32(d->base + off); }
static inline void dev_wr(struct dev *d, u32 off, u32 v) { mmio_write32(d->base + off, v); }

/* The queue requests go to: requestq for blk, transmitq for console and net. */
static inline struct vq *data_q(struct dev *d) { return d->type == ID_BLK ? &d->q[0] : &d->q[1]; }

/* Finds the `nth` (0-based) slot of the command line holding device type `type`. */
static inline int dev_find(const char *cmdline, u32 type, int nth, struct dev *d)
{
    const char *p = cmdline;
    u64 size, addr, irq;
    while (virtio_mmio_next(&p, &size, &addr, &irq)) {
        if (mmio_read32(addr + VM_MAGIC) != 0x74726976 || mmio_read32(addr + VM_DEVICE_ID) != type)
            continue;
        if (nth-- > 0)
            continue;
        d->base = addr;
        d->type = type;
        return 1;
    }
    return 0;
}

/* The queue size a driver wanting `want` entries (a power of two) uses when the device offers
 * `max`: the largest power of two no bigger than either. */
static inline u16 vq_fit(u32 max, u16 want)
{
    u16 size = max < want ? (u16)max : want;
    while (size & (size - 1))
        size &= (u16)(size - 1);
    return size;
}

/* Configures queue `qi` (QueueSel `sel`) with `size` entries on the rings `r` (zeroed). */
static inline void vq_setup(struct dev *d, int qi, u32 sel, u16 size, struct rings *r)
{
    struct vq *q = &d->q[qi];
    memset(r, 0, sizeof(*r));
    q->sel = sel;
    q->size = size;
    q->r = r;
    q->aidx = 0;
    q->useen = 0;
    dev_wr(d, VM_QUEUE_SEL, sel);
    dev_wr(d, VM_QUEUE_NUM, size);
    dev_wr(d, VM_QUEUE_DESC_LO, (u32)(u64)r->d);
    dev_wr(d, VM_QUEUE_DESC_HI, (u32)((u64)r->d >> 32));
    dev_wr(d, VM_QUEUE_DRIVER_LO, (u32)(u64)&r->a);
    dev_wr(d, VM_QUEUE_DRIVER_HI, (u32)((u64)&r->a >> 32));
    dev_wr(d, VM_QUEUE_DEVICE_LO, (u32)(u64)&r->u);
    dev_wr(d, VM_QUEUE_DEVICE_HI, (u32)((u64)&r->u >> 32));
    dev_wr(d, VM_QUEUE_READY, 1);
}

/* Reset, ACKNOWLEDGE, DRIVER, features (VERSION_1, FLUSH for blk, and what want_features names
 * if offered), FEATURES_OK.  Returns 1 if
 * the device accepted the features. */
static inline int dev_negotiate(struct dev *d)
{
    dev_wr(d, VM_STATUS, 0);
    dev_wr(d, VM_STATUS, S_ACKNOWLEDGE);
    dev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    dev_wr(d, VM_DEV_FEATURES_SEL, 0);
    u64 feat = dev_rd(d, VM_DEV_FEATURES);
    dev_wr(d, VM_DEV_FEATURES_SEL, 1);
    feat |= (u64)dev_rd(d, VM_DEV_FEATURES) << 32;
    d->drv_features = feat & (F_VERSION_1 | (d->type == ID_BLK ? F_BLK_FLUSH : 0) | d->want_features);
    dev_wr(d, VM_DRV_FEATURES_SEL, 0);
    dev_wr(d, VM_DRV_FEATURES, (u32)d->drv_features);
    dev_wr(d, VM_DRV_FEATURES_SEL, 1);
    dev_wr(d, VM_DRV_FEATURES, (u32)(d->drv_features >> 32));
    dev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    return (dev_rd(d, VM_STATUS) & S_FEATURES_OK) != 0;
}

static inline void dev_driver_ok(struct dev *d)
{
    dev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

/* Full start: negotiate, queues of `size` entries on rings r0 (and r1 for two-queue devices),
 * DRIVER_OK.  Returns the Status register (0xf when all went well). */
static inline u32 dev_start(struct dev *d, u16 size, struct rings *r0, struct rings *r1)
{
    if (!dev_negotiate(d))
        return dev_rd(d, VM_STATUS);
    vq_setup(d, 0, 0, size, r0);
    d->nq = 1;
    if (d->type != ID_BLK) {
        vq_setup(d, 1, 1, size, r1);
        d->nq = 2;
    }
    if (d->type == ID_VSOCK && d->r2) {
        vq_setup(d, 2, 2, size, d->r2);
        d->nq = 3;
    }
    dev_driver_ok(d);
    return dev_rd(d, VM_STATUS);
}

/* Puts `head` on the avail ring and publishes the new index, without notifying. */
static inline void vq_publish(struct vq *q, u16 head)
{
    q->r->a.ring[q->aidx % q->size] = head;
    q->aidx++;
    mb();
    *(volatile u16 *)&q->r->a.idx = q->aidx;
    mb();
}

/* Publishes `head` on the avail ring and notifies the queue. */
static inline void vq_push(struct dev *d, struct vq *q, u16 head)
{
    vq_publish(q, head);
    dev_wr(d, VM_QUEUE_NOTIFY, q->sel);
}

/* Acknowledges whatever interrupt the device raised (the guests poll; interrupts stay off). */
static inline void dev_ack_irq(struct dev *d)
{
    u32 isr = dev_rd(d, VM_INT_STATUS);
    if (isr)
        dev_wr(d, VM_INT_ACK, isr);
}

/* Takes the next used element into *e if the device used one more chain; 0 if it did not.  For
 * drivers that consume used elements one at a time (vq_wait jumps to the latest index). */
static inline int vq_take(struct vq *q, struct used_elem *e)
{
    barrier();
    if (*(volatile u16 *)&q->r->u.idx == q->useen)
        return 0;
    mb();
    *e = q->r->u.ring[q->useen % q->size];
    q->useen++;
    return 1;
}

/* Waits (at most `max_iters` polls or `tsc` ticks) for the next used element, takes it into *e
 * and acknowledges the interrupt.  Returns 0 on a timeout. */
static inline int vq_take_wait(struct dev *d, struct vq *q, u64 max_iters, u64 tsc, struct used_elem *e)
{
    u64 start = rdtsc();
    for (u64 i = 0; !vq_take(q, e); i++) {
        if (!spin_continue(i, max_iters, start, tsc))
            return 0;
        cpu_relax();
    }
    dev_ack_irq(d);
    return 1;
}

#define WAIT_TIMEOUT 0
#define WAIT_USED 1
#define WAIT_NEEDS_RESET 2

/* Waits (bounded by `tsc` ticks) until the used index moves or the device asks for a reset. */
static inline int vq_wait(struct dev *d, struct vq *q, u64 tsc)
{
    u64 start = rdtsc();
    for (u64 i = 0;; i++) {
        barrier();
        u16 idx = *(volatile u16 *)&q->r->u.idx;
        if (idx != q->useen) {
            mb();
            q->useen = idx;
            dev_ack_irq(d);
            return WAIT_USED;
        }
        if ((i & 255) == 0 && (dev_rd(d, VM_STATUS) & S_NEEDS_RESET))
            return WAIT_NEEDS_RESET;
        if (!spin_continue(i, 4000000000ULL, start, tsc))
            return WAIT_TIMEOUT;
        cpu_relax();
    }
}

/* About 3 s at 3 GHz: long enough for a loaded host, short enough for a guest that waits in vain. */
#define LONG_WAIT 10000000000ULL

struct blk_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

/* Scratch for valid requests, one set per device (index 0 or 1). */
static struct blk_hdr vq_hdr[2] __attribute__((aligned(64)));
static volatile u8 vq_status[2][64] __attribute__((aligned(64)));
static u8 vq_buf[2][512] __attribute__((aligned(512)));

/* Lays out a blk request on descriptors 0..2 of `ds` (head 0): the header `h` (filled in here), the
 * data buffer (none when `len` is 0; the device writes it when `dev_writes`), and the status byte
 * (set to 0xee, which no device status is). */
static inline void blk_layout(struct desc *ds, struct blk_hdr *h, u32 type, u64 sector, u64 buf, u32 len,
                             int dev_writes, volatile u8 *status)
{
    h->type = type;
    h->reserved = 0;
    h->sector = sector;
    *status = 0xee;
    int n = 0;
    ds[0].addr = (u64)h;
    ds[0].len = sizeof(struct blk_hdr);
    ds[0].flags = D_NEXT;
    ds[0].next = 1;
    n = 1;
    if (len) {
        ds[1].addr = buf;
        ds[1].len = len;
        ds[1].flags = D_NEXT | (dev_writes ? D_WRITE : 0);
        ds[1].next = 2;
        n = 2;
    }
    ds[n].addr = (u64)status;
    ds[n].len = 1;
    ds[n].flags = D_WRITE;
    ds[n].next = 0;
}

/* One valid blk request on descriptors 0..2 (head 0).  Returns the status byte, or -1 on a timeout,
 * -2 when the device asked for a reset. */
static inline int blk_request(struct dev *d, int slot, u32 type, u64 sector, void *buf, u32 len, int dev_writes)
{
    struct vq *q = &d->q[0];
    blk_layout(q->r->d, &vq_hdr[slot], type, sector, (u64)buf, len, dev_writes, &vq_status[slot][0]);
    vq_push(d, q, 0);
    int w = vq_wait(d, q, LONG_WAIT);
    if (w == WAIT_TIMEOUT)
        return -1;
    if (w == WAIT_NEEDS_RESET)
        return -2;
    return vq_status[slot][0];
}

/* One valid transmit chain (console: text; net: virtio_net_hdr + a 60-byte frame; vsock: a 44-byte
 * header from the guest's CID, an RW of no bytes to a host port nobody connected, which the device
 * takes and answers with a reset) on descriptor 0 of the transmit queue.  Returns 1 when the device
 * used it. */
static inline int tx_one(struct dev *d, int slot)
{
    struct vq *q = &d->q[1];
    struct desc *ds = q->r->d;
    u8 *b = vq_buf[slot];
    u32 len;
    memset(b, 0, 512);
    if (d->type == ID_NET) {
        /* 12-byte virtio_net_hdr (zero: no offloads), then a broadcast frame, ethertype 0x88b5. */
        memset(b + 12, 0xff, 6);
        b[12 + 6] = 0x52;
        b[12 + 12] = 0x88;
        b[12 + 13] = 0xb5;
        memcpy(b + 12 + 14, "HOSTILE-TX", 10);
        len = 12 + 60;
    } else if (d->type == ID_VSOCK) {
        u64 cid = (u64)dev_rd(d, VM_CONFIG) | ((u64)dev_rd(d, VM_CONFIG + 4) << 32);
        memcpy(b, &cid, 8);   /* src_cid */
        b[8] = 2;             /* dst_cid: the host */
        b[16] = 0x77;         /* src_port 0x7777 */
        b[17] = 0x77;
        b[20] = 0x77;         /* dst_port 0x7777 */
        b[21] = 0x77;
        b[28] = 1;            /* type: stream */
        b[30] = 5;            /* op: RW */
        len = 44;
    } else {
        memcpy(b, "hostile-tx\n", 11);
        len = 11;
    }
    ds[0].addr = (u64)b;
    ds[0].len = len;
    ds[0].flags = 0;
    ds[0].next = 0;
    vq_push(d, q, 0);
    return vq_wait(d, q, LONG_WAIT) == WAIT_USED;
}

/* A valid request through the device's data queue; returns 1 if it was served correctly.  For blk:
 * writes a pattern naming `tag` to `sector` and reads it back. */
static inline int dev_valid(struct dev *d, int slot, u64 sector, u32 tag)
{
    if (d->type != ID_BLK)
        return tx_one(d, slot);
    u8 *b = vq_buf[slot];
    for (int i = 0; i < 512; i++)
        b[i] = (u8)(tag + i * 7);
    if (blk_request(d, slot, T_OUT, sector, b, 512, 0) != 0)
        return 0;
    memset(b, 0, 512);
    if (blk_request(d, slot, T_IN, sector, b, 512, 1) != 0)
        return 0;
    for (int i = 0; i < 512; i++)
        if (b[i] != (u8)(tag + i * 7))
            return 0;
    return 1;
}

#endif
