/* blk_writer: writes numbered records to the first virtio-blk disk, one 4 KiB block (8 sectors) per
 * record, block n at sector 8n, and FLUSHes after each.  Record n (see
 * test_guests::writer_record) holds "VMMREC" and n, then bytes derived from n.  After the flush of
 * record n completed with status OK it prints `flushed=<n>`.  Stops when the disk is full, at
 * `writer_max=N` records (command line), or on the first error (`error=...`), then `done`. */
#include "vq.h"

static struct rings r0;
static struct dev disk;
static u8 block[4096] __attribute__((aligned(4096)));

static void record(u64 n)
{
    memset(block, 0, sizeof(block));
    memcpy(block, "VMMREC", 6);
    for (int i = 0; i < 8; i++)
        block[8 + i] = (u8)(n >> (8 * i));
    for (int i = 16; i < 4096; i++)
        block[i] = (u8)((n * 31) + (u64)i * 7);
}

static void run(const char *cmdline)
{
    if (!dev_find(cmdline, ID_BLK, 0, &disk)) {
        line("error=no_disk");
        return;
    }
    u32 st = dev_start(&disk, 16, &r0, &r0);
    kv_hex("status", st);
    if (st != 0xf)
        return;
    u64 cap = (u64)dev_rd(&disk, VM_CONFIG) | ((u64)dev_rd(&disk, VM_CONFIG + 4) << 32);
    kv_hex("capacity", cap);
    u64 max = cap / 8;
    const char *p = cmdline_find(cmdline, "writer_max=");
    u64 lim;
    if (p && parse_num(&p, &lim) && lim < max)
        max = lim;
    for (u64 n = 0; n < max; n++) {
        record(n);
        int s = blk_request(&disk, 0, T_OUT, n * 8, block, sizeof(block), 0);
        if (s != 0) {
            kv_hex("error_write", n);
            return;
        }
        s = blk_request(&disk, 0, T_FLUSH, 0, 0, 0, 0);
        if (s != 0) {
            kv_hex("error_flush", n);
            return;
        }
        kv_hex("flushed", n);
    }
    kv_hex("records", max);
}

void guest_main(u32 boot, u64 info, u64 entry_rflags)
{
    (void)entry_rflags;
    (void)boot;
    run(boot_cmdline(boot, info));
    line("done");
}
