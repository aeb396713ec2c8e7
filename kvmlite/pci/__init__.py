"""PCI: configuration space, functions, the bus with its host bridge and configuration mechanisms.

``config.py`` is one function's configuration space (type-0 header, BARs,
capabilities) as bytes with write masks; ``device.py`` the base a PCI device
builds on; ``bus.py`` the bus (functions by device/function number, BARs
mapped on the machine's PIO and MMIO buses and moved when the guest
reprograms them) with the host bridge, configuration mechanism #1
(0xCF8/0xCFC) and the ECAM window.
"""
