"""Disk images behind a block backend: raw files directly, everything else through qemu-nbd.

Both kinds answer the same five calls, on byte offsets and lists of page
views (the granted pages of one request, so no data is copied for raw):
`read_into`, `write_from`, `flush`, `discard`, `close`.  Every failure is an
OSError carrying the host's errno; the backend answers it with an I/O
error to the guest and goes on serving.  The durability rule of the
backend rests on these: `write_from` returns once the data is in the image
file (the page cache, or the NBD server's acknowledgement) and `flush`
once it is on stable storage (fsync, NBD FLUSH).
"""
from __future__ import annotations

import ctypes
import errno
import os
import tempfile
import time
from typing import Callable, Protocol

from abi.io.blkif import BLKIF_SECTOR_SIZE
from dom0.block.nbd import QEMU_FORMATS, NbdConnection, QemuNbd

MAX_UNIX_PATH = 100
FALLOC_FL_KEEP_SIZE = 0x01          # linux/falloc.h
FALLOC_FL_PUNCH_HOLE = 0x02


class DiskImage(Protocol):
    size: int
    readonly: bool
    can_discard: bool
    description: str

    def read_into(self, offset: int, views: list[memoryview]) -> None: ...

    def write_from(self, offset: int, views: list[memoryview]) -> None: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def close(self) -> None: ...

    @property
    def sectors(self) -> int: ...


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_FALLOCATE = _fallocate()


class RawImage:
    """A raw image (sparse file or block device): preadv/pwritev straight into the granted pages."""

    def __init__(self, path: str, readonly: bool):
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        self.fd = os.open(path, flags)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.readonly = readonly
        self.can_discard = not readonly and _FALLOCATE is not None
        self.description = f"raw {path}"

    @property
    def sectors(self) -> int:
        return self.size // BLKIF_SECTOR_SIZE

    def read_into(self, offset: int, views: list[memoryview]) -> None:
        while views:
            n = os.preadv(self.fd, views, offset)
            if n == 0:
                raise OSError(errno.EIO, "read past the end of the image (did it shrink?)")
            offset += n
            views = _advance(views, n)

    def write_from(self, offset: int, views: list[memoryview]) -> None:
        while views:
            n = os.pwritev(self.fd, views, offset)
            offset += n
            views = _advance(views, n)

    def flush(self) -> None:
        os.fsync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        if _FALLOCATE is None:
            raise OSError(errno.EOPNOTSUPP, "no fallocate")
        if _FALLOCATE(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def close(self) -> None:
        os.close(self.fd)


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    """The views after the first `n` bytes (what a short preadv/pwritev left)."""
    rest = []
    for v in views:
        if n >= len(v):
            n -= len(v)
            continue
        rest.append(v[n:] if n else v)
        n = 0
    return rest


class NbdImage:
    """An image qemu-nbd serves (qcow2 with its backing chain, ...), started for this disk."""

    def __init__(self, path: str, fmt: str, readonly: bool, socket_path: str, log_path: str):
        self.server = QemuNbd(path, fmt, socket_path, readonly, log_path)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.conn = NbdConnection(socket_path)
                break
            except OSError:
                if self.server.process.poll() is not None:
                    self.server.stop()
                    raise OSError(errno.EIO, f"qemu-nbd could not serve {path}: "
                                  f"{self.server.last_log_line()}") from None
                if time.monotonic() > deadline:
                    self.server.stop()
                    raise
                time.sleep(0.02)
        self.size: int = self.conn.size
        self.readonly = readonly or self.conn.readonly
        self.can_discard = not self.readonly and self.conn.can_trim
        self.description = f"{fmt} {path} via qemu-nbd"

    @property
    def sectors(self) -> int:
        return self.size // BLKIF_SECTOR_SIZE

    def read_into(self, offset: int, views: list[memoryview]) -> None:
        data = self.conn.read(offset, sum(len(v) for v in views))
        at = 0
        for v in views:
            v[:] = data[at:at + len(v)]
            at += len(v)

    def write_from(self, offset: int, views: list[memoryview]) -> None:
        self.conn.write(offset, b"".join(views))

    def flush(self) -> None:
        self.conn.flush()

    def discard(self, offset: int, length: int) -> None:
        self.conn.trim(offset, length)

    def close(self) -> None:
        self.conn.close()
        self.server.stop()


def open_image(path: str, fmt: str, readonly: bool, work_dir: str, name: str) -> DiskImage:
    """The image of one disk; `work_dir` holds qemu-nbd's socket and log (named after `name`)."""
    if fmt == "raw":
        return RawImage(path, readonly)
    if fmt not in QEMU_FORMATS:
        raise OSError(errno.EINVAL, f"format {fmt!r} is not supported")
    if not os.path.exists(path):
        raise OSError(errno.ENOENT, f"{path}: no such image")
    os.makedirs(work_dir, exist_ok=True)
    socket_path = os.path.join(work_dir, f"{name}.nbd")
    if len(socket_path.encode()) > MAX_UNIX_PATH:       # sun_path is 108 bytes
        socket_path = os.path.join(tempfile.mkdtemp(prefix="pvhyp-nbd-"), f"{name}.nbd")
    return NbdImage(path, fmt, readonly, socket_path, os.path.join(work_dir, f"{name}.qemu-nbd.log"))
