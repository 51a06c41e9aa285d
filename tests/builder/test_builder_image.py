"""Kernel parsing: Xen ELF notes, bzImage unwrapping, and one-line BuildErrors for bad images."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abi import elfnote
from dom0.builder import BuildError, parse_kernel
from dom0.builder.image import LZ4_LEGACY_MAGIC
from tests.builder.builder_kit import compress, make_bzimage, make_elf, note, xtf_kernels, xtf_like_notes

COMPRESSIONS = ["gzip", "bzip2", "xz", "lzma", "zstd", "lz4"]


def build_error(data: bytes) -> str:
    with pytest.raises(BuildError) as excinfo:
        parse_kernel(data)
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("path", xtf_kernels(), ids=lambda p: p.name)
def test_xtf_notes(path):
    image = parse_kernel(path.read_bytes())
    p = image.params
    assert (image.container, image.compression, image.guest_type) == ("ELF", None, "xen-3.0-x86_64")
    assert p.note_source == "PT_NOTE"
    assert (p.guest_os, p.loader, p.xen_ver) == ("XTF", "generic", "xen-3.0")
    assert p.virt_base == 0 and p.elf_paddr_offset == 0          # no VIRT_BASE/ENTRY notes
    assert p.virt_entry == image.elf.entry == p.virt_kstart == 0x100000
    expected_hypercall = {"test-pv64-xsa-296": 0x107000, "test-pv64-xsa-7": 0x108000}.get(path.name, 0x106000)
    assert p.virt_hypercall == expected_hypercall
    assert p.f_required & 1                                     # !writable_page_tables
    assert p.f_supported & (1 << 4)                            # pae_pgdir_above_4gb


def test_debian_style_notes():
    """VIRT_BASE/ENTRY/INIT_P2M/MOD_START_PFN and a segment whose vaddr is 0 (loaded by paddr)."""
    base = 0xFFFFFFFF80000000
    notes = (note(elfnote.XEN_ELFNOTE_GUEST_OS, b"linux\0") + note(elfnote.XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0")
             + note(elfnote.XEN_ELFNOTE_VIRT_BASE, struct.pack("<Q", base))
             + note(elfnote.XEN_ELFNOTE_PADDR_OFFSET, struct.pack("<Q", 0))
             + note(elfnote.XEN_ELFNOTE_ENTRY, struct.pack("<Q", base + 0x1001000))
             + note(elfnote.XEN_ELFNOTE_INIT_P2M, struct.pack("<Q", 0x8000000000))
             + note(elfnote.XEN_ELFNOTE_MOD_START_PFN, struct.pack("<I", 1))
             + note(elfnote.XEN_ELFNOTE_SUPPORTED_FEATURES, struct.pack("<I", 0x8801))
             + note(elfnote.XEN_ELFNOTE_L1_MFN_VALID, struct.pack("<QQ", 1, 1))
             + note(elfnote.XEN_ELFNOTE_FEATURES, b"!writable_page_tables|pae_pgdir_above_4gb\0"))
    elf = make_elf(segments=((base + 0x1000000, 0x1000000, b"\xf4" * 0x3000, 0x4000),
                             (0, 0x1004000, b"\x00" * 0x100, 0x1000)), notes=notes, entry=base + 0x1001000)
    p = parse_kernel(elf).params
    assert p.virt_kstart == base + 0x1000000 and p.virt_kend == base + 0x1005000
    assert p.virt_entry == base + 0x1001000 and p.p2m_base == 0x8000000000
    assert p.unmapped_initrd and p.virt_hypercall is None
    assert p.f_supported & 0x8801 == 0x8801


def test_legacy_xen_guest_section():
    """No notes: the `__xen_guest` string (HYPERCALL_PAGE is a page number; paddr offset = virt_base)."""
    shstrtab = b"\0__xen_guest\0.shstrtab\0"
    guest = b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0x80000000,HYPERCALL_PAGE=0x2,LOADER=generic\0"
    elf = bytearray(make_elf(segments=((0x80100000, 0x80100000, b"\x90" * 0x3000, 0x3000),),
                             notes=b"", entry=0x80100000))
    guest_at = len(elf)
    elf += guest
    strtab_at = len(elf)
    elf += shstrtab
    elf += bytes(-len(elf) % 8)
    shoff = len(elf)
    shdr = struct.Struct("<IIQQQQIIQQ")
    elf += shdr.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    elf += shdr.pack(1, 1, 0, 0, guest_at, len(guest), 0, 0, 1, 0)
    elf += shdr.pack(13, 3, 0, 0, strtab_at, len(shstrtab), 0, 0, 1, 0)
    struct.pack_into("<QHHH", elf, 0x28, shoff, 0, 0, 0)
    struct.pack_into("<HHH", elf, 0x3A, 64, 3, 2)
    p = parse_kernel(bytes(elf)).params
    assert p.note_source == "__xen_guest"
    assert p.virt_base == 0x80000000 and p.elf_paddr_offset == 0x80000000
    assert p.virt_kstart == 0x80100000 + 0x80000000 - 0x80000000
    assert p.virt_hypercall == 0x80000000 + 0x2000


@pytest.mark.parametrize("how", COMPRESSIONS)
def test_bzimage_each_compression(how):
    elf = make_elf()
    image = parse_kernel(make_bzimage(compress(elf, how)))
    assert (image.container, image.compression) == ("bzImage", how)
    assert image.elf.data == elf


@pytest.mark.parametrize("how", COMPRESSIONS)
def test_corrupt_compressed_payload(how):
    payload = bytearray(compress(make_elf(), how))
    header = {"gzip": 10, "bzip2": 4, "xz": 12, "lzma": 13, "zstd": 6, "lz4": 8}[how]
    for i in range(header, min(len(payload) - 8, header + 40)):
        payload[i] ^= 0xA5
    assert build_error(make_bzimage(bytes(payload)))


@pytest.mark.parametrize("how", COMPRESSIONS)
def test_truncated_compressed_payload(how):
    payload = compress(make_elf(), how)
    assert build_error(make_bzimage(payload[:len(payload) // 2]))


def test_gzipped_plain_elf():
    image = parse_kernel(compress(make_elf(), "gzip"))
    assert (image.container, image.compression) == ("ELF", "gzip")


def test_lz4_legacy_multiple_chunks_and_restarted_magic():
    import lz4.block
    elf = make_elf(segments=((0x100000, 0x100000, bytes(range(256)) * 64, 0x4000),))
    half = len(elf) // 2
    blocks = [lz4.block.compress(part, store_size=False) for part in (elf[:half], elf[half:])]
    payload = struct.pack("<I", LZ4_LEGACY_MAGIC)
    payload += struct.pack("<I", len(blocks[0])) + blocks[0]
    payload += struct.pack("<I", LZ4_LEGACY_MAGIC)
    payload += struct.pack("<I", len(blocks[1])) + blocks[1] + struct.pack("<I", len(elf))
    assert parse_kernel(make_bzimage(payload)).elf.data == elf


def unterminated_string_note_elf() -> bytes:
    """A string note with no NUL anywhere after it: the notes end flush with the (NUL-free) code."""
    for size in (4, 8, 12, 16):
        notes = xtf_like_notes(extra=note(elfnote.XEN_ELFNOTE_GUEST_VERSION, b"v" * size))
        if len(notes) % 16 == 0:
            return make_elf(notes=notes)
    raise AssertionError("no alignment found")


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"\x7fELF", "truncated"),
    (b"MZ" + bytes(100), "not an ELF"),
    (make_elf(ei_class=1), "ELFCLASS64"),
    (make_elf(machine=3), "x86-64"),
    (make_elf(notes=b""), "no Xen ELF notes"),
    (make_elf(segments=()), "no loadable"),
    (make_elf(segments=((0x100000, 0x100000, b"\x90" * 0x2000, 0x2000),
                        (0x101000, 0x101000, b"\x90" * 0x10, 0x1000))), "overlap"),
    (make_elf(segments=((0x100000, 0x100000, b"\x90" * 0x2000, 0x1000),)), "file size"),
    (make_elf(entry=0x900000), "out of bounds"),
    (make_elf(notes=xtf_like_notes(extra=note(elfnote.XEN_ELFNOTE_ENTRY, b"\x01\x02\x03"))), "3-byte"),
    (unterminated_string_note_elf(), "NUL-terminated"),
    (make_elf(notes=xtf_like_notes(extra=note(elfnote.XEN_ELFNOTE_FEATURES, b"!flying_pigs\0"))),
     "unknown feature"),
    (make_elf(notes=xtf_like_notes(extra=note(elfnote.XEN_ELFNOTE_FEATURES, b"!dom0\0"))), "dom0"),
    (make_elf(notes=note(elfnote.XEN_ELFNOTE_LOADER, b"generic\0")), "Xen 3.0"),
    (make_elf(notes=note(elfnote.XEN_ELFNOTE_LOADER, b"bsd\0")
              + note(elfnote.XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0")), "generic loader"),
    (make_bzimage(b""), "empty"),
    (make_bzimage(b"\x00" * 64), "unknown compression"),
    (make_bzimage(compress(make_elf(), "gzip"), version=0x0206), "too old"),
])
def test_malformed_images(data, words):
    assert words.lower() in build_error(data).lower()


def test_truncated_elf_at_every_length():
    elf = make_elf()
    for length in range(1, len(elf), 7):
        try:
            parse_kernel(elf[:length])
        except BuildError as e:
            assert "\n" not in str(e)


def test_bzimage_payload_outside_file():
    image = bytearray(make_bzimage(compress(make_elf(), "gzip")))
    struct.pack_into("<I", image, 0x24C, 1 << 30)
    assert "past the end" in build_error(bytes(image))
    struct.pack_into("<I", image, 0x248, 1 << 31)
    assert "past the end" in build_error(bytes(image))


def test_note_running_past_its_area():
    elf = bytearray(make_elf())
    # The first note's descsz (offset 4 in the note area) made huge.
    note_at = struct.unpack_from("<Q", elf, 64 + 56 * 1 + 8)[0]
    struct.pack_into("<I", elf, note_at + 4, 0x7FFFFFF0)
    assert "runs past" in build_error(bytes(elf))


_SEED = make_elf()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 0x1FF), st.integers(0, 255)), min_size=1, max_size=12))
def test_fuzzed_headers_give_build_error_or_image(edits):
    data = bytearray(_SEED)
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    try:
        parse_kernel(bytes(data))
    except BuildError as e:
        assert "\n" not in str(e)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=0x300))
def test_fuzzed_bzimage_setup_header(blob):
    data = bytearray(make_bzimage(compress(make_elf(), "gzip")))
    data[0x1F1:0x1F1 + len(blob)] = blob[:0x300]
    data[0x202:0x206] = b"HdrS"
    try:
        parse_kernel(bytes(data))
    except BuildError as e:
        assert "\n" not in str(e)


def test_string_note_ends_in_the_alignment_padding():
    """Linux's FEATURES note is an unterminated .ascii: Xen reads the string up to the padding's NUL."""
    features = b"!writable_page_tables|pae_pgdir_above_4gb"          # 41 bytes, padded to 44
    notes = (note(elfnote.XEN_ELFNOTE_GUEST_OS, b"linux\0") + note(elfnote.XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0")
             + note(elfnote.XEN_ELFNOTE_FEATURES, features))
    params = parse_kernel(make_elf(notes=notes)).params
    assert params.f_required == 1 and ("FEATURES", features.decode()) in params.notes
