/*
 * vdrv.c - the bare-metal virtio-pci driver shared by the virtio test guests (see vdrv.h).
 */
#include "virtio/vdrv.h"

#include "clib/klib.h"

#define EXIT_FAIL 0x01
#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc
#define VENDOR_VIRTIO 0x1af4
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_STATUS_CAP_LIST 0x10
#define CAP_VENDOR 0x09
#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR 3
#define CAP_DEVICE 4
#define CAP_PCI_CFG 5
#define ST_ACK 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define F_VERSION_1_HI 1u /* bit 32: bit 0 of the high feature word */
#define POLL_LIMIT 100000000u

#define C8(d, o) (*(volatile uint8_t *)((d)->common + (o)))
#define C16(d, o) (*(volatile uint16_t *)((d)->common + (o)))
#define C32(d, o) (*(volatile uint32_t *)((d)->common + (o)))

static uint32_t pci_read32(unsigned dev, unsigned reg)
{
    outl(PCI_ADDR, 0x80000000u | (dev << 11) | (reg & 0xfc));
    return inl(PCI_DATA);
}

static uint8_t pci_read8(unsigned dev, unsigned reg)
{
    outl(PCI_ADDR, 0x80000000u | (dev << 11) | (reg & 0xfc));
    return inb(PCI_DATA + (reg & 3));
}

static void pci_write16(unsigned dev, unsigned reg, uint16_t value)
{
    outl(PCI_ADDR, 0x80000000u | (dev << 11) | (reg & 0xfc));
    outw(PCI_DATA + (reg & 2), value);
}

void vdev_fail(struct vdev *dev, const char *what)
{
    kprintf("%s: FAIL %s\n", dev->tag, what);
    debug_exit(EXIT_FAIL);
}

static uint32_t bar_address(struct vdev *dev, unsigned bar)
{
    uint32_t lo = pci_read32(dev->slot, 0x10 + 4 * bar);
    if (lo & 0x1)
        vdev_fail(dev, "a virtio structure in an I/O BAR");
    if ((lo & 0x6) == 0x4 && pci_read32(dev->slot, 0x14 + 4 * bar) != 0)
        vdev_fail(dev, "a virtio structure above 4 GiB"); /* out of reach without paging */
    return lo & ~0xfu;
}

static void map_capabilities(struct vdev *dev)
{
    int seen[6] = {0};
    unsigned slot = dev->slot;
    if (!(pci_read32(slot, 0x04) >> 16 & PCI_STATUS_CAP_LIST))
        vdev_fail(dev, "no capability list");
    unsigned off = pci_read8(slot, 0x34) & 0xfc;
    for (int n = 0; off && n < 48; n++, off = pci_read8(slot, off + 1) & 0xfc) {
        if (pci_read8(slot, off) != CAP_VENDOR)
            continue;
        unsigned type = pci_read8(slot, off + 3), bar = pci_read8(slot, off + 4);
        uint32_t cap_off = pci_read32(slot, off + 8), len = pci_read32(slot, off + 12);
        if (type < 1 || type > 5 || seen[type])
            continue;
        seen[type] = 1;
        if (type == CAP_PCI_CFG)
            continue;
        volatile uint8_t *p = (volatile uint8_t *)(bar_address(dev, bar) + cap_off);
        if (type == CAP_COMMON && len >= 0x38)
            dev->common = p;
        else if (type == CAP_ISR && len >= 1)
            dev->isr = p;
        else if (type == CAP_DEVICE)
            dev->devcfg = p;
        else if (type == CAP_NOTIFY) {
            dev->notify_base = p;
            dev->notify_mult = pci_read32(slot, off + 16);
        }
    }
    kprintf("%s: capabilities common=%d notify=%d isr=%d device=%d pci_cfg=%d\n", dev->tag, seen[1], seen[2],
            seen[3], seen[4], seen[5]);
    if (!dev->common || !dev->isr || !dev->notify_base)
        vdev_fail(dev, "a virtio structure is missing");
}

void vdev_find(struct vdev *dev, const char *tag, uint16_t device_id)
{
    dev->tag = tag;
    for (unsigned slot = 0; slot < 32; slot++) {
        uint32_t id = pci_read32(slot, 0);
        if ((id & 0xffff) != VENDOR_VIRTIO || (id >> 16) != device_id)
            continue;
        dev->slot = slot;
        uint32_t class_rev = pci_read32(slot, 0x08), subsys = pci_read32(slot, 0x2c);
        kprintf("%s: found 1af4:%04x revision %u class %06x subsystem %04x:%04x\n", tag, device_id,
                class_rev & 0xff, class_rev >> 8, subsys & 0xffff, subsys >> 16);
        uint16_t command = (uint16_t)pci_read32(slot, 0x04);
        pci_write16(slot, 0x04, command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        map_capabilities(dev);
        return;
    }
    vdev_fail(dev, "no such virtio device on bus 0");
}

void vdev_negotiate(struct vdev *dev)
{
    C8(dev, 0x14) = 0; /* reset */
    C8(dev, 0x14) = ST_ACK;
    C8(dev, 0x14) = ST_ACK | ST_DRIVER;
    C32(dev, 0x00) = 1;
    uint32_t features_hi = C32(dev, 0x04);
    kprintf("%s: VIRTIO_F_VERSION_1 %s\n", dev->tag, (features_hi & F_VERSION_1_HI) ? "offered" : "missing");
    C32(dev, 0x08) = 0;
    C32(dev, 0x0c) = 0;
    C32(dev, 0x08) = 1;
    C32(dev, 0x0c) = F_VERSION_1_HI;
    C8(dev, 0x14) = ST_ACK | ST_DRIVER | ST_FEATURES_OK;
    if (!(C8(dev, 0x14) & ST_FEATURES_OK))
        vdev_fail(dev, "FEATURES_OK not accepted");
}

void vdev_queue(struct vdev *dev, struct virtq *vq, uint16_t index)
{
    C16(dev, 0x16) = index; /* queue_select */
    uint16_t max = C16(dev, 0x18);
    kprintf("%s: queue %u offers %u entries; using %u\n", dev->tag, index, max, VQ_SIZE);
    if (max < VQ_SIZE)
        vdev_fail(dev, "queue too small");
    vq->index = index;
    vq->last_used = 0;
    C16(dev, 0x18) = VQ_SIZE;
    C32(dev, 0x20) = (uint32_t)vq->desc;
    C32(dev, 0x24) = 0;
    C32(dev, 0x28) = (uint32_t)&vq->avail;
    C32(dev, 0x2c) = 0;
    C32(dev, 0x30) = (uint32_t)&vq->used;
    C32(dev, 0x34) = 0;
    C16(dev, 0x1c) = 1; /* queue_enable */
}

void vdev_driver_ok(struct vdev *dev)
{
    C8(dev, 0x14) = ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK;
    kprintf("%s: status %02x\n", dev->tag, C8(dev, 0x14));
}

uint32_t vdev_submit(struct vdev *dev, struct virtq *vq, const struct vbuf *bufs, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        uint16_t flags = (uint16_t)((i + 1 < n ? DESC_F_NEXT : 0) | (bufs[i].device_writes ? DESC_F_WRITE : 0));
        vq->desc[i] = (struct vq_desc){(uint32_t)bufs[i].addr, bufs[i].len, flags, (uint16_t)(i + 1)};
    }
    vq->avail.ring[vq->avail.idx % VQ_SIZE] = 0;
    __asm__ volatile("" ::: "memory");
    vq->avail.idx++;
    __asm__ volatile("mfence" ::: "memory");
    C16(dev, 0x16) = vq->index;
    uint16_t notify_off = C16(dev, 0x1e);
    *(volatile uint16_t *)(dev->notify_base + notify_off * dev->notify_mult) = vq->index;
    for (uint32_t i = 0; i < POLL_LIMIT; i++) {
        if (*(volatile uint16_t *)&vq->used.idx != vq->last_used) {
            uint32_t len = vq->used.ring[vq->last_used % VQ_SIZE].len;
            vq->last_used++;
            return len;
        }
        __asm__ volatile("pause");
    }
    vdev_fail(dev, "the device never returned the request");
}
