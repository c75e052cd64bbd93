/* virtio-mmio (version 2) register offsets, status bits, descriptor flags and the feature bit every
 * tiny virtio driver here needs. */
#ifndef VIRTIO_MMIO_H
#define VIRTIO_MMIO_H

#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_VENDOR_ID 0x00c
#define VM_DEV_FEATURES 0x010
#define VM_DEV_FEATURES_SEL 0x014
#define VM_DRV_FEATURES 0x020
#define VM_DRV_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INT_STATUS 0x060
#define VM_INT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC_LO 0x080
#define VM_QUEUE_DESC_HI 0x084
#define VM_QUEUE_DRIVER_LO 0x090
#define VM_QUEUE_DRIVER_HI 0x094
#define VM_QUEUE_DEVICE_LO 0x0a0
#define VM_QUEUE_DEVICE_HI 0x0a4
#define VM_CONFIG_GEN 0x0fc
#define VM_CONFIG 0x100
#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define F_VERSION_1 (1ULL << 32)
#define D_NEXT 1
#define D_WRITE 2

/* vmm's virtio-mmio slots (arch::layout): 19 pages from 0xd0000000, slot n on IRQ 5 + n. */
#define VIRTIO_SLOT_BASE 0xd0000000ULL
#define VIRTIO_SLOT_SIZE 0x1000ULL
#define VIRTIO_SLOTS 19
#define VIRTIO_SLOT_FIRST_IRQ 5

/* The cursor of the slot scan: *p points into this array while scanning. */
static const char virtio_slot_cursor[VIRTIO_SLOTS + 1];

/* The next virtio-mmio device, from the command line or, when the command line has no
 * `virtio_mmio.device=` entry at all (the VMM described its devices with ACPI instead), from a
 * probe of vmm's slots for the virtio magic. Start with *p = the command line; returns 1 and
 * advances *p past the device, or 0 when there is none left.
 *
 * Command-line entries are `virtio_mmio.device=<size>@<addr>[:<irq>]`, taken when their slot lies
 * below 4 GiB. Whether the command line has any is decided at the first call (it never changes). */
static inline int virtio_mmio_next(const char **p, u64 *size, u64 *addr, u64 *irq)
{
    static int from_cmdline = -1;
    if (from_cmdline < 0)
        from_cmdline = *p && cmdline_find(*p, "virtio_mmio.device=") != 0;
    if (!from_cmdline) {
        int slot = (*p >= virtio_slot_cursor && *p <= virtio_slot_cursor + VIRTIO_SLOTS)
                       ? (int)(*p - virtio_slot_cursor)
                       : 0;
        for (; slot < VIRTIO_SLOTS; slot++) {
            u64 base = VIRTIO_SLOT_BASE + (u64)slot * VIRTIO_SLOT_SIZE;
            if (mmio_read32(base + VM_MAGIC) != 0x74726976 || mmio_read32(base + VM_DEVICE_ID) == 0)
                continue;
            *size = VIRTIO_SLOT_SIZE;
            *addr = base;
            *irq = VIRTIO_SLOT_FIRST_IRQ + slot;
            *p = virtio_slot_cursor + slot + 1;
            return 1;
        }
        *p = virtio_slot_cursor + VIRTIO_SLOTS;
        return 0;
    }
    while (*p && (*p = cmdline_find(*p, "virtio_mmio.device=")) != 0) {
        *irq = 0;
        if (!parse_size(p, size) || **p != '@')
            continue;
        (*p)++;
        if (!parse_num(p, addr))
            continue;
        if (**p == ':') {
            (*p)++;
            parse_num(p, irq);
        }
        if (*addr == 0 || *addr >= 0x100000000ULL)
            continue;
        return 1;
    }
    return 0;
}

#endif
