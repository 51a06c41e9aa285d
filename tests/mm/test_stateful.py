"""A hostile guest against the PV MMU, audited after every step by pvhyp.mm.checker.

The attacker issues random mmu_update / mmuext_op / update_va_mapping /
writable-page-table writes / memory_op / raw stores through its own writable
mappings, aimed at its own frames, its page tables, a victim's frames, the
hypervisor's frames and frames that do not exist, with garbage flags. After
each step the independent checker recomputes every count and rule from
memory; an unprivileged attacker must also leave the victim's memory alone.
"""
from __future__ import annotations

import functools
import hashlib
import struct

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from abi import xen as X
from pvhyp.guest_access import GuestFault
from pvhyp.mm.checker import check_invariants
from pvhyp.mm.ptwr import ptwr_emulate, ptwr_rmw

from .mm_kit import Guest, make_hv

FLAGS = st.sampled_from([0x0, 0x1, 0x3, 0x5, 0x7, 0x25, 0x27, 0x67, 0x87, 0x105, 0x107, 0x1E7, 0x19, 0xE07,
                         (1 << 63) | 0x7, (1 << 52) | 0x5, 0x7FF0_0000_0000_0007, 0xFFF])
CMDS = st.sampled_from([0] * 8 + [1, 2, 3, 5, 7])
STEPS = {"count": 0}


def guest_step(fn):
    """A rule; when the guest has unmapped its own argument buffers the step is a no-op
    (the hypercall table turns faults inside a hypercall into -EFAULT by itself)."""
    @functools.wraps(fn)
    def step(self, *args, **kwargs):
        try:
            fn(self, *args, **kwargs)
        except GuestFault:
            pass
    return step


class HostileGuest(RuleBasedStateMachine):
    @initialize(privileged=st.booleans())
    def build(self, privileged):
        self.hv = make_hv(memory_mb=8)
        self.privileged = privileged
        # pfns 8-47 writable data; 48-91 mapped read-only (material for page tables); 92-95 boot tables.
        self.a = Guest(self.hv, 96, privileged=privileged, read_only_pfns=range(48, 92),
                       domid=0 if privileged else None)
        self.a.domain.vm_assist = 1 << X.VMASST_TYPE_writable_pagetables
        self.v = Guest(self.hv, 24)
        self.victim_digest = self._victim_digest()
        hv = self.hv
        a, v = self.a, self.v
        self.pools = {
            "own": [a.mfn(p) for p in range(8, 96)],
            "tables": [a.mfn(p) for p in range(48, 92)] + [a.tables.l4, a.tables.l3, a.tables.l2, a.tables.l1s[0]],
            "victim": [v.mfn(p) for p in (0, 9, 20)] + v.tables.l1s + [v.tables.l4, v.domain.shared_info_mfn],
            "odd": [0, hv.m2p_first_mfn, hv.frames.nr_frames - 1, hv.frames.nr_frames, (1 << 40) - 1,
                    a.domain.shared_info_mfn],
        }

    def _victim_digest(self) -> str:
        h = hashlib.sha256()
        for mfn in self.v.domain.p2m:
            h.update(self.hv.memory.read(mfn << 12, 4096))
        return h.hexdigest()

    def _domid(self, data):
        return data.draw(st.sampled_from([X.DOMID_SELF] * 6 + [self.v.domid, X.DOMID_IO, X.DOMID_XEN, 0x7FF4, 77]))

    def _frame(self, data, tables=False):
        kinds = ["own", "own", "tables", "tables", "victim", "odd"] + ["tables"] * (3 if tables else 0)
        return data.draw(st.sampled_from(self.pools[data.draw(st.sampled_from(kinds))]))

    def _entry(self, data):
        return self._frame(data) << 12 | data.draw(FLAGS)

    def _live_tables(self):
        f = self.hv.frames
        owners = (self.a.domid, self.v.domid) if self.privileged else (self.a.domid,)
        return [m for m in self.pools["tables"] + self.v.tables.l1s
                if f.owner[m] in owners and f.type_count[m] and 1 <= f.type[m] <= 4]

    def _ptr(self, data):
        a = self.a
        choice = data.draw(st.integers(0, 9))
        live = self._live_tables()
        if choice <= 3 and live:
            frame, slot = data.draw(st.sampled_from(live)), data.draw(st.integers(0, 511))
        elif choice <= 5:
            frame, slot = self._frame(data, tables=True), data.draw(st.integers(0, 511))
        elif choice == 6:
            frame, slot = a.tables.l1s[0], data.draw(st.integers(8, 95))
        elif choice == 7:
            frame, slot = a.tables.l4, data.draw(st.sampled_from([1, 2, 255, 256, 258, 271, 272, 511]))
        else:
            frame, slot = self._frame(data), data.draw(st.integers(0, 511))
        return frame << 12 | slot * 8 | data.draw(CMDS)

    @rule(data=st.data())
    @guest_step
    def mmu_update(self, data):
        n = data.draw(st.integers(1, 3))
        reqs = [(self._ptr(data), self._entry(data)) for _ in range(n)]
        self.a.mmu_update(reqs, self._domid(data))

    @rule(data=st.data())
    @guest_step
    def mmuext(self, data):
        cmd = data.draw(st.sampled_from([0, 1, 2, 3] * 3 + [4] * 4 + [5, 15, 16, 17, 13, 8, 19, 21]))
        ops = [(cmd, self._frame(data, tables=True), self._frame(data))]
        self.a.mmuext(ops, self._domid(data))

    @rule(data=st.data())
    @guest_step
    def update_va_mapping(self, data):
        va = data.draw(st.integers(8, 95)) << 12
        flags = data.draw(st.sampled_from([0, 1, 2, 4, 5, 6]))
        if data.draw(st.booleans()):
            self.a.call("update_va_mapping", va, self._entry(data), flags)
        else:
            self.a.call("update_va_mapping_otherdomain", va, self._entry(data), flags, self._domid(data))

    @rule(data=st.data())
    @guest_step
    def writable_pagetable_write(self, data):
        va = data.draw(st.integers(48, 95)) << 12 | data.draw(st.integers(0, 511)) * 8
        width = data.draw(st.sampled_from([8, 8, 4, 2, 1]))
        va += data.draw(st.integers(0, 8 // width - 1)) * width
        kind = data.draw(st.integers(0, 2))
        value = self._entry(data)
        if kind == 0:
            ptwr_emulate(self.a.vcpu, va, value, width)
        elif kind == 1:
            ptwr_emulate(self.a.vcpu, va, value, width, old=data.draw(st.sampled_from([0, value])))
        else:
            ptwr_rmw(self.a.vcpu, va, width, lambda old: old & ~2)

    @rule(data=st.data())
    def store_through_own_mapping(self, data):
        va = data.draw(st.integers(8, 95)) << 12 | data.draw(st.integers(0, 511)) * 8
        try:
            self.a.ctx.write(va, struct.pack("<Q", self._entry(data)))
        except GuestFault:           # not writable through its own tables
            pass

    @rule(data=st.data())
    @guest_step
    def memory_op(self, data):
        a = self.a
        mfn = self._frame(data)
        op = data.draw(st.sampled_from([1, 6]))
        a.ctx.write(0x6040, struct.pack("<Q", mfn if op == 1 else data.draw(st.integers(0, 120))))
        a.ctx.write(0x6000, struct.pack("<QQIIH6x", 0x6040, 1, 0, 0, self._domid(data)))
        a.call("memory_op", op, 0x6000)

    @rule(data=st.data())
    @guest_step
    def machphys_update(self, data):
        self.a.mmu_update([(self._frame(data) << 12 | 1, data.draw(st.integers(0, 200)))], self._domid(data))

    @rule()
    def back_to_the_boot_table(self):
        a = self.a
        with self.hv.mmu.lock:
            self.hv.mmu.new_guest_cr3(a.vcpu, a.tables.l4)

    @invariant()
    def audit(self):
        if not hasattr(self, "hv"):
            return
        STEPS["count"] += 1
        assert check_invariants(self.hv) == []
        if not self.privileged:
            assert self._victim_digest() == self.victim_digest

    def teardown(self):
        if hasattr(self, "hv"):
            self.hv.destroy_domain(self.a.domid)
            assert check_invariants(self.hv) == []
            self.hv.destroy_domain(self.v.domid)
            assert check_invariants(self.hv) == []
            assert self.hv.frames.free_frames == self.hv.frames.nr_frames - 1 - self.hv.m2p_nr_frames
            self.hv.close()


def test_hostile_guest_cannot_break_the_mmu():
    STEPS["count"] = 0
    # Hypothesis ends many runs before stateful_step_count: 30 examples gave 2,368-2,892
    # steps in twelve runs, close enough to the floor to fail now and then; 40 keep clear of it.
    run_state_machine_as_test(HostileGuest, settings=settings(
        max_examples=40, stateful_step_count=100, deadline=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=list(HealthCheck)))
    assert STEPS["count"] >= 2000, STEPS


@pytest.mark.slow
def test_hostile_guest_soak():
    run_state_machine_as_test(HostileGuest, settings=settings(
        max_examples=400, stateful_step_count=200, deadline=None,
        suppress_health_check=list(HealthCheck)))
