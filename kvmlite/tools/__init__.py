"""Command-line helpers around Linux boot: unpack a bzImage, build an initramfs, fetch test assets.

Each module has a ``main(argv) -> int`` that the ``kvmlite`` CLI's subcommands
call; the functions under them are usable from Python and from tests.
"""
