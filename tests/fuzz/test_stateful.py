"""The hostile-guest state machine: hypothesis drives chains of hypercalls built from abi.strategies.

Rules draw whole argument structs with `abi.strategies.strategy_for` and keep
what the hypervisor hands back (ports, grant frames, pinned tables) in
bundles, so chains such as alloc_unbound -> send -> close, setup_table ->
grant -> map -> unmap and pin -> mmu_update -> unpin are reached. After every
step the fuzzer's oracle (MMU, event-channel and grant-table checkers, the
victim's memory, frame ownership) must hold.
"""
from __future__ import annotations

import struct

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from abi import event_channel as ev
from abi import grant_table as gt
from abi import xen as X
from abi.strategies import strategy_for
from pvhyp.fuzz import oracle, runner
from pvhyp.fuzz.ops import Step, all_ops
from pvhyp.fuzz.runner import make_hv
from pvhyp.fuzz.world import BUFFER_PAGES, DOMID_SELF

STRUCT_OPS = [op for op in all_ops() if op.struct is not None and op.cmd is not None]
ARG = 0x100          # where argument buffers go in the attacker's memory
NR = X.HYPERCALL_NUMBERS


class HostileGuest(RuleBasedStateMachine):
    ports = Bundle("ports")
    grant_frames = Bundle("grant_frames")
    pinned = Bundle("pinned")

    @initialize()
    def world(self):
        self.fz = runner.Fuzzer(make_hv, seed=0, full_every=1 << 30)
        self.w = self.fz.world
        self.pt_pfns = list(range(BUFFER_PAGES, len(self.w.attacker.p2m)))

    def call(self, hypercall: str, args, writes=()) -> None:
        """Run one step through the fuzzer, so the oracle's per-step rules apply."""
        failure = self.fz.step_once(Step(hypercall, NR[hypercall], list(args), list(writes)))
        assert failure is None, f"{failure.kind}: {failure.detail}"

    def result_of(self, hypercall: str, args, writes=()) -> int:
        for addr, data in writes:
            self.w.write(addr, data)
        from pvhyp.hypercall_table import HypercallContext
        result = self.w.hv.hypercalls.dispatch(HypercallContext(self.w.attacker.vcpus[0]),
                                               NR[hypercall], (list(args) + [0] * 6)[:6])
        problem = oracle.check_result(hypercall, result, (list(args) + [0] * 6)[:6])
        assert problem is None, problem
        return result

    # --- any op of a family, its struct drawn from abi.strategies ---

    @rule(data=st.data(), op=st.sampled_from(STRUCT_OPS))
    def struct_op(self, data, op):
        value = data.draw(strategy_for(op.struct))
        blob = op.struct.build(value)
        args = {"cmd_ptr": [op.cmd, ARG], "cmd_ptr_count": [op.cmd, ARG, 1],
                "cmd_vcpu_ptr": [op.cmd, 0, ARG]}[op.shape]
        self.call(op.hypercall, args, [(ARG, blob)])

    # --- event channels: alloc -> send/unmask/bind_vcpu -> close ---

    @rule(target=ports, remote=st.sampled_from([DOMID_SELF, 1, 2, 0]))
    def alloc_unbound(self, remote):
        blob = ev.evtchn_alloc_unbound.build({"dom": DOMID_SELF, "remote_dom": remote, "port": 0})
        rc = self.result_of("event_channel_op", [ev.EVTCHNOP_alloc_unbound, ARG], [(ARG, blob)])
        return ev.evtchn_alloc_unbound.parse(self.w.read(ARG, len(blob)))["port"] if rc == 0 else 0

    @rule(port=ports, cmd=st.sampled_from([ev.EVTCHNOP_send, ev.EVTCHNOP_unmask, ev.EVTCHNOP_close,
                                           ev.EVTCHNOP_status]))
    def port_op(self, port, cmd):
        if cmd == ev.EVTCHNOP_status:
            blob = ev.evtchn_status.build({"dom": DOMID_SELF, "port": port, "status": 0, "vcpu": 0,
                                           "u": {"virq": 0}})
        else:
            blob = struct.pack("<I", port)
        self.call("event_channel_op", [cmd, ARG], [(ARG, blob)])

    @rule(port=ports, vcpu=st.sampled_from([0, 1, 0xFFFF_FFFF]))
    def bind_vcpu(self, port, vcpu):
        self.call("event_channel_op", [ev.EVTCHNOP_bind_vcpu, ARG], [(ARG, struct.pack("<II", port, vcpu))])

    # --- grant tables: setup -> write an entry -> map / copy -> unmap ---

    @rule(target=grant_frames, nr=st.sampled_from([1, 2, 4]))
    def setup_table(self, nr):
        blob = gt.gnttab_setup_table.build({"dom": DOMID_SELF, "nr_frames": nr, "status": 0,
                                            "frame_list": ARG + 0x100})
        self.result_of("grant_table_op", [gt.GNTTABOP_setup_table, ARG, 1], [(ARG, blob)])
        out = gt.gnttab_setup_table.parse(self.w.read(ARG, len(blob)))
        if out["status"] != 0:
            return 0
        return struct.unpack("<Q", self.w.read(ARG + 0x100, 8))[0]

    @rule(frame=grant_frames, ref=st.integers(0, 511), flags=st.sampled_from([0, 1, 5, 0x19, 0xFFFF]),
          domid=st.sampled_from([1, 2, 0]), pfn=st.integers(0, 95))
    def write_grant_entry(self, frame, ref, flags, domid, pfn):
        hv = self.w.hv
        if not hv.frames.owned_by(frame, self.w.attacker.domid):
            return
        gfn = self.w.attacker.p2m[pfn] if pfn < len(self.w.attacker.p2m) else pfn
        hv.memory.write((frame << 12) + ref * 8, gt.grant_entry_v1.build({"flags": flags, "domid": domid,
                                                                           "frame": gfn & 0xFFFF_FFFF}))

    @rule(ref=st.integers(0, 8), flags=st.sampled_from([gt.GNTMAP_host_map, gt.GNTMAP_host_map | gt.GNTMAP_readonly,
                                                        gt.GNTMAP_device_map, 0]))
    def map_and_unmap_own_grant(self, ref, flags):
        blob = gt.gnttab_map_grant_ref.build({"host_addr": 0x5000, "flags": flags, "ref": ref, "dom": 1,
                                              "status": 0, "handle": 0, "dev_bus_addr": 0})
        self.call("grant_table_op", [gt.GNTTABOP_map_grant_ref, ARG, 1], [(ARG, blob)])
        out = gt.gnttab_map_grant_ref.parse(self.w.read(ARG, len(blob)))
        if out["status"] == 0:
            unmap = gt.gnttab_unmap_grant_ref.build({"host_addr": 0x5000, "dev_bus_addr": out["dev_bus_addr"],
                                                     "handle": out["handle"], "status": 0})
            self.call("grant_table_op", [gt.GNTTABOP_unmap_grant_ref, ARG, 1], [(ARG, unmap)])

    # --- the PV MMU: pin -> update -> unpin ---

    @rule(target=pinned, level=st.sampled_from([1, 2, 3, 4]), data=st.data())
    def pin(self, level, data):
        mfn = self.w.attacker.p2m[data.draw(st.sampled_from(self.pt_pfns))]
        blob = X.mmuext_op.build({"cmd": X.MMUEXT_PIN_L1_TABLE + level - 1, "arg1": {"mfn": mfn},
                                  "arg2": {"nr_ents": 0}})
        rc = self.result_of("mmuext_op", [ARG, 1, 0, DOMID_SELF], [(ARG, blob)])
        return mfn if rc == 0 else 0

    @rule(table=pinned, index=st.integers(0, 511), data=st.data())
    def update_entry(self, table, index, data):
        target = data.draw(st.sampled_from(self.w.attacker.p2m + list(self.w.victim.p2m[:2]) + [0, table]))
        flags = data.draw(st.sampled_from([0, 1, 3, 5, 7, 0x67, 0x87, 0x8000_0000_0000_0007]))
        blob = X.mmu_update.build({"ptr": (table << 12) | index * 8 | X.MMU_NORMAL_PT_UPDATE,
                                   "val": (target << 12) | flags})
        self.call("mmu_update", [ARG, 1, 0, DOMID_SELF], [(ARG, blob)])

    @rule(table=pinned)
    def unpin(self, table):
        blob = X.mmuext_op.build({"cmd": X.MMUEXT_UNPIN_TABLE, "arg1": {"mfn": table}, "arg2": {"nr_ents": 0}})
        self.call("mmuext_op", [ARG, 1, 0, DOMID_SELF], [(ARG, blob)])

    @invariant()
    def invariants_hold(self):
        if hasattr(self, "fz"):
            assert oracle.full_check(self.w, self.fz.checkers) == []

    def teardown(self):
        if hasattr(self, "fz"):
            self.fz.close()


HostileGuest.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None,
                                          suppress_health_check=list(HealthCheck))
test_hostile_guest = HostileGuest.TestCase
