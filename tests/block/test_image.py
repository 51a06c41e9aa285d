"""Raw images: I/O straight through page views, and host failures as OSErrors (the guest's I/O errors)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from dom0.block.image import RawImage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_raw_reads_and_writes_scattered_views(tmp_path):
    path = tmp_path / "d.raw"
    path.write_bytes(bytes(1 << 20))
    image = RawImage(str(path), readonly=False)
    try:
        assert image.sectors == 2048 and image.can_discard
        pages = [memoryview(bytearray(b"a" * 512)), memoryview(bytearray(b"b" * 1024))]
        image.write_from(4096, pages)
        image.flush()
        back = [memoryview(bytearray(1000)), memoryview(bytearray(536))]
        image.read_into(4096, back)
        assert bytes(back[0]) + bytes(back[1]) == b"a" * 512 + b"b" * 1024
        image.discard(4096, 4096)
        image.read_into(4096, back)
        assert bytes(back[0]) == bytes(1000)
    finally:
        image.close()
    ro = RawImage(str(path), readonly=True)
    try:
        assert ro.readonly and not ro.can_discard
        with pytest.raises(OSError):
            ro.write_from(0, [memoryview(b"x" * 512)])
    finally:
        ro.close()


def test_a_shrunk_image_is_an_io_error(tmp_path):
    path = tmp_path / "d.raw"
    path.write_bytes(bytes(1 << 20))
    image = RawImage(str(path), readonly=False)
    try:
        os.truncate(path, 4096)
        with pytest.raises(OSError) as e:
            image.read_into(8192, [memoryview(bytearray(512))])
        assert e.value.errno == errno.EIO
    finally:
        image.close()


def test_a_full_host_disk_is_an_error_not_a_crash(tmp_path):
    """RLIMIT_FSIZE stands in for a full file system: the write fails with EFBIG, the next one works."""
    path = tmp_path / "d.raw"
    path.write_bytes(b"")
    os.truncate(path, 8 << 20)        # sparse, 8 MiB
    code = f"""
import resource
from dom0.block.image import RawImage
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
image = RawImage({str(path)!r}, readonly=False)
try:
    image.write_from(4 << 20, [memoryview(b"x" * 4096)])
    print("no error")
except OSError as e:
    print("error", e.errno)
image.write_from(0, [memoryview(b"y" * 4096)])
image.flush()
print("still serving")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split("\n")[:2] == [f"error {errno.EFBIG}", "still serving"], out.stdout + out.stderr
    with open(path, "rb") as f:
        assert f.read(4096) == b"y" * 4096
