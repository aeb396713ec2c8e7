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

#define MMIO_MAGIC 0x74726976u
#define MMIO_CONFIG 0x100

/* One driver-visible register in both transports: its virtio-pci common-config offset and width,
   and its virtio-mmio offset (always 32 bits wide). */
struct reg {
    uint8_t pci, width, mmio;
};

static const struct reg STATUS = {0x14, 1, 0x70}, DEV_FEAT_SEL = {0x00, 4, 0x14}, DEV_FEAT = {0x04, 4, 0x10},
                        DRV_FEAT_SEL = {0x08, 4, 0x24}, DRV_FEAT = {0x0c, 4, 0x20}, Q_SEL = {0x16, 2, 0x30},
                        Q_MAX = {0x18, 2, 0x34}, Q_NUM = {0x18, 2, 0x38}, Q_ENABLE = {0x1c, 2, 0x44},
                        Q_DESC = {0x20, 4, 0x80}, Q_DESC_HI = {0x24, 4, 0x84}, Q_DRIVER = {0x28, 4, 0x90},
                        Q_DRIVER_HI = {0x2c, 4, 0x94}, Q_DEVICE = {0x30, 4, 0xa0}, Q_DEVICE_HI = {0x34, 4, 0xa4};

static uint32_t rd(struct vdev *d, struct reg r)
{
    if (d->mmio)
        return C32(d, r.mmio);
    return r.width == 1 ? C8(d, r.pci) : r.width == 2 ? C16(d, r.pci) : C32(d, r.pci);
}

static void wr(struct vdev *d, struct reg r, uint32_t v)
{
    if (d->mmio)
        C32(d, r.mmio) = v;
    else if (r.width == 1)
        C8(d, r.pci) = (uint8_t)v;
    else if (r.width == 2)
        C16(d, r.pci) = (uint16_t)v;
    else
        C32(d, r.pci) = v;
}

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

uint32_t vdev_negotiate_features(struct vdev *dev, uint32_t wanted)
{
    wr(dev, STATUS, 0); /* reset */
    wr(dev, STATUS, ST_ACK);
    wr(dev, STATUS, ST_ACK | ST_DRIVER);
    wr(dev, DEV_FEAT_SEL, 1);
    uint32_t features_hi = rd(dev, DEV_FEAT);
    kprintf("%s: VIRTIO_F_VERSION_1 %s\n", dev->tag, (features_hi & F_VERSION_1_HI) ? "offered" : "missing");
    wr(dev, DEV_FEAT_SEL, 0);
    uint32_t accepted = rd(dev, DEV_FEAT) & wanted;
    wr(dev, DRV_FEAT_SEL, 0);
    wr(dev, DRV_FEAT, accepted);
    wr(dev, DRV_FEAT_SEL, 1);
    wr(dev, DRV_FEAT, F_VERSION_1_HI);
    wr(dev, STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
    if (!(rd(dev, STATUS) & ST_FEATURES_OK))
        vdev_fail(dev, "FEATURES_OK not accepted");
    return accepted;
}

void vdev_negotiate(struct vdev *dev)
{
    vdev_negotiate_features(dev, 0);
}

void vdev_queue(struct vdev *dev, struct virtq *vq, uint16_t index)
{
    wr(dev, Q_SEL, index);
    uint32_t max = rd(dev, Q_MAX);
    kprintf("%s: queue %u offers %u entries; using %u\n", dev->tag, index, max, VQ_SIZE);
    if (max < VQ_SIZE)
        vdev_fail(dev, "queue too small");
    vq->index = index;
    vq->last_used = 0;
    wr(dev, Q_NUM, VQ_SIZE);
    wr(dev, Q_DESC, (uint32_t)vq->desc);
    wr(dev, Q_DESC_HI, 0);
    wr(dev, Q_DRIVER, (uint32_t)&vq->avail);
    wr(dev, Q_DRIVER_HI, 0);
    wr(dev, Q_DEVICE, (uint32_t)&vq->used);
    wr(dev, Q_DEVICE_HI, 0);
    if (dev->mmio)
        vq->notify = (volatile uint16_t *)(dev->common + 0x50); /* QueueNotify */
    else
        vq->notify = (volatile uint16_t *)(dev->notify_base + C16(dev, 0x1e) * dev->notify_mult);
    wr(dev, Q_ENABLE, 1);
}

void vdev_driver_ok(struct vdev *dev)
{
    wr(dev, STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
    kprintf("%s: status %02x\n", dev->tag, rd(dev, STATUS));
}

static uint32_t parse_hex(const char **p)
{
    uint32_t v = 0;
    if ((*p)[0] == '0' && (*p)[1] == 'x')
        *p += 2;
    for (;; (*p)++) {
        char c = **p;
        unsigned digit = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10) : 16;
        if (digit == 16)
            return v;
        v = v * 16 + digit;
    }
}

void vdev_find_mmio(struct vdev *dev, const char *tag, const char *cmdline, uint32_t device_id)
{
    static const char key[] = "virtio_mmio.device=";
    dev->tag = tag;
    dev->mmio = 1;
    for (const char *p = cmdline; (p = cmdline_find(p, key)) != 0; p++) {
        const char *q = p + sizeof key - 1;
        while (*q && *q != '@')
            q++;
        if (*q != '@')
            break;
        q++;
        volatile uint8_t *base = (volatile uint8_t *)parse_hex(&q);
        if (*(volatile uint32_t *)base != MMIO_MAGIC || *(volatile uint32_t *)(base + 8) != device_id)
            continue;
        dev->common = base;
        dev->devcfg = base + MMIO_CONFIG;
        kprintf("%s: found virtio-mmio version %u device %u vendor %x\n", tag, *(volatile uint32_t *)(base + 4),
                device_id, *(volatile uint32_t *)(base + 0xc));
        return;
    }
    vdev_fail(dev, "no such virtio-mmio device on the command line");
}

void vdev_kick(struct vdev *dev, struct virtq *vq)
{
    __asm__ volatile("mfence" ::: "memory");
    if (dev->mmio)
        *(volatile uint32_t *)vq->notify = vq->index; /* QueueNotify is 32 bits wide */
    else
        *vq->notify = vq->index; /* the address vdev_queue read: no exit to read it again */
}

void vdev_post(struct vdev *dev, struct virtq *vq, const struct vbuf *bufs, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        uint16_t flags = (uint16_t)((i + 1 < n ? DESC_F_NEXT : 0) | (bufs[i].device_writes ? DESC_F_WRITE : 0));
        vq->desc[i] = (struct vq_desc){(uint32_t)bufs[i].addr, bufs[i].len, flags, (uint16_t)(i + 1)};
    }
    vq->avail.ring[vq->avail.idx % VQ_SIZE] = 0;
    __asm__ volatile("" ::: "memory");
    vq->avail.idx++;
    vdev_kick(dev, vq);
}

uint32_t vdev_wait(struct vdev *dev, struct virtq *vq)
{
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

uint32_t vdev_submit(struct vdev *dev, struct virtq *vq, const struct vbuf *bufs, unsigned n)
{
    vdev_post(dev, vq, bufs, n);
    return vdev_wait(dev, vq);
}
