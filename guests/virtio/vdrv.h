/*
 * vdrv.h - a minimal modern virtio-pci driver for the bare-metal test guests: PCI enumeration
 * through 0xCF8/0xCFC, the virtio capabilities, feature negotiation, split virtqueues, polling.
 *
 * Everything it prints is the same under kvmlite and QEMU: no slot numbers, BAR addresses or
 * capability offsets, which legitimately differ between the two.
 */
#ifndef VDRV_H
#define VDRV_H
#include <stdint.h>

#ifndef VQ_SIZE
#define VQ_SIZE 8 /* a guest may build with its own (-DVQ_SIZE=64), a power of 2 */
#endif
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

struct vq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vq_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[VQ_SIZE];
    uint16_t used_event;
};

struct vq_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vq_used {
    uint16_t flags;
    uint16_t idx;
    struct vq_used_elem ring[VQ_SIZE];
    uint16_t avail_event;
};

struct virtq {
    struct vq_desc desc[VQ_SIZE] __attribute__((aligned(16)));
    struct vq_avail avail __attribute__((aligned(2)));
    struct vq_used used __attribute__((aligned(4096)));
    uint16_t index;
    uint16_t last_used;
    volatile uint16_t *notify; /* where the device takes this queue's notifications */
};

/* One buffer of a request: address, length, whether the device writes it. */
struct vbuf {
    void *addr;
    uint32_t len;
    int device_writes;
};

struct vdev {
    const char *tag; /* the prefix of every line printed */
    int mmio;        /* virtio-mmio (registers at `common`) instead of virtio-pci */
    unsigned slot;
    volatile uint8_t *common, *isr, *devcfg, *notify_base;
    uint32_t notify_mult;
};

/* Find 1af4:device_id on bus 0, print its identity and capabilities, map its structures. */
void vdev_find(struct vdev *dev, const char *tag, uint16_t device_id);
/* Find the virtio-mmio device the command line announces (virtio_mmio.device=<size>@<base>:<irq>). */
void vdev_find_mmio(struct vdev *dev, const char *tag, const char *cmdline, uint32_t device_id);
/* Reset, ACKNOWLEDGE, DRIVER, accept VIRTIO_F_VERSION_1 only, FEATURES_OK. */
void vdev_negotiate(struct vdev *dev);
/* The same, also accepting those of the `wanted` feature bits 0-31 the device offers; returns them. */
uint32_t vdev_negotiate_features(struct vdev *dev, uint32_t wanted);
/* Set up queue `index` in `vq` (VQ_SIZE entries), printing the size the device offers. */
void vdev_queue(struct vdev *dev, struct virtq *vq, uint16_t index);
void vdev_driver_ok(struct vdev *dev);
/* Make a chain of `n` buffers available on `vq`, notify, poll for it; returns used.len. */
uint32_t vdev_submit(struct vdev *dev, struct virtq *vq, const struct vbuf *bufs, unsigned n);
/* vdev_submit in two halves: make the chain available and notify; poll for the next used entry. */
void vdev_post(struct vdev *dev, struct virtq *vq, const struct vbuf *bufs, unsigned n);
uint32_t vdev_wait(struct vdev *dev, struct virtq *vq);
/* Notify the device of what was made available on `vq`. */
void vdev_kick(struct vdev *dev, struct virtq *vq);
__attribute__((noreturn)) void vdev_fail(struct vdev *dev, const char *what);

#endif
