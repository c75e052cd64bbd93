/* hostile: a guest that attacks one virtio-mmio device (the target: `hostile=blk|console|net|vsock` on
 * the command line, the first slot of that type) while a second device (the witness: the first blk slot
 * that is not the target) must keep working.
 *
 * Each attack prints `<attack>_<fact>=` lines, then the harness around it prints
 *   <attack>_dstatus=  the target's Status register after the attack (0x40 = DEVICE_NEEDS_RESET)
 *   <attack>_recover=  0x1 if, after a reset and a fresh start, a valid request is served
 *   <attack>_witness=  0x1 if the witness served a valid request meanwhile
 * Chain attacks also print `<attack>_res=` (0x1 the device used the chain, 0x2 it asked for a reset,
 * 0x0 neither within a bounded wait) and, for blk, `<attack>_st=` (the status byte, 0xee unwritten).
 * Then `attacks=<count>`, `done`, and the i8042 reset.  `hostile_only=NAME` runs one attack;
 * `hostile_rounds=N` runs the whole list N times. */
#include "vq.h"

static struct rings rings_t0, rings_t1, rings_t2, rings_w0, rings_w1;
static struct dev target, witness;
static const char *cur;
static int attacks;
static u64 rng = 0x9e3779b97f4a7c15ULL;
static u8 scratch[8192] __attribute__((aligned(4096)));
static struct desc itable[16] __attribute__((aligned(16)));
static volatile u8 bad_status[16];
static struct blk_hdr bad_hdr;

#define QS 16
/* Guest RAM the test gives us: --memory 128M. */
#define RAM_END 0x8000000ULL

static u64 rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void fact(const char *key, u64 v)
{
    puts(cur);
    putc('_');
    puts(key);
    putc('=');
    put_hex(v);
    nl();
}

static u32 tstart(void) { return dev_start(&target, QS, &rings_t0, &rings_t1); }

/* ---- register attacks ---- */

static void mmio_write_w(u64 a, int w, u64 v)
{
    switch (w) {
    case 1: mmio_write8(a, (u8)v); break;
    case 2: mmio_write16(a, (u16)v); break;
    case 4: mmio_write32(a, (u32)v); break;
    default: mmio_write64(a, v); break;
    }
}

static u64 mmio_read_w(u64 a, int w)
{
    switch (w) {
    case 1: return mmio_read8(a);
    case 2: return mmio_read16(a);
    case 4: return mmio_read32(a);
    default: return mmio_read64(a);
    }
}

/* Random values at every register offset, at every width, on a running device; then every offset
 * of the slot read at every width. */
static void a_regs_garbage(void)
{
    tstart();
    for (int round = 0; round < 4; round++)
        for (int w = 1; w <= 8; w *= 2)
            for (u64 off = 0; off + w <= 0x100; off += w)
                mmio_write_w(target.base + off, w, rnd());
    u64 x = 0;
    for (int w = 1; w <= 8; w *= 2)
        for (u64 off = 0; off + w <= 0x1000; off += w)
            x ^= mmio_read_w(target.base + off, w);
    fact("magic", dev_rd(&target, VM_MAGIC));
}

/* The config space read and written past its end, every width. */
static void a_config_past_end(void)
{
    tstart();
    for (int w = 1; w <= 8; w *= 2)
        for (u64 off = 0x100; off + w <= 0x1000; off += w)
            mmio_write_w(target.base + off, w, rnd());
    u64 nonzero = 0;
    for (int w = 1; w <= 8; w *= 2)
        for (u64 off = 0x200; off + w <= 0x1000; off += w)
            if (mmio_read_w(target.base + off, w))
                nonzero++;
    fact("tail_nonzero", nonzero);
}

/* Status bits out of order; the device must never show DRIVER_OK without FEATURES_OK. */
static void a_status_order(void)
{
    static const u32 seq[] = {S_DRIVER_OK, S_FEATURES_OK, S_DRIVER | S_FEATURES_OK,
                              S_ACKNOWLEDGE | S_DRIVER_OK, 0xf, 0x7f, 0xffffffff, S_ACKNOWLEDGE,
                              0x3, 0x1, S_FEATURES_OK | S_DRIVER_OK | 0x3};
    int bad = 0;
    dev_wr(&target, VM_STATUS, 0);
    for (unsigned i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
        dev_wr(&target, VM_STATUS, seq[i]);
        u32 s = dev_rd(&target, VM_STATUS);
        if ((s & S_DRIVER_OK) && !(s & S_FEATURES_OK))
            bad++;
    }
    fact("driver_ok_without_features_ok", bad);
}

/* QueueSel out of range, with every queue register written for it; then a normal start. */
static void a_queue_sel(void)
{
    static const u32 sels[] = {2, 3, 0xffff, 0x10000, 0x80000000, 0xffffffff};
    u64 numax = 0;
    dev_negotiate(&target);
    for (unsigned i = 0; i < sizeof(sels) / sizeof(sels[0]); i++) {
        if (target.type == ID_VSOCK && sels[i] == 2)
            continue; /* vsock's event queue */
        dev_wr(&target, VM_QUEUE_SEL, sels[i]);
        numax |= dev_rd(&target, VM_QUEUE_NUM_MAX);
        dev_wr(&target, VM_QUEUE_NUM, 16);
        dev_wr(&target, VM_QUEUE_DESC_LO, 0x1000);
        dev_wr(&target, VM_QUEUE_DRIVER_LO, 0x2000);
        dev_wr(&target, VM_QUEUE_DEVICE_LO, 0x3000);
        dev_wr(&target, VM_QUEUE_READY, 1);
        numax |= dev_rd(&target, VM_QUEUE_READY);
        dev_wr(&target, VM_QUEUE_NOTIFY, sels[i]);
    }
    fact("num_max_oob", numax);
    vq_setup(&target, 0, 0, QS, &rings_t0);
    if (target.type != ID_BLK)
        vq_setup(&target, 1, 1, QS, &rings_t1);
    if (target.type == ID_VSOCK)
        vq_setup(&target, 2, 2, QS, &rings_t2);
    dev_driver_ok(&target);
    fact("works", dev_valid(&target, 0, 2, 0x51));
}

/* A queue of a bad size or at a bad address on the data queue; expect DEVICE_NEEDS_RESET at
 * DRIVER_OK.  `what`: 0 size, 1 addresses (desc, avail, used), 2 rings straddling the end of RAM. */
static void bad_queue(u32 size, u64 desc, u64 drv, u64 devr)
{
    dev_negotiate(&target);
    if (target.type != ID_BLK)
        vq_setup(&target, 0, 0, QS, &rings_t0);
    u32 sel = target.type == ID_BLK ? 0 : 1;
    dev_wr(&target, VM_QUEUE_SEL, sel);
    dev_wr(&target, VM_QUEUE_NUM, size);
    dev_wr(&target, VM_QUEUE_DESC_LO, (u32)desc);
    dev_wr(&target, VM_QUEUE_DESC_HI, (u32)(desc >> 32));
    dev_wr(&target, VM_QUEUE_DRIVER_LO, (u32)drv);
    dev_wr(&target, VM_QUEUE_DRIVER_HI, (u32)(drv >> 32));
    dev_wr(&target, VM_QUEUE_DEVICE_LO, (u32)devr);
    dev_wr(&target, VM_QUEUE_DEVICE_HI, (u32)(devr >> 32));
    dev_wr(&target, VM_QUEUE_READY, 1);
    dev_driver_ok(&target);
    u32 s = dev_rd(&target, VM_STATUS);
    fact("needs_reset", (s & S_NEEDS_RESET) ? 1 : 0);
    /* Whatever the device thinks, a notify must not hurt. */
    dev_wr(&target, VM_QUEUE_NOTIFY, sel);
}

#define GOOD_RINGS (u64)rings_t1.d, (u64)&rings_t1.a, (u64)&rings_t1.u
static void a_qnum_zero(void) { bad_queue(0, GOOD_RINGS); }
static void a_qnum_npot(void) { bad_queue(15, GOOD_RINGS); }
static void a_qnum_big(void) { bad_queue(512, GOOD_RINGS); }
static void a_qnum_huge(void) { bad_queue(0x10000, GOOD_RINGS); }
static void a_q_outside_ram(void) { bad_queue(QS, 0xF00000000000ULL, 0xF00000010000ULL, 0xF00000020000ULL); }
static void a_q_mmio_gap(void) { bad_queue(QS, 0xd0000000ULL, 0xd0001000ULL, 0xfec00000ULL); }
static void a_q_ram_end(void) { bad_queue(QS, RAM_END - 64, RAM_END - 32, RAM_END - 16); }
static void a_q_misaligned(void) { bad_queue(QS, (u64)rings_t1.d + 1, (u64)&rings_t1.a + 1, (u64)&rings_t1.u + 2); }
static void a_q_wrap(void) { bad_queue(QS, 0xfffffffffffff000ULL, 0xfffffffffffffff0ULL, 0xfffffffffffff800ULL); }

/* ---- descriptor chain attacks on a running device's data queue ---- */

/* A blk-shaped chain for the current attack: header (readable), data, status (writable). */
static void blk_chain(struct desc *ds, u32 type)
{
    bad_hdr.type = type;
    bad_hdr.reserved = 0;
    bad_hdr.sector = 4;
    bad_status[0] = 0xee;
    ds[0] = (struct desc){(u64)&bad_hdr, sizeof(bad_hdr), D_NEXT, 1};
    ds[1] = (struct desc){(u64)scratch, 512, D_NEXT | D_WRITE, 2};
    ds[2] = (struct desc){(u64)&bad_status[0], 1, D_WRITE, 0};
}

/* Pushes head 0 (or `head`), waits and reports res/st. */
static void submit(u16 head, u64 wait)
{
    struct vq *q = data_q(&target);
    vq_push(&target, q, head);
    int r = vq_wait(&target, q, wait);
    fact("res", (u64)r);
    if (target.type == ID_BLK)
        fact("st", bad_status[0]);
}

static struct desc *tdesc(void) { return data_q(&target)->r->d; }

static void a_desc_loop(void)
{
    tstart();
    struct desc *ds = tdesc();
    blk_chain(ds, T_IN);
    ds[1].next = 0; /* 0 -> 1 -> 0 -> ... */
    submit(0, LONG_WAIT);
}

static void a_chain_longer_than_queue(void)
{
    tstart();
    struct desc *ds = tdesc();
    blk_chain(ds, T_OUT);
    for (int i = 1; i < QS; i++)
        ds[i] = (struct desc){(u64)scratch, 16, D_NEXT, (u16)((i + 1) % QS)};
    submit(0, LONG_WAIT);
}

static void a_zero_len_descs(void)
{
    tstart();
    struct desc *ds = tdesc();
    blk_chain(ds, T_IN);
    ds[0].len = 0;
    ds[1].len = 0;
    ds[2].len = 0;
    submit(0, LONG_WAIT);
}

static void a_zero_len_chain(void)
{
    tstart();
    struct desc *ds = tdesc();
    ds[0] = (struct desc){0, 0, 0, 0};
    bad_status[0] = 0xee;
    submit(0, LONG_WAIT);
}

static void a_next_oob(void)
{
    tstart();
    struct desc *ds = tdesc();
    blk_chain(ds, T_IN);
    ds[1].next = 0xffff;
    submit(0, LONG_WAIT);
}

static void a_head_oob(void)
{
    tstart();
    blk_chain(tdesc(), T_IN);
    submit(0x1234, LONG_WAIT);
}

/* An indirect descriptor although the device does not offer INDIRECT_DESC: a loop inside the table,
 * a table of a length that is not a multiple of 16, a table outside RAM. */
static void indirect(u64 addr, u32 len)
{
    tstart();
    struct desc *ds = tdesc();
    blk_chain(itable, T_IN);
    itable[2].flags |= D_NEXT;
    itable[2].next = 0;
    ds[0] = (struct desc){addr, len, D_INDIRECT, 0};
    submit(0, LONG_WAIT);
}
static void a_indirect_loop(void) { indirect((u64)itable, sizeof(itable)); }
static void a_indirect_odd_len(void) { indirect((u64)itable, 7); }
static void a_indirect_outside_ram(void) { indirect(0xF00000000000ULL, 256); }

static void a_buf_outside_ram(void)
{
    tstart();
    struct desc *ds = tdesc();
    blk_chain(ds, T_IN);
    ds[1].addr = 0xfffffffffffff000ULL;
    ds[1].len = 0x2000;
    if (target.type != ID_BLK)
        ds[0] = ds[1], ds[0].flags = 0;
    submit(0, LONG_WAIT);
}

static void a_buf_in_mmio_gap(void)
{
    tstart();
    struct desc *ds = tdesc();
    blk_chain(ds, T_IN);
    ds[1].addr = target.base;
    if (target.type != ID_BLK)
        ds[0] = ds[1], ds[0].flags = 0;
    submit(0, LONG_WAIT);
}

static void a_buf_huge(void)
{
    tstart();
    struct desc *ds = tdesc();
    blk_chain(ds, T_OUT);
    ds[1].flags = D_NEXT;
    ds[1].addr = RAM_END - 4096; /* the last page of RAM, then 4 GiB past the end */
    ds[1].len = 0xffffffff;
    if (target.type != ID_BLK)
        ds[0] = ds[1], ds[0].flags = 0;
    submit(0, LONG_WAIT);
}

/* Many readable descriptors into one 4 GiB-ish total: 15 descriptors of 0xffffffff bytes each. */
static void a_len_overflow(void)
{
    tstart();
    struct desc *ds = tdesc();
    blk_chain(ds, T_OUT);
    for (int i = 1; i < QS - 1; i++)
        ds[i] = (struct desc){(u64)scratch, 0xffffffff, D_NEXT, (u16)(i + 1)};
    ds[QS - 1] = (struct desc){(u64)&bad_status[0], 1, D_WRITE, 0};
    if (target.type != ID_BLK)
        ds[QS - 1].flags = 0;
    submit(0, LONG_WAIT);
}

/* The avail index jumps by more than the queue size. */
static void a_avail_idx_lie(void)
{
    tstart();
    struct vq *q = data_q(&target);
    blk_chain(tdesc(), T_IN);
    q->aidx += 1000;
    vq_push(&target, q, 0);
    int r = vq_wait(&target, q, LONG_WAIT);
    fact("res", (u64)r);
}

/* The driver scribbles over the used ring (index and entries) before a valid request: the device
 * keeps its own used index and serves the request. */
static void a_used_idx_lie(void)
{
    tstart();
    struct vq *q = data_q(&target);
    q->r->u.idx = 0x5555;
    q->r->u.flags = 0xffff;
    for (int i = 0; i < QS; i++)
        q->r->u.ring[i] = (struct used_elem){0xdeadbeef, 0xffffffff};
    q->useen = 0x5555;
    mb();
    fact("served", dev_valid(&target, 0, 5, 0x77));
    fact("used_idx", *(volatile u16 *)&q->r->u.idx);
}

/* 100 000 notifications of the data queue with nothing new, and 10 000 for queues that do not exist. */
static void a_notify_flood(void)
{
    tstart();
    u32 sel = data_q(&target)->sel;
    for (int i = 0; i < 100000; i++)
        dev_wr(&target, VM_QUEUE_NOTIFY, sel);
    for (int i = 0; i < 10000; i++)
        dev_wr(&target, VM_QUEUE_NOTIFY, (u32)rnd());
    fact("served", dev_valid(&target, 0, 6, 0x99));
}

/* The same descriptors published many times over (every avail slot names head 0). */
static void a_same_head_many(void)
{
    tstart();
    struct vq *q = data_q(&target);
    blk_chain(tdesc(), T_IN);
    if (target.type != ID_BLK)
        tdesc()[0] = (struct desc){(u64)scratch, 64, 0, 0};
    for (int i = 0; i < QS; i++)
        q->r->a.ring[i] = 0;
    q->aidx += QS;
    mb();
    q->r->a.idx = q->aidx;
    mb();
    dev_wr(&target, VM_QUEUE_NOTIFY, q->sel);
    int r = vq_wait(&target, q, LONG_WAIT);
    fact("res", (u64)r);
}

struct attack {
    const char *name;
    void (*fn)(void);
};

#include "hostile_vsock.h"

static const struct attack ATTACKS[] = {
    {"regs_garbage", a_regs_garbage},
    {"config_past_end", a_config_past_end},
    {"status_order", a_status_order},
    {"queue_sel", a_queue_sel},
    {"qnum_zero", a_qnum_zero},
    {"qnum_npot", a_qnum_npot},
    {"qnum_big", a_qnum_big},
    {"qnum_huge", a_qnum_huge},
    {"q_outside_ram", a_q_outside_ram},
    {"q_mmio_gap", a_q_mmio_gap},
    {"q_ram_end", a_q_ram_end},
    {"q_misaligned", a_q_misaligned},
    {"q_wrap", a_q_wrap},
    {"desc_loop", a_desc_loop},
    {"chain_longer_than_queue", a_chain_longer_than_queue},
    {"zero_len_descs", a_zero_len_descs},
    {"zero_len_chain", a_zero_len_chain},
    {"next_oob", a_next_oob},
    {"head_oob", a_head_oob},
    {"indirect_loop", a_indirect_loop},
    {"indirect_odd_len", a_indirect_odd_len},
    {"indirect_outside_ram", a_indirect_outside_ram},
    {"buf_outside_ram", a_buf_outside_ram},
    {"buf_in_mmio_gap", a_buf_in_mmio_gap},
    {"buf_huge", a_buf_huge},
    {"len_overflow", a_len_overflow},
    {"avail_idx_lie", a_avail_idx_lie},
    {"used_idx_lie", a_used_idx_lie},
    {"notify_flood", a_notify_flood},
    {"same_head_many", a_same_head_many},
};

static int word_is(const char *p, const char *w)
{
    usize n = strlen(w);
    return p && strncmp(p, w, n) == 0 && (p[n] == 0 || p[n] == ' ');
}

static void run(const char *cmdline)
{
    const char *t = cmdline_find(cmdline, "hostile=");
    u32 type = word_is(t, "net")       ? ID_NET
               : word_is(t, "console") ? ID_CONSOLE
               : word_is(t, "vsock")   ? ID_VSOCK
                                       : ID_BLK;
    if (!dev_find(cmdline, type, 0, &target)) {
        line("error=no_target");
        return;
    }
    target.r2 = &rings_t2;
    if (!dev_find(cmdline, ID_BLK, type == ID_BLK ? 1 : 0, &witness)) {
        line("error=no_witness");
        return;
    }
    kv_hex("target_type", target.type);
    kv_hex("target_base", target.base);
    kv_hex("witness_base", witness.base);
    const char *only = cmdline_find(cmdline, "hostile_only=");

    cur = "start";
    fact("target", tstart());
    fact("witness", dev_start(&witness, QS, &rings_w0, &rings_w1));
    fact("target_valid", dev_valid(&target, 0, 2, 0x11));
    fact("witness_valid", dev_valid(&witness, 1, 3, 0x22));

    u32 tag = 0x30;
    u64 rounds = 1;
    const char *rp = cmdline_find(cmdline, "hostile_rounds=");
    if (rp)
        parse_num(&rp, &rounds);
    unsigned n_generic = sizeof(ATTACKS) / sizeof(ATTACKS[0]);
    unsigned n_all = n_generic + (type == ID_VSOCK ? sizeof(VSOCK_ATTACKS) / sizeof(VSOCK_ATTACKS[0]) : 0);
    for (u64 round = 0; round < rounds; round++)
    for (unsigned i = 0; i < n_all; i++) {
        const struct attack *a = i < n_generic ? &ATTACKS[i] : &VSOCK_ATTACKS[i - n_generic];
        if (only && !word_is(only, a->name))
            continue;
        cur = a->name;
        line(cur);
        a->fn();
        fact("dstatus", dev_rd(&target, VM_STATUS));
        u32 s = tstart();
        fact("recover", s == 0xf && dev_valid(&target, 0, 2, tag++));
        fact("witness", dev_valid(&witness, 1, 3, tag++));
        attacks++;
    }
    kv_hex("attacks", attacks);
    if (type == ID_VSOCK) {
        cur = "final";
        vs_final();
    }
    /* Leave both devices reset. */
    dev_wr(&target, VM_STATUS, 0);
    dev_wr(&witness, VM_STATUS, 0);
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    kv_str("boot", boot_name(boot), 16);
    run(boot_cmdline(boot, info));
    line("done");
}
