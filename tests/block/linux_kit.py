"""Debian's kernel with its own xen-blkfront and ext4 modules, for the disk tests.

The image `pvhyp image debian` builds has a busybox initramfs without
modules; the kernel unpacks concatenated initramfs archives in turn, so this
appends one holding the modules (taken from the same linux-image package, in
dependency order) and an /init that loads them before the usual shell.
"""
from __future__ import annotations

import glob
import os
import re

from dom0.images import cpio, debfile, debian

MODULES = ("crc32c_generic", "crc16", "mbcache", "jbd2", "ext4", "xen_blkfront")   # dependency order


def disk_ramdisk(image: dict, out_dir: str) -> str:
    """An initramfs (the image's + modules + /init that insmods them); its path."""
    path = os.path.join(out_dir, "initrd-disk.img")
    if os.path.exists(path):
        return path
    debs = glob.glob(os.path.join(os.path.dirname(image["kernel"]), "debs", "linux-image-*.deb"))
    if not debs:
        raise FileNotFoundError("no linux-image package beside the image")
    with open(debs[0], "rb") as f:
        files = debfile.extract(f.read(), lambda p: p.endswith(".ko"))
    by_name = {p.rsplit("/", 1)[1][:-3].replace("-", "_"): p for p in files}
    w = cpio.CpioWriter()
    for d in ("lib", "lib/modules", "mnt"):
        w.directory(d)
    loads = []
    for name in MODULES:
        w.file(f"lib/modules/{name}.ko", files[by_name[name]])
        loads.append(f"insmod /lib/modules/{name}.ko")
    script = re.sub(r"(mount -t tmpfs tmpfs /tmp\n)", lambda m: m.group(1) + "\n".join(loads) + "\n",
                    debian.INIT_SCRIPT)
    assert "insmod" in script
    w.file("init", script.encode(), 0o755)
    with open(image["ramdisk"], "rb") as f:
        base = f.read()
    with open(path + ".tmp", "wb") as f:
        f.write(base + w.finish())
    os.replace(path + ".tmp", path)
    return path
