"""The hypervisor: machine memory, the frame table, domains, the hypercall table.

Subsystems (PV MMU, event channels, grant tables, time, scheduler, console,
CPU engine) are attached by the composition root, pvhyp.host.build_hypervisor,
in a fixed order, each with its module's `attach(hv)`; the attributes they set
are declared on the class below. They keep per-domain state on the Domain and
hear about domain creation and destruction through the hooks below.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from abi.xen import DOMID_FIRST_RESERVED, DOMID_SELF
from abi.xen_x86_64 import INVALID_M2P_ENTRY, MACH2PHYS_VIRT_START
from pvhyp.domain import Domain
from pvhyp.hypercall_table import HypercallTable
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from pvhyp.mm.frametable import DOMID_XEN, FrameTable
from pvhyp.trace import Trace
from pvhyp.xsm import DUMMY_POLICY, DummyPolicy

if TYPE_CHECKING:
    from pvhyp.cpu.runner import CpuSubsystem
    from pvhyp.mm.mmu import PVMMU
    from pvhyp.sched import Scheduler
    from pvhyp.time import TimeKeeper

DEFAULT_MEMORY_MB = 1024


class Hypervisor:
    # Set by the subsystems' attach(hv), in pvhyp.host's order (pvhyp.host.SUBSYSTEMS):
    mmu: PVMMU                                          # pvhyp.mm.mmu
    evtchn_lock: threading.RLock                        # pvhyp.event_channel: every port table
    gnttab_lock: threading.RLock                        # pvhyp.grant_table: every grant table
    may_host_map: Callable[[Domain, int, bool], bool]   # pvhyp.grant_table: may a process map this frame
    time: TimeKeeper                                    # pvhyp.time
    sched: Scheduler                                    # pvhyp.sched
    console_sinks: list[Callable[[int, bytes], None]]   # pvhyp.console: live CONSOLEIO_write listeners
    # ...and by the CPU engine's (pvhyp.cpu.runner) when the host runs x86 guests.
    cpu: CpuSubsystem | None = None
    # XEN_DOMCTL_createdomain's rover: the last domid it handed out (pvhyp/domctl.py).
    domid_rover: int = 0
    # What every privileged op asks (pvhyp/xsm.py). The dummy policy is stateless, so
    # the class-wide default is shared safely; `hv.xsm = ...` installs another on one hypervisor.
    xsm: DummyPolicy = DUMMY_POLICY
    # Where XENMEM_machphys_mapping says the read-only M2P is: Xen's address, or an alias
    # when the CPU engine cannot map that slot (pvhyp/kvm/m2p.py: kvm_pvm keeps slot 256).
    m2p_virt_start: int = MACH2PHYS_VIRT_START

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

    def domain_by_any_id(self, current: Domain, domid: int) -> Domain | None:
        """Xen's rcu_lock_domain_by_any_id: DOMID_SELF names the caller; None (-ESRCH) if no such domain."""
        return current if domid == DOMID_SELF else self.domains.get(domid)
