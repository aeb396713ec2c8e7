/*
 * vblk.c - a bare-metal virtio-blk driver: PCI enumeration through 0xCF8/0xCFC, the modern
 * virtio-pci capabilities, one split virtqueue of its own, polled (no interrupts).
 *
 * It prints what it finds and does (get-id, read, write, read back, flush, a read past the
 * end) in a form that does not depend on the VMM: the same lines under kvmlite and under
 *   qemu-system-x86_64 -device virtio-blk-pci,disable-legacy=on,drive=...,serial=...
 * Slot numbers, BAR addresses and capability offsets (which differ) are not printed.
 * Exits through the debug port: 0x44 when every step passed, 0x01 on the first failure.
 */
#include <stdint.h>

#include "clib/klib.h"

#define EXIT_OK 0x44
#define EXIT_FAIL 0x01

#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc
#define VENDOR_VIRTIO 0x1af4
#define DEVICE_VIRTIO_BLK 0x1042
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

#define QSIZE 8
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define SECTOR 512
#define POLL_LIMIT 100000000u

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[QSIZE];
    uint16_t used_event;
};

struct used_elem {
    uint32_t id;
    uint32_t len;
};

struct used {
    uint16_t flags;
    uint16_t idx;
    struct used_elem ring[QSIZE];
    uint16_t avail_event;
};

struct req_header {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

static struct desc descs[QSIZE] __attribute__((aligned(16)));
static struct avail avail __attribute__((aligned(2)));
static struct used used __attribute__((aligned(4096)));
static struct req_header header;
static uint8_t data[2 * SECTOR] __attribute__((aligned(16)));
static volatile uint8_t status;
static uint16_t last_used;

static volatile uint8_t *common, *isr, *devcfg, *notify_base;
static uint32_t notify_mult;

void kmain(uint32_t magic, const void *info);

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

static __attribute__((noreturn)) void fail(const char *what)
{
    kprintf("vblk: FAIL %s\n", what);
    debug_exit(EXIT_FAIL);
}

static uint32_t bar_address(unsigned dev, unsigned bar, int *ok)
{
    uint32_t lo = pci_read32(dev, 0x10 + 4 * bar);
    *ok = 1;
    if ((lo & 0x1) != 0)
        *ok = 0; /* an I/O BAR */
    if ((lo & 0x6) == 0x4 && pci_read32(dev, 0x14 + 4 * bar) != 0)
        *ok = 0; /* above 4 GiB: out of reach without paging */
    return lo & ~0xfu;
}

static int find_device(void)
{
    for (unsigned dev = 0; dev < 32; dev++) {
        uint32_t id = pci_read32(dev, 0);
        if ((id & 0xffff) == VENDOR_VIRTIO && (id >> 16) == DEVICE_VIRTIO_BLK)
            return (int)dev;
    }
    return -1;
}

static void map_capabilities(unsigned dev)
{
    int seen[6] = {0};
    if (!(pci_read32(dev, 0x04) >> 16 & PCI_STATUS_CAP_LIST))
        fail("no capability list");
    unsigned off = pci_read8(dev, 0x34) & 0xfc;
    for (int n = 0; off && n < 48; n++, off = pci_read8(dev, off + 1) & 0xfc) {
        if (pci_read8(dev, off) != CAP_VENDOR)
            continue;
        unsigned type = pci_read8(dev, off + 3), bar = pci_read8(dev, off + 4);
        uint32_t cap_off = pci_read32(dev, off + 8), len = pci_read32(dev, off + 12);
        if (type < 1 || type > 5 || seen[type])
            continue;
        seen[type] = 1;
        if (type == CAP_PCI_CFG)
            continue;
        int ok;
        volatile uint8_t *p = (volatile uint8_t *)(bar_address(dev, bar, &ok) + cap_off);
        if (!ok)
            fail("a virtio structure in an unusable BAR");
        if (type == CAP_COMMON && len >= 0x38)
            common = p;
        else if (type == CAP_ISR && len >= 1)
            isr = p;
        else if (type == CAP_DEVICE && len >= 24)
            devcfg = p;
        else if (type == CAP_NOTIFY) {
            notify_base = p;
            notify_mult = pci_read32(dev, off + 16);
        }
    }
    kprintf("vblk: capabilities common=%d notify=%d isr=%d device=%d pci_cfg=%d\n", seen[1], seen[2], seen[3],
            seen[4], seen[5]);
    if (!common || !isr || !devcfg || !notify_base)
        fail("a virtio structure is missing");
}

#define C8(o) (*(volatile uint8_t *)(common + (o)))
#define C16(o) (*(volatile uint16_t *)(common + (o)))
#define C32(o) (*(volatile uint32_t *)(common + (o)))

static void setup_queue(void)
{
    C16(0x16) = 0; /* queue_select */
    uint16_t max = C16(0x18);
    kprintf("vblk: queue 0 offers %u entries; using %u\n", max, QSIZE);
    if (max < QSIZE)
        fail("queue too small");
    C16(0x18) = QSIZE;
    C32(0x20) = (uint32_t)descs;
    C32(0x24) = 0;
    C32(0x28) = (uint32_t)&avail;
    C32(0x2c) = 0;
    C32(0x30) = (uint32_t)&used;
    C32(0x34) = 0;
    C16(0x1c) = 1; /* queue_enable */
}

/* Make a chain available, notify, and poll the used ring until the device returns it. */
static uint32_t submit(unsigned ndesc)
{
    avail.ring[avail.idx % QSIZE] = 0;
    __asm__ volatile("" ::: "memory");
    avail.idx++;
    __asm__ volatile("mfence" ::: "memory");
    uint16_t notify_off = C16(0x1e);
    *(volatile uint16_t *)(notify_base + notify_off * notify_mult) = 0;
    for (uint32_t i = 0; i < POLL_LIMIT; i++) {
        if (*(volatile uint16_t *)&used.idx != last_used) {
            uint32_t len = used.ring[last_used % QSIZE].len;
            last_used++;
            (void)ndesc;
            return len;
        }
        __asm__ volatile("pause");
    }
    fail("the device never returned the request");
}

static uint32_t request(uint32_t type, uint64_t sector, void *buf, uint32_t len, int device_writes)
{
    header.type = type;
    header.reserved = 0;
    header.sector = sector;
    status = 0xff;
    descs[0] = (struct desc){(uint32_t)&header, sizeof header, DESC_F_NEXT, 1};
    unsigned n = 1;
    if (len) {
        descs[1] = (struct desc){(uint32_t)buf, len, (uint16_t)(DESC_F_NEXT | (device_writes ? DESC_F_WRITE : 0)), 2};
        n = 2;
    }
    descs[n - 1].next = (uint16_t)n;
    descs[n] = (struct desc){(uint32_t)&status, 1, DESC_F_WRITE, 0};
    return submit(n + 1);
}

static void hex16(const char *what, const uint8_t *p)
{
    kprintf("vblk: %s", what);
    for (int i = 0; i < 16; i++)
        kprintf(" %02x", p[i]);
    kprintf("\n");
}

void kmain(uint32_t magic, const void *info)
{
    (void)magic;
    (void)info;
    serial_init();
    int dev = find_device();
    if (dev < 0)
        fail("no virtio-blk device (1af4:1042) on bus 0");
    uint32_t class_rev = pci_read32((unsigned)dev, 0x08), subsys = pci_read32((unsigned)dev, 0x2c);
    kprintf("vblk: found 1af4:1042 revision %u class %06x subsystem %04x:%04x\n", class_rev & 0xff, class_rev >> 8,
            subsys & 0xffff, subsys >> 16);
    uint16_t command = (uint16_t)pci_read32((unsigned)dev, 0x04);
    pci_write16((unsigned)dev, 0x04, command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    map_capabilities((unsigned)dev);

    C8(0x14) = 0; /* reset */
    C8(0x14) = ST_ACK;
    C8(0x14) = ST_ACK | ST_DRIVER;
    C32(0x00) = 1;
    uint32_t features_hi = C32(0x04);
    kprintf("vblk: VIRTIO_F_VERSION_1 %s\n", (features_hi & F_VERSION_1_HI) ? "offered" : "missing");
    C32(0x08) = 0;
    C32(0x0c) = 0;
    C32(0x08) = 1;
    C32(0x0c) = F_VERSION_1_HI;
    C8(0x14) = ST_ACK | ST_DRIVER | ST_FEATURES_OK;
    if (!(C8(0x14) & ST_FEATURES_OK))
        fail("FEATURES_OK not accepted");
    uint32_t cap_lo = *(volatile uint32_t *)devcfg, cap_hi = *(volatile uint32_t *)(devcfg + 4);
    kprintf("vblk: capacity %u sectors (high %u)\n", cap_lo, cap_hi);
    setup_queue();
    C8(0x14) = ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK;
    kprintf("vblk: status %02x\n", C8(0x14));

    char id[21] = {0};
    request(T_GET_ID, 0, id, 20, 1);
    kprintf("vblk: get-id status %u serial \"%s\"\n", status, id);

    uint32_t len = request(T_IN, 0, data, SECTOR, 1);
    kprintf("vblk: read sector 0 status %u used.len %u\n", status, len);
    hex16("sector 0:", data);

    for (int i = 0; i < SECTOR; i++)
        data[i] = (uint8_t)(i * 7 + 3);
    request(T_OUT, 1, data, SECTOR, 0);
    kprintf("vblk: write sector 1 status %u\n", status);
    for (int i = 0; i < SECTOR; i++)
        data[SECTOR + i] = 0;
    request(T_IN, 1, data + SECTOR, SECTOR, 1);
    int same = 1;
    for (int i = 0; i < SECTOR; i++)
        same &= data[SECTOR + i] == (uint8_t)(i * 7 + 3);
    kprintf("vblk: read back sector 1 status %u %s\n", status, same ? "matches" : "DIFFERS");

    request(T_FLUSH, 0, 0, 0, 0);
    kprintf("vblk: flush status %u\n", status);

    request(T_IN, cap_lo, data, SECTOR, 1);
    kprintf("vblk: read past the end status %u\n", status);

    if (!same)
        fail("data read back differs");
    kprintf("vblk: done\n");
    debug_exit(EXIT_OK);
}
