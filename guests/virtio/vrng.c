/*
 * vrng.c - read entropy from a virtio-rng device with vdrv's own virtqueue: four requests of
 * 64 bytes.  The same lines under kvmlite and under
 *   qemu-system-x86_64 -device virtio-rng-pci,disable-legacy=on
 * (the bytes themselves are never printed: only that they came and are not all alike).
 * Exits through the debug port: 0x45 when every step passed, 0x01 on the first failure.
 */
#include <stdint.h>

#include "clib/klib.h"
#include "virtio/vdrv.h"

#define EXIT_OK 0x45
#define DEVICE_VIRTIO_RNG 0x1044
#define REQUESTS 4
#define CHUNK 64

static struct vdev dev;
static struct virtq vq;
static uint8_t pool[REQUESTS][CHUNK] __attribute__((aligned(16)));

void kmain(uint32_t magic, const void *info);

void kmain(uint32_t magic, const void *info)
{
    (void)magic;
    (void)info;
    serial_init();
    vdev_find(&dev, "vrng", DEVICE_VIRTIO_RNG);
    vdev_negotiate(&dev);
    vdev_queue(&dev, &vq, 0);
    vdev_driver_ok(&dev);
    uint32_t total = 0;
    for (int r = 0; r < REQUESTS; r++) {
        struct vbuf buf = {pool[r], CHUNK, 1};
        total += vdev_submit(&dev, &vq, &buf, 1);
    }
    kprintf("vrng: %u requests returned %u bytes\n", REQUESTS, total);
    int distinct = 0;
    for (int i = 1; i < CHUNK; i++)
        distinct += pool[0][i] != pool[0][0];
    int requests_differ = 0;
    for (int i = 0; i < CHUNK; i++)
        requests_differ |= pool[0][i] != pool[1][i];
    kprintf("vrng: bytes vary %s, requests differ %s\n", distinct > 8 ? "yes" : "no", requests_differ ? "yes" : "no");
    if (total != REQUESTS * CHUNK || distinct <= 8 || !requests_differ)
        vdev_fail(&dev, "the entropy does not look random");
    kprintf("vrng: done\n");
    debug_exit(EXIT_OK);
}
