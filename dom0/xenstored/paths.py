"""Parsing helpers shared by the xenstored engine: node names, permission
strings and the C-style number parsing the protocol relies on.

Everything here works on ``bytes`` straight off the wire: a guest may send
any byte sequence, so nothing is decoded before it has been validated.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import XsError

# Access bits.  OWNER is never stored in a node: it is granted by being the
# node's first permission entry (or a privileged connection).
PERM_NONE = 0
PERM_READ = 1
PERM_WRITE = 2
PERM_OWNER = 4

_LETTER_TO_ACCESS = {ord("n"): PERM_NONE, ord("r"): PERM_READ,
                     ord("w"): PERM_WRITE, ord("b"): PERM_READ | PERM_WRITE}
_ACCESS_TO_LETTER = {v: chr(k) for k, v in _LETTER_TO_ACCESS.items()}

_VALID_NODE_BYTES = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_@")
# The per-domain subtree prefix does not count against the path-length quota,
# so that every guest gets the same budget below its own home directory.
_DOMAIN_HOME_PREFIX = re.compile(rb"/local/domain/\d{1,5}/")
_C_INTEGER = re.compile(rb"[ \t\n\v\f\r]*([+-]?)(\d*)")

UINT32_MASK = 0xFFFFFFFF


class Permission(NamedTuple):
    domid: int
    access: int  # PERM_* bits (READ/WRITE only)

    def to_wire(self) -> bytes:
        # Xen prints the id as a signed int, so 0xffffffff reads back as -1.
        signed = self.domid - (1 << 32) if self.domid & 0x80000000 else self.domid
        return f"{_ACCESS_TO_LETTER[self.access]}{signed}".encode()


# A node's permissions: perms[0] names the owner and everyone's default access.
Perms = tuple[Permission, ...]


def c_atoi(text: bytes) -> int:
    """atoi() semantics: leading blanks, optional sign, digits; garbage gives 0.

    The result is reduced to an unsigned 32-bit value, which is how xenstored
    stores domids, ports and offsets parsed this way.
    """
    match = _C_INTEGER.match(text)
    assert match is not None  # every part of the pattern may be empty
    digits = match.group(2)
    if not digits:
        return 0
    value = int(digits[:20])  # C overflows long before 20 digits
    if match.group(1) == b"-":
        value = -value
    return value & UINT32_MASK


def _strtol_base0_exact(text: bytes) -> int | None:
    """strtol(text, &end, 0) that must consume the whole string, else None."""
    match = re.fullmatch(rb"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)", text)
    if match is None:
        return None
    body = match.group(2)
    if body[:2] in (b"0x", b"0X"):
        value = int(body[2:], 16)
    elif body.startswith(b"0"):
        value = int(body, 8) if len(body) > 1 else 0
    else:
        value = int(body)
    return -value if match.group(1) == b"-" else value


def parse_permissions(strings: list[bytes]) -> Perms:
    """Permission strings ("r5", "b0", "n1", ...) -> permissions, or EINVAL."""
    perms = []
    for entry in strings:
        if not entry or entry[0] not in _LETTER_TO_ACCESS:
            raise XsError("EINVAL")
        domid = _strtol_base0_exact(entry[1:])
        if domid is None:
            raise XsError("EINVAL")
        perms.append(Permission(domid & UINT32_MASK, _LETTER_TO_ACCESS[entry[0]]))
    return tuple(perms)


def format_permissions(perms: Perms) -> bytes:
    return b"".join(p.to_wire() + b"\0" for p in perms)


def is_valid_node_path(path: bytes, path_max: int) -> bool:
    """Absolute node name check: '/'-rooted, no '//', no trailing '/', only
    the allowed characters, and within the path-length quota."""
    if not path.startswith(b"/"):
        return False
    if path.endswith(b"/") and path != b"/":
        return False
    if b"//" in path:
        return False
    home = _DOMAIN_HOME_PREFIX.match(path)
    allowance = home.end() if home else 0
    if len(path) > allowance + path_max:
        return False
    return all(byte in _VALID_NODE_BYTES for byte in path)


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def parent_of(path: str) -> str:
    """Parent node name; the parent of a top-level node is '/'."""
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else "/"


def child_path(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def basename(path: str) -> str:
    return path[path.rfind("/") + 1:]


def is_same_or_below(path: str, ancestor: str) -> bool:
    """True when ``path`` is ``ancestor`` or lies somewhere beneath it."""
    if ancestor == "/":
        return True
    return path == ancestor or path.startswith(ancestor + "/")
