"""Builder test kit: synthetic Xen ELF kernels and bzImages (built here, byte by byte), the XTF kernels."""
from __future__ import annotations

import struct

from abi import elfnote

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD, PT_NOTE = 1, 4


def note(ntype: int, desc: bytes, name: bytes = b"Xen\0") -> bytes:
    pad = lambda b: b + bytes(-len(b) % 4)
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def xtf_like_notes(hypercall_page: int | None = 0x101000, extra: bytes = b"") -> bytes:
    notes = (note(elfnote.XEN_ELFNOTE_GUEST_OS, b"XTF\0") + note(elfnote.XEN_ELFNOTE_LOADER, b"generic\0")
             + note(elfnote.XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0")
             + note(elfnote.XEN_ELFNOTE_FEATURES, b"!writable_page_tables|pae_pgdir_above_4gb\0"))
    if hypercall_page is not None:
        notes += note(elfnote.XEN_ELFNOTE_HYPERCALL_PAGE, struct.pack("<Q", hypercall_page))
    return notes + extra


def make_elf(segments=((0x100000, 0x100000, b"\x90" * 0x2000, 0x3000),), notes: bytes | None = None,
             entry: int = 0x100000, ei_class: int = 2, machine: int = 62) -> bytes:
    """An ELF64 executable: `segments` are (vaddr, paddr, file bytes, memsz), plus a PT_NOTE."""
    notes = xtf_like_notes() if notes is None else notes
    nph = len(segments) + (1 if notes else 0)
    data_at = EHDR.size + PHDR.size * nph
    body = bytearray()
    phdrs = []
    note_off = data_at
    body += notes + bytes(-len(notes) % 16)
    for vaddr, paddr, payload, memsz in segments:
        off = data_at + len(body)
        body += payload + bytes(-len(payload) % 16)
        phdrs.append(PHDR.pack(PT_LOAD, 7, off, vaddr, paddr, len(payload), memsz, 0x1000))
    if notes:
        phdrs.append(PHDR.pack(PT_NOTE, 4, note_off, 0, 0, len(notes), len(notes), 4))
    ident = b"\x7fELF" + bytes([ei_class, 1, 1]) + bytes(9)
    header = EHDR.pack(ident, 2, machine, 1, entry, EHDR.size, 0, 0, EHDR.size, PHDR.size, nph, 64, 0, 0)
    return header + b"".join(phdrs) + bytes(body)


def compress(payload: bytes, how: str) -> bytes:
    """`payload` compressed as a Linux bzImage payload would be."""
    import bz2
    import gzip
    import lzma
    if how == "gzip":
        return gzip.compress(payload)
    if how == "bzip2":
        return bz2.compress(payload)
    if how == "xz":
        return lzma.compress(payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if how == "lzma":
        return lzma.compress(payload, format=lzma.FORMAT_ALONE)
    if how == "zstd":
        import zstandard
        return zstandard.ZstdCompressor().compress(payload)
    if how == "lz4":
        import lz4.block
        out = struct.pack("<I", 0x184C2102)
        for at in range(0, len(payload), 8 << 20):
            block = lz4.block.compress(payload[at:at + (8 << 20)], store_size=False)
            out += struct.pack("<I", len(block)) + block
        return out + struct.pack("<I", len(payload))       # Linux's size_append
    raise ValueError(how)


def make_bzimage(payload: bytes, setup_sects: int = 4, version: int = 0x020F) -> bytes:
    """A bzImage: boot sector + setup (setup_sects sectors) with the header at 0x1f1, then payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    payload_offset = 0x100                       # relative to the protected-mode code
    struct.pack_into("<I", setup, 0x248, payload_offset)
    struct.pack_into("<I", setup, 0x24C, len(payload))
    return bytes(setup) + bytes(payload_offset) + payload + bytes(64)


def xtf_kernels() -> list:
    """The XTF PV64 kernels, sorted (empty when the directory is missing)."""
    from tests.conftest import xtf_dir
    directory = xtf_dir()
    return sorted(directory.glob("test-pv64-*")) if directory else []
