"""From a kernel file to a KernelImage: unwrap, decompress, parse (the loader probes).

libxenguest tries its loaders in turn: a bzImage (setup header at 0x1f1 with
"HdrS", boot protocol >= 2.08) has its payload cut out of the file using
payload_offset/payload_length and decompressed by its magic; a plain file
that is gzip-compressed is gunzipped; the result must be an ELF Xen kernel.
Decompression is bounded (MAX_KERNEL_SIZE) so a hostile image cannot
exhaust dom0's memory, and so is reading the files (read_image_file): a kernel
or ramdisk must be a regular file of at most MAX_KERNEL_FILE /
MAX_RAMDISK_SIZE bytes (`kernel = "/dev/zero"` is refused, not read forever).
"""
from __future__ import annotations

import bz2
import lzma
import os
import stat
import struct
import zlib
from dataclasses import dataclass

from abi.features import XENFEAT_auto_translated_physmap, XENFEAT_dom0
from dom0.builder.elf import ElfFile, XenParams, xen_parse
from dom0.builder.errors import BuildError

MAX_KERNEL_SIZE = 512 << 20        # libxc's default cap on a decompressed kernel is of this order
MAX_KERNEL_FILE = MAX_KERNEL_SIZE  # the file is the compressed form: never larger than what it holds
GUEST_TYPE_X86_64 = "xen-3.0-x86_64"

_SETUP_SECTS = 0x1F1
_HDR_MAGIC = 0x202
_HDR_VERSION = 0x206
_PAYLOAD_OFFSET = 0x248
_PAYLOAD_LENGTH = 0x24C
SETUP_HEADER_END = 0x250           # the fields above fit in this many bytes (protocol 2.08+)
BOOT_PROTOCOL_2_08 = 0x0208

LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_CHUNK_MAX = 8 << 20

# (name, magic) in the order xc_dom_probe_bzimage_kernel tests them.
COMPRESSIONS = (
    ("gzip", b"\x1f\x8b"),
    ("bzip2", b"BZh"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lzma", b"\x5d\x00"),
    ("lzo", b"\x89LZO\x00"),
    ("lz4", b"\x02\x21"),
)


@dataclass
class KernelImage:
    """A parsed kernel: the ELF, Xen's view of its notes, and how it was wrapped."""
    elf: ElfFile
    params: XenParams
    container: str               # "ELF" or "bzImage"
    compression: str | None      # how the ELF was compressed, if it was
    guest_type: str = GUEST_TYPE_X86_64


def _too_big(name: str) -> BuildError:
    return BuildError(f"{name} payload decompresses to more than {MAX_KERNEL_SIZE >> 20} MiB")


def _stream(name: str, decompressor, data: bytes) -> bytes:
    """Run a zlib/bz2/lzma-style decompressor to the end of its stream, bounded."""
    try:
        out = decompressor.decompress(data, MAX_KERNEL_SIZE + 1)
    except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as e:
        raise BuildError(f"corrupt {name} payload: {e}") from None
    if len(out) > MAX_KERNEL_SIZE:
        raise _too_big(name)
    if not decompressor.eof:
        raise BuildError(f"corrupt {name} payload: truncated stream")
    return out


def _gunzip(data: bytes) -> bytes:
    return _stream("gzip", zlib.decompressobj(16 + zlib.MAX_WBITS), data)


def _bunzip2(data: bytes) -> bytes:
    return _stream("bzip2", bz2.BZ2Decompressor(), data)


def _unxz(data: bytes) -> bytes:
    return _stream("xz", lzma.LZMADecompressor(lzma.FORMAT_XZ), data)


def _unlzma(data: bytes) -> bytes:
    return _stream("lzma", lzma.LZMADecompressor(lzma.FORMAT_ALONE), data)


def _unzstd(data: bytes) -> bytes:
    import zstandard
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
        out = reader.read(MAX_KERNEL_SIZE + 1)
    except zstandard.ZstdError as e:
        raise BuildError(f"corrupt zstd payload: {e}") from None
    if len(out) > MAX_KERNEL_SIZE:
        raise _too_big("zstd")
    if not out:
        raise BuildError("corrupt zstd payload: no data")
    return out


def _unlz4_legacy(data: bytes) -> bytes:
    """Linux's legacy LZ4 framing: magic, then (le32 size, block) chunks; the
    bzImage appends the decompressed size as a last le32 (xc_try_lz4_decode)."""
    import lz4.block
    if len(data) < 8:
        raise BuildError("corrupt lz4 payload: input too small")
    out_len = struct.unpack_from("<I", data, len(data) - 4)[0]
    if out_len > MAX_KERNEL_SIZE:
        raise _too_big("lz4")
    end = len(data) - 4
    if struct.unpack_from("<I", data, 0)[0] != LZ4_LEGACY_MAGIC:
        raise BuildError("corrupt lz4 payload: invalid header")
    at = 4
    out = bytearray()
    while True:
        if end - at < 4:
            raise BuildError("corrupt lz4 payload: missing data")
        chunk = struct.unpack_from("<I", data, at)[0]
        at += 4
        if chunk == LZ4_LEGACY_MAGIC:
            continue
        if chunk > end - at:
            raise BuildError("corrupt lz4 payload: insufficient input data")
        room = min(out_len - len(out), LZ4_LEGACY_CHUNK_MAX)
        try:
            out += lz4.block.decompress(data[at:at + chunk], uncompressed_size=max(room, 1))
        except lz4.block.LZ4BlockError:
            raise BuildError("corrupt lz4 payload: decoding failed") from None
        at += chunk
        if at == end:
            return bytes(out)


_DECOMPRESSORS = {
    "gzip": _gunzip, "bzip2": _bunzip2, "xz": _unxz, "zstd": _unzstd,
    "lzma": _unlzma, "lz4": _unlz4_legacy,
}


def detect_compression(data: bytes) -> str | None:
    for name, magic in COMPRESSIONS:
        if data.startswith(magic):
            return name
    return None


def decompress(data: bytes, name: str) -> bytes:
    if name not in _DECOMPRESSORS:
        raise BuildError(f"{name} compressed kernels are not supported")
    return _DECOMPRESSORS[name](data)


def is_bzimage(data: bytes) -> bool:
    return len(data) >= SETUP_HEADER_END and data[_HDR_MAGIC:_HDR_MAGIC + 4] == b"HdrS"


def bzimage_payload(data: bytes) -> bytes:
    """xc_dom_probe_bzimage_kernel: the compressed payload a bzImage carries."""
    version = struct.unpack_from("<H", data, _HDR_VERSION)[0]
    if version < BOOT_PROTOCOL_2_08:
        raise BuildError(f"bzImage boot protocol too old ({version:04x}, need 0208)")
    offset = (data[_SETUP_SECTS] + 1) * 512 + struct.unpack_from("<I", data, _PAYLOAD_OFFSET)[0]
    length = struct.unpack_from("<I", data, _PAYLOAD_LENGTH)[0]
    if offset >= len(data):
        raise BuildError(f"bzImage payload offset {offset:#x} lies past the end of the file")
    if offset + length > len(data):
        raise BuildError(f"bzImage payload ({offset:#x}+{length:#x}) runs past the end of the file")
    if length == 0:
        raise BuildError("bzImage payload is empty")
    return data[offset:offset + length]


def unwrap(data: bytes) -> tuple[bytes, str, str | None]:
    """(ELF bytes, container, compression) of a kernel file."""
    if not data:
        raise BuildError("empty kernel image")
    if is_bzimage(data):
        payload = bzimage_payload(data)
        compression = detect_compression(payload)
        if compression is None:
            if payload.startswith(b"\x7fELF"):
                return payload, "bzImage", None
            raise BuildError("bzImage payload has an unknown compression format")
        return decompress(payload, compression), "bzImage", compression
    if data.startswith(b"\x1f\x8b"):
        return _gunzip(data), "ELF", "gzip"                # xc_dom_try_gunzip on any kernel
    return data, "ELF", None


def parse_kernel(data: bytes) -> KernelImage:
    """Everything libxc's probe + parser steps check, without touching any domain."""
    elf_bytes, container, compression = unwrap(bytes(data))
    elf = ElfFile(elf_bytes)
    params = xen_parse(elf)
    if params.f_required & (1 << XENFEAT_dom0):
        raise BuildError("kernel requires dom0 operation (FEATURES !dom0): it cannot run as a domU")
    if params.f_required & (1 << XENFEAT_auto_translated_physmap):
        raise BuildError("PV auto-translated guests are not supported (FEATURES !auto_translated_physmap)")
    return KernelImage(elf=elf, params=params, container=container, compression=compression)


# --- modules (the ramdisk) -----------------------------------------------------------------

XC_DOM_DECOMPRESS_MAX = 1 << 30
MAX_RAMDISK_SIZE = XC_DOM_DECOMPRESS_MAX    # libxc's cap on a module, as read


# --- reading the files ----------------------------------------------------------------------

def _open_image(path: str, setting: str, limit: int) -> tuple[int, int]:
    """(fd, size) of a regular file of at most `limit` bytes; otherwise a BuildError that starts with
    `setting` (the caller's name for it: "kernel", or "FILE:LINE: kernel").

    O_NONBLOCK: a FIFO named as a kernel must not hang the open (it is refused just after)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BuildError(f"{setting}: {path}: cannot read: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BuildError(f"{setting}: {path} is not a regular file")
    if st.st_size > limit:
        os.close(fd)
        raise BuildError(f"{setting}: {path} is larger than {limit >> 20} MiB ({st.st_size} bytes)")
    return fd, st.st_size


def check_image_file(path: str, setting: str, limit: int) -> int:
    """The size of the image file at `path`, after read_image_file's checks (nothing read)."""
    fd, size = _open_image(path, setting, limit)
    os.close(fd)
    return size


def read_image_file(path: str, setting: str, limit: int) -> bytes:
    """A kernel or ramdisk file, read with a bound (it may grow while we read: never past `limit`)."""
    fd, _ = _open_image(path, setting, limit)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise BuildError(f"{setting}: {path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise BuildError(f"{setting}: {path} is larger than {limit >> 20} MiB")
    return data


def module_size(blob: bytes) -> tuple[int, int]:
    """xc_dom_build_module's sizing: (gunzipped size + 16 or 0, segment length).

    A gzip module is handed to the guest decompressed when its trailer's size
    looks sane; the segment is sized for whichever is larger.
    """
    unziplen = 0
    if len(blob) >= 6 and blob.startswith(b"\x1f\x8b"):
        claimed = struct.unpack_from("<I", blob, len(blob) - 4)[0]
        if claimed <= XC_DOM_DECOMPRESS_MAX:
            unziplen = claimed + 16
    return unziplen, max(unziplen, len(blob))


def module_contents(blob: bytes, unziplen: int) -> bytes:
    """What goes into the module segment: the gunzipped data, or the blob itself when
    it is not gzip or does not inflate cleanly (libxc's fallback)."""
    if unziplen:
        inflater = zlib.decompressobj(zlib.MAX_WBITS + 32)
        try:
            data = inflater.decompress(blob, unziplen)
            if inflater.eof:
                return data
        except zlib.error:
            pass
    return blob
