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

/* Parses the next `virtio_mmio.device=<size>@<addr>[:<irq>]` entry of the command line at or after *p
 * whose slot lies below 4 GiB; returns 1 and advances *p past it, or 0 when there is none left. */
static inline int virtio_mmio_next(const char **p, u64 *size, u64 *addr, u64 *irq)
{
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
