"""Handlers for the node requests: READ, WRITE, MKDIR, RM, DIRECTORY,
DIRECTORY_PART, GET_PERMS and SET_PERMS.

Each handler gets the engine, the requesting connection, the view to work
on (the store, or the connection's transaction) and the raw payload; it
returns the reply payload or raises XsError.  Every check happens before the
first modification, so a failed request leaves the view untouched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from abi.io.xs_wire import XENSTORE_PAYLOAD_MAX

from .core import Connection, Engine, access_for, live_perms
from .errors import XsError
from .paths import (
    PERM_OWNER,
    PERM_READ,
    PERM_WRITE,
    basename,
    c_atoi,
    child_path,
    format_permissions,
    is_valid_node_path,
    parent_of,
    parse_permissions,
)
from .payload import OK, exactly_one_string, split_strings
from .store import Node, View, nearest_existing_ancestor


def canonical_path(engine: Engine, conn: Connection, raw: bytes | None) -> str:
    """Absolute, validated node name for a request argument, else EINVAL."""
    if raw is None:
        raise XsError("EINVAL")
    # "@..." names are watch-only: they are never resolved as relative paths.
    if not raw.startswith((b"/", b"@")):
        raw = conn.home_path.encode() + b"/" + raw
    if not is_valid_node_path(raw, engine.quotas.path_max):
        raise XsError("EINVAL")
    return raw.decode("ascii")


def lookup(engine: Engine, conn: Connection, view: View, path: str, need: int) -> Node:
    """The node at ``path`` if ``conn`` holds ``need`` on it.

    A missing node answers ENOENT only to callers allowed to know about it:
    if the nearest existing ancestor does not grant any of ``need``, the
    answer is EACCES so that hidden subtrees cannot be probed.
    """
    node = view.get(path)
    if node is not None:
        if access_for(conn, live_perms(engine, node)) & need != need:
            raise XsError("EACCES")
        return node
    if access_for(conn, live_perms(engine, nearest_existing_ancestor(view, path))) & need:
        raise XsError("ENOENT")
    raise XsError("EACCES")


def _rewritten(engine: Engine, node: Node, **changes: Any) -> Node:
    """``node`` with ``changes``, dropping its dead ACL entries for good, so
    that the new generation does not bring them back to life."""
    return replace(node, perms=live_perms(engine, node), **changes)


def _check_node_size(engine: Engine, conn: Connection, node: Node) -> None:
    if not conn.privileged and node.record_size() >= engine.quotas.node_size:
        raise XsError("ENOSPC")


def _create(engine: Engine, conn: Connection, view: View, path: str, value: bytes) -> None:
    """Create ``path`` and any missing ancestors, inheriting permissions."""
    missing = [path]
    while (parent := view.get(parent_of(missing[-1]))) is None:
        missing.append(parent_of(missing[-1]))
    parent_path = parent_of(missing[-1])

    if not conn.privileged and (view.owned_count(conn.domid) + len(missing)
                                > engine.quotas.nodes):
        raise XsError("ENOSPC")

    writes: list[tuple[str, Node]] = []
    perms = live_perms(engine, parent)
    if not conn.privileged:
        # Unprivileged domains own what they create.
        perms = (perms[0]._replace(domid=conn.domid),) + perms[1:]
    new_child = basename(missing[-1])
    if new_child not in parent.children:  # a stale transaction view may list it
        parent = _rewritten(engine, parent, children=parent.children + (new_child,))
    writes.append((parent_path, parent))
    for depth, name in enumerate(reversed(missing)):
        is_leaf = name == path
        children = () if is_leaf else (basename(missing[-depth - 2]),)
        writes.append((name, Node(value if is_leaf else b"", perms, children)))
    for _, node in writes:
        _check_node_size(engine, conn, node)
    for name, node in writes:
        view.put(name, node)


def do_read(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    path = canonical_path(engine, conn, exactly_one_string(payload))
    return lookup(engine, conn, view, path, PERM_READ).value


def do_write(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    if b"\0" not in payload:
        raise XsError("EINVAL")
    raw_path, value = payload.split(b"\0", 1)
    path = canonical_path(engine, conn, raw_path)
    try:
        node = lookup(engine, conn, view, path, PERM_WRITE)
    except XsError as error:
        if error.name != "ENOENT":
            raise
        _create(engine, conn, view, path, value)
    else:
        updated = _rewritten(engine, node, value=value)
        _check_node_size(engine, conn, updated)
        view.put(path, updated)
    engine.fire_watches(view, path, exact=False)
    return OK


def do_mkdir(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    path = canonical_path(engine, conn, exactly_one_string(payload))
    try:
        lookup(engine, conn, view, path, PERM_WRITE)
    except XsError as error:
        if error.name != "ENOENT":
            raise
        _create(engine, conn, view, path, b"")
        engine.fire_watches(view, path, exact=False)
    return OK


def subtree(view: View, path: str) -> list[tuple[str, Node]]:
    """Every node at and below ``path``, each before its descendants (XS_RM's walk; also
    `pvhyp inspect DOM --xenstore`)."""
    ordered: list[tuple[str, Node]] = []
    stack = [path]
    while stack:
        name = stack.pop()
        node = view.get(name)
        if node is None:
            continue
        ordered.append((name, node))
        stack.extend(child_path(name, child) for child in node.children)
    return ordered


def _subtree_children_first(view: View, path: str) -> list[tuple[str, Node]]:
    return subtree(view, path)[::-1]


def do_rm(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    path = canonical_path(engine, conn, exactly_one_string(payload))
    try:
        lookup(engine, conn, view, path, PERM_WRITE)
    except XsError as error:
        # Removing something already gone is fine as long as its parent exists.
        if error.name == "ENOENT" and path != "/" and view.get(parent_of(path)) is not None:
            return OK
        raise
    if path == "/":
        raise XsError("EINVAL")
    parent_path = parent_of(path)
    parent = view.get(parent_path)
    if parent is None:
        # Only a transaction whose snapshot went stale gets here; its commit
        # fails anyway.  cxenstored answers EINVAL.
        raise XsError("EINVAL")
    for name, node in _subtree_children_first(view, path):
        # Fire while the node's permissions can still be checked; watchers
        # above the removed root hear about the root only.
        engine.fire_watches(view, name, exact=(name != path),
                            perms=live_perms(engine, node))
        view.delete(name)
    gone = basename(path)
    view.put(parent_path, _rewritten(engine, parent,
                                     children=tuple(c for c in parent.children if c != gone)))
    return OK


def do_directory(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    path = canonical_path(engine, conn, exactly_one_string(payload))
    return lookup(engine, conn, view, path, PERM_READ).children_wire()


def do_directory_part(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    """Children from a byte offset into the child list, prefixed with the
    node's generation; a trailing extra NUL marks the end of the list."""
    strings = split_strings(payload)
    if len(strings) != 2:
        raise XsError("EINVAL")
    path = canonical_path(engine, conn, strings[0])
    node = lookup(engine, conn, view, path, PERM_READ)
    offset = c_atoi(strings[1])
    children = node.children_wire()
    generation = str(node.generation).encode() + b"\0"
    if offset >= len(children):
        return generation + b"\0"
    room = XENSTORE_PAYLOAD_MAX - len(generation) - 1
    taken = 0
    while True:
        next_len = children.index(b"\0", offset + taken) - (offset + taken)
        if taken + next_len >= room:
            break
        taken += next_len + 1
        if offset + taken == len(children):
            return generation + children[offset:] + b"\0"
    return generation + children[offset:offset + taken]


def do_get_perms(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    path = canonical_path(engine, conn, exactly_one_string(payload))
    return format_permissions(lookup(engine, conn, view, path, PERM_READ).perms)


def do_set_perms(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    strings = split_strings(payload)
    if len(strings) < 2:
        raise XsError("EINVAL")
    if not conn.privileged and len(strings) - 1 > engine.quotas.permissions:
        raise XsError("ENOSPC")
    perms = parse_permissions(strings[1:])
    engine.note_domains(perms)
    if strings[0].startswith(b"@"):
        engine.set_special_perms(conn, strings[0], perms)
        return OK
    path = canonical_path(engine, conn, strings[0])
    node = lookup(engine, conn, view, path, PERM_WRITE | PERM_OWNER)
    if not conn.privileged and perms[0].domid != node.owner:
        raise XsError("EPERM")
    updated = replace(node, perms=perms)
    _check_node_size(engine, conn, updated)
    view.put(path, updated)
    engine.fire_watches(view, path, exact=False, old_perms=live_perms(engine, node))
    return OK
