/*
 * vnet.c - drive a virtio-net NIC with vdrv's own virtqueues: read the MAC from the device's
 * configuration, send an ARP request for 10.0.2.2 (as 10.0.2.15) and receive the reply, twice: once
 * with header and frame in one buffer, once with each in its own descriptor on both queues.  Frames
 * that are not the awaited reply (IPv6 noise from a TAP's host side, ...) are skipped unprinted.
 * The same lines under kvmlite --net ... and under
 *   qemu-system-x86_64 -device virtio-net-pci,disable-legacy=on,netdev=...
 * when the same peer answers (tests/test_virtio_net.py).  Built with VIRTIO_MMIO it finds the NIC as a
 * virtio-mmio device announced on its command line instead.
 *
 * With "bench=N" on its command line it instead transmits N minimal frames as fast as it can, eight
 * chains per notification, and prints how many went out and in how many TSC cycles (in units of 1024:
 * bench/net_bench.py turns that into frames per second).
 * Exits through the debug port: 0x47 when every step passed, 0x01 on the first failure.
 */
#include <stdint.h>

#include "clib/klib.h"
#include "virtio/vdrv.h"

#define EXIT_OK 0x47
#define DEVICE_VIRTIO_NET 0x1041
#define VIRTIO_ID_NET 1
#define RECEIVEQ 0
#define TRANSMITQ 1
#define HDR_LEN 12
#define FRAME_MAX 1514
#define ARP_LEN 42
#define MIN_FRAME 60
#define MAX_SKIPPED 64

static struct vdev dev;
static struct virtq rx, tx;
static uint8_t mac[6];
static uint8_t tx_hdr[HDR_LEN];
static uint8_t tx_frame[MIN_FRAME];
static uint8_t tx_packet[8][HDR_LEN + MIN_FRAME] __attribute__((aligned(16)));
static uint8_t rx_packet[HDR_LEN + FRAME_MAX] __attribute__((aligned(16)));
static const uint8_t our_ip[4] = {10, 0, 2, 15}, peer_ip[4] = {10, 0, 2, 2};

void kmain(uint32_t magic, const void *info);

static void put(uint8_t *p, const void *src, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = ((const uint8_t *)src)[i];
}

static int same(const uint8_t *a, const uint8_t *b, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* An ARP request "who has 10.0.2.2? tell 10.0.2.15", padded to the 60-byte Ethernet minimum. */
static void arp_request(uint8_t *f)
{
    static const uint8_t arp_head[] = {0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1};
    for (int i = 0; i < MIN_FRAME; i++)
        f[i] = i < 6 ? 0xff : 0;
    put(f + 6, mac, 6);
    put(f + 12, arp_head, sizeof arp_head);
    put(f + 22, mac, 6);
    put(f + 28, our_ip, 4);
    put(f + 38, peer_ip, 4);
}

/* Wait for the ARP reply from 10.0.2.2 to us in one or two receive descriptors; print it. */
static void await_reply(int split)
{
    for (int skipped = 0; skipped < MAX_SKIPPED; skipped++) {
        struct vbuf one = {rx_packet, sizeof rx_packet, 1};
        struct vbuf two[2] = {{rx_packet, HDR_LEN, 1}, {rx_packet + HDR_LEN, FRAME_MAX, 1}};
        if (split)
            vdev_post(&dev, &rx, two, 2);
        else
            vdev_post(&dev, &rx, &one, 1);
        uint32_t len = vdev_wait(&dev, &rx);
        const uint8_t *f = rx_packet + HDR_LEN;
        static const uint8_t arp_reply[] = {0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2};
        if (len < HDR_LEN + ARP_LEN || !same(f, mac, 6) || !same(f + 12, arp_reply, sizeof arp_reply) ||
            !same(f + 28, peer_ip, 4) || !same(f + 38, our_ip, 4))
            continue;
        kprintf("vnet: ARP reply: %u.%u.%u.%u is-at %02x:%02x:%02x:%02x:%02x:%02x, flags %u\n",
                f[28], f[29], f[30], f[31], f[22], f[23], f[24], f[25], f[26], f[27], rx_packet[0]);
        return;
    }
    vdev_fail(&dev, "no ARP reply among the frames received");
}

static void exchange(int split)
{
    for (int i = 0; i < HDR_LEN; i++)
        tx_hdr[i] = 0;
    arp_request(tx_frame);
    uint32_t len;
    if (split) {
        struct vbuf two[2] = {{tx_hdr, HDR_LEN, 0}, {tx_frame, MIN_FRAME, 0}};
        len = vdev_submit(&dev, &tx, two, 2);
    } else {
        put(tx_packet[0], tx_hdr, HDR_LEN);
        put(tx_packet[0] + HDR_LEN, tx_frame, MIN_FRAME);
        struct vbuf one = {tx_packet[0], HDR_LEN + MIN_FRAME, 0};
        len = vdev_submit(&dev, &tx, &one, 1);
    }
    kprintf("vnet: sent an ARP request in %s, used.len %u\n", split ? "2 descriptors" : "1 descriptor", len);
    await_reply(split);
}

static uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

/* Transmit `count` frames, a batch of VQ_SIZE one-descriptor chains per notification. */
static void bench(uint32_t count)
{
    for (int c = 0; c < VQ_SIZE; c++) {
        for (int i = 0; i < HDR_LEN; i++)
            tx_packet[c][i] = 0;
        arp_request(tx_packet[c] + HDR_LEN);
        tx.desc[c] = (struct vq_desc){(uint32_t)tx_packet[c], HDR_LEN + MIN_FRAME, 0, 0};
    }
    uint32_t sent = 0;
    uint64_t start = rdtsc();
    while (sent < count) {
        uint32_t batch = count - sent < VQ_SIZE ? count - sent : VQ_SIZE;
        for (uint32_t c = 0; c < batch; c++)
            tx.avail.ring[(uint16_t)(tx.avail.idx + c) % VQ_SIZE] = (uint16_t)c;
        __asm__ volatile("" ::: "memory");
        tx.avail.idx = (uint16_t)(tx.avail.idx + batch);
        vdev_kick(&dev, &tx);
        for (uint32_t c = 0; c < batch; c++)
            vdev_wait(&dev, &tx);
        sent += batch;
    }
    uint64_t cycles = rdtsc() - start;
    kprintf("vnet: bench sent %u frames in %u TSC kilocycles\n", sent, (uint32_t)(cycles >> 10));
}

void kmain(uint32_t magic, const void *info)
{
    (void)magic;
    const char *cmdline = mb_cmdline(info);
    serial_init();
#ifdef VIRTIO_MMIO
    vdev_find_mmio(&dev, "vnet", cmdline, VIRTIO_ID_NET);
#else
    vdev_find(&dev, "vnet", DEVICE_VIRTIO_NET);
#endif
    vdev_negotiate(&dev);
    for (int i = 0; i < 6; i++)
        mac[i] = dev.devcfg[i];
    uint16_t status = (uint16_t)(dev.devcfg[6] | dev.devcfg[7] << 8);
    kprintf("vnet: mac %02x:%02x:%02x:%02x:%02x:%02x, status %u\n", mac[0], mac[1], mac[2], mac[3], mac[4],
            mac[5], status);
    vdev_queue(&dev, &rx, RECEIVEQ);
    vdev_queue(&dev, &tx, TRANSMITQ);
    vdev_driver_ok(&dev);
    uint32_t count = cmdline_number(cmdline, "bench=", 0);
    if (count) {
        bench(count);
    } else {
        exchange(0);
        exchange(1);
    }
    kprintf("vnet: done\n");
    debug_exit(EXIT_OK);
}
