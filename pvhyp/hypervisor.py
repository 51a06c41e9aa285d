"""The hypervisor: machine memory, the frame table, domains, the hypercall table.

Subsystems (PV MMU, event channels, grant tables, time, CPU engine) attach
themselves with `attach(hv)`; they keep per-domain state on the Domain and
hear about domain creation and destruction through the hooks below.
"""
from __future__ import annotations

import importlib
import threading
from typing import Callable

from pvhyp.domain import Domain
from pvhyp.hypercall_table import HypercallTable
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from pvhyp.mm.frametable import DOMID_XEN, FrameTable
from pvhyp.trace import Trace

DEFAULT_MEMORY_MB = 1024
INVALID_M2P_ENTRY = 0xFFFF_FFFF_FFFF_FFFF
DOMID_FIRST_RESERVED = 0x7FF0

# Each names a module with `attach(hv)`; absent ones are skipped so that the
# core runs while a subsystem is still being built.
SUBSYSTEMS = (
    "pvhyp.mm.mmu",
    "pvhyp.event_channel",
    "pvhyp.grant_table",
    "pvhyp.time",
    "pvhyp.sched",
    "pvhyp.console",
)


class Hypervisor:
    # XEN_DOMCTL_createdomain's rover: the last domid it handed out (pvhyp/domctl.py).
    domid_rover: int = 0

    def __init__(self, memory_mb: int = DEFAULT_MEMORY_MB):
        self.memory = MachineMemory(memory_mb << 20)
        self.frames = FrameTable(self.memory)
        self.trace = Trace()
        self.hypercalls = HypercallTable(self)
        self.domains: dict[int, Domain] = {}
        self.lock = threading.RLock()
        self.domain_create_hooks: list[Callable[[Domain], None]] = []
        self.domain_destroy_hooks: list[Callable[[Domain], None]] = []
        self.close_hooks: list[Callable[[], None]] = []     # stop a subsystem's threads

        # The machine-to-phys table: 8 bytes per machine frame, in the
        # hypervisor's own contiguous frames; guests see it read-only at
        # MACH2PHYS_VIRT_START.
        self.m2p_nr_frames = (self.memory.nr_frames * 8 + PAGE_SIZE - 1) // PAGE_SIZE
        self.m2p_first_mfn = self.frames.alloc_contiguous(DOMID_XEN, self.m2p_nr_frames)
        m2p_base = self.m2p_first_mfn << PAGE_SHIFT
        self.memory.write(m2p_base, b"\xff" * (self.m2p_nr_frames * PAGE_SIZE))

        # Filled by the CPU engine's layout: L4 slot -> entry for the
        # hypervisor's part of every guest address space (slots 256-271).
        self.xen_l4_slots: dict[int, int] = {}

        for name in SUBSYSTEMS:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as e:
                if e.name != name:
                    raise
                continue
            module.attach(self)

    def close(self) -> None:
        """Stop every subsystem's threads, then release machine memory.

        A thread left running would go on touching memory that is gone (and
        a process making many hypervisors, like the fuzzer, would pile them up).
        """
        for hook in reversed(self.close_hooks):
            hook()
        self.close_hooks.clear()
        self.memory.close()

    # --- machine-to-phys ---

    @property
    def m2p_mfns(self) -> range:
        return range(self.m2p_first_mfn, self.m2p_first_mfn + self.m2p_nr_frames)

    def set_m2p(self, mfn: int, pfn: int) -> None:
        self.memory.write_u64((self.m2p_first_mfn << PAGE_SHIFT) + mfn * 8, pfn)

    def get_m2p(self, mfn: int) -> int:
        return self.memory.read_u64((self.m2p_first_mfn << PAGE_SHIFT) + mfn * 8)

    # --- domains ---

    def create_domain(self, max_vcpus: int = 1, max_pages: int = 0, domid: int | None = None,
                      privileged: bool = False, paging: bool = True, config: dict | None = None) -> Domain:
        with self.lock:
            if domid is None:
                domid = next(i for i in range(1, DOMID_FIRST_RESERVED) if i not in self.domains)
            elif domid in self.domains or not 0 <= domid < DOMID_FIRST_RESERVED:
                raise ValueError(f"domid {domid} unavailable")
            d = Domain(self, domid, max_vcpus, max_pages, privileged=privileged, paging=paging, config=config)
            # shared_info: one frame owned by the domain (Xen's is Xen-heap, shared with it).
            d.shared_info_mfn = self.frames.alloc(domid, 1)[0]
            self.domains[domid] = d
        for hook in self.domain_create_hooks:
            hook(d)
        return d

    def get_domain(self, domid: int) -> Domain | None:
        return self.domains.get(domid)

    def destroy_domain(self, domid: int) -> None:
        """Tear down a domain and return every frame it owned, scrubbed."""
        with self.lock:
            d = self.domains.get(domid)
            if d is None:
                raise KeyError(domid)
            d.is_dying = True
        for v in d.vcpus:
            v.kick()
        for hook in reversed(self.domain_destroy_hooks):
            hook(d)
        with self.lock:
            owner = self.frames.owner
            for mfn in range(self.frames.nr_frames):
                if owner[mfn] == domid:
                    self.set_m2p(mfn, INVALID_M2P_ENTRY)
                    self.frames.free(mfn)
            del self.domains[domid]
        self.trace.forget(domid)

    def populate(self, d: Domain, nr_pages: int) -> list[int]:
        """Give `d` pseudo-physical pages 0..nr_pages-1 (the builder's first step)."""
        with d.lock:
            if d.tot_pages + nr_pages > d.max_pages:
                raise ValueError(f"d{d.domid}: {nr_pages} pages exceed max_pages {d.max_pages}")
            mfns = self.frames.alloc(d.domid, nr_pages)
            base = len(d.p2m)
            d.p2m.extend(mfns)
            for i, mfn in enumerate(mfns):
                self.set_m2p(mfn, base + i)
            d.tot_pages += nr_pages
            return mfns
