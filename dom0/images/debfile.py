"""Reading Debian packages without dpkg: the ar container and its data tarball."""
from __future__ import annotations

import io
import lzma
import tarfile


class DebError(Exception):
    pass


def ar_members(blob: bytes) -> dict[str, bytes]:
    """Members of an ar archive (the .deb container): name -> bytes."""
    if not blob.startswith(b"!<arch>\n"):
        raise DebError("not a Debian package (no ar magic)")
    members, off = {}, 8
    while off + 60 <= len(blob):
        header = blob[off:off + 60]
        if header[58:60] != b"`\n":
            raise DebError(f"corrupt ar header at byte {off}")
        name = header[0:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise DebError(f"corrupt ar member size at byte {off}") from None
        start = off + 60
        if start + size > len(blob):
            raise DebError(f"ar member {name!r} truncated")
        members[name] = blob[start:start + size]
        off = start + size + (size & 1)
    return members


def data_tar(blob: bytes) -> tarfile.TarFile:
    """The package's data.tar.* as an open TarFile."""
    members = ar_members(blob)
    for name, payload in members.items():
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".zst"):
            try:
                import zstandard
            except ImportError:
                raise DebError("data.tar.zst needs the zstandard package") from None
            payload = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
            return tarfile.open(fileobj=io.BytesIO(payload), mode="r:")
        if name.endswith(".xz"):
            return tarfile.open(fileobj=io.BytesIO(lzma.decompress(payload)), mode="r:")
        return tarfile.open(fileobj=io.BytesIO(payload), mode="r:*")
    raise DebError("no data.tar member")


def each_file(blob: bytes, wanted):
    """(path, contents) of each regular file of the package whose path satisfies `wanted(path)`,
    streamed: a kernel package's modules are read one at a time, never all held at once."""
    with data_tar(blob) as tar:
        for info in tar:
            path = info.name.lstrip(".")
            if info.isfile() and wanted(path):
                member = tar.extractfile(info)
                assert member is not None           # extractfile() is None only for non-regular files
                yield path, member.read()


def extract(blob: bytes, wanted) -> dict[str, bytes]:
    """Regular files of the package whose path satisfies `wanted(path)`: path -> contents."""
    return dict(each_file(blob, wanted))
