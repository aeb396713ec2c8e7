"""What a PC's firmware would leave in memory for the operating system.

kvmlite boots kernels directly, without a BIOS, so the tables a BIOS builds
(ACPI: :mod:`kvmlite.firmware.acpi`) are built here in Python and written into
the guest's reserved low memory before the first instruction runs.
"""
