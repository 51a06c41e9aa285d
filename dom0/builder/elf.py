"""ELF64 kernels and their Xen ELF notes (libelf's elf_parse_binary + elf_xen_parse).

Every offset and size in the file is hostile: each is checked against the
file before it is used, and anything malformed is a BuildError naming it.
Notes are read as Xen reads them: from PT_NOTE segments, else SHT_NOTE
sections, else the legacy `__xen_guest` section string.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from abi import elfnote, features
from dom0.builder.errors import BuildError

ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
SHT_NOTE = 7
PF_X, PF_W, PF_R = 1, 2, 4

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_NHDR = struct.Struct("<III")
ELF_MAX_TOTAL_NOTE_COUNT = 1024    # as libelf: a bound on work done for a hostile note table

# elf_xen_feature_names: the FEATURES string's vocabulary (XENFEAT_* bit numbers).
FEATURE_NAMES = {
    name: getattr(features, "XENFEAT_" + name)
    for name in ("writable_page_tables", "writable_descriptor_tables", "auto_translated_physmap",
                 "supervisor_mode_kernel", "pae_pgdir_above_4gb", "hvm_callback_vector", "dom0")
}

# Which notes carry strings (the rest are numbers), as libelf's note_desc table.
_STRING_NOTES = {
    elfnote.XEN_ELFNOTE_XEN_VERSION, elfnote.XEN_ELFNOTE_GUEST_OS,
    elfnote.XEN_ELFNOTE_GUEST_VERSION, elfnote.XEN_ELFNOTE_LOADER,
    elfnote.XEN_ELFNOTE_PAE_MODE, elfnote.XEN_ELFNOTE_FEATURES,
    elfnote.XEN_ELFNOTE_BSD_SYMTAB,
}
NOTE_NAMES = {
    value: name[len("XEN_ELFNOTE_"):] for name, value in vars(elfnote).items()
    if name.startswith("XEN_ELFNOTE_") and isinstance(value, int)
    and name not in ("XEN_ELFNOTE_MAX",) and value <= elfnote.XEN_ELFNOTE_MAX
}


@dataclass
class Segment:
    """One PT_LOAD program header."""
    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


@dataclass
class XenParams:
    """Xen's `struct elf_dom_parms`: what the notes say about the guest (None = unset)."""
    virt_base: int | None = None
    elf_paddr_offset: int | None = None
    virt_entry: int | None = None
    virt_hypercall: int | None = None
    virt_hv_start_low: int | None = None
    p2m_base: int | None = None
    phys_entry: int | None = None
    loader: str = ""
    guest_os: str = ""
    guest_ver: str = ""
    xen_ver: str = ""
    pae: str = ""
    bsd_symtab: bool = False
    unmapped_initrd: bool = False
    suspend_cancel: bool = False
    l1_mfn_valid: bool = False
    f_supported: int = 0
    f_required: int = 0
    note_source: str = ""                  # "PT_NOTE", "SHT_NOTE" or "__xen_guest"
    notes: list[tuple[str, object]] = field(default_factory=list)   # in file order, for display
    # elf_xen_addr_calc_check's results
    virt_kstart: int = 0
    virt_kend: int = 0


def _check(cond: object, message: str) -> None:
    """BuildError(message) unless `cond` is true (any value, by its truth)."""
    if not cond:
        raise BuildError(message)


class ElfFile:
    """A validated little-endian ELF64 x86-64 executable."""

    def __init__(self, data: bytes):
        self.data = data = bytes(data)
        _check(len(data) > 0, "empty kernel image")
        _check(data[:4] == b"\x7fELF", "not an ELF file (bad magic)")
        _check(len(data) >= _EHDR.size, f"truncated ELF header ({len(data)} bytes)")
        (ident, _type, machine, _version, entry, phoff, shoff, _flags, _ehsize,
         phentsize, phnum, shentsize, shnum, shstrndx) = _EHDR.unpack_from(data)
        _check(ident[4] == ELFCLASS64,
               f"ELF class {ident[4]} is not ELFCLASS64 (only 64-bit PV guests are built)")
        _check(ident[5] == ELFDATA2LSB, "ELF data encoding is not little-endian")
        _check(machine == EM_X86_64, f"ELF machine {machine} is not x86-64 (EM_X86_64 = 62)")
        self.machine = machine
        self.entry = entry
        self.segments: list[Segment] = []
        self.note_ranges: list[tuple[int, int]] = []      # (offset, size) of PT_NOTE segments
        self._parse_program_headers(phoff, phentsize, phnum)
        self.sections = self._parse_section_headers(shoff, shentsize, shnum, shstrndx)
        _check(self.segments, "ELF has no loadable (PT_LOAD) segments")
        self.pstart = min(s.paddr for s in self.segments)
        self.pend = max(s.paddr + s.memsz for s in self.segments)
        self._check_overlaps()

    def _table(self, offset: int, entsize: int, count: int, expected: int, what: str) -> Iterator[int]:
        if count == 0:
            return
        _check(entsize == expected, f"ELF {what} entry size {entsize}, expected {expected}")
        _check(offset + entsize * count <= len(self.data),
               f"ELF {what} table ({count} entries at {offset:#x}) runs past the end of the file")
        for i in range(count):
            yield offset + i * entsize

    def _parse_program_headers(self, phoff: int, phentsize: int, phnum: int) -> None:
        for at in self._table(phoff, phentsize, phnum, _PHDR.size, "program header"):
            p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _align = \
                _PHDR.unpack_from(self.data, at)
            if p_type == PT_NOTE:
                # Some binutils leave p_offset 0 in note segments: Xen skips those.
                if p_offset:
                    _check(p_offset + p_filesz <= len(self.data),
                           f"PT_NOTE segment at {p_offset:#x} runs past the end of the file")
                    self.note_ranges.append((p_offset, p_filesz))
                continue
            if p_type != PT_LOAD or not p_flags & (PF_R | PF_W | PF_X):
                continue
            _check(p_filesz <= p_memsz,
                   f"PT_LOAD segment at paddr {p_paddr:#x}: file size {p_filesz:#x} > memory size {p_memsz:#x}")
            _check(p_offset + p_filesz <= len(self.data),
                   f"PT_LOAD segment at paddr {p_paddr:#x} runs past the end of the file "
                   f"({p_offset:#x}+{p_filesz:#x} > {len(self.data):#x})")
            _check(p_paddr + p_memsz < 1 << 64, f"PT_LOAD segment at paddr {p_paddr:#x} wraps around")
            self.segments.append(Segment(p_paddr, p_vaddr, p_offset, p_filesz, p_memsz, p_flags))

    def _parse_section_headers(self, shoff, shentsize, shnum, shstrndx) -> list[tuple[str, int, int, int]]:
        """(name, sh_type, offset, size) of each section; a broken table is simply ignored
        where Xen would only use it as a fallback, but never read out of bounds."""
        if shoff == 0 or shnum == 0:
            return []
        headers = []
        for at in self._table(shoff, shentsize, shnum, _SHDR.size, "section header"):
            sh_name, sh_type, _flags, _addr, sh_offset, sh_size, *_ = _SHDR.unpack_from(self.data, at)
            headers.append((sh_name, sh_type, sh_offset, sh_size))
        strtab = headers[shstrndx] if shstrndx < len(headers) else None
        sections = []
        for sh_name, sh_type, sh_offset, sh_size in headers:
            name = ""
            if strtab is not None:
                name = self.c_string(strtab[2] + sh_name, strtab[2] + strtab[3]) or ""
            sections.append((name, sh_type, sh_offset, sh_size))
        return sections

    def _check_overlaps(self) -> None:
        spans = sorted((s.paddr, s.paddr + s.memsz) for s in self.segments if s.memsz)
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            _check(s2 >= e1, f"PT_LOAD segments overlap: [{s1:#x}, {e1:#x}) and [{s2:#x}, {e2:#x})")

    def c_string(self, start: int, end: int) -> str | None:
        """The NUL-terminated string at `start`, which must end before `end` (and the file)."""
        end = min(end, len(self.data))
        if not 0 <= start < end:
            return None
        nul = self.data.find(b"\0", start, end)
        if nul < 0:
            return None
        return self.data[start:nul].decode("latin-1")

    def notes(self, offset: int, size: int) -> Iterator[tuple[str, int, bytes, int]]:
        """(name, type, desc bytes, desc offset) of each note in [offset, offset+size)."""
        end = min(offset + size, len(self.data))
        at = offset
        while at + _NHDR.size <= end:
            namesz, descsz, ntype = _NHDR.unpack_from(self.data, at)
            name_at = at + _NHDR.size
            desc_at = name_at + ((namesz + 3) & ~3)
            next_at = desc_at + ((descsz + 3) & ~3)
            _check(desc_at + descsz <= end,
                   f"ELF note at {at:#x} (type {ntype}) runs past the end of its note area")
            name = self.data[name_at:name_at + namesz].split(b"\0", 1)[0].decode("latin-1")
            yield name, ntype, self.data[desc_at:desc_at + descsz], desc_at
            at = next_at

    def load_into(self, dest, dest_paddr: int) -> None:
        """elf_load_binary: each segment at its physical address, relative to `dest_paddr`."""
        for s in self.segments:
            at = s.paddr - dest_paddr
            dest[at:at + s.filesz] = self.data[s.offset:s.offset + s.filesz]
            dest[at + s.filesz:at + s.memsz] = bytes(s.memsz - s.filesz)


def parse_features(text: str, params: XenParams) -> None:
    """elf_xen_parse_features: `name|!name|...`; `!` marks a feature the kernel requires."""
    for item in text.split("|"):
        required = item.startswith("!")
        name = item[1:] if required else item
        bit = FEATURE_NAMES.get(name[:62])
        if bit is None:
            _check(not required, f"kernel requires unknown feature {name!r}")
            continue
        params.f_supported |= 1 << bit
        if required:
            params.f_required |= 1 << bit


def _numeric(name: str, desc: bytes) -> int:
    _check(len(desc) in (1, 2, 4, 8),
           f"ELF note {name} has a {len(desc)}-byte value (a number needs 1, 2, 4 or 8 bytes)")
    return int.from_bytes(desc, "little")


def _apply_note(elf: "ElfFile", params: XenParams, ntype: int, desc: bytes, desc_at: int) -> None:
    """elf_xen_parse_note: one "Xen" note into the parameters."""
    name = NOTE_NAMES.get(ntype)
    if name is None:
        return                                  # unknown note types are ignored, as Xen does
    n = elfnote
    text = ""                                   # a string note's value
    number = 0                                  # a numeric note's value
    if ntype in _STRING_NOTES:
        # Xen's elf_strval reads up to the first NUL in the image, not the descriptor:
        # Linux's FEATURES note is an unterminated .ascii that ends in the alignment padding.
        string = elf.c_string(desc_at, len(elf.data))
        if string is None:
            raise BuildError(f"ELF note {name} is not a NUL-terminated string")
        text = string
        value: str | int = text
    elif ntype == n.XEN_ELFNOTE_L1_MFN_VALID:
        # (mask, value) pairs of any width; libelf does not interpret it either.
        value = desc.hex()
    elif ntype == n.XEN_ELFNOTE_SUPPORTED_FEATURES:
        _check(len(desc) % 4 == 0 and desc, f"ELF note {name} is not an array of 32-bit words")
        value = number = int.from_bytes(desc[:4], "little")       # XENFEAT_NR_SUBMAPS = 1
    else:
        value = number = _numeric(name, desc)
    params.notes.append((name, value))
    if ntype == n.XEN_ELFNOTE_LOADER:
        params.loader = text
    elif ntype == n.XEN_ELFNOTE_GUEST_OS:
        params.guest_os = text
    elif ntype == n.XEN_ELFNOTE_GUEST_VERSION:
        params.guest_ver = text
    elif ntype == n.XEN_ELFNOTE_XEN_VERSION:
        params.xen_ver = text
    elif ntype == n.XEN_ELFNOTE_PAE_MODE:
        params.pae = text
    elif ntype == n.XEN_ELFNOTE_BSD_SYMTAB:
        params.bsd_symtab = text == "yes"
    elif ntype == n.XEN_ELFNOTE_FEATURES:
        parse_features(text, params)
    elif ntype == n.XEN_ELFNOTE_SUPPORTED_FEATURES:
        params.f_supported |= number
    elif ntype == n.XEN_ELFNOTE_VIRT_BASE:
        params.virt_base = number
    elif ntype == n.XEN_ELFNOTE_ENTRY:
        params.virt_entry = number
    elif ntype == n.XEN_ELFNOTE_INIT_P2M:
        params.p2m_base = number
    elif ntype == n.XEN_ELFNOTE_MOD_START_PFN:
        params.unmapped_initrd = bool(number)
    elif ntype == n.XEN_ELFNOTE_PADDR_OFFSET:
        params.elf_paddr_offset = number
    elif ntype == n.XEN_ELFNOTE_HYPERCALL_PAGE:
        params.virt_hypercall = number
    elif ntype == n.XEN_ELFNOTE_HV_START_LOW:
        params.virt_hv_start_low = number
    elif ntype == n.XEN_ELFNOTE_PHYS32_ENTRY:
        params.phys_entry = number
    elif ntype == n.XEN_ELFNOTE_SUSPEND_CANCEL:
        params.suspend_cancel = bool(number)
    elif ntype == n.XEN_ELFNOTE_L1_MFN_VALID:
        params.l1_mfn_valid = True


def _parse_note_area(elf: ElfFile, params: XenParams, offset: int, size: int, counter: list[int]) -> int:
    found = 0
    for name, ntype, desc, desc_at in elf.notes(offset, size):
        counter[0] += 1
        _check(counter[0] <= ELF_MAX_TOTAL_NOTE_COUNT, "too many ELF notes")
        if name == "Xen":
            _apply_note(elf, params, ntype, desc, desc_at)
            found += 1
    return found


def _guest_info_number(name: str, value: str) -> int:
    """A numeric `__xen_guest` value, as int(value, 0) reads it."""
    try:
        return int(value, 0)
    except ValueError:
        raise BuildError(f"__xen_guest: {name}={value!r} is not a number") from None


def _parse_guest_info(text: str, params: XenParams) -> None:
    """elf_xen_parse_guest_info: the legacy `__xen_guest` "NAME=value,..." string."""
    params.note_source = "__xen_guest"
    for item in text.split(","):
        name, _, value = item.partition("=")
        params.notes.append((name, value))
        if name == "LOADER":
            params.loader = value
        elif name == "GUEST_OS":
            params.guest_os = value
        elif name == "GUEST_VER":
            params.guest_ver = value
        elif name == "XEN_VER":
            params.xen_ver = value
        elif name == "PAE":
            params.pae = value
        elif name == "BSD_SYMTAB":
            params.bsd_symtab = True
        elif name == "VIRT_BASE":
            params.virt_base = _guest_info_number(name, value)
        elif name == "VIRT_ENTRY":
            params.virt_entry = _guest_info_number(name, value)
        elif name == "ELF_PADDR_OFFSET":
            params.elf_paddr_offset = _guest_info_number(name, value)
        elif name == "HYPERCALL_PAGE":
            params.virt_hypercall = _guest_info_number(name, value) << 12      # a page number here
        elif name == "FEATURES":
            parse_features(value, params)
    if params.virt_base is not None and params.virt_hypercall is not None:
        params.virt_hypercall += params.virt_base


def xen_parse(elf: ElfFile) -> XenParams:
    """elf_xen_parse for a PV guest: notes, their sanity checks, and the address calculation."""
    params = XenParams()
    counter = [0]
    found = 0
    for offset, size in elf.note_ranges:
        found += _parse_note_area(elf, params, offset, size, counter)
    if found:
        params.note_source = "PT_NOTE"
    else:
        for name, sh_type, offset, size in elf.sections[1:]:
            if sh_type == SHT_NOTE:
                _check(offset + size <= len(elf.data),
                       f"SHT_NOTE section {name!r} runs past the end of the file")
                found += _parse_note_area(elf, params, offset, size, counter)
        if found:
            params.note_source = "SHT_NOTE"
    if not found:
        for name, _type, offset, size in elf.sections:
            if name == "__xen_guest":
                text = elf.c_string(offset, offset + size)
                if text is None:
                    raise BuildError("__xen_guest section is not a NUL-terminated string")
                _parse_guest_info(text, params)
                break
    _note_check(params)
    _addr_calc_check(elf, params)
    return params


def _note_check(params: XenParams) -> None:
    """elf_xen_note_check."""
    _check(params.note_source != "",
           "not a Xen PV kernel: no Xen ELF notes and no __xen_guest section")
    _check(params.loader.startswith("generic") or params.guest_os.startswith("linux"),
           f"will only load images built for the generic loader or Linux images "
           f"(LOADER {params.loader!r}, GUEST_OS {params.guest_os!r})")
    _check(params.xen_ver.startswith("xen-3.0"),
           f"kernel is not built for Xen 3.0 (XEN_VERSION {params.xen_ver!r})")


def _addr_calc_check(elf: ElfFile, params: XenParams) -> None:
    """elf_xen_addr_calc_check: virtual base, paddr offset, kernel range and entry."""
    _check(not (params.elf_paddr_offset is not None and params.virt_base is None),
           "ELF PADDR_OFFSET set but VIRT_BASE unset")
    if params.virt_base is None:
        params.virt_base = 0
    if params.elf_paddr_offset is None:
        # The legacy __xen_guest interface defaults the offset to virt_base; notes to 0.
        params.elf_paddr_offset = params.virt_base if params.note_source == "__xen_guest" else 0
    virt_offset = (params.virt_base - params.elf_paddr_offset) & (2**64 - 1)
    params.virt_kstart = (elf.pstart + virt_offset) & (2**64 - 1)
    params.virt_kend = (elf.pend + virt_offset) & (2**64 - 1)
    if params.virt_entry is None:
        params.virt_entry = elf.entry
    _check(params.virt_kstart <= params.virt_kend
           and params.virt_kstart <= params.virt_entry <= params.virt_kend
           and params.virt_base <= params.virt_kstart,
           f"ELF start or entry out of bounds (kernel {params.virt_kstart:#x}-{params.virt_kend:#x}, "
           f"entry {params.virt_entry:#x}, virt_base {params.virt_base:#x})")
    if params.p2m_base is not None and params.virt_kstart <= params.p2m_base < params.virt_kend:
        raise BuildError(f"INIT_P2M {params.p2m_base:#x} lies inside the kernel")
