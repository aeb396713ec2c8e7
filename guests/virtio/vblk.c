/*
 * vblk.c - drive a virtio-blk disk with vdrv's own virtqueue: get-id, read, write, read back,
 * flush, a read past the end, then write-zeroes (with and without UNMAP) and discard on sectors
 * 8-23 (the host checks the image's bytes and holes afterwards), and the requests that must fail.  The same lines under kvmlite and under
 *   qemu-system-x86_64 -device virtio-blk-pci,disable-legacy=on,drive=...,serial=...
 * Built with VIRTIO_MMIO it finds the disk as a virtio-mmio device announced on its command line
 * (kvmlite --virtio-transport mmio) instead.
 * Exits through the debug port: 0x44 when every step passed, 0x01 on the first failure.
 */
#include <stdint.h>

#include "clib/klib.h"
#include "virtio/vdrv.h"

#define EXIT_OK 0x44
#define DEVICE_VIRTIO_BLK 0x1042
#define VIRTIO_ID_BLOCK 2
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define F_DISCARD (1u << 13)
#define F_WRITE_ZEROES (1u << 14)
#define FLAG_UNMAP 1u
#define SECTOR 512
#define PATTERN 0xa5

struct req_header {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

static struct vdev dev;
static struct virtq vq;
static struct req_header header;
struct segment {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
};

static uint8_t data[2 * SECTOR] __attribute__((aligned(16)));
static uint8_t big[8 * SECTOR] __attribute__((aligned(16)));
static struct segment segment;
static volatile uint8_t status;

void kmain(uint32_t magic, const void *info);
static uint32_t request(uint32_t type, uint64_t sector, void *buf, uint32_t len, int device_writes);

/* One discard or write-zeroes segment; returns the status. */
static unsigned range_request(uint32_t type, uint64_t sector, uint32_t count, uint32_t flags)
{
    segment = (struct segment){sector, count, flags};
    request(type, 0, &segment, sizeof segment, 0);
    return status;
}

/* Whether sectors [first, first + count) of `big` (holding sectors 8-15 or 16-23) are all `value`. */
static int all(unsigned first, unsigned count, uint8_t value)
{
    for (unsigned i = first * SECTOR; i < (first + count) * SECTOR; i++)
        if (big[i] != value)
            return 0;
    return 1;
}

static void fill_and_write(uint64_t sector)
{
    for (unsigned i = 0; i < sizeof big; i++)
        big[i] = PATTERN;
    request(T_OUT, sector, big, sizeof big, 0);
}

static uint32_t request(uint32_t type, uint64_t sector, void *buf, uint32_t len, int device_writes)
{
    header = (struct req_header){type, 0, sector};
    status = 0xff;
    struct vbuf bufs[3] = {{&header, sizeof header, 0}};
    unsigned n = 1;
    if (len)
        bufs[n++] = (struct vbuf){buf, len, device_writes};
    bufs[n++] = (struct vbuf){(void *)&status, 1, 1};
    return vdev_submit(&dev, &vq, bufs, n);
}

static void hex16(const char *what, const uint8_t *p)
{
    kprintf("vblk: %s", what);
    for (int i = 0; i < 16; i++)
        kprintf(" %02x", p[i]);
    kprintf("\n");
}

struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
};

void kmain(uint32_t magic, const void *info)
{
    (void)magic;
    serial_init();
#ifdef VIRTIO_MMIO
    vdev_find_mmio(&dev, "vblk", (const char *)((const struct multiboot_info *)info)->cmdline, VIRTIO_ID_BLOCK);
#else
    (void)info;
    vdev_find(&dev, "vblk", DEVICE_VIRTIO_BLK);
#endif
    uint32_t features = vdev_negotiate_features(&dev, F_DISCARD | F_WRITE_ZEROES);
    kprintf("vblk: discard %s, write-zeroes %s\n", features & F_DISCARD ? "offered" : "missing",
            features & F_WRITE_ZEROES ? "offered" : "missing");
    uint32_t cap_lo = *(volatile uint32_t *)dev.devcfg, cap_hi = *(volatile uint32_t *)(dev.devcfg + 4);
    kprintf("vblk: capacity %u sectors (high %u)\n", cap_lo, cap_hi);
    vdev_queue(&dev, &vq, 0);
    vdev_driver_ok(&dev);

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
        vdev_fail(&dev, "data read back differs");

    fill_and_write(8);
    unsigned plain = range_request(T_WRITE_ZEROES, 8, 2, 0);
    unsigned unmap = range_request(T_WRITE_ZEROES, 10, 2, FLAG_UNMAP);
    request(T_IN, 8, big, sizeof big, 1);
    kprintf("vblk: write-zeroes status %u, with unmap %u: sectors 8-11 %s, 12-15 %s\n", plain, unmap,
            all(0, 4, 0) ? "zero" : "NOT ZERO", all(4, 4, PATTERN) ? "kept" : "CHANGED");
    fill_and_write(16);
    unsigned discarded = range_request(T_DISCARD, 16, 8, 0);
    request(T_IN, 16, big, sizeof big, 1);
    kprintf("vblk: discard status %u: sectors 16-23 %s\n", discarded, all(0, 8, 0) ? "zero" : "NOT ZERO");
    kprintf("vblk: discard with the unmap flag status %u\n", range_request(T_DISCARD, 16, 8, FLAG_UNMAP));
    kprintf("vblk: write-zeroes past the end status %u\n", range_request(T_WRITE_ZEROES, cap_lo - 1, 2, 0));
    kprintf("vblk: done\n");
    debug_exit(EXIT_OK);
}
