"""Python-side process domains that make real hypercalls through InProcessChannel.

Argument structs are built with abi, written into the domain's own memory
(pointers are pseudo-physical addresses) and read back after the call,
exactly as a process guest would. Shared by tests/evtchn and tests/gnttab.
"""
from __future__ import annotations

import pathlib

from abi import event_channel as EA
from abi import grant_table as GA
from abi import xen as X
from abi.xen import HYPERCALL_NUMBERS
from pvhyp import event_channel as ev
from pvhyp.channel import InProcessChannel, create_process_domain
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE

ROOT_DIR = pathlib.Path(__file__).resolve().parents[2]     # the repository
ARG_PAGE = 1            # pfn of the argument buffer
DATA_PAGE = 8           # first pfn tests use as data


def _clean(parsed) -> dict:
    return {k: v for k, v in parsed.items() if not k.startswith("_")}


def build(struct, fields: dict) -> bytes:
    base = dict(struct.parse(bytes(struct.sizeof())))
    base.update(fields)
    return struct.build(base)


class Guest:
    def __init__(self, hv, nr_pages: int = 64, privileged: bool = False, vcpus: int = 1,
                 domid: int | None = None):
        self.hv = hv
        self.domain = create_process_domain(hv, nr_pages, privileged=privileged, max_vcpus=vcpus,
                                             domid=domid)
        self.domid = self.domain.domid
        self.ch = InProcessChannel(hv, self.domain)
        self.arg = ARG_PAGE << PAGE_SHIFT

    # --- raw calls ---
    def call(self, name: str, *args: int) -> int:
        return self.ch.hypercall(HYPERCALL_NUMBERS[name], *args)

    def put(self, addr: int, data: bytes) -> None:
        self.ch.memory[addr:addr + len(data)] = data

    def get(self, addr: int, n: int) -> bytes:
        return bytes(self.ch.memory[addr:addr + n])

    def op(self, hypercall_name: str, cmd: int, struct, fields: dict, count: int | None = None):
        self.put(self.arg, build(struct, fields))
        args = (cmd, self.arg) if count is None else (cmd, self.arg, count)
        rc = self.call(hypercall_name, *args)
        return rc, _clean(struct.parse(self.get(self.arg, struct.sizeof())))

    def ops(self, cmd: int, struct, items: list[dict], count: int | None = None):
        """A batch of grant-table ops; returns rc and the structs read back."""
        size = struct.sizeof()
        self.put(self.arg, b"".join(build(struct, f) for f in items))
        rc = self.call("grant_table_op", cmd, self.arg, len(items) if count is None else count)
        return rc, [_clean(struct.parse(self.get(self.arg + i * size, size))) for i in range(len(items))]

    def evtchn(self, name: str, **fields):
        return self.op("event_channel_op", getattr(EA, f"EVTCHNOP_{name}"), getattr(EA, f"evtchn_{name}"), fields)

    def gnttab(self, name: str, count: int = 1, **fields):
        return self.op("grant_table_op", getattr(GA, f"GNTTABOP_{name}"), getattr(GA, f"gnttab_{name}"),
                       fields, count)

    # --- the 2-level event state as the guest sees it ---
    def _shared(self) -> memoryview:
        return self.ch.map_machine_frame(self.domain.shared_info_mfn)

    def _bit(self, offset: int, nr: int) -> bool:
        return bool(self._shared()[offset + nr // 8] & (1 << (nr % 8)))

    def _set_bit(self, offset: int, nr: int, value: bool) -> None:
        s = self._shared()
        if value:
            s[offset + nr // 8] |= 1 << (nr % 8)
        else:
            s[offset + nr // 8] &= ~(1 << (nr % 8)) & 0xFF

    def pending(self, port: int) -> bool:
        return self._bit(ev.OFF_EVTCHN_PENDING, port)

    def masked(self, port: int) -> bool:
        return self._bit(ev.OFF_EVTCHN_MASK, port)

    def mask(self, port: int, value: bool = True) -> None:
        self._set_bit(ev.OFF_EVTCHN_MASK, port, value)

    def clear_pending(self, port: int) -> None:
        self._set_bit(ev.OFF_EVTCHN_PENDING, port, False)

    def upcall_pending(self, vcpu: int = 0) -> bool:
        return self._bit(vcpu * ev.VCPU_INFO_SIZE + ev.OFF_UPCALL_PENDING, 0)

    def pending_sel(self, vcpu: int = 0) -> int:
        off = vcpu * ev.VCPU_INFO_SIZE + ev.OFF_PENDING_SEL
        return int.from_bytes(self._shared()[off:off + 8], "little")

    def ack_upcall(self, vcpu: int = 0) -> None:
        """What a guest's upcall handler does: clear upcall_pending and the selector."""
        s = self._shared()
        base = vcpu * ev.VCPU_INFO_SIZE
        s[base + ev.OFF_UPCALL_PENDING] = 0
        s[base + ev.OFF_PENDING_SEL:base + ev.OFF_PENDING_SEL + 8] = bytes(8)

    # --- events through the ABI ---
    def alloc_unbound(self, remote: int, dom: int = X.DOMID_SELF) -> int:
        rc, out = self.evtchn("alloc_unbound", dom=dom, remote_dom=remote)
        assert rc == 0, rc
        return out["port"]

    def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        rc, out = self.evtchn("bind_interdomain", remote_dom=remote_dom, remote_port=remote_port)
        assert rc == 0, rc
        return out["local_port"]

    def send(self, port: int) -> int:
        return self.evtchn("send", port=port)[0]

    # --- grants, written as a guest writes them into its mapped table ---
    def table_frames(self, nr: int = 1) -> list[int]:
        rc, out = self.gnttab("setup_table", dom=X.DOMID_SELF, nr_frames=nr, frame_list=self.arg + 512)
        assert rc == 0 and out["status"] == GA.GNTST_okay, out
        return [int.from_bytes(self.get(self.arg + 512 + 8 * i, 8), "little") for i in range(nr)]

    def _entry(self, ref: int) -> memoryview:
        v2 = self.domain.grant_table.gt_version == 2
        size = 16 if v2 else 8
        per = PAGE_SIZE // size
        frame = self.table_frames(ref // per + 1)[ref // per]
        return self.ch.map_machine_frame(frame)[(ref % per) * size:(ref % per + 1) * size]

    def grant(self, ref: int, domid: int, pfn: int, flags: int = GA.GTF_permit_access,
              sub: tuple[int, int] | None = None, trans: tuple[int, int] | None = None) -> None:
        e = self._entry(ref)
        e[2:4] = domid.to_bytes(2, "little")
        if self.domain.grant_table.gt_version == 1:
            e[4:8] = pfn.to_bytes(4, "little")
        elif trans is not None:
            e[4:6] = trans[0].to_bytes(2, "little")
            e[8:12] = trans[1].to_bytes(4, "little")
        else:
            if sub is not None:
                e[4:6] = sub[0].to_bytes(2, "little")
                e[6:8] = sub[1].to_bytes(2, "little")
            e[8:16] = pfn.to_bytes(8, "little")
        e[0:2] = flags.to_bytes(2, "little")         # flags last, as a guest publishes a grant

    def flags(self, ref: int) -> int:
        return int.from_bytes(self._entry(ref)[0:2], "little")

    def set_flags(self, ref: int, value: int) -> None:
        self._entry(ref)[0:2] = value.to_bytes(2, "little")

    def gstatus(self, ref: int) -> int:
        """GTF_reading/GTF_writing as the granter sees them (v1: in flags; v2: status frame)."""
        gt = self.domain.grant_table
        if gt.gt_version == 1:
            return self.flags(ref) & (GA.GTF_reading | GA.GTF_writing)
        mfn = gt.status[ref // 2048]
        off = (ref % 2048) * 2
        return int.from_bytes(self.ch.map_machine_frame(mfn)[off:off + 2], "little")

    def map_grant(self, dom: int, ref: int, flags: int = GA.GNTMAP_host_map, host_addr: int = 0x10000) -> dict:
        rc, outs = self.ops(GA.GNTTABOP_map_grant_ref, GA.gnttab_map_grant_ref,
                            [{"dom": dom, "ref": ref, "flags": flags, "host_addr": host_addr}])
        assert rc == 0
        return outs[0]

    def unmap_grant(self, handle: int, host_addr: int = 0x10000, dev_bus_addr: int = 0) -> int:
        rc, outs = self.ops(GA.GNTTABOP_unmap_grant_ref, GA.gnttab_unmap_grant_ref,
                            [{"handle": handle, "host_addr": host_addr, "dev_bus_addr": dev_bus_addr}])
        assert rc == 0
        return outs[0]["status"]

    def page(self, pfn: int) -> memoryview:
        return self.ch.memory[pfn << PAGE_SHIFT:(pfn + 1) << PAGE_SHIFT]


def connect(a: Guest, b: Guest) -> tuple[int, int]:
    """An interdomain channel: a allocates, b binds. Returns (a's port, b's port)."""
    pa = a.alloc_unbound(b.domid)
    pb = b.bind_interdomain(a.domid, pa)
    return pa, pb


__all__ = ["Guest", "connect", "build", "DATA_PAGE", "PAGE_SIZE"]
