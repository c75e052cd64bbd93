/* hostile_vsock.h: the attacks of the hostile guest that only a virtio-vsock target gets (included by
 * hostile.c, after its generic attacks; `hostile=vsock`).  The host side (tests/hostile.rs) keeps a
 * program listening at PATH_5000 that writes to every connection as fast as it is let, and nothing
 * at PATH_5009.  Each attack prints its facts; the harness then resets the device and checks that a
 * valid packet is still taken.  After the attacks, `vs_final` listens on port 1234 and echoes one
 * well-behaved host connection (`final_listening`, then `final_echoed=<bytes>`).
 *
 * Facts (all counts):
 *   vs_headers_unused       malformed packets the device neither used nor failed on (want 0)
 *   vs_headers_needs_reset  DEVICE_NEEDS_RESET after them (0: they are dropped or reset, not fatal)
 *   vs_credit_lies_*        response (1), rw_zero_credit (0), rx_bad (0), rx_short (chains shorter
 *                           than a header, used empty), got (payload bytes received, > 0)
 *   vs_flood_*              sent, responses (at most 1024), resets, answered (responses + resets)
 *   vs_no_rx_*              taken_before (stopped short of sent), resumed (1: all taken once buffers
 *                           came)
 */

#define VS_HDR 44
#define VS_HOST_CID 2
#define VS_OP_REQUEST 1
#define VS_OP_RESPONSE 2
#define VS_OP_RST 3
#define VS_OP_SHUTDOWN 4
#define VS_OP_RW 5
#define VS_OP_CREDIT_UPDATE 6
#define VS_OP_CREDIT_REQUEST 7
#define VS_WRITER_PORT 5000
#define VS_NOBODY_PORT 5009
#define VS_FINAL_PORT 1234
#define VS_RX_PAYLOAD 4096
/* About 0.1 s at 3 GHz. */
#define VS_SHORT (300000000ULL)

struct vs_hdr {
    u64 src_cid;
    u64 dst_cid;
    u32 src_port;
    u32 dst_port;
    u32 len;
    u16 type;
    u16 op;
    u32 flags;
    u32 buf_alloc;
    u32 fwd_cnt;
} __attribute__((packed));

static u8 vs_rxb[QS][VS_HDR + VS_RX_PAYLOAD] __attribute__((aligned(4096)));
static u32 vs_rxlen[QS];
static u64 vs_cid;
/* What the receive side saw: packets by op, payload bytes, packets that broke the rules. */
static u64 vs_ops[8], vs_bytes, vs_rx_bad, vs_rx_short;
/* Called for each well-formed packet received, when set (it must not send with `rx` set). */
static void (*vs_on_packet)(const struct vs_hdr *h, const u8 *data);

static u64 vs_read_cid(void)
{
    return (u64)dev_rd(&target, VM_CONFIG) | ((u64)dev_rd(&target, VM_CONFIG + 4) << 32);
}

static struct vs_hdr vs_mk(u16 op, u32 src_port, u32 dst_port)
{
    struct vs_hdr h;
    memset(&h, 0, sizeof(h));
    h.src_cid = vs_cid;
    h.dst_cid = VS_HOST_CID;
    h.src_port = src_port;
    h.dst_port = dst_port;
    h.type = 1;
    h.op = op;
    h.buf_alloc = 64 << 10;
    return h;
}

/* Posts every receive descriptor, descriptor i with `size(i)` bytes. */
static void vs_rx_post(u32 (*size)(int))
{
    struct vq *q = &target.q[0];
    for (int i = 0; i < QS; i++) {
        vs_rxlen[i] = size(i);
        q->r->d[i] = (struct desc){(u64)vs_rxb[i], vs_rxlen[i], D_WRITE, 0};
        vq_publish(q, (u16)i);
    }
    dev_wr(&target, VM_QUEUE_NOTIFY, 0);
}

static u32 vs_full(int i) { (void)i; return VS_HDR + VS_RX_PAYLOAD; }
/* Too short for a header, header + 16 bytes, header + a page. */
static u32 vs_mixed(int i) { return i % 3 == 0 ? 20 : i % 3 == 1 ? VS_HDR + 16 : VS_HDR + VS_RX_PAYLOAD; }

/* Takes what the device put in receive buffers, checks each packet against its buffer, counts it
 * and posts the buffer again.  Returns the number of packets. */
static int vs_rx_poll(void)
{
    struct vq *q = &target.q[0];
    struct used_elem e;
    int n = 0, again = 0;
    while (vq_take(q, &e)) {
        if (e.id >= QS) {
            vs_rx_bad++;
            continue;
        }
        again = 1;
        struct vs_hdr h;
        memcpy(&h, vs_rxb[e.id], VS_HDR);
        if (e.len == 0 && vs_rxlen[e.id] < VS_HDR) {
            vs_rx_short++;
        } else if (e.len < VS_HDR || e.len > vs_rxlen[e.id] || h.len != e.len - VS_HDR ||
                   h.src_cid != VS_HOST_CID || h.dst_cid != vs_cid || h.op == 0 || h.op > 7) {
            vs_rx_bad++;
        } else {
            vs_ops[h.op]++;
            vs_bytes += h.len;
            if (vs_on_packet)
                vs_on_packet(&h, vs_rxb[e.id] + VS_HDR);
            n++;
        }
        /* Posted again only once read. */
        vq_publish(q, (u16)e.id);
    }
    if (again)
        dev_wr(&target, VM_QUEUE_NOTIFY, 0);
    dev_ack_irq(&target);
    return n;
}

/* Polls the receive queue for `tsc` ticks. */
static void vs_rx_for(u64 tsc)
{
    u64 start = rdtsc();
    for (u64 i = 0; spin_continue(i, ~0ULL, start, tsc); i++) {
        vs_rx_poll();
        cpu_relax();
    }
}

/* Chains on the transmit queue not used yet. */
static u16 vs_tx_inflight(void)
{
    struct vq *q = &target.q[1];
    barrier();
    return (u16)(q->aidx - *(volatile u16 *)&q->r->u.idx);
}

/* Waits (bounded by `tsc`) until at most `n` transmit chains are in flight, serving the receive
 * queue when `rx`; returns 0 on a timeout. */
static int vs_tx_wait(u16 n, int rx, u64 tsc)
{
    u64 start = rdtsc();
    for (u64 i = 0; vs_tx_inflight() > n; i++) {
        if (rx)
            vs_rx_poll();
        if (!spin_continue(i, ~0ULL, start, tsc))
            return 0;
        cpu_relax();
    }
    target.q[1].useen = *(volatile u16 *)&target.q[1].r->u.idx;
    return 1;
}

/* How long vs_send waits for a free transmit slot. */
static u64 vs_send_wait = LONG_WAIT;

/* Sends a packet on one descriptor (header and `len` bytes of `data`, at most 256, in one bounce
 * buffer); `rx`: serve the receive queue while waiting for a free slot.  Returns 0 if no slot came
 * free in time. */
static int vs_send(struct vs_hdr h, const void *data, u32 len, int rx)
{
    static u8 bounce[QS][VS_HDR + 256] __attribute__((aligned(64)));
    if (!vs_tx_wait(QS - 1, rx, vs_send_wait))
        return 0;
    struct vq *q = &target.q[1];
    u16 d = q->aidx % QS;
    if (len > 256)
        len = 256;
    h.len = len;
    memcpy(bounce[d], &h, VS_HDR);
    if (len)
        memcpy(bounce[d] + VS_HDR, data, len);
    q->r->d[d] = (struct desc){(u64)bounce[d], VS_HDR + len, 0, 0};
    vq_push(&target, q, d);
    return 1;
}

static void vs_start(void)
{
    tstart();
    vs_cid = vs_read_cid();
    for (int i = 0; i < 8; i++)
        vs_ops[i] = 0;
    vs_bytes = vs_rx_bad = vs_rx_short = 0;
    vs_on_packet = NULL;
    vs_send_wait = LONG_WAIT;
}

/* ---- malformed headers: each one used (dropped, or answered with a reset), none fatal ---- */

static struct vs_hdr vs_bad;

/* One chain of up to 3 descriptors on the transmit queue; 1 if the device used it. */
static int vs_chain(struct desc *ds, int n)
{
    struct vq *q = &target.q[1];
    for (int i = 0; i < n; i++) {
        q->r->d[i] = ds[i];
        if (i + 1 < n) {
            q->r->d[i].flags |= D_NEXT;
            q->r->d[i].next = (u16)(i + 1);
        }
    }
    vq_push(&target, q, 0);
    int r = vq_wait(&target, q, LONG_WAIT);
    vs_rx_poll();
    return r == WAIT_USED;
}

static void a_vs_headers(void)
{
    vs_start();
    vs_rx_post(vs_full);
    u64 unused = 0;
    u8 *b = (u8 *)&vs_bad;
    for (int k = 0; k < 16; k++) {
        vs_bad = vs_mk(VS_OP_RW, 0x6000 + k, 0x6100);
        struct desc ds[3];
        int n = 1;
        ds[0] = (struct desc){(u64)&vs_bad, VS_HDR, 0, 0};
        switch (k) {
        case 0: vs_bad.type = 2; break;                     /* seqpacket: not offered */
        case 1: vs_bad.op = 0; break;
        case 2: vs_bad.op = 8; break;
        case 3: vs_bad.op = 0xffff; break;
        case 4: vs_bad.len = 100; break;                    /* more than the chain holds */
        case 5:                                              /* more than 64 KiB, all in RAM */
            vs_bad.len = 0x10001;
            ds[1] = (struct desc){0x1000000, 0x11000, 0, 0};
            n = 2;
            break;
        case 6: vs_bad.src_cid = VS_HOST_CID; break;        /* not the guest's CID */
        case 7: vs_bad.src_cid = vs_cid | (1ULL << 32); break;
        case 8: vs_bad.dst_cid = vs_cid; break;             /* not the host */
        case 9: vs_bad.dst_cid = ~0ULL; break;
        case 10:                                             /* header split over two buffers */
            ds[0].len = 10;
            ds[1] = (struct desc){(u64)(b + 10), VS_HDR - 10, 0, 0};
            n = 2;
            break;
        case 11: ds[0].flags = D_WRITE; break;              /* the header device-writable */
        case 12: ds[0].len = 20; break;                     /* a short header */
        case 13: vs_bad.op = VS_OP_SHUTDOWN; vs_bad.flags = 0xff; break;
        case 14: vs_bad.op = VS_OP_REQUEST; vs_bad.flags = 1; break;
        case 15:                                             /* exactly 64 KiB: well formed */
            vs_bad.len = 0x10000;
            ds[1] = (struct desc){0x1000000, 0x10000, 0, 0};
            n = 2;
            break;
        }
        if (!vs_chain(ds, n))
            unused |= 1ULL << k;
    }
    fact("unused", unused);
    fact("needs_reset", (dev_rd(&target, VM_STATUS) & S_NEEDS_RESET) ? 1 : 0);
}

/* ---- credit lies on a connection to the host writer, into buffers smaller than its packets ---- */

static int vs_wait_op(u16 op, u64 tsc)
{
    u64 before = vs_ops[op], start = rdtsc();
    for (u64 i = 0; vs_ops[op] == before; i++) {
        vs_rx_poll();
        if (!spin_continue(i, ~0ULL, start, tsc))
            return 0;
        cpu_relax();
    }
    return 1;
}

static void a_vs_credit_lies(void)
{
    vs_start();
    vs_rx_post(vs_mixed);
    struct vs_hdr h = vs_mk(VS_OP_REQUEST, 0x7000, VS_WRITER_PORT);
    h.buf_alloc = 0;
    vs_send(h, NULL, 0, 1);
    fact("response", vs_wait_op(VS_OP_RESPONSE, LONG_WAIT));
    /* No credit: the writer's bytes must stay in the host. */
    vs_rx_for(VS_SHORT);
    fact("rw_zero_credit", vs_ops[VS_OP_RW]);
    /* A huge buffer: bytes come, but never more than a receive buffer holds. */
    h = vs_mk(VS_OP_CREDIT_UPDATE, 0x7000, VS_WRITER_PORT);
    h.buf_alloc = 0xffffffff;
    vs_send(h, NULL, 0, 1);
    vs_rx_for(VS_SHORT);
    /* fwd_cnt backwards, then far beyond what was sent. */
    h.fwd_cnt = 0xfffff000;
    h.buf_alloc = 4096;
    vs_send(h, NULL, 0, 1);
    vs_rx_for(VS_SHORT);
    h.fwd_cnt = (u32)vs_bytes + 1000000000u;
    h.buf_alloc = 0xffffffff;
    vs_send(h, NULL, 0, 1);
    vs_rx_for(VS_SHORT);
    /* Data past the device's credit to a host that does not read: taken or held, never lost. */
    for (int i = 0; i < 8; i++) {
        struct vs_hdr w = vs_mk(VS_OP_RW, 0x7000, VS_WRITER_PORT);
        vs_send(w, "guest-bytes", 11, 1);
    }
    vs_rx_for(VS_SHORT);
    fact("rx_bad", vs_rx_bad);
    fact("rx_short", vs_rx_short ? 1 : 0);
    fact("got", vs_bytes ? 1 : 0);
}

/* ---- a flood of REQUESTs: more than the 1024 connections, to a listener and to nobody ---- */

static void a_vs_flood(void)
{
    vs_start();
    vs_rx_post(vs_full);
    u64 sent = 0;
    for (u32 i = 0; i < 1100; i++, sent++)
        if (!vs_send(vs_mk(VS_OP_REQUEST, 20000 + i, VS_WRITER_PORT), NULL, 0, 1))
            break;
    for (u32 i = 0; i < 200; i++, sent++)
        if (!vs_send(vs_mk(VS_OP_REQUEST, 30000 + i, VS_NOBODY_PORT), NULL, 0, 1))
            break;
    vs_tx_wait(0, 1, LONG_WAIT);
    u64 start = rdtsc();
    for (u64 i = 0; vs_ops[VS_OP_RESPONSE] + vs_ops[VS_OP_RST] < sent; i++) {
        vs_rx_poll();
        if (!spin_continue(i, ~0ULL, start, LONG_WAIT))
            break;
    }
    fact("sent", sent);
    fact("responses", vs_ops[VS_OP_RESPONSE]);
    fact("resets", vs_ops[VS_OP_RST]);
    fact("answered", vs_ops[VS_OP_RESPONSE] + vs_ops[VS_OP_RST] == sent ? 1 : 0);
    fact("rx_bad", vs_rx_bad);
}

/* ---- no receive buffers while the host writes and the guest sends ---- */

static void a_vs_no_rx(void)
{
    vs_start();
    /* A connection to the writer, which writes into it from now on; its answer waits. */
    vs_send(vs_mk(VS_OP_REQUEST, 0x7100, VS_WRITER_PORT), NULL, 0, 0);
    /* Each of these is owed a reset the guest never takes: the device must stop taking them. */
    u64 want = 2500, pushed = 0;
    vs_send_wait = 3 * VS_SHORT;
    for (; pushed < want; pushed++)
        if (!vs_send(vs_mk(VS_OP_RW, 0x8000 + (u32)pushed, 0x8000), NULL, 0, 0))
            break;
    vs_send_wait = LONG_WAIT;
    u64 taken = pushed - vs_tx_inflight();
    fact("taken_before", taken < want ? 1 : 0);
    /* Buffers at last: everything is taken and answered. */
    vs_rx_post(vs_full);
    for (; pushed < want; pushed++)
        if (!vs_send(vs_mk(VS_OP_RW, 0x8000 + (u32)pushed, 0x8000), NULL, 0, 1))
            break;
    int all = pushed == want && vs_tx_wait(0, 1, LONG_WAIT);
    vs_rx_for(VS_SHORT);
    fact("resumed", all);
    fact("rx_bad", vs_rx_bad);
}

static const struct attack VSOCK_ATTACKS[] = {
    {"vs_headers", a_vs_headers},
    {"vs_credit_lies", a_vs_credit_lies},
    {"vs_flood", a_vs_flood},
    {"vs_no_rx", a_vs_no_rx},
};

/* ---- after the attacks: a well-behaved host connection to a guest listener ---- */

static u32 vs_final_peer;
static u64 vs_final_echoed;

static void vs_final_packet(const struct vs_hdr *h, const u8 *data)
{
    if (h->dst_port != VS_FINAL_PORT)
        return;
    if (h->op == VS_OP_REQUEST && !vs_final_peer) {
        vs_final_peer = h->src_port;
        vs_send(vs_mk(VS_OP_RESPONSE, VS_FINAL_PORT, vs_final_peer), NULL, 0, 0);
    } else if (h->op == VS_OP_RW && vs_final_peer && h->src_port == vs_final_peer) {
        /* Echo in pieces a transmit buffer holds; the host offered 64 KiB of credit. */
        for (u32 at = 0; at < h->len; at += 256) {
            u32 n = h->len - at < 256 ? h->len - at : 256;
            vs_final_echoed += n;
            struct vs_hdr w = vs_mk(VS_OP_RW, VS_FINAL_PORT, vs_final_peer);
            w.fwd_cnt = (u32)vs_final_echoed;
            vs_send(w, data + at, n, 0);
        }
    }
}

static void vs_final(void)
{
    vs_start();
    vs_final_peer = 0;
    vs_final_echoed = 0;
    vs_on_packet = vs_final_packet;
    vs_rx_post(vs_full);
    line("final_listening");
    u64 start = rdtsc();
    for (u64 i = 0;; i++) {
        vs_rx_poll();
        if (vs_final_peer && (vs_ops[VS_OP_SHUTDOWN] || vs_ops[VS_OP_RST])) {
            if (!vs_ops[VS_OP_RST]) {
                struct vs_hdr s = vs_mk(VS_OP_SHUTDOWN, VS_FINAL_PORT, vs_final_peer);
                s.flags = 3;
                s.fwd_cnt = (u32)vs_final_echoed;
                vs_send(s, NULL, 0, 1);
                vs_rx_for(VS_SHORT);
            }
            break;
        }
        /* About 20 s at 3 GHz. */
        if (!spin_continue(i, ~0ULL, start, 60000000000ULL))
            break;
        cpu_relax();
    }
    vs_on_packet = NULL;
    fact("echoed", vs_final_echoed);
}
