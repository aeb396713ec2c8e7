"""virtio (1.2, modern): the device protocol, the split virtqueue, the PCI transport, devices."""
