"""Kernel modules without kmod: the `.modinfo` of a `.ko` and the load order of a set.

Debian's kernel package ships no modules.dep (its postinst runs depmod), so the
initramfs builder reads what depmod would: each module's `.modinfo` section, the
NUL-separated `key=value` strings modpost wrote (`name=`, `depends=`, `alias=`,
`softdep=pre: ...`). `load_order` turns a few wanted names into every module
they need, dependencies first, which is the order busybox `insmod` must take them
in (insmod resolves nothing itself).

A name in `depends=` is a module name; a name in `softdep=` is usually an alias
(`crypto-crc32c`). When several modules answer an alias the portable one wins
(a module outside `kernel/arch/`): the arch-specific ones refuse to load on a CPU
without their instructions, the generic one loads everywhere.
"""
from __future__ import annotations

import dataclasses
import struct


class ModuleError(Exception):
    """A module file that is not what it claims, or a name no module answers."""


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    name: str                       # normalized: '-' -> '_', as the kernel names modules
    path: str                       # inside the modules tree, e.g. kernel/fs/ext4/ext4.ko
    depends: tuple[str, ...]
    softdeps_pre: tuple[str, ...]
    aliases: tuple[str, ...]


def normalize(name: str) -> str:
    """The kernel treats '-' and '_' in module names alike; we keep '_'."""
    return name.replace("-", "_")


def modinfo(blob: bytes) -> dict[str, list[str]]:
    """The `.modinfo` section of an ELF64 little-endian module: key -> values."""
    if blob[:4] != b"\x7fELF" or len(blob) < 64 or blob[4] != 2 or blob[5] != 1:
        raise ModuleError("not an ELF64 little-endian module")
    shoff, = struct.unpack_from("<Q", blob, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)
    if shentsize < 64 or shstrndx >= shnum or shoff + shnum * shentsize > len(blob):
        raise ModuleError("section headers outside the file")

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name_off, = struct.unpack_from("<I", blob, base)
        offset, size = struct.unpack_from("<QQ", blob, base + 0x18)
        if offset + size > len(blob):
            raise ModuleError(f"section {i} outside the file")
        return name_off, offset, size

    _, strtab_off, strtab_size = section(shstrndx)
    for i in range(shnum):
        name_off, offset, size = section(i)
        if name_off >= strtab_size:
            continue
        end = blob.find(b"\0", strtab_off + name_off, strtab_off + strtab_size)
        if blob[strtab_off + name_off:end] != b".modinfo":
            continue
        info: dict[str, list[str]] = {}
        for entry in blob[offset:offset + size].split(b"\0"):
            key, sep, value = entry.decode("utf-8", "replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
        return info
    raise ModuleError("no .modinfo section")


def describe(path: str, blob: bytes) -> ModuleInfo:
    """What `load_order` needs to know of the module at `path` (relative to the modules tree)."""
    info = modinfo(blob)
    base = path.rsplit("/", 1)[-1].removesuffix(".ko")
    name = normalize(info.get("name", [base])[0])
    depends = tuple(normalize(d) for v in info.get("depends", []) for d in v.split(",") if d)
    softdeps: list[str] = []
    for value in info.get("softdep", []):
        # "pre: a b post: c" -> the names after pre:, up to the next keyword
        words, current = value.split(), None
        for word in words:
            if word.endswith(":"):
                current = word[:-1]
            elif current == "pre":
                softdeps.append(word)
    return ModuleInfo(name, path, depends, tuple(softdeps), tuple(info.get("alias", [])))


class ModuleIndex:
    """Every module of one kernel, by name and by (exact) alias."""

    def __init__(self, modules: list[ModuleInfo]) -> None:
        self.by_name = {m.name: m for m in modules}
        self.by_alias: dict[str, list[ModuleInfo]] = {}
        for m in modules:
            for alias in m.aliases:
                self.by_alias.setdefault(alias, []).append(m)

    def lookup(self, wanted: str) -> ModuleInfo:
        """The module named `wanted`, else the one answering the alias (portable first)."""
        found = self.by_name.get(normalize(wanted))
        if found is not None:
            return found
        candidates = self.by_alias.get(wanted, [])
        if not candidates:
            raise ModuleError(f"no module named or aliased {wanted!r}")
        return sorted(candidates, key=lambda m: (m.path.startswith("kernel/arch/"), m.path))[0]

    def load_order(self, wanted: list[str]) -> list[ModuleInfo]:
        """`wanted` and everything they need, each after what it needs, each once."""
        order: list[ModuleInfo] = []
        placed: set[str] = set()
        visiting: set[str] = set()

        def place(module: ModuleInfo) -> None:
            if module.name in placed:
                return
            if module.name in visiting:
                raise ModuleError(f"module dependency cycle through {module.name}")
            visiting.add(module.name)
            for soft in module.softdeps_pre:
                place(self.lookup(soft))
            for dep in module.depends:
                if dep not in self.by_name:
                    raise ModuleError(f"{module.name} depends on {dep}, which the kernel package lacks")
                place(self.by_name[dep])
            visiting.discard(module.name)
            placed.add(module.name)
            order.append(module)

        for name in wanted:
            place(self.lookup(name))
        return order
