"""The block backend ("vbd"), a device kind of dom0.xenbus.

    protocol.py  blkif requests as data: parse, check against the disk, respond (sans-IO)
    blkback.py   BlockKind (features, connect, release) and BlockConnection (serving the ring)
    image.py     raw images (preadv/pwritev on the granted pages) and qemu-nbd-served ones
    nbd.py       the NBD client (sans-IO protocol + socket driver) and the qemu-nbd process
    vdev.py      xl vdev names as Xen virtual-device numbers
"""
