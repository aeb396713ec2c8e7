/*
 * vblkloop.c - a virtio-blk disk kept busy for the snapshot tests (tests/test_snapshot_virtio.py).
 *
 * `rounds=N` on the command line rounds (120 without it); round r writes one sector of LCG bytes at sector 2 + (r % 32), reads back the
 * sector 2 + (r * 5 % 32) and folds it into a checksum, and prints "vloop: round r sum XXXXXXXX".
 * It ends with "vloop: done XXXXXXXX" and exits through the debug port with (sum & 0x3f) + 1.
 * Every line depends on every request before it, and the disk's bytes on every write: a request
 * lost, repeated out of order or answered with stale data across a snapshot shows in the output,
 * the exit status or the image.  Built with VIRTIO_MMIO it finds the disk on its command line.
 */
#include <stdint.h>

#include "clib/klib.h"
#include "virtio/vdrv.h"

#define DEVICE_VIRTIO_BLK 0x1042
#define VIRTIO_ID_BLOCK 2
#define T_IN 0
#define T_OUT 1
#define SECTOR 512
#define DEFAULT_ROUNDS 120
#define SPAN 32

struct req_header {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

static struct vdev dev;
static struct virtq vq;
static struct req_header header;
static uint8_t out[SECTOR] __attribute__((aligned(16)));
static uint8_t in[SECTOR] __attribute__((aligned(16)));
static volatile uint8_t status;

void kmain(uint32_t magic, const void *info);

static void request(uint32_t type, uint64_t sector, void *buf, int device_writes)
{
    header = (struct req_header){type, 0, sector};
    status = 0xff;
    struct vbuf bufs[3] = {{&header, sizeof header, 0}, {buf, SECTOR, device_writes}, {(void *)&status, 1, 1}};
    vdev_submit(&dev, &vq, bufs, 3);
    if (status != 0)
        vdev_fail(&dev, "a request failed");
}

void kmain(uint32_t magic, const void *info)
{
    (void)magic;
    serial_init();
    const char *cmdline = mb_cmdline(info);
    uint32_t rounds = cmdline_number(cmdline, "rounds=", DEFAULT_ROUNDS);
#ifdef VIRTIO_MMIO
    vdev_find_mmio(&dev, "vloop", cmdline, VIRTIO_ID_BLOCK);
#else
    vdev_find(&dev, "vloop", DEVICE_VIRTIO_BLK);
#endif
    vdev_negotiate(&dev);
    vdev_queue(&dev, &vq, 0);
    vdev_driver_ok(&dev);

    uint32_t state = 12345, sum = 0;
    for (uint32_t r = 0; r < rounds; r++) {
        for (int i = 0; i < SECTOR; i++) {
            state = state * 1103515245u + 12345u;
            out[i] = (uint8_t)(state >> 24);
        }
        request(T_OUT, 2 + r % SPAN, out, 0);
        request(T_IN, 2 + r * 5 % SPAN, in, 1);
        for (int i = 0; i < SECTOR; i++)
            sum = (sum << 1 | sum >> 31) ^ in[i];
        kprintf("vloop: round %u sum %x\n", r, sum);
    }
    kprintf("vloop: done %x\n", sum);
    debug_exit((sum & 0x3f) + 1);
}
