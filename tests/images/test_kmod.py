"""Kernel module metadata read without kmod, and the insmod order built from it."""
from __future__ import annotations

import struct

import pytest

from dom0.images import kmod


def make_module(modinfo: list[str]) -> bytes:
    """A minimal ELF64 relocatable object with a .modinfo section (and its section-name table)."""
    names = b"\0.modinfo\0.shstrtab\0"
    info = b"".join(entry.encode() + b"\0" for entry in modinfo)
    body_off = 64
    info_off, names_off = body_off, body_off + len(info)
    shoff = names_off + len(names)
    shoff += -shoff % 8
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)

    def section(name_off: int, offset: int, size: int) -> bytes:
        entry = bytearray(64)
        struct.pack_into("<I", entry, 0, name_off)
        struct.pack_into("<QQ", entry, 0x18, offset, size)
        return bytes(entry)

    blob = bytes(header) + info + names
    blob += b"\0" * (shoff - len(blob))
    return blob + section(0, 0, 0) + section(1, info_off, len(info)) + section(10, names_off, len(names))


def test_modinfo_reads_the_modpost_strings():
    blob = make_module(["alias=fs-ext4", "softdep=pre: crypto-crc32c", "depends=jbd2,mbcache,crc16",
                        "name=ext4", "vermagic=6.1.0-57-amd64 SMP"])
    module = kmod.describe("kernel/fs/ext4/ext4.ko", blob)
    assert module == kmod.ModuleInfo("ext4", "kernel/fs/ext4/ext4.ko", ("jbd2", "mbcache", "crc16"),
                                     ("crypto-crc32c",), ("fs-ext4",))


def test_dashes_and_underscores_are_one_name():
    module = kmod.describe("kernel/drivers/xen/xenfs/xenfs.ko", make_module(["depends=xen-privcmd", "name=xenfs"]))
    assert module.depends == ("xen_privcmd",)
    blkfront = kmod.describe("kernel/drivers/block/xen-blkfront.ko", make_module(["depends="]))
    assert blkfront.name == "xen_blkfront" and blkfront.depends == ()


@pytest.mark.parametrize("blob", [b"", b"\x7fELF", b"MZ" + b"\0" * 100, make_module(["name=x"])[:80],
                                  b"\x7fELF\x02\x01" + b"\0" * 34 + b"\xff" * 8 + b"\0" * 16])
def test_a_broken_module_is_a_module_error(blob):
    with pytest.raises(kmod.ModuleError):
        kmod.modinfo(blob)


def index(*modules: tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]) -> kmod.ModuleIndex:
    return kmod.ModuleIndex([kmod.ModuleInfo(*m) for m in modules])


DEBIAN_LIKE = index(
    ("xen_blkfront", "kernel/drivers/block/xen-blkfront.ko", (), (), ("xen:vbd",)),
    ("ext4", "kernel/fs/ext4/ext4.ko", ("jbd2", "mbcache", "crc16"), ("crypto-crc32c",), ("fs-ext4",)),
    ("jbd2", "kernel/fs/jbd2/jbd2.ko", (), ("crypto-crc32c",), ()),
    ("mbcache", "kernel/fs/mbcache.ko", (), (), ()),
    ("crc16", "kernel/lib/crc16.ko", (), (), ()),
    ("crc32c_intel", "kernel/arch/x86/crypto/crc32c-intel.ko", (), (), ("crypto-crc32c",)),
    ("crc32c_generic", "kernel/crypto/crc32c_generic.ko", (), (), ("crypto-crc32c",)),
)


def test_load_order_puts_every_dependency_first_once():
    order = [m.name for m in DEBIAN_LIKE.load_order(["xen-blkfront", "ext4"])]
    assert order == ["xen_blkfront", "crc32c_generic", "jbd2", "mbcache", "crc16", "ext4"]


def test_an_alias_is_answered_by_the_portable_module():
    assert DEBIAN_LIKE.lookup("crypto-crc32c").name == "crc32c_generic"
    assert DEBIAN_LIKE.lookup("fs-ext4").name == "ext4"


def test_unknown_names_missing_dependencies_and_cycles_are_module_errors():
    with pytest.raises(kmod.ModuleError, match="no module named or aliased 'btrfs'"):
        DEBIAN_LIKE.load_order(["btrfs"])
    with pytest.raises(kmod.ModuleError, match="a depends on b, which the kernel package lacks"):
        index(("a", "kernel/a.ko", ("b",), (), ())).load_order(["a"])
    with pytest.raises(kmod.ModuleError, match="cycle"):
        index(("a", "kernel/a.ko", ("b",), (), ()), ("b", "kernel/b.ko", ("a",), (), ())).load_order(["a"])
