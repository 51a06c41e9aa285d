"""xl's vdev names (xvda, hdb, sdc3, d0p1, 51712) as Xen virtual-device numbers, and back.

As libxl__device_disk_dev_number and Linux's xen-blkfront read them:
    xvdX<p>  disk < 16 and partition < 16: (202 << 8) | disk << 4 | p   (xvda = 51712)
             else the extended form:        1 << 28 | disk << 8 | p     (p < 256, disk < 2**20)
    hdX<p>   hda/hdb on major 3, hdc/hdd on 22: major << 8 | (disk % 2) << 6 | p   (p < 64)
    sdX<p>   disk < 16 and p < 16: (8 << 8) | disk << 4 | p
    dN[pM]   the extended form of disk N, partition M
    a plain number is taken as the number itself
Disk letters run a..z, aa..zz, ... as Linux names them (xvdaa is disk 26).
"""
from __future__ import annotations

import re

XVD_MAJOR = 202
SD_MAJOR = 8
HD_MAJORS = (3, 22)
EXTENDED = 1 << 28
_NAME = re.compile(r"^(xvd|hd|sd)([a-z]+)(\d*)$")
_DISKPART = re.compile(r"^d(\d+)(?:p(\d+))?$")


def _letters_to_index(letters: str) -> int:
    """a -> 0, z -> 25, aa -> 26 (bijective base 26, as Linux's encode_disk_name)."""
    n = 0
    for c in letters:
        n = n * 26 + (ord(c) - ord("a") + 1)
    return n - 1


def _index_to_letters(index: int) -> str:
    out = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        out = chr(ord("a") + rem) + out
    return out


def vdev_number(vdev: str) -> int:
    """The virtual-device number of an xl vdev name; ValueError names what is wrong."""
    if vdev.isdigit():
        number = int(vdev)
        if not 0 < number < 1 << 32:
            raise ValueError(f"vdev number {vdev} out of range")
        return number
    m = _DISKPART.match(vdev)
    if m:
        disk, part = int(m.group(1)), int(m.group(2) or 0)
        if disk >= 1 << 20 or part >= 256:
            raise ValueError(f"vdev {vdev!r}: disk or partition out of range")
        return EXTENDED | disk << 8 | part
    m = _NAME.match(vdev)
    if not m:
        raise ValueError(f"invalid vdev {vdev!r} (xvda, hda, sda, d0p1 or a number)")
    prefix, disk, part = m.group(1), _letters_to_index(m.group(2)), int(m.group(3) or 0)
    if prefix == "xvd":
        if disk < 16 and part < 16:
            return XVD_MAJOR << 8 | disk << 4 | part
        if disk >= 1 << 20 or part >= 256:
            raise ValueError(f"vdev {vdev!r}: disk or partition out of range")
        return EXTENDED | disk << 8 | part
    if prefix == "hd":
        if disk >= 4 or part >= 64:
            raise ValueError(f"vdev {vdev!r}: only hda..hdd with partitions below 64")
        return HD_MAJORS[disk // 2] << 8 | (disk % 2) << 6 | part
    if disk >= 16 or part >= 16:
        raise ValueError(f"vdev {vdev!r}: only sda..sdp with partitions below 16")
    return SD_MAJOR << 8 | disk << 4 | part


def vdev_name(number: int) -> str:
    """The xvd name Linux gives a virtual-device number (for listings)."""
    if number & EXTENDED:
        disk, part = (number >> 8) & 0xFFFFF, number & 0xFF
    elif number >> 8 == XVD_MAJOR:
        disk, part = (number >> 4) & 0xF, number & 0xF
    elif number >> 8 == SD_MAJOR:
        return f"sd{_index_to_letters((number >> 4) & 0xF)}{(number & 0xF) or ''}"
    elif number >> 8 in HD_MAJORS:
        disk = HD_MAJORS.index(number >> 8) * 2 + ((number >> 6) & 1)
        return f"hd{_index_to_letters(disk)}{(number & 0x3F) or ''}"
    else:
        return str(number)
    return f"xvd{_index_to_letters(disk)}{part or ''}"
