"""Hypercall channels: how process domains (dom0, Python guests) reach the hypervisor.

An x86 guest traps into the hypervisor with `syscall`; a process domain sends
a message instead. Either way the call lands in the same hypercall table,
with argument pointers read from the caller's own memory. A process domain
addresses its memory pseudo-physically (pfn << 12 | offset); its frames are
one contiguous machine range, so the process sees them as one buffer
(`channel.memory`), whether it lives in this process or maps the memfd.

The channel interface dom0/ and pvguest/ rely on (duck-typed, so they never
import pvhyp):
    domid                       the caller's domain id
    memory                      writable buffer: the caller's pseudo-physical memory
    hypercall(nr, *args) -> int
    map_foreign(domid, pfns, writable=True) -> list[memoryview]   (privileged: privcmd)
    map_machine_frame(mfn, writable=True) -> memoryview          (a frame the hypervisor
                                                                   granted this domain: grant maps)
    wait_for_event(timeout) -> bool   True when an upcall (evtchn_upcall_pending) is signalled
    shared_info                 writable view of the domain's shared_info frame
This module holds the in-process channel; the socket channel for processes of
their own (pvhyp/channel_server.py, pvguest/hypercall_channel.py) speaks the
same interface, plus `fileno()`/`drain_events()` for select loops and, for
dom0, create_domain / connect_domain / destroy_domain / domain_info /
readconsole (process domains' lifecycle and every domain's console_io text).
"""
from __future__ import annotations

import threading

from abi import errno as E
from pvhyp.domain import Domain
from pvhyp.hypercall_table import HypercallContext
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE
from pvhyp.mm.frametable import DOMID_XEN


class ChannelError(Exception):
    """A refused channel-level request (privilege, bad frame); carries a Xen errno."""

    def __init__(self, errno: int, message: str):
        super().__init__(message)
        self.errno = errno


# Page types a frame may hold while nobody may write it directly (pvhyp/mm/pagetype.py:
# L1-L4 tables and descriptor pages); a writable mapping would bypass validation.
_TYPES_NEVER_WRITABLE = frozenset({1, 2, 3, 4, 5})


def foreign_frames(hv, caller: Domain, domid: int, pfns, writable: bool) -> list[int]:
    """privcmd's mmap-batch check: the machine frames of `domid`'s `pfns` that `caller` may map.

    The one rule set for every channel (in-process and socket). Who may map
    foreign frames is the policy's (hv.xsm.map_gmfn_foreign: the privileged
    domain), asked first; then only populated frames, never the hypervisor's,
    and never writable while the frame is typed as a page table or descriptor
    page: Xen refuses that writable reference (get_page_type PGT_writable_page
    fails), or dom0 could rewrite a validated table.
    """
    target = hv.get_domain(domid)
    rc = hv.xsm.map_gmfn_foreign(caller, target)
    if rc:
        raise ChannelError(-rc, f"d{caller.domid} may not map the frames of d{domid}")
    if target is None or target.is_dying:
        raise ChannelError(E.ESRCH, f"no domain {domid}")
    frames = hv.frames
    types = frames.type
    mfns = []
    for pfn in pfns:
        mfn = target.pfn_to_mfn(pfn)
        if not frames.owned_by(mfn, domid):
            raise ChannelError(E.EINVAL, f"d{domid} pfn {pfn:#x} is not populated")
        if writable and types[mfn] in _TYPES_NEVER_WRITABLE \
                and frames.type_count[mfn] > 0:
            raise ChannelError(E.EINVAL, f"d{domid} pfn {pfn:#x} is a page table; map it read-only")
        mfns.append(mfn)
    return mfns


def create_process_domain(hv, nr_pages: int, privileged: bool = False, domid: int | None = None,
                          max_vcpus: int = 1) -> Domain:
    """A domain whose "CPU" is an OS process: contiguous memory, pseudo-physical addressing."""
    d = hv.create_domain(max_vcpus=max_vcpus, max_pages=nr_pages + 64, domid=domid,
                         privileged=privileged, paging=False)
    try:
        first = hv.frames.alloc_contiguous(d.domid, nr_pages)
    except Exception:
        hv.destroy_domain(d.domid)      # no half-made domain left behind
        raise
    with d.lock:
        d.p2m = list(range(first, first + nr_pages))
        for pfn, mfn in enumerate(d.p2m):
            hv.set_m2p(mfn, pfn)
        d.tot_pages = nr_pages
    for v in d.vcpus:
        v.online = True
    return d


class InProcessChannel:
    """The channel for a process domain that lives in the hypervisor's own process (tests, `pvhyp run`)."""

    def __init__(self, hv, domain: Domain):
        if domain.paging:
            raise ValueError("an in-process channel serves process domains only")
        self.hv = hv
        self.domain = domain
        self.domid = domain.domid
        first = domain.p2m[0]
        self.memory = hv.memory.view[first << PAGE_SHIFT:(first + len(domain.p2m)) << PAGE_SHIFT]
        self.shared_info = hv.memory.frame(domain.shared_info_mfn)
        self._ctx = HypercallContext(domain.vcpus[0])
        self._event = threading.Event()
        for v in domain.vcpus:
            v.wake_callback = lambda _v: self._event.set()

    def hypercall(self, nr: int, *args: int) -> int:
        return self.hv.hypercalls.dispatch(self._ctx, nr, (list(args) + [0] * 6)[:6])

    def map_foreign(self, domid: int, pfns, writable: bool = True) -> list[memoryview]:
        return [self._frame_view(mfn, writable)
                for mfn in foreign_frames(self.hv, self.domain, domid, pfns, writable)]

    def map_machine_frame(self, mfn: int, writable: bool = True) -> memoryview:
        if not self.hv.may_host_map(self.domain, mfn, writable):
            raise ChannelError(E.EPERM, f"d{self.domid} may not map mfn {mfn:#x}")
        return self._frame_view(mfn, writable)

    def _frame_view(self, mfn: int, writable: bool) -> memoryview:
        if self.hv.frames.owner[mfn] == DOMID_XEN:
            raise ChannelError(E.EPERM, "hypervisor frames are never mapped")
        base = mfn << PAGE_SHIFT
        view = self.hv.memory.view[base:base + PAGE_SIZE]
        return view if writable else view.toreadonly()

    def wait_for_event(self, timeout: float | None = None) -> bool:
        fired = self._event.wait(timeout)
        self._event.clear()
        return fired
