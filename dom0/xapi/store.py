"""The VMs XAPI knows while they are halted, and the templates: xl configs in one directory.

XAPI keeps a VM whether or not it runs; pvhyp's toolstack knows only running domains.
The store is that memory: every `*.cfg` in the VM directory (`pvhyp up --vm-dir`,
default `<run dir>/vms`) is a VM, halted unless the toolstack runs a domain of its uuid.
A config is a template when it has the line `# xapi: template` (XAPI's is_a_template):
it is cloned, never started. A config without a `uuid` gets a stable one from its path.
The file is the VM: renaming rewrites its `name`, VM.destroy removes it, VM.clone and
VM.copy write new ones (dom0.images.clone: copy-on-write overlays or full copies).

Rules: the directory's files are input like any other (parsed with dom0.toolstack.config;
one that does not parse is skipped and logged once, never an exception out); parses are
cached by (mtime, size), so listing 32 VMs on every call costs a stat each.
"""
from __future__ import annotations

import logging
import os
import re
import uuid as uuidlib
from dataclasses import dataclass

from dom0.images.clone import _xl_value
from dom0.toolstack.config import ConfigError, DomainConfig, parse_assignments, parse_config

log = logging.getLogger("dom0.xapi.store")
TEMPLATE_MARK = "# xapi: template"
DESCRIPTION_MARK = "# xapi: description "
MAX_CONFIG_BYTES = 1 << 20
NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_UUID_NAMESPACE = uuidlib.UUID("6f1c9a3e-4b7d-4e21-9a55-2f0c3d8b7e10")    # pvhyp's store


@dataclass
class StoredVm:
    path: str
    uuid: str
    config: DomainConfig
    text: str
    is_template: bool
    description: str

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)


class StoreError(Exception):
    """One line: why the store cannot do it."""


class VmStore:
    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.new = not os.path.exists(self.directory)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._cache: dict[str, tuple[tuple[int, int], StoredVm | None]] = {}

    def entries(self) -> dict[str, StoredVm]:
        """uuid -> StoredVm, every config of the directory that parses."""
        found: dict[str, StoredVm] = {}
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".cfg") and not n.startswith("."))
        except OSError:
            return found
        seen = set()
        for name in names:
            path = os.path.join(self.directory, name)
            seen.add(path)
            entry = self._load(path)
            if entry is not None and entry.uuid not in found:
                found[entry.uuid] = entry
        for stale in set(self._cache) - seen:
            del self._cache[stale]
        return found

    def _load(self, path: str) -> StoredVm | None:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        entry = None
        try:
            if st.st_size > MAX_CONFIG_BYTES or not os.path.isfile(path) or os.path.islink(path):
                raise ConfigError(f"{path}: not a regular file under {MAX_CONFIG_BYTES} bytes")
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_CONFIG_BYTES)
            cfg = parse_config(text, path)
            lines = text.splitlines()
            description = next((line[len(DESCRIPTION_MARK):] for line in lines if line.startswith(DESCRIPTION_MARK)), "")
            uuid = cfg.uuid.lower() if cfg.uuid else str(uuidlib.uuid5(_UUID_NAMESPACE, path))
            cfg.uuid = uuid
            entry = StoredVm(path, uuid, cfg, text, TEMPLATE_MARK in lines, description)
        except (OSError, UnicodeDecodeError, ConfigError) as e:
            log.warning("VM store: skipping %s: %s", path, e)
        self._cache[path] = (key, entry)
        return entry

    def seed(self, examples: list[str]) -> None:
        """A new store starts with the examples whose files are built (the Debian kernel, the Debian
        rootfs disk) as templates, as XenServer ships its templates: clone them to make VMs."""
        if not self.new:
            return
        for path in examples:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read(MAX_CONFIG_BYTES)
                cfg = parse_config(text, path)
            except (OSError, UnicodeDecodeError, ConfigError):
                continue
            needed = [cfg.kernel, cfg.ramdisk] + [os.path.expanduser(d.target) for d in cfg.disks if d.target]
            if all(os.path.isabs(p) and os.path.exists(p) for p in needed if p):
                self._write(os.path.join(self.directory, os.path.basename(path)), [TEMPLATE_MARK, text.rstrip("\n")])

    def rewrite(self, entry: StoredVm, name: str | None = None, description: str | None = None) -> None:
        """Write the config again with a new name and/or description (atomically)."""
        settings = {key: value for key, (value, _) in parse_assignments(entry.text, entry.path).items()}
        if name is not None:
            if not NAME.match(name):
                raise StoreError("a name is 1-64 letters, digits, '_', '.' or '-' (it is the xl domain name)")
            settings["name"] = name
        settings["uuid"] = entry.uuid
        desc = entry.description if description is None else " ".join(description.split())[:500]
        head = [TEMPLATE_MARK] if entry.is_template else []
        if desc:
            head.append(DESCRIPTION_MARK + desc)
        self._write(entry.path, head + [f"{k} = {_xl_value(v)}" for k, v in settings.items()])

    def mark(self, path: str, description: str = "") -> None:
        """A config just cloned: note its description (templates' clones are VMs, unmarked)."""
        if description:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_CONFIG_BYTES)
            self._write(path, [DESCRIPTION_MARK + " ".join(description.split())[:500], text.rstrip("\n")])

    @staticmethod
    def _write(path: str, lines: list[str]) -> None:
        partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(partial, path)

    def remove(self, entry: StoredVm) -> None:
        os.unlink(entry.path)
        self._cache.pop(entry.path, None)

    def path_for(self, name: str) -> str:
        if not NAME.match(name):
            raise StoreError("a name is 1-64 letters, digits, '_', '.' or '-' (it is the xl domain name)")
        path = os.path.join(self.directory, f"{name}.cfg")
        if os.path.lexists(path):
            raise StoreError(f"a VM named {name!r} exists in {self.directory}")
        return path
