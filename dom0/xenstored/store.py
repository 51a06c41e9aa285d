"""The node tree, and transactions as copy-on-write overlays over it.

Nodes are immutable values; every modification stores a fresh ``Node`` with
a new generation number taken from a store-wide counter.  Generations serve
two purposes, as in cxenstored: XS_DIRECTORY_PART reports them so a client
can detect a directory changing between partial reads, and a transaction
remembers the generation of every node it touched (None: "did not exist") so
that commit can refuse with EAGAIN if any of them has changed since.

Both ``Store`` and ``Transaction`` implement the same small view interface
(get / put / delete / owned_count), so the request handlers are written once
and run unchanged inside or outside a transaction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from .errors import XsError
from .paths import Perms, basename, child_path, parent_of

# Sizes of cxenstored's on-disk record, used so the node-size quota bites at
# the same point: a header (u64 generation + 3 x u32) and 8 bytes per perm.
_RECORD_HEADER_BYTES = 24
_RECORD_PERM_BYTES = 8


@dataclass(frozen=True)
class Node:
    value: bytes
    perms: Perms  # perms[0]: owner and default access
    children: tuple[str, ...]  # basenames, in creation order
    generation: int = 0

    @property
    def owner(self) -> int:
        return self.perms[0].domid

    def children_wire(self) -> bytes:
        return b"".join(name.encode() + b"\0" for name in self.children)

    def record_size(self) -> int:
        return (_RECORD_HEADER_BYTES + _RECORD_PERM_BYTES * len(self.perms)
                + len(self.value) + len(self.children_wire()))


class Store:
    """The committed tree: absolute path -> Node."""

    def __init__(self, root_perms: Perms):
        self.generation = 0
        self.nodes: dict[str, Node] = {}
        self.owner_counts: Counter[int] = Counter()
        self.put("/", Node(b"", root_perms, ()))

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def put(self, path: str, node: Node) -> Node:
        node = replace(node, generation=self.next_generation())
        old = self.nodes.get(path)
        if old is not None:
            self.owner_counts[old.owner] -= 1
        self.owner_counts[node.owner] += 1
        self.nodes[path] = node
        return node

    def delete(self, path: str) -> None:
        old = self.nodes.pop(path, None)
        if old is not None:
            self.owner_counts[old.owner] -= 1
            self.next_generation()

    def owned_count(self, domid: int) -> int:
        return self.owner_counts[domid]

    def inconsistencies(self) -> list[str]:
        """Broken tree invariants (empty when healthy): every node is listed
        by its parent exactly once, every listed child exists, and the
        per-owner counts match the nodes."""
        problems = []
        for path, node in self.nodes.items():
            if len(set(node.children)) != len(node.children):
                problems.append(f"{path}: duplicate children")
            for child in node.children:
                if child_path(path, child) not in self.nodes:
                    problems.append(f"{path}: lists missing child {child}")
            if path != "/":
                parent = self.nodes.get(parent_of(path))
                if parent is None or basename(path) not in parent.children:
                    problems.append(f"{path}: not listed by its parent")
        counts = Counter(node.owner for node in self.nodes.values())
        if +counts != +self.owner_counts:
            problems.append("owner counts out of step")
        return problems


class Transaction:
    """A private view of the store, applied atomically by ``commit``."""

    def __init__(self, store: Store, tx_id: int, node_limit: int | None):
        self.store = store
        self.tx_id = tx_id
        self.node_limit = node_limit  # None: unlimited (privileged owner)
        # Every node the transaction touched, as it sees it (None: absent).
        # A node is frozen at first access, like cxenstored's per-transaction
        # copies; only paths in ``modified`` are written back on commit.
        self.overlay: dict[str, Node | None] = {}
        self.modified: set[str] = set()
        self.seen_generation: dict[str, int | None] = {}
        self.pending_watch_events: list[tuple[str, bool, Perms | None, Perms | None]] = []

    def get(self, path: str) -> Node | None:
        if path not in self.overlay:
            if self.node_limit is not None and len(self.overlay) >= self.node_limit:
                raise XsError("ENOSPC")
            committed = self.store.get(path)
            self.seen_generation[path] = committed.generation if committed else None
            self.overlay[path] = committed
        return self.overlay[path]

    def put(self, path: str, node: Node) -> Node:
        self.get(path)
        node = replace(node, generation=self.store.next_generation())
        self.overlay[path] = node
        self.modified.add(path)
        return node

    def delete(self, path: str) -> None:
        self.get(path)
        self.overlay[path] = None
        self.modified.add(path)

    def owned_count(self, domid: int) -> int:
        count = self.store.owned_count(domid)
        for path in self.modified:
            before, after = self.store.get(path), self.overlay[path]
            count -= before is not None and before.owner == domid
            count += after is not None and after.owner == domid
        return count

    def creates_nodes(self) -> bool:
        return any(self.overlay[path] is not None and self.store.get(path) is None
                   for path in self.modified)

    def queue_watch_event(self, path: str, exact: bool, perms: Perms | None,
                          old_perms: Perms | None) -> None:
        self.pending_watch_events.append((path, exact, perms, old_perms))

    def conflicts(self) -> bool:
        for path, generation in self.seen_generation.items():
            committed = self.store.get(path)
            if (committed.generation if committed else None) != generation:
                return True
        return False

    def commit(self) -> None:
        """Apply the overlay; EAGAIN if anything it read changed meanwhile."""
        if self.conflicts():
            raise XsError("EAGAIN")
        # Parents before children on creation, children first on deletion,
        # so the store is never observed with a dangling child entry.
        for path in sorted(self.modified, key=lambda p: (p.count("/"), p)):
            node = self.overlay[path]
            if node is not None:
                self.store.put(path, node)
        for path in sorted(self.modified, key=lambda p: -p.count("/")):
            if self.overlay[path] is None:
                self.store.delete(path)


# Where a request works: the committed store, or one connection's transaction.
View = Store | Transaction


def nearest_existing_ancestor(view: View, path: str) -> Node:
    """The closest existing node above ``path`` (the root always exists)."""
    while path != "/":
        path = parent_of(path)
        node = view.get(path)
        if node is not None:
            return node
    raise AssertionError("the root node vanished")  # the store never deletes "/"
