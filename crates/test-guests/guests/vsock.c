/* vsock: drives the first virtio-mmio slot holding a vsock device (DeviceID 19), by polling.
 * Facts go to COM1.  One receive buffer (header + 4 KiB) per descriptor, one transmit packet
 * per descriptor; up to MAXC connections, each holding at most CONN_BUF bytes it has not echoed
 * yet (its buf_alloc), so a slow host reader slows the guest down instead of losing bytes.
 *
 * Command line switches:
 *   vsock_listen=P    accept connections on port P and echo every byte back; the host ending
 *                     its side ends the guest's (SHUTDOWN, then the device's reset)
 *   vsock_connect=P   connect to host port P first, send "guest-hello\n", then echo
 *   vsock_refused=P   connect to host port P, where nothing listens: expect a reset
 * A request to port P+1 (P the listen port) ends the guest: it is refused, the guest prints its
 * totals and `done`.
 */
#include "vq.h"

#define QN 16
#define HDR 44
#define PAYLOAD 4096
#define MAXC 128
#define CONN_BUF 16384
#define HOST_CID 2
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUT_RCV 1
#define SHUT_SEND 2
#define RXQ 0
#define TXQ 1
#define EVQ 2

struct hdr {
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

struct conn {
    int used;
    u32 local;     /* the guest's port */
    u32 peer;      /* the host's port */
    u8 buf[CONN_BUF]; /* received, not yet echoed (a ring) */
    u32 head, len;
    u32 fwd_cnt;   /* bytes echoed (consumed) */
    u32 sent;      /* bytes sent to the host */
    u32 peer_buf_alloc, peer_fwd_cnt;
    int peer_done; /* the host sends no more */
    int shut_sent;
    int connecting; /* a guest request waiting for its answer */
};

static struct rings rings[3];
static struct dev vs;
static u8 rxbuf[QN][HDR + PAYLOAD] __attribute__((aligned(4096)));
static u8 txbuf[QN][HDR + PAYLOAD] __attribute__((aligned(4096)));
static u32 evbuf[QN] __attribute__((aligned(64)));
static u8 txfree[QN];
static struct conn conns[MAXC];
static u64 cid;
static u32 listen_port, connect_port, refused_port;
static int quit, connect_state, refused_state;
static u64 accepted, echoed;

/* Copies with 8-byte moves: the runtime's memcpy goes a byte at a time, and every access counts
 * when the guest's memory is not cached. */
static void copy(void *d, const void *src, u32 n)
{
    usize q = n / 8, r = n % 8;
    __asm__ volatile("rep movsq" : "+D"(d), "+S"(src), "+c"(q) : : "memory");
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(r) : : "memory");
}

static u32 rd(u32 off) { return dev_rd(&vs, off); }
static void wr(u32 off, u32 v) { dev_wr(&vs, off, v); }

static void post(u32 qi, u16 d, u64 addr, u32 len, u16 flags)
{
    struct vq *q = &vs.q[qi];
    q->r->d[d].addr = addr;
    q->r->d[d].len = len;
    q->r->d[d].flags = flags;
    q->r->d[d].next = 0;
    vq_publish(q, d);
}

static void reclaim_tx(void)
{
    struct used_elem e;
    while (vq_take(&vs.q[TXQ], &e))
        if (e.id < QN)
            txfree[e.id] = 1;
}

/* A free transmit descriptor, waiting (bounded) for one; -1 on a timeout. */
static int tx_slot(void)
{
    u64 start = rdtsc();
    for (u64 i = 0;; i++) {
        reclaim_tx();
        for (int d = 0; d < QN; d++)
            if (txfree[d]) {
                txfree[d] = 0;
                return d;
            }
        if (!spin_continue(i, 40000000000ULL, start, 60000000000ULL))
            return -1;
        cpu_relax();
    }
}

/* Sends one packet; `c` (may be NULL) gives its credit fields. */
static int send_pkt(struct conn *c, u32 local, u32 peer, u16 op, u32 flags, const u8 *data, u32 len)
{
    int d = tx_slot();
    if (d < 0) {
        line("timeout=tx");
        quit = 1;
        return 0;
    }
    struct hdr h;
    memset(&h, 0, sizeof(h));
    h.src_cid = cid;
    h.dst_cid = HOST_CID;
    h.src_port = local;
    h.dst_port = peer;
    h.len = len;
    h.type = 1;
    h.op = op;
    h.flags = flags;
    h.buf_alloc = CONN_BUF;
    h.fwd_cnt = c ? c->fwd_cnt : 0;
    copy(txbuf[d], &h, HDR);
    if (len)
        copy(txbuf[d] + HDR, data, len);
    post(TXQ, (u16)d, (u64)txbuf[d], HDR + len, 0);
    wr(VM_QUEUE_NOTIFY, TXQ);
    return 1;
}

static struct conn *find(u32 local, u32 peer)
{
    for (int i = 0; i < MAXC; i++)
        if (conns[i].used && conns[i].local == local && conns[i].peer == peer)
            return &conns[i];
    return NULL;
}

static struct conn *add(u32 local, u32 peer)
{
    for (int i = 0; i < MAXC; i++)
        if (!conns[i].used) {
            struct conn *c = &conns[i];
            c->used = 1;
            c->local = local;
            c->peer = peer;
            c->head = c->len = c->fwd_cnt = c->sent = 0;
            c->peer_buf_alloc = c->peer_fwd_cnt = 0;
            c->peer_done = c->shut_sent = c->connecting = 0;
            return c;
        }
    return NULL;
}

static u32 peer_credit(struct conn *c)
{
    u32 in_flight = c->sent - c->peer_fwd_cnt;
    return in_flight > c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

/* Echoes what the connection holds, as far as the host's credit goes; ends it when the host
 * is done and everything went back. */
static void pump(struct conn *c)
{
    while (c->used && c->len) {
        u32 n = c->len;
        u32 credit = peer_credit(c);
        if (n > credit)
            n = credit;
        if (n > PAYLOAD)
            n = PAYLOAD;
        if (n > CONN_BUF - c->head)
            n = CONN_BUF - c->head;
        if (!n)
            return;
        c->fwd_cnt += n;
        c->sent += n;
        echoed += n;
        if (!send_pkt(c, c->local, c->peer, OP_RW, 0, c->buf + c->head, n))
            return;
        c->head = (c->head + n) % CONN_BUF;
        c->len -= n;
    }
    if (c->used && c->peer_done && !c->len && !c->shut_sent) {
        c->shut_sent = 1;
        send_pkt(c, c->local, c->peer, OP_SHUTDOWN, SHUT_RCV | SHUT_SEND, NULL, 0);
    }
}

static void receive(const struct hdr *h, const u8 *data)
{
    if (h->dst_cid != cid || h->src_cid != HOST_CID) {
        line("error=bad_address");
        return;
    }
    struct conn *c = find(h->dst_port, h->src_port);
    if (h->op == OP_REQUEST) {
        if (c || h->dst_port != listen_port) {
            if (h->dst_port == listen_port + 1)
                quit = 1;
            send_pkt(NULL, h->dst_port, h->src_port, OP_RST, 0, NULL, 0);
            return;
        }
        c = add(h->dst_port, h->src_port);
        if (!c) {
            send_pkt(NULL, h->dst_port, h->src_port, OP_RST, 0, NULL, 0);
            return;
        }
        accepted++;
        c->peer_buf_alloc = h->buf_alloc;
        c->peer_fwd_cnt = h->fwd_cnt;
        send_pkt(c, c->local, c->peer, OP_RESPONSE, 0, NULL, 0);
        return;
    }
    if (!c) {
        if (h->op == OP_RST && h->dst_port == 4001) {
            refused_state = 1;
            line("refused=rst");
        } else if (h->op != OP_RST) {
            send_pkt(NULL, h->dst_port, h->src_port, OP_RST, 0, NULL, 0);
        }
        return;
    }
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case OP_RESPONSE:
        if (c->connecting) {
            c->connecting = 0;
            connect_state = 1;
            line("connect=ok");
            static const char hello[] = "guest-hello\n";
            c->sent += sizeof(hello) - 1;
            send_pkt(c, c->local, c->peer, OP_RW, 0, (const u8 *)hello, sizeof(hello) - 1);
        }
        break;
    case OP_RST:
        if (c->connecting) {
            connect_state = 2;
            line("connect=rst");
        }
        c->used = 0;
        break;
    case OP_RW:
        if (h->len > CONN_BUF - c->len) {
            line("error=credit_overrun");
            quit = 1;
            break;
        }
        {
            u32 at = (c->head + c->len) % CONN_BUF;
            u32 first = h->len < CONN_BUF - at ? h->len : CONN_BUF - at;
            copy(c->buf + at, data, first);
            copy(c->buf, data + first, h->len - first);
            c->len += h->len;
        }
        break;
    case OP_SHUTDOWN:
        if (h->flags & SHUT_SEND)
            c->peer_done = 1;
        break;
    case OP_CREDIT_REQUEST:
        send_pkt(c, c->local, c->peer, OP_CREDIT_UPDATE, 0, NULL, 0);
        break;
    default:
        break;
    }
    pump(c);
}

static void loop(void)
{
    u64 start = rdtsc();
    for (u64 i = 0; !quit; i++) {
        struct used_elem e;
        int reposted = 0;
        while (vq_take(&vs.q[RXQ], &e)) {
            if (e.id < QN && e.len >= HDR) {
                struct hdr h;
                copy(&h, rxbuf[e.id], HDR);
                if (h.len <= e.len - HDR)
                    receive(&h, rxbuf[e.id] + HDR);
                else
                    line("error=bad_len");
            }
            if (e.id < QN) {
                vq_publish(&vs.q[RXQ], (u16)e.id);
                reposted = 1;
            }
        }
        if (reposted)
            wr(VM_QUEUE_NOTIFY, RXQ);
        for (int c = 0; c < MAXC; c++)
            if (conns[c].used)
                pump(&conns[c]);
        /* Register reads are exits: only now and then (interrupts stay off anyway). */
        if ((i & 1023) == 0)
            dev_ack_irq(&vs);
        if ((i & 1023) == 0 && (rd(VM_STATUS) & S_NEEDS_RESET)) {
            line("error=needs_reset");
            return;
        }
        /* About a minute at 3 GHz, whatever happens. */
        if (!spin_continue(i, ~0ULL, start, 200000000000ULL)) {
            line("timeout=loop");
            return;
        }
        cpu_relax();
    }
}

static u32 num_arg(const char *cmdline, const char *key)
{
    const char *p = cmdline_find(cmdline, key);
    u64 v = 0;
    if (p && parse_num(&p, &v))
        return (u32)v;
    return 0;
}

static void run(const char *cmdline)
{
    if (!cmdline || !dev_find(cmdline, ID_VSOCK, 0, &vs)) {
        line("virtio=none");
        return;
    }
    kv_hex("device_id", rd(VM_DEVICE_ID));
    if (!dev_negotiate(&vs)) {
        line("error=features_not_ok");
        return;
    }
    cid = (u64)rd(VM_CONFIG) | ((u64)rd(VM_CONFIG + 4) << 32);
    kv_hex("cid", cid);
    for (u32 q = 0; q < 3; q++) {
        wr(VM_QUEUE_SEL, q);
        u32 max = rd(VM_QUEUE_NUM_MAX);
        if (max < QN) {
            line("error=no_queue");
            return;
        }
        /* struct dev has two queues; the event queue's rings are set up by hand. */
        if (q < 2) {
            vq_setup(&vs, (int)q, q, QN, &rings[q]);
        } else {
            memset(&rings[2], 0, sizeof(rings[2]));
            wr(VM_QUEUE_NUM, QN);
            wr(VM_QUEUE_DESC_LO, (u32)(u64)rings[2].d);
            wr(VM_QUEUE_DESC_HI, (u32)((u64)rings[2].d >> 32));
            wr(VM_QUEUE_DRIVER_LO, (u32)(u64)&rings[2].a);
            wr(VM_QUEUE_DRIVER_HI, (u32)((u64)&rings[2].a >> 32));
            wr(VM_QUEUE_DEVICE_LO, (u32)(u64)&rings[2].u);
            wr(VM_QUEUE_DEVICE_HI, (u32)((u64)&rings[2].u >> 32));
            wr(VM_QUEUE_READY, 1);
            for (u16 d = 0; d < QN; d++) {
                rings[2].d[d].addr = (u64)&evbuf[d];
                rings[2].d[d].len = 4;
                rings[2].d[d].flags = D_WRITE;
                rings[2].a.ring[d] = d;
            }
            mb();
            rings[2].a.idx = QN;
        }
    }
    for (u16 d = 0; d < QN; d++) {
        post(RXQ, d, (u64)rxbuf[d], sizeof(rxbuf[0]), D_WRITE);
        txfree[d] = 1;
    }
    dev_driver_ok(&vs);
    kv_hex("status", rd(VM_STATUS));
    wr(VM_QUEUE_NOTIFY, RXQ);

    listen_port = num_arg(cmdline, "vsock_listen=");
    connect_port = num_arg(cmdline, "vsock_connect=");
    refused_port = num_arg(cmdline, "vsock_refused=");
    if (connect_port) {
        struct conn *c = add(4000, connect_port);
        c->connecting = 1;
        send_pkt(c, 4000, connect_port, OP_REQUEST, 0, NULL, 0);
    }
    if (refused_port)
        send_pkt(NULL, 4001, refused_port, OP_REQUEST, 0, NULL, 0);
    line("listening");
    loop();
    kv_hex("accepted", accepted);
    kv_hex("echoed", echoed);
    dev_ack_irq(&vs);
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
