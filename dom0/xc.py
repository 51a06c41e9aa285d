"""A libxc-like wrapper: typed privileged hypercalls over a hypercall channel.

What the toolstack and the domain builder call (xc_domain_create,
xc_domain_getinfo, xc_vcpu_setcontext, xc_domain_populate_physmap,
pin_table, xc_map_foreign_pages, ...). Arguments are marshalled with abi into
a bounce buffer in dom0's own memory (libxc's hypercall buffers), the
hypercall is made through the channel, and a negative result raises
XenError carrying Xen's errno.

The bounce buffer is the top BUFFER_PAGES pages of the channel's memory
unless another region is given; one XenCtrl serialises its calls, so a
caller sharing the channel should give each XenCtrl its own region.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

from abi import domctl as D
from abi import errno as xen_errno
from abi import memory as M
from abi import sysctl as S
from abi import xen as X
from abi.arch_x86_xen import vcpu_guest_context, xen_arch_domainconfig
from abi.cdefs import plain
from abi.errno import ERRNO_NAMES
from abi.x86_pte import PAGE_SIZE
from abi.xen import DOMID_SELF

BUFFER_PAGES = 8
XEN_PFN_SIZE = 8
_NR = X.HYPERCALL_NUMBERS


class XenError(Exception):
    """A hypercall that returned -errno."""

    def __init__(self, op: str, errno: int):
        self.op = op
        self.errno = errno
        super().__init__(f"{op} failed: -{ERRNO_NAMES.get(errno, errno)}")


def _zeroed(struct) -> dict:
    return plain(struct.parse(bytes(struct.sizeof())))


class XenCtrl:
    def __init__(self, channel, buffer_offset: int | None = None, buffer_size: int = BUFFER_PAGES * PAGE_SIZE):
        self.channel = channel
        memory = channel.memory
        if buffer_offset is None:
            buffer_offset = len(memory) - buffer_size
        if buffer_offset < 0 or buffer_offset + buffer_size > len(memory):
            raise ValueError("hypercall buffer outside the channel's memory")
        self._base = buffer_offset
        self._size = buffer_size
        self._memory = memory
        self._lock = threading.RLock()

    # --- bounce buffers -------------------------------------------------------------------

    def _call(self, op: str, nr: int, buffers: list[bytes], make_args):
        """Place `buffers` in the bounce area, call `make_args(addresses)` -> hypercall args;
        return (result, [bytes of each buffer after the call])."""
        with self._lock:
            addresses, at = [], self._base
            for data in buffers:
                if at + len(data) > self._base + self._size:
                    raise ValueError(f"{op}: {sum(map(len, buffers))} bytes exceed the hypercall buffer")
                self._memory[at:at + len(data)] = data
                addresses.append(at)
                at = (at + len(data) + 15) & ~15
            rc = self.channel.hypercall(nr, *make_args(addresses))
            out = [bytes(self._memory[a:a + len(b)]) for a, b in zip(addresses, buffers)]
        if rc < 0:
            raise XenError(op, -rc)
        return rc, out

    # --- domctl ---------------------------------------------------------------------------

    def domctl(self, cmd: int, domid: int, struct=None, value: dict | None = None,
               extra: bytes | None = None, handle_field: str | None = None, op: str = "domctl"):
        """One XEN_DOMCTL_*: (returned domid, union payload parsed as `struct`, extra buffer after).

        `extra` is a second buffer whose address goes into the payload's guest
        handle `handle_field`."""
        value = dict(value or {})
        header = {"cmd": cmd, "interface_version": D.XEN_DOMCTL_INTERFACE_VERSION, "domain": domid}

        def build(extra_addr: int | None) -> bytes:
            raw = bytearray(D.xen_domctl.sizeof())
            raw[0:4] = header["cmd"].to_bytes(4, "little")
            raw[4:8] = header["interface_version"].to_bytes(4, "little")
            raw[8:10] = header["domain"].to_bytes(2, "little")
            if struct is not None:
                payload = dict(value)
                if handle_field is not None:
                    payload[handle_field] = extra_addr
                built = struct.build(payload)
                u = len(raw) - 128
                raw[u:u + len(built)] = built
            return bytes(raw)

        with self._lock:
            extra_addr = None
            if extra is not None:
                extra_addr = (self._base + D.xen_domctl.sizeof() + 15) & ~15
            buffers = [build(extra_addr)] + ([extra] if extra is not None else [])
            _, out = self._call(op, _NR["domctl"], buffers, lambda a: [a[0]])
        raw = out[0]
        u = len(raw) - 128
        parsed = plain(struct.parse(raw[u:u + struct.sizeof()])) if struct is not None else None
        return int.from_bytes(raw[8:10], "little"), parsed, (out[1] if extra is not None else None)

    def domain_create(self, domid: int = 0, max_vcpus: int = 1, flags: int = 0,
                      max_grant_frames: int = -1, max_maptrack_frames: int = -1,
                      max_evtchn_port: int = 1023, grant_opts: int = 2, handle: bytes = bytes(16)) -> int:
        """xc_domain_create: returns the new domain's id (domid 0 = let Xen choose)."""
        config = _zeroed(D.xen_domctl_createdomain)
        config.update(handle=handle, flags=flags, max_vcpus=max_vcpus, max_evtchn_port=max_evtchn_port,
                      max_grant_frames=max_grant_frames, max_maptrack_frames=max_maptrack_frames,
                      grant_opts=grant_opts, arch=_zeroed(xen_arch_domainconfig))
        new_domid, _, _ = self.domctl(D.XEN_DOMCTL_createdomain, domid, D.xen_domctl_createdomain,
                                      config, op="XEN_DOMCTL_createdomain")
        return new_domid

    def domain_destroy(self, domid: int) -> None:
        self.domctl(D.XEN_DOMCTL_destroydomain, domid, op="XEN_DOMCTL_destroydomain")

    def domain_pause(self, domid: int) -> None:
        self.domctl(D.XEN_DOMCTL_pausedomain, domid, op="XEN_DOMCTL_pausedomain")

    def domain_unpause(self, domid: int) -> None:
        self.domctl(D.XEN_DOMCTL_unpausedomain, domid, op="XEN_DOMCTL_unpausedomain")

    def domain_getinfo(self, domid: int) -> dict:
        """XEN_DOMCTL_getdomaininfo: the info of `domid`, or of the next domain above it."""
        _, info, _ = self.domctl(D.XEN_DOMCTL_getdomaininfo, domid, D.xen_domctl_getdomaininfo,
                                 _zeroed(D.xen_domctl_getdomaininfo), op="XEN_DOMCTL_getdomaininfo")
        return info

    def domain_setmaxmem(self, domid: int, max_memkb: int) -> None:
        self.domctl(D.XEN_DOMCTL_max_mem, domid, D.xen_domctl_max_mem, {"max_memkb": max_memkb},
                    op="XEN_DOMCTL_max_mem")

    def domain_max_vcpus(self, domid: int, max_vcpus: int) -> None:
        self.domctl(D.XEN_DOMCTL_max_vcpus, domid, D.xen_domctl_max_vcpus, {"max": max_vcpus},
                    op="XEN_DOMCTL_max_vcpus")

    def vcpu_setcontext(self, domid: int, vcpu: int, context: dict) -> None:
        self.domctl(D.XEN_DOMCTL_setvcpucontext, domid, D.xen_domctl_vcpucontext,
                    {"vcpu": vcpu}, extra=vcpu_guest_context.build(context), handle_field="ctxt",
                    op="XEN_DOMCTL_setvcpucontext")

    def vcpu_getcontext(self, domid: int, vcpu: int) -> dict:
        _, _, out = self.domctl(D.XEN_DOMCTL_getvcpucontext, domid, D.xen_domctl_vcpucontext,
                                {"vcpu": vcpu}, extra=bytes(vcpu_guest_context.sizeof()),
                                handle_field="ctxt", op="XEN_DOMCTL_getvcpucontext")
        return plain(vcpu_guest_context.parse(out))

    def vcpu_getinfo(self, domid: int, vcpu: int) -> dict:
        _, info, _ = self.domctl(D.XEN_DOMCTL_getvcpuinfo, domid, D.xen_domctl_getvcpuinfo,
                                 dict(_zeroed(D.xen_domctl_getvcpuinfo), vcpu=vcpu), op="XEN_DOMCTL_getvcpuinfo")
        return info

    def domain_sethandle(self, domid: int, handle: bytes) -> None:
        self.domctl(D.XEN_DOMCTL_setdomainhandle, domid, D.xen_domctl_setdomainhandle, {"handle": handle},
                    op="XEN_DOMCTL_setdomainhandle")

    def domain_get_guest_width(self, domid: int) -> int:
        """xc_domain_get_guest_width: bytes per guest word (8 for 64-bit PV)."""
        _, op, _ = self.domctl(D.XEN_DOMCTL_get_address_size, domid, D.xen_domctl_address_size, {"size": 0},
                               op="XEN_DOMCTL_get_address_size")
        return op["size"] // 8

    def domain_set_address_size(self, domid: int, size: int) -> None:
        self.domctl(D.XEN_DOMCTL_set_address_size, domid, D.xen_domctl_address_size, {"size": size},
                    op="XEN_DOMCTL_set_address_size")

    def hypercall_init(self, domid: int, gmfn: int) -> None:
        self.domctl(D.XEN_DOMCTL_hypercall_init, domid, D.xen_domctl_hypercall_init, {"gmfn": gmfn},
                    op="XEN_DOMCTL_hypercall_init")

    # --- sysctl ---------------------------------------------------------------------------

    def _sysctl(self, cmd: int, struct, value: dict, extra: bytes | None = None, handle_field=None, op="sysctl"):
        with self._lock:
            size = S.xen_sysctl.sizeof()
            extra_addr = (self._base + size + 15) & ~15
            payload = dict(value)
            if handle_field:
                payload[handle_field] = extra_addr
            raw = bytearray(size)
            raw[0:4] = cmd.to_bytes(4, "little")
            raw[4:8] = S.XEN_SYSCTL_INTERFACE_VERSION.to_bytes(4, "little")
            built = struct.build(payload)
            raw[size - 128:size - 128 + len(built)] = built
            buffers = [bytes(raw)] + ([extra] if extra is not None else [])
            _, out = self._call(op, _NR["sysctl"], buffers, lambda a: [a[0]])
        u = size - 128
        return plain(struct.parse(out[0][u:u + struct.sizeof()])), (out[1] if extra is not None else None)

    def physinfo(self) -> dict:
        info, _ = self._sysctl(S.XEN_SYSCTL_physinfo, S.xen_sysctl_physinfo, _zeroed(S.xen_sysctl_physinfo),
                               op="XEN_SYSCTL_physinfo")
        return info

    def domain_getinfolist(self, first_domain: int = 0, max_domains: int = 16) -> list[dict]:
        size = D.xen_domctl_getdomaininfo.sizeof()
        op, out = self._sysctl(S.XEN_SYSCTL_getdomaininfolist, S.xen_sysctl_getdomaininfolist,
                               {"first_domain": first_domain, "max_domains": max_domains,
                                "buffer": 0, "num_domains": 0},
                               extra=bytes(size * max_domains), handle_field="buffer",
                               op="XEN_SYSCTL_getdomaininfolist")
        return [plain(D.xen_domctl_getdomaininfo.parse(out[i * size:(i + 1) * size]))
                for i in range(op["num_domains"])]

    # --- memory ---------------------------------------------------------------------------

    def populate_physmap(self, domid: int, pfns: Sequence[int], extent_order: int = 0, mem_flags: int = 0,
                         batch: int = 256) -> list[int]:
        """xc_domain_populate_physmap_exact: give `domid` these pfns; the machine frames back (PV)."""
        mfns: list[int] = []
        for start in range(0, len(pfns), batch):
            chunk = pfns[start:start + batch]
            extents = b"".join(p.to_bytes(XEN_PFN_SIZE, "little") for p in chunk)
            with self._lock:
                list_addr = (self._base + M.xen_memory_reservation.sizeof() + 15) & ~15
                reservation = M.xen_memory_reservation.build({
                    "extent_start": list_addr, "nr_extents": len(chunk), "extent_order": extent_order,
                    "mem_flags": mem_flags, "domid": domid})
                rc, out = self._call("XENMEM_populate_physmap", _NR["memory_op"],
                                     [reservation, extents],
                                     lambda a: [M.XENMEM_populate_physmap, a[0]])
            if rc != len(chunk):
                raise XenError("XENMEM_populate_physmap", xen_errno.ENOMEM)
            mfns.extend(int.from_bytes(out[1][i * 8:i * 8 + 8], "little") for i in range(len(chunk)))
        return mfns

    # --- page tables ----------------------------------------------------------------------

    def mmuext_op(self, ops: list[dict], domid: int = DOMID_SELF) -> None:
        """HYPERVISOR_mmuext_op on `domid`'s behalf (foreigndom)."""
        size = X.mmuext_op.sizeof()
        data = b"".join(X.mmuext_op.build(o) for o in ops)
        self._call("mmuext_op", _NR["mmuext_op"], [data, bytes(8)],
                   lambda a: [a[0], len(data) // size, a[1], domid])

    def pin_table(self, level: int, mfn: int, domid: int) -> None:
        """libxc's pin_table: MMUEXT_PIN_L<level>_TABLE of `mfn` for `domid`."""
        cmd = {1: X.MMUEXT_PIN_L1_TABLE, 2: X.MMUEXT_PIN_L2_TABLE,
               3: X.MMUEXT_PIN_L3_TABLE, 4: X.MMUEXT_PIN_L4_TABLE}[level]
        self.mmuext_op([{"cmd": cmd, "arg1": {"mfn": mfn}, "arg2": {"nr_ents": 0}}], domid)

    # --- foreign mappings -----------------------------------------------------------------

    def map_foreign_pages(self, domid: int, pfns, writable: bool = True) -> list[memoryview]:
        """xc_map_foreign_pages: one writable view per guest frame (privcmd mmap)."""
        return self.channel.map_foreign(domid, list(pfns), writable)
