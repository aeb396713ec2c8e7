/*
 * vblkbench.c - virtio-blk load for bench/blk_bench.py: COUNT requests of SIZE bytes, reads or writes,
 * sequential or at random SIZE-aligned offsets, DEPTH of them in flight, then exit 0x44.
 *
 * Command line (multiboot): "op=read|write pattern=seq|rand size=BYTES count=N depth=D".
 * The guest never touches the data (it runs at CPL 0, which some hosts emulate instruction by
 * instruction) and asks for no interrupts (VRING_AVAIL_F_NO_INTERRUPT): it polls the used ring and
 * refills each request slot as it completes, notifying once per batch.  Built with VQ_SIZE=64.
 * It prints "vblkbench: start" just before the first request and "... done" after the last: the
 * bench times the interval between the two lines on the VMM's serial output, so neither VMM's
 * start-up counts.
 */
#include <stdint.h>

#include "clib/klib.h"
#include "virtio/vdrv.h"

#define EXIT_OK 0x44
#define DEVICE_VIRTIO_BLK 0x1042
#define T_IN 0
#define T_OUT 1
#define SECTOR 512
#define MAX_SIZE 65536
#define MAX_DEPTH 16
#define AVAIL_F_NO_INTERRUPT 1
#define POLL_LIMIT 1000000000u

struct req_header {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
};

static struct vdev dev;
static struct virtq vq;
static struct req_header headers[MAX_DEPTH];
static volatile uint8_t statuses[MAX_DEPTH];
static uint8_t buffers[MAX_DEPTH][MAX_SIZE] __attribute__((aligned(4096)));

static uint32_t op = T_IN, random_offsets, size = 4096, count = 1000, depth = 1;
static uint32_t next_seq, blocks; /* in units of `size` */
static uint32_t lcg = 12345;

void kmain(uint32_t magic, const void *info);

/* The value after "key=" in the command line, or 0. */
static const char *option(const char *cmdline, const char *key)
{
    for (const char *p = cmdline; p && *p; p++) {
        if (p != cmdline && p[-1] != ' ')
            continue;
        unsigned i = 0;
        while (key[i] && p[i] == key[i])
            i++;
        if (!key[i] && p[i] == '=')
            return p + i + 1;
    }
    return 0;
}

static uint32_t number(const char *cmdline, const char *key, uint32_t fallback)
{
    const char *p = option(cmdline, key);
    if (!p)
        return fallback;
    uint32_t v = 0;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (uint32_t)(*p++ - '0');
    return v;
}

static uint32_t next_block(void)
{
    if (!random_offsets)
        return next_seq++ % blocks;
    lcg = lcg * 1103515245u + 12345u;
    return (lcg >> 4) % blocks;
}

/* Make request slot `slot` available: header, data, status in descriptors 3*slot .. 3*slot+2. */
static void post(unsigned slot)
{
    uint16_t d = (uint16_t)(3 * slot);
    headers[slot] = (struct req_header){op, 0, (uint64_t)next_block() * (size / SECTOR)};
    statuses[slot] = 0xff;
    uint16_t data_flags = (uint16_t)(DESC_F_NEXT | (op == T_IN ? DESC_F_WRITE : 0));
    vq.desc[d] = (struct vq_desc){(uint32_t)&headers[slot], sizeof headers[slot], DESC_F_NEXT, (uint16_t)(d + 1)};
    vq.desc[d + 1] = (struct vq_desc){(uint32_t)buffers[slot], size, data_flags, (uint16_t)(d + 2)};
    vq.desc[d + 2] = (struct vq_desc){(uint32_t)&statuses[slot], 1, DESC_F_WRITE, 0};
    vq.avail.ring[vq.avail.idx % VQ_SIZE] = d;
    __asm__ volatile("" ::: "memory");
    vq.avail.idx++;
}

void kmain(uint32_t magic, const void *info)
{
    (void)magic;
    serial_init();
    dev.tag = "vblkbench";
    const char *cmdline = (const char *)((const struct multiboot_info *)info)->cmdline;
    const char *o = option(cmdline, "op"), *pattern = option(cmdline, "pattern");
    op = o && o[0] == 'w' ? T_OUT : T_IN;
    random_offsets = pattern && pattern[0] == 'r';
    size = number(cmdline, "size", size);
    count = number(cmdline, "count", count);
    depth = number(cmdline, "depth", depth);
    if (size < SECTOR || size > MAX_SIZE || size % SECTOR || depth < 1 || depth > MAX_DEPTH || 3 * depth > VQ_SIZE)
        vdev_fail(&dev, "bad size or depth on the command line");

    vdev_find(&dev, "vblkbench", DEVICE_VIRTIO_BLK);
    vdev_negotiate(&dev);
    blocks = *(volatile uint32_t *)dev.devcfg / (size / SECTOR);
    vdev_queue(&dev, &vq, 0);
    vdev_driver_ok(&dev);
    if (!blocks)
        vdev_fail(&dev, "the disk is smaller than one request");
    vq.avail.flags = AVAIL_F_NO_INTERRUPT;

    kprintf("vblkbench: start\n");
    inb(0x3fd); /* one more exit: a VMM that buffers COM1 writes has passed the whole line on */
    uint32_t posted = 0, done = 0;
    for (unsigned slot = 0; slot < depth && posted < count; slot++, posted++)
        post(slot);
    vdev_kick(&dev, &vq);
    uint32_t idle = 0;
    while (done < count) {
        int refilled = 0;
        while (*(volatile uint16_t *)&vq.used.idx != vq.last_used) {
            unsigned slot = vq.used.ring[vq.last_used % VQ_SIZE].id / 3;
            vq.last_used++;
            if (statuses[slot] != 0)
                vdev_fail(&dev, "a request failed");
            done++;
            if (posted < count) {
                post(slot);
                posted++;
                refilled = 1;
            }
            idle = 0;
        }
        if (refilled) {
            vdev_kick(&dev, &vq);
        } else if (++idle > POLL_LIMIT) {
            vdev_fail(&dev, "the device stopped returning requests");
        } else {
            __asm__ volatile("pause");
        }
    }
    kprintf("vblkbench: %u requests of %u bytes done\n", done, size);
    debug_exit(EXIT_OK);
}
