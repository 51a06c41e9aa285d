"""The newc cpio format the Linux kernel unpacks as an initramfs."""
from __future__ import annotations

import stat

TRAILER = "TRAILER!!!"


class CpioWriter:
    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._parts += [header, encoded, b"\0" * (-(110 + len(encoded)) % 4), data, b"\0" * (-len(data) % 4)]

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry(TRAILER, 0)
        blob = b"".join(self._parts)
        return blob + b"\0" * (-len(blob) % 512)


def parse(blob: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of each entry; the test's way to read an archive back."""
    out: list[tuple[str, int, bytes]] = []
    off = 0
    while True:
        if blob[off:off + 6] != b"070701":
            raise ValueError(f"bad cpio magic at {off}")
        fields = [int(blob[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = off + 110
        name = blob[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = blob[data_start:data_start + filesize]
        if name == TRAILER:
            return out
        out.append((name, mode, data))
        off = data_start + filesize + (-filesize % 4)
