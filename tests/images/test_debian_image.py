"""The Debian image recipe: cpio writer, .deb reader, and (slow) the real build."""
from __future__ import annotations

import gzip
import io
import json
import stat
import tarfile

import pytest

from dom0.images import cpio, debfile, debian


def make_deb(files: dict[str, bytes]) -> bytes:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo("." + path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", tar_bytes.getvalue())]
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) & 1 else b""
    return out


def test_deb_extract():
    deb = make_deb({"/bin/busybox": b"\x7fELF...", "/usr/share/doc/x": b"doc"})
    assert debfile.extract(deb, lambda p: p == "/bin/busybox") == {"/bin/busybox": b"\x7fELF..."}


@pytest.mark.parametrize("blob", [b"", b"not an ar", b"!<arch>\n" + b"x" * 59, make_deb({})[:70]])
def test_bad_debs_are_one_line_errors(blob):
    with pytest.raises(debfile.DebError):
        debfile.extract(blob, lambda p: True)


def test_initramfs_layout():
    image = gzip.decompress(debian.build_initramfs(b"BUSYBOX"))
    entries = {name: (mode, data) for name, mode, data in cpio.parse(image)}
    assert entries["bin/busybox"][1] == b"BUSYBOX"
    assert stat.S_ISCHR(entries["dev/console"][0])
    init_mode, init = entries["init"]
    assert init_mode & 0o111 and debian.MARKER.encode() in init
    assert b"/sys/hypervisor/type" in init and b"uname -r" in init
    assert entries[debian.MODULE_ALIASES][1] == b""
    assert entries["sbin/load-modalias"][0] & 0o111 and entries["sbin/hotplug"][0] & 0o111


def test_initramfs_carries_each_devices_modules_in_load_order():
    jbd2 = ("jbd2", "kernel/fs/jbd2/jbd2.ko", b"JBD2")
    modules = {"xen:vbd": [jbd2, ("ext4", "kernel/fs/ext4/ext4.ko", b"EXT4")], "xen:other": [jbd2]}
    image = gzip.decompress(debian.build_initramfs(b"BUSYBOX", "6.1.0-57-amd64", modules))
    entries = {name: (mode, data) for name, mode, data in cpio.parse(image)}
    assert entries["lib/modules/6.1.0-57-amd64/kernel/fs/ext4/ext4.ko"][1] == b"EXT4"
    assert stat.S_ISDIR(entries["lib/modules/6.1.0-57-amd64/kernel/fs"][0])
    assert entries[debian.MODULE_ALIASES][1] == (b"xen:vbd jbd2:kernel/fs/jbd2/jbd2.ko ext4:kernel/fs/ext4/ext4.ko\n"
                                                 b"xen:other jbd2:kernel/fs/jbd2/jbd2.ko\n")
    names = [name for name, _, _ in cpio.parse(image)]
    assert len(names) == len(set(names))                     # each directory and module once


def test_init_loads_by_modalias_and_switches_to_the_root_the_command_line_names():
    init = debian.INIT_SCRIPT
    assert "/sys/bus/xen/devices/*/modalias" in init and "uevent /sbin/hotplug" in init
    assert "root=*)" in init and "switch_root /newroot" in init
    # without root= it still ends in the shell, the marker first
    assert init.index(debian.MARKER) > init.index("switch_root") and init.rstrip().endswith("done")
    assert "insmod" in debian.LOAD_MODALIAS and "MODALIAS" in debian.HOTPLUG


@pytest.mark.slow
def test_real_debian_image_builds_and_is_cached(tmp_path):
    m1 = debian.build(tmp_path)
    assert m1["release"].endswith("-amd64")
    kernel = open(m1["kernel"], "rb").read()
    assert kernel[0x202:0x206] == b"HdrS"         # a bzImage
    mtime = (tmp_path / "initrd.img").stat().st_mtime_ns
    m2 = debian.build(tmp_path)
    assert m2 == m1 and (tmp_path / "initrd.img").stat().st_mtime_ns == mtime


def _image_in(directory, recipe) -> None:
    for name in ("vmlinuz", "initrd.img"):
        (directory / name).write_bytes(b"x")
    (directory / "manifest.json").write_text(json.dumps(
        {"release": "6.1.0-1-amd64", "kernel": "vmlinuz", "ramdisk": "initrd.img", "system_map": None,
         "cmdline": "console=hvc0", "marker": debian.MARKER, "recipe": recipe}))


def _no_build(out_dir=None):
    raise debian.ImageError("no apt here")


def test_find_or_build_takes_this_recipes_image_as_it_is(tmp_path, monkeypatch):
    _image_in(tmp_path, debian.RECIPE_VERSION)
    monkeypatch.setattr(debian, "build", _no_build)
    image = debian.find_or_build(tmp_path)
    assert image["kernel"] == str(tmp_path / "vmlinuz") and image["ramdisk"] == str(tmp_path / "initrd.img")


def test_find_or_build_keeps_an_older_image_when_no_new_one_can_be_built(tmp_path, monkeypatch):
    _image_in(tmp_path, debian.RECIPE_VERSION - 1)
    monkeypatch.setattr(debian, "build", _no_build)
    assert debian.find_or_build(str(tmp_path))["kernel"] == str(tmp_path / "vmlinuz")


def test_find_or_build_without_image_or_apt_is_one_image_error(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "build", _no_build)
    with pytest.raises(debian.ImageError, match=f"no Debian image in {tmp_path} .*no apt here"):
        debian.find_or_build(tmp_path)
