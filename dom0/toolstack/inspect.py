"""The toolstack's `inspect` request: live views of one domain, for `pvhyp inspect DOM`.

Four views are the hypervisor's (pagetables, frames, evtchn, grants: pvhyp/introspect.py,
asked over the channel's privileged OP_INSPECT); two are dom0's own state, built here:

    rings      each ring dom0 serves for the domain: the split-driver backends'
               (dom0/xenbus: blkback's ring, netback's tx and rx) and the xenstore and
               console rings, with producer/consumer indexes and outstanding requests
               (Linux's drivers/block/xen-blkback/, drivers/net/xen-netback/,
               xen/include/public/io/ring.h; xenstored's domain.c, xenconsoled's io.c)
    xenstore   the subtree at PATH: each node's value and permissions, and the watches
               that cover it, with the connection that set them (tools/xenstore/xenstored_core.c,
               xenstored_watch.c)

Every number read from a shared page is the guest's to write: it is shown, never used
as an index. A PATH is checked as xenstored checks one (absolute, the node-name
characters, the length quota); lists are bounded (MAX_ITEMS, with a count of the rest).
"""
from __future__ import annotations

from abi.errno import EINVAL, EPERM, ERRNO_NAMES, ESRCH
from abi.io import ring as R
from dom0.xenstored.core import live_perms
from dom0.xenstored.nodes import subtree
from dom0.xenstored.paths import format_permissions, is_same_or_below, is_valid_node_path
from pvguest.hypercall_channel import ChannelError

HYPERVISOR_VIEWS = ("pagetables", "frames", "evtchn", "grants")     # pvhyp/introspect.py's VIEWS
DOM0_VIEWS = ("rings", "xenstore")
VIEWS = HYPERVISOR_VIEWS + DOM0_VIEWS
MAX_ITEMS = 1024            # nodes, watches or rings in one reply
MAX_VALUE_SHOWN = 256       # characters of a node's value
MAX_VA_TEXT = 40            # a virtual address as typed: "0x" and 16 digits, with room to spare


class InspectRequestError(Exception):
    """The request names a view or an argument that cannot be answered: one line for the user."""


def _u32(page, offset: int) -> int:
    return int.from_bytes(bytes(page[offset:offset + 4]), "little")


def ring_indexes(shared_page, req_cons: int, rsp_prod_pvt: int, nr_ents: int) -> dict:
    """An io/ring.h ring's state: the shared indexes (the frontend's to write) beside the
    backend's private ones, and what they mean: requests published but not yet taken,
    taken but not answered, answered but not yet pushed."""
    req_prod, rsp_prod = _u32(shared_page, R.REQ_PROD_OFFSET), _u32(shared_page, R.RSP_PROD_OFFSET)
    return {"nr_ents": nr_ents, "req_prod": req_prod, "req_event": _u32(shared_page, R.REQ_EVENT_OFFSET),
            "req_cons": req_cons, "rsp_prod_pvt": rsp_prod_pvt, "rsp_prod": rsp_prod,
            "rsp_event": _u32(shared_page, R.RSP_EVENT_OFFSET),
            "unconsumed_requests": R.idx_diff(req_prod, req_cons),
            "in_flight": R.idx_diff(req_cons, rsp_prod_pvt),
            "unpushed_responses": R.idx_diff(rsp_prod_pvt, rsp_prod),
            "outstanding": R.idx_diff(req_prod, rsp_prod_pvt)}


def _byte_ring(ring) -> dict:
    """A byte ring's (xenstore, console) indexes: prod - cons bytes wait for the reader."""
    cons, prod = ring.words.load_u32(ring.cons_offset), ring.words.load_u32(ring.prod_offset)
    return {"cons": cons, "prod": prod, "waiting": (prod - cons) & 0xFFFFFFFF, "size": ring.size}


class Inspector:
    """The `inspect` command over dom0's parts: the channel, xenstored, the backends, the consoles."""

    def __init__(self, channel, engine, xs_rings, backends, consoles):
        self.channel = channel
        self.engine = engine            # dom0.xenstored's engine (nodes, connections, watches)
        self.xs_rings = xs_rings        # dom0.xenstored.ring.RingServer: the guests' xenstore rings
        self.backends = backends        # dom0.xenbus.XenbusBackends, or None
        self.consoles = consoles        # dom0.console.backend.ConsoleBackend

    def inspect(self, domid: int, view: str, arg: str | None = None, vcpu: int = 0,
                verbose: bool = False) -> dict:
        if view in HYPERVISOR_VIEWS:
            return self._hypervisor_view(domid, view, arg, vcpu, verbose)
        if view == "rings":
            return self.rings(domid)
        if view == "xenstore":
            return self.xenstore(arg if arg is not None else f"/local/domain/{domid}")
        raise InspectRequestError(f"no view {view[:40]!r} (views: {', '.join(VIEWS)})")

    # --- the hypervisor's views ---

    def _hypervisor_view(self, domid: int, view: str, arg: str | None, vcpu: int, verbose: bool) -> dict:
        va = 0
        if view == "pagetables":
            va = parse_va(arg)
            self._check_walkable(domid, vcpu)
        try:
            data = self.channel.inspect(domid, view, va, vcpu, verbose)
        except ChannelError as e:
            raise InspectRequestError(f"the hypervisor refused {view} of d{domid}: "
                                      f"{ERRNO_NAMES.get(e.errno, e.errno)}{_hint(view, e.errno)}") from None
        if view == "frames":
            data["dom0_rings"] = self._ring_frames(domid)
        return data

    def _check_walkable(self, domid: int, vcpu: int) -> None:
        """Say precisely why a walk is impossible (the hypervisor's answer is one errno)."""
        try:
            (info,) = self.channel.domain_info(domid)["domains"]
        except (ChannelError, ValueError):
            return          # gone meanwhile: the hypervisor's own answer says so
        if info["process"]:
            raise InspectRequestError(f"d{domid} is a process domain (dom0 or a Python guest): it has no "
                                      "page tables; --pagetables is for x86 guests")
        if not 0 <= vcpu < info["vcpus"]:
            raise InspectRequestError(f"d{domid} has {info['vcpus']} vCPU(s): no vCPU {vcpu}")

    def _ring_frames(self, domid: int) -> dict:
        """The xenstore ring's frame as dom0 was told it (the hypervisor cannot tell a ring
        from any other page of the guest's)."""
        introduced = self.engine.domains.get(domid)
        return {"xenstore": introduced.gfn if introduced is not None else None}

    # --- rings ---

    def rings(self, domid: int) -> dict:
        rows: list[dict] = []
        devices = self.backends.devices_of(domid) if self.backends is not None else []
        for device in devices:
            row = {"kind": device.kind.name, "devid": device.devid, "device": device.backend_path,
                   "state": self.backends.state_of(device), "ports": list(device.ports), "rings": {}}
            connection = device.connection
            rings = getattr(connection, "rings", None)
            if callable(rings):
                for name, (page, req_cons, rsp_prod_pvt, nr_ents) in rings().items():
                    row["rings"][name] = ring_indexes(page, req_cons, rsp_prod_pvt, nr_ents)
            rows.append(row)
        xs_ring = self.xs_rings.rings.get(domid)
        if xs_ring is not None:
            rows.append({"kind": "xenstore", "devid": 0, "device": f"/local/domain/{domid}/store",
                         "state": "connected", "ports": [],
                         "rings": {"requests (guest -> xenstored)": _byte_ring(xs_ring.requests),
                                   "replies (xenstored -> guest)": _byte_ring(xs_ring.replies)}})
        session = self.consoles.sessions.get(domid)
        if session is not None:
            rows.append({"kind": "console", "devid": 0, "device": f"/local/domain/{domid}/console",
                         "state": "broken" if session.ring_broken else "connected", "ports": [],
                         "rings": {"out (guest -> dom0)": _byte_ring(session.from_guest),
                                   "in (dom0 -> guest)": _byte_ring(session.into_guest)}})
        shown = rows[:MAX_ITEMS]
        return {"domid": domid, "devices": shown, "left_out": len(rows) - len(shown)}

    # --- xenstore ---

    def xenstore(self, path: str) -> dict:
        raw = path.encode("utf-8", "replace")
        if not is_valid_node_path(raw, self.engine.quotas.path_max):
            shown = path if len(path) <= 60 else path[:57] + "..."
            raise InspectRequestError(f"not a xenstore path: {shown!r} ({len(raw)} bytes; a path is absolute, "
                                      f"without '//', of the characters [A-Za-z0-9_/@-.] and at most "
                                      f"{self.engine.quotas.path_max} bytes below a domain's home)")
        store = self.engine.store
        with self.engine.lock:
            if store.get(path) is None:
                raise InspectRequestError(f"no xenstore node {path}")
            found = sorted(subtree(store, path), key=lambda item: item[0].split("/"))
            nodes = [{"path": node_path, "value": _shown_value(node.value),
                      "perms": [p.decode("ascii", "replace")
                                for p in format_permissions(live_perms(self.engine, node)).split(b"\0")[:-1]]}
                     for node_path, node in found[:MAX_ITEMS]]
            left_out = len(found) - len(nodes)
            watches = []
            for conn in self.engine.connections.values():
                for watch in conn.watches:
                    wpath = watch.path.decode("ascii", "replace")
                    if wpath.startswith("@") or not (is_same_or_below(wpath, path) or is_same_or_below(path, wpath)):
                        continue
                    watches.append({"path": wpath, "token": watch.token.decode("ascii", "replace")[:80],
                                    "domid": conn.domid, "connection": conn.id,
                                    "via": "ring" if conn.is_domain else "socket"})
        shown_watches = watches[:MAX_ITEMS]
        return {"path": path, "nodes": nodes, "left_out": left_out, "watches": shown_watches,
                "watches_left_out": len(watches) - len(shown_watches)}


# What an errno from OP_INSPECT means, by view (None: any view).
_HINTS = {
    ("pagetables", EINVAL): " (a process domain, or no such vCPU)",
    ("grants", EINVAL): " (the domain has no grant table)",
    (None, EPERM): " (only the privileged domain may inspect)",
    (None, ESRCH): " (no such domain)",
}


def _hint(view: str, errno: int) -> str:
    return _HINTS.get((view, errno)) or _HINTS.get((None, errno), "")


def parse_va(text: str | None) -> int:
    """The pagetables view's virtual address (hex with 0x, or decimal), checked here so that a
    typo is a one-line error before the hypervisor is asked."""
    if text is None:
        raise InspectRequestError("pagetables needs a virtual address (--pagetables VA)")
    try:
        va = int(text[:MAX_VA_TEXT + 1], 0)
    except ValueError:
        raise InspectRequestError(f"not a virtual address: {text[:MAX_VA_TEXT]!r} (give 0x... or decimal)") from None
    if len(text) > MAX_VA_TEXT or not 0 <= va < 1 << 64:
        raise InspectRequestError(f"virtual address {text[:MAX_VA_TEXT]}... is not 64-bit")
    if 1 << 47 <= va < 0xFFFF_8000_0000_0000:
        raise InspectRequestError(f"virtual address {va:#x} is not canonical (bits 47-63 must all be equal)")
    return va


def _shown_value(value: bytes) -> str:
    text = value[:MAX_VALUE_SHOWN].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text + (f"... ({len(value)} bytes)" if len(value) > MAX_VALUE_SHOWN else "")

