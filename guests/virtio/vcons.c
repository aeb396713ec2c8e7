/*
 * vcons.c - write to a virtio console (port 0, no multiport) with vdrv's own virtqueues.  The same
 * lines on COM1, and the same bytes on the console, under kvmlite --virtio-console and under
 *   qemu-system-x86_64 -device virtio-serial-pci,disable-legacy=on -device virtconsole,chardev=...
 * Exits through the debug port: 0x46 when every step passed, 0x01 on the first failure.
 */
#include <stdint.h>

#include "clib/klib.h"
#include "virtio/vdrv.h"

#define EXIT_OK 0x46
#define DEVICE_VIRTIO_CONSOLE 0x1043
#define RECEIVEQ 0
#define TRANSMITQ 1

static struct vdev dev;
static struct virtq rx, tx;
static char message[] = "hello from vcons over virtio-console\n";
static char second[] = "a second line, in two buffers\n";

void kmain(uint32_t magic, const void *info);

void kmain(uint32_t magic, const void *info)
{
    (void)magic;
    (void)info;
    serial_init();
    vdev_find(&dev, "vcons", DEVICE_VIRTIO_CONSOLE);
    vdev_negotiate(&dev);
    vdev_queue(&dev, &rx, RECEIVEQ);
    vdev_queue(&dev, &tx, TRANSMITQ);
    vdev_driver_ok(&dev);
    struct vbuf one = {message, sizeof message - 1, 0};
    uint32_t len = vdev_submit(&dev, &tx, &one, 1);
    kprintf("vcons: sent %u bytes, used.len %u\n", (uint32_t)(sizeof message - 1), len);
    struct vbuf two[2] = {{second, 14, 0}, {second + 14, sizeof second - 1 - 14, 0}};
    len = vdev_submit(&dev, &tx, two, 2);
    kprintf("vcons: sent %u bytes in 2 buffers, used.len %u\n", (uint32_t)(sizeof second - 1), len);
    kprintf("vcons: done\n");
    debug_exit(EXIT_OK);
}
