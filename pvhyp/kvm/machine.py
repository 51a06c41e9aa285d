"""The KVM side of one hypervisor: /dev/kvm, a VM per guest domain, the stubs' area,
the page-table writes KVM must be shown, and the time slices.

`attach(hv, quirks)` (called by the composition root after pvhyp.cpu.runner has
built the XenArea and hv.cpu) adds the KVM area's L4 slots, hands hv.cpu this
machine's engine factory, and routes the PV MMU's page-table writes here.

Why the writes are routed: kvm_pvm has no EPT; its shadow MMU write-protects the
guest's page-table frames against *guest* writes, and never sees what the
hypervisor writes through its own mapping of machine memory (mmu_update, ptwr,
grant maps, validation). So every such write is queued, per VM, by machine
address, and the next return to the guest of any of that VM's vCPUs rewrites the
same value through the direct map at CPL0 (the return stub), which KVM tracks.
A frame that becomes a page table again (re-validated after host writes that were
never replayed) gets one misaligned rewrite, which makes KVM drop its shadows of
that frame altogether. The self-test (quirks.py) proves both on this kernel. The
MMU's flush_tlb already kicks the vCPUs that may hold the old translation, and
their next entry replays the queue: hardware TLB rules, as Xen's guests expect.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable

from abi.x86_pte import _PAGE_PRESENT, PAGE_SHIFT, l4_table_offset
from abi.xen_x86_64 import MACH2PHYS_VIRT_START
from pvhyp.kvm import area as A
from pvhyp.kvm.engine import KvmEngine
from pvhyp.kvm.m2p import M2P_ALIAS_VIRT_START
from pvhyp.kvm.vm import Kvm, KvmVcpu, KvmVm, install_kick_handler
from pvhyp.mm.frametable import DOMID_XEN
from pvhyp.mm.pagetype import PGT_l1_page_table, PGT_l4_page_table
from pvhyp.pv.emulate import cpuid_policy

if TYPE_CHECKING:
    from pvhyp.kvm.quirks import KvmQuirks

MSR_MISC_FEATURES_ENABLES = 0x140
MSR_STAR, MSR_LSTAR, MSR_SYSCALL_MASK = 0xC000_0081, 0xC000_0082, 0xC000_0084
CPUID_FAULTING_ENABLE = 1
# The leaves KVM is told (its own emulator and checks read them; on VT-x/AMD-V they are
# what a plain cpuid returns when faulting is off).
_CPUID_LEAVES = (0, 1, 7, 0x4000_0000, 0x4000_0001, 0x4000_0002, 0x8000_0000, 0x8000_0001, 0x8000_0002,
                 0x8000_0003, 0x8000_0004, 0x8000_0008)
_KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1


class VmState:
    """One guest domain's VM and its queue of page-table writes to replay."""

    def __init__(self, vm: KvmVm):
        self.vm = vm
        self.engines: set[KvmEngine] = set()
        self._lock = threading.Lock()
        self._writes: dict[int, None] = {}      # machine addresses, in order, once each
        self._overflow = False

    def queue_writes(self, maddrs: Iterable[int]) -> None:
        with self._lock:
            for maddr in maddrs:
                self._writes[maddr] = None
            if len(self._writes) > 4096:
                self._writes.clear()
                self._overflow = True

    def take_writes(self, limit: int) -> list[int] | None:
        """Up to `limit` queued addresses; None when there were more (drop every shadow page)."""
        if not self._writes and not self._overflow:
            return []
        with self._lock:
            if self._overflow or len(self._writes) > limit:
                self._writes.clear()
                self._overflow = False
                return None
            writes = list(self._writes)
            self._writes.clear()
        return writes


class KvmMachine:
    """`frame_owner(mfn)` is the domid owning a frame (the frame table's answer)."""

    def __init__(self, memory, alloc_frame: Callable[[], int], frame_owner: Callable[[int], int],
                 quirks: "KvmQuirks", kvm: Kvm | None = None):
        self.memory = memory
        self.quirks = quirks
        self.frame_owner = frame_owner
        self.kvm = kvm if kvm is not None else Kvm()
        self._own_kvm = kvm is None
        install_kick_handler()
        self.area = A.KvmArea(memory, alloc_frame)
        self._vms: dict[int, VmState] = {}          # domid -> its VM
        self._lock = threading.Lock()
        self._deadlines: dict[KvmEngine, float] = {}
        self._deadline_changed = threading.Condition(self._lock)
        self._ticker: threading.Thread | None = None
        self._stopping = False

    # --- engines ------------------------------------------------------------
    def make_engine(self, memory, xen_area, host) -> KvmEngine:
        """The EngineFactory PvEntry calls (host is the PvEntry: its vcpu names the domain)."""
        domain = host.vcpu.domain
        with self._lock:
            state = self._vms.get(domain.domid)
            if state is None:
                state = self._vms[domain.domid] = VmState(KvmVm(self.kvm, memory.host_address, memory.size))
        engine = KvmEngine(memory, xen_area, host, self, state)
        with self._lock:
            state.engines.add(engine)
        return engine

    def release_engine(self, engine: KvmEngine) -> None:
        with self._lock:
            state = engine.vm_state
            state.engines.discard(engine)
            self._deadlines.pop(engine, None)
            if not state.engines:
                for domid, candidate in list(self._vms.items()):
                    if candidate is state:
                        del self._vms[domid]
                state.vm.close()

    def configure_vcpu(self, vcpu: KvmVcpu) -> None:
        entries = []
        for leaf in _CPUID_LEAVES:
            eax, ebx, ecx, edx = cpuid_policy(leaf, 0, vcpu.vm.vcpus.index(vcpu))
            flags = _KVM_CPUID_FLAG_SIGNIFCANT_INDEX if leaf == 7 else 0
            entries.append((leaf, 0, flags, eax, ebx, ecx, edx))
        vcpu.set_cpuid(entries)
        vcpu.set_msrs({MSR_LSTAR: A.SYSCALL_TRAP_VA, MSR_STAR: 0, MSR_SYSCALL_MASK: 0})
        if self.quirks.cpuid_faulting:
            vcpu.set_msrs({MSR_MISC_FEATURES_ENABLES: CPUID_FAULTING_ENABLE})

    # --- page-table writes made by the hypervisor --------------------------------
    def _state_of_frame(self, mfn: int) -> VmState | None:
        if not self.quirks.shadow_paging:
            return None         # EPT/NPT: KVM walks the tables itself; a TLB flush is enough
        return self._vms.get(self.frame_owner(mfn))

    def page_table_written(self, maddr: int) -> None:
        state = self._state_of_frame(maddr >> PAGE_SHIFT)
        if state is not None:
            state.queue_writes((maddr & ~7,))

    def page_table_replaced(self, mfn: int) -> None:
        """The whole frame changed under KVM (a table written or validated anew): drop its shadows."""
        state = self._state_of_frame(mfn)
        if state is not None:
            state.queue_writes(((mfn << PAGE_SHIFT) + A.SHADOW_ZAP_OFFSET,))

    def watch_page_table_writes(self, mmu) -> None:
        """Wrap the PV MMU's two page-table writers and its validation (one hook each)."""
        write_entry, write_table, validate_page = mmu.write_entry, mmu.write_table, mmu.validate_page
        read_entry = mmu.read_entry

        def write_entry_seen(maddr: int, value: int) -> None:
            was_present = read_entry(maddr) & _PAGE_PRESENT
            write_entry(maddr, value)
            # KVM shadows present entries only; a new one it finds by walking the tables
            # when the guest first faults on it (Debian boot: 55k replays -> 30k).
            if was_present:
                self.page_table_written(maddr)

        def write_table_seen(mfn: int, entries) -> None:
            write_table(mfn, entries)
            self.page_table_replaced(mfn)

        def validate_page_seen(mfn: int, type_: int) -> int:
            rc = validate_page(mfn, type_)
            if rc == 0 and PGT_l1_page_table <= type_ <= PGT_l4_page_table:
                self.page_table_replaced(mfn)
            return rc
        mmu.write_entry, mmu.write_table, mmu.validate_page = write_entry_seen, write_table_seen, validate_page_seen

    # --- time slices ------------------------------------------------------------
    # One thread sleeps until the earliest deadline, and only then: with no vCPU running (all
    # idle guests block in SCHEDOP_block, outside run()) it waits for a deadline to be set,
    # so idle KVM guests cost no CPU (a 2 ms polling ticker cost two-thirds of a core).
    def set_deadline(self, engine: KvmEngine, deadline: float | None) -> None:
        with self._lock:
            if deadline is None:
                self._deadlines.pop(engine, None)
                return
            earliest = min(self._deadlines.values(), default=None)
            self._deadlines[engine] = deadline
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, daemon=True, name="kvm-ticker")
                self._ticker.start()
            elif earliest is None or deadline < earliest:
                self._deadline_changed.notify()

    def _tick(self) -> None:
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                expired = [engine for engine, deadline in self._deadlines.items() if deadline <= now]
                for engine in expired:
                    del self._deadlines[engine]
                    engine.deadline_kick()      # a flag and a signal: safe under the lock
                earliest = min(self._deadlines.values(), default=None)
                self._deadline_changed.wait(None if earliest is None else earliest - now)

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            self._deadline_changed.notify()
            states = list(self._vms.values())
            self._vms.clear()
        for state in states:
            state.vm.close()
        if self._own_kvm:
            self.kvm.close()


def attach(hv, quirks: "KvmQuirks") -> KvmMachine:
    """After pvhyp.cpu.runner.attach(hv): x86 vCPUs run on KVM."""
    machine = KvmMachine(hv.memory, lambda: hv.frames.alloc(DOMID_XEN, 1)[0], lambda mfn: hv.frames.owner[mfn],
                         quirks)
    hv.xen_l4_slots.update(machine.area.xen_l4_entries())
    if quirks.m2p_slot_reserved:
        # The same read-only M2P tables one slot up, where Linux finds them (m2p.py).
        hv.xen_l4_slots[l4_table_offset(M2P_ALIAS_VIRT_START)] = hv.xen_l4_slots[l4_table_offset(MACH2PHYS_VIRT_START)]
        hv.m2p_virt_start = M2P_ALIAS_VIRT_START
    hv.cpu.make_engine = machine.make_engine
    hv.cpu.engine_name = "kvm"
    hv.cpu.kvm_machine = machine
    machine.watch_page_table_writes(hv.mmu)
    hv.close_hooks.append(machine.close)
    return machine
