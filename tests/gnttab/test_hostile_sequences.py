"""Random op sequences from hostile guests: only Xen's answers, consistent state, bystanders untouched."""
from __future__ import annotations

import hashlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abi import errno as E
from abi import grant_table as GA
from abi import xen as X
from abi.xen import vcpu_time_info
from pvhyp import event_channel as ev
from pvhyp import grant_table as gnt
from pvhyp.time import FakeClock
from tests.evtchn.evtchn_kit import DATA_PAGE, Guest

u16 = st.integers(0, 0xFFFF)
gref = st.one_of(st.integers(0, 7), st.integers(0, 600), st.just(0xFFFF_FFFF))
u32 = st.one_of(st.integers(0, 40), st.integers(0, 0xFFFF_FFFF))
port = st.one_of(st.integers(0, 8), u32)
actor = st.integers(0, 2)
domref = st.one_of(st.integers(0, 2), st.just(-1), u16)          # index of a player, -1 = DOMID_SELF
gflags = st.sampled_from([0, GA.GNTMAP_host_map, GA.GNTMAP_host_map | GA.GNTMAP_readonly,
                          GA.GNTMAP_device_map, GA.GNTMAP_device_map | GA.GNTMAP_host_map,
                          GA.GNTMAP_host_map | GA.GNTMAP_contains_pte]) | u32
gtf = st.sampled_from([GA.GTF_permit_access, GA.GTF_permit_access | GA.GTF_readonly,
                       GA.GTF_permit_access | GA.GTF_sub_page, GA.GTF_transitive, GA.GTF_accept_transfer, 0]) | u16
addr = st.sampled_from([0, 0x1000, 0x2000, 0x10000]) | st.integers(0, (1 << 64) - 1)

OPS = st.one_of(
    st.tuples(st.just("alloc_unbound"), actor, domref, domref),
    st.tuples(st.just("bind_interdomain"), actor, domref, port),
    st.tuples(st.just("send"), actor, port),
    st.tuples(st.just("close"), actor, port),
    st.tuples(st.just("unmask"), actor, port),
    st.tuples(st.just("bind_virq"), actor, st.integers(0, 30), st.integers(0, 3)),
    st.tuples(st.just("bind_ipi"), actor, st.integers(0, 3)),
    st.tuples(st.just("bind_vcpu"), actor, port, st.integers(0, 3)),
    st.tuples(st.just("grant"), actor, st.integers(0, 7) | st.integers(0, 600), domref, st.integers(0, 80), gtf),
    st.tuples(st.just("map"), actor, domref, gref, gflags, addr),
    st.tuples(st.just("unmap"), actor, st.integers(0, 4) | st.integers(0, 300), addr, addr),
    st.tuples(st.just("copy"), actor, domref, gref, domref, st.integers(0, 80),
              st.integers(0, 4096), st.integers(0, 4096), st.integers(0, 5000), st.integers(0, 3)),
    st.tuples(st.just("set_version"), actor, st.integers(0, 3)),
    st.tuples(st.just("swap"), actor, gref, gref),
    st.tuples(st.just("setup"), actor, domref, st.integers(0, 70)),
    # A well-formed grant and its mapping, so that later hostile ops meet grants in use.
    st.tuples(st.just("share"), actor, actor, st.integers(0, 7), st.integers(0, 80),
              st.sampled_from([GA.GTF_permit_access, GA.GTF_permit_access | GA.GTF_readonly]),
              st.sampled_from([GA.GNTMAP_host_map, GA.GNTMAP_host_map | GA.GNTMAP_readonly,
                               GA.GNTMAP_device_map, GA.GNTMAP_device_map | GA.GNTMAP_host_map]),
              st.sampled_from([0x1000, 0x2000, 0x3000])),
)


def _digest(guest: Guest) -> str:
    h = hashlib.sha256(bytes(guest.ch.memory))
    h.update(bytes(guest.ch.map_machine_frame(guest.domain.shared_info_mfn)))
    return h.hexdigest()


def build_world():
    """The hypervisor, three players (the third privileged) and a bystander.

    Time stands still (a FakeClock nobody advances): with the host clock the
    hypervisor restamps every vCPU's vcpu_time_info once a second (Xen's time
    calibration), the bystander's included. That write is Xen's own, and under
    load an example outlived that second: the bystander's digest changed and
    hypothesis reported the example as Flaky. No op here reads time.
    """
    from pvhyp.host import build_hypervisor
    hv = build_hypervisor(32, cpu=False)
    hv.time.use_clock(FakeClock())          # before the first domain: nothing armed yet
    players = [Guest(hv, nr_pages=128, vcpus=2) for _ in range(2)] + [Guest(hv, nr_pages=128, privileged=True)]
    return hv, players, Guest(hv, nr_pages=16)


# A domid no domain holds: what a player's attempt to act for the bystander names instead.
UNUSED_DOMID = X.DOMID_FIRST_RESERVED - 1


def run_sequence(hv, players, ops, bystander: Guest | None = None) -> None:
    def domid(i):
        return X.DOMID_SELF if i == -1 else players[i].domid if i < len(players) else i

    def acting_for(g, i):
        """The domain player g acts for (alloc_unbound's `dom`).

        A privileged domain may open an unbound port in any domain, and the peer it
        names may bind it and send: the bystander's pending bits then change, as in
        Xen. The bystander is the domain nobody offered anything to, so a privileged
        player never acts for it (an unprivileged one still tries, and meets EPERM).
        """
        d = domid(i)
        if bystander is not None and d == bystander.domid and g.domain.is_privileged:
            return UNUSED_DOMID
        return d

    tampered = False        # a guest rewrote an entry in use: its GTF bits are its own business
    for op in ops:
        kind, g = op[0], players[op[1]]
        if kind == "alloc_unbound":
            rc = g.evtchn("alloc_unbound", dom=acting_for(g, op[2]), remote_dom=domid(op[3]))[0]
        elif kind == "bind_interdomain":
            rc = g.evtchn("bind_interdomain", remote_dom=domid(op[2]), remote_port=op[3])[0]
        elif kind in ("send", "close", "unmask"):
            rc = g.evtchn(kind, port=op[2])[0]
        elif kind == "bind_virq":
            rc = g.evtchn("bind_virq", virq=op[2], vcpu=op[3])[0]
        elif kind == "bind_ipi":
            rc = g.evtchn("bind_ipi", vcpu=op[2])[0]
        elif kind == "bind_vcpu":
            rc = g.evtchn("bind_vcpu", port=op[2], vcpu=op[3])[0]
        elif kind == "grant":
            gt = g.domain.grant_table
            per = 512 if gt.gt_version == 1 else 256
            if op[2] < gt.nr_grant_entries() or op[2] < per:
                tampered |= op[2] < len(gt.active) and gt.active[op[2]].pin != 0
                g.grant(op[2], domid(op[3]) & 0xFFFF, DATA_PAGE + op[4], op[5])
            rc = 0
        elif kind == "map":
            rc, _ = g.ops(GA.GNTTABOP_map_grant_ref, GA.gnttab_map_grant_ref,
                          [{"dom": domid(op[2]) & 0xFFFF, "ref": op[3], "flags": op[4], "host_addr": op[5]}])
        elif kind == "unmap":
            rc, _ = g.ops(GA.GNTTABOP_unmap_grant_ref, GA.gnttab_unmap_grant_ref,
                          [{"handle": op[2], "host_addr": op[3], "dev_bus_addr": op[4]}])
        elif kind == "copy":
            _, sdom, sref, ddom, dpfn, soff, doff, length, flags = op[1:]
            src = {"u": {"ref": sref}, "domid": domid(sdom) & 0xFFFF, "offset": soff & 0xFFFF}
            dst = {"u": {"gmfn": DATA_PAGE + dpfn} if not flags & 2 else {"ref": dpfn},
                   "domid": domid(ddom) & 0xFFFF, "offset": doff & 0xFFFF}
            rc, _ = g.ops(GA.GNTTABOP_copy, GA.gnttab_copy,
                          [{"source": src, "dest": dst, "len": length & 0xFFFF, "flags": flags}])
        elif kind == "set_version":
            rc = g.gnttab("set_version", version=op[2])[0]
        elif kind == "swap":
            rc, _ = g.ops(GA.GNTTABOP_swap_grant_ref, GA.gnttab_swap_grant_ref,
                          [{"ref_a": op[2], "ref_b": op[3]}])
        elif kind == "share":
            _, granter, grantee, ref, pfn, gflags_, mflags, host = op
            src, dst = players[granter], players[grantee]
            if ref < src.domain.grant_table.nr_grant_entries():
                tampered |= src.domain.grant_table.active[ref].pin != 0
                src.grant(ref, dst.domid, DATA_PAGE + pfn, gflags_)
            rc, _ = dst.ops(GA.GNTTABOP_map_grant_ref, GA.gnttab_map_grant_ref,
                            [{"dom": src.domid, "ref": ref, "flags": mflags, "host_addr": host}])
        elif kind == "setup":
            rc = g.gnttab("setup_table", dom=domid(op[2]) & 0xFFFF, nr_frames=op[3], frame_list=g.arg + 512)[0]
        assert isinstance(rc, int) and -200 < rc <= 0xFFFF_FFFF, (op, rc)
        assert ev.check_consistency(hv) == [], op
        assert gnt.check_consistency(hv, check_flags=not tampered) == [], op


@settings(max_examples=int(os.environ.get("PVHYP_HOSTILE_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=1, max_size=25))
def test_hostile_sequences_keep_state_consistent(ops):
    hv, players, bystander = build_world()
    try:
        before = _digest(bystander)
        run_sequence(hv, players, ops, bystander)
        assert _digest(bystander) == before
        for p in players:                   # tearing down in any state leaves nothing behind
            hv.destroy_domain(p.domid)
        assert ev.check_consistency(hv) == [] and gnt.check_consistency(hv) == []
        from pvhyp.mm.checker import check_invariants
        assert check_invariants(hv) == []
        # Every frame the players or their grants held is back (orphans freed or none left).
        assert all(o in (-1, bystander.domid) or o == 0x7FF2 for o in hv.frames.owner), \
            sorted({o for o in hv.frames.owner})
    finally:
        hv.close()


def test_time_calibration_rewrites_only_the_bystanders_time_record():
    """Why the fuzz runs on a still clock (it was Flaky under load): with the host
    clock the once-a-second calibration restamps vcpu_info[0].time of every domain,
    the bystander's too. Only those bytes change, and only in shared_info."""
    from pvhyp.host import build_hypervisor
    from pvhyp.time import VCPU_INFO_TIME_OFFSET
    hv = build_hypervisor(32, cpu=False)
    try:
        bystander = Guest(hv, nr_pages=16)
        assert hv.time.next_deadline() is not None          # the calibration is armed
        memory = bytes(bystander.ch.memory)
        shared = bytes(bystander._shared())
        hv.time._calibrate()                                # what its timer does a second later
        changed = [i for i, (x, y) in enumerate(zip(shared, bytes(bystander._shared()))) if x != y]
        time_record = range(VCPU_INFO_TIME_OFFSET, VCPU_INFO_TIME_OFFSET + vcpu_time_info.sizeof())
        assert changed and all(i in time_record for i in changed), changed
        assert bytes(bystander.ch.memory) == memory
    finally:
        hv.close()


def test_nothing_writes_the_bystander_while_the_fuzz_world_waits():
    hv, players, bystander = build_world()
    try:
        before = _digest(bystander)
        assert hv.time.next_deadline() is None              # no timer that could write behind the ops
        hv.time.clock.advance(60 * 1_000_000_000)
        assert _digest(bystander) == before
    finally:
        hv.close()


def test_a_privileged_player_never_acts_for_the_bystander():
    """alloc_unbound(dom=bystander) by the privileged player, then bind and send: Xen
    lets this reach the bystander's pending bits (dom0 may act for any domain), so the
    fuzz names an unused domid instead. Both halves are checked."""
    hv, players, bystander = build_world()
    try:
        assert bystander.domid >= len(players)              # domref's raw domids can name it
        opener = [("alloc_unbound", 2, bystander.domid, -1), ("bind_interdomain", 2, bystander.domid, 1)]
        sends = [("send", 2, port) for port in range(1, 8)]
        before = _digest(bystander)
        run_sequence(hv, players, opener + sends, bystander)
        assert _digest(bystander) == before
        run_sequence(hv, players, opener + sends)           # without the rule: Xen's own semantics
        assert bystander.pending(1) and bystander.upcall_pending()
    finally:
        hv.close()


def test_huge_counts_stop_at_the_end_of_guest_memory(a, b):
    size = GA.gnttab_map_grant_ref.sizeof()
    end = len(b.ch.memory) - size * 3
    b.put(end, bytes(size * 3))
    assert b.call("grant_table_op", GA.GNTTABOP_map_grant_ref, end, 0x7FFF_FFFF) == -E.EFAULT
    assert b.call("grant_table_op", GA.GNTTABOP_copy, end, 0x7FFF_FFFF) == -E.EFAULT
    assert b.call("grant_table_op", GA.GNTTABOP_swap_grant_ref, end, 0x7FFF_FFFF) == -E.EFAULT



def test_copy_batch_cannot_name_a_foreign_frame_after_a_grant_ref_op():
    """One GNTTABOP_copy batch: op 1 names domain V by grant ref (fails: V granted nothing),
    op 2 names the same domid by frame number. Only DOMID_SELF may name frames: op 2 must be
    refused, and V's memory must not change (a pvhyp fuzz finding)."""
    from abi import grant_table as G
    from abi import xen as X
    from pvhyp.channel import InProcessChannel, create_process_domain
    from pvhyp.host import build_hypervisor
    hv = build_hypervisor(32, cpu=False)
    try:
        attacker = create_process_domain(hv, 16, domid=1)
        victim = create_process_domain(hv, 16, domid=2)
        vmem = InProcessChannel(hv, victim).memory
        vmem[:] = b"\xAA" * len(vmem)
        chan = InProcessChannel(hv, attacker)
        chan.memory[0x2000:0x3000] = b"\x55" * 0x1000
        def op(src_gmfn, dest, flags):
            return G.gnttab_copy.build({"source": {"u": {"gmfn": src_gmfn}, "domid": X.DOMID_SELF, "offset": 0},
                                        "dest": {"u": {"gmfn": dest}, "domid": 2, "offset": 0},
                                        "len": 64, "flags": flags, "status": 0})
        batch = op(2, 5, G.GNTCOPY_dest_gref) + op(2, 5, 0)
        chan.memory[0x100:0x100 + len(batch)] = batch
        assert chan.hypercall(X.HYPERCALL_NUMBERS["grant_table_op"], G.GNTTABOP_copy, 0x100, 2) == 0
        size = G.gnttab_copy.sizeof()
        second = G.gnttab_copy.parse(bytes(chan.memory[0x100 + size:0x100 + 2 * size]))
        assert second.status == G.GNTST_permission_denied
        assert bytes(vmem) == b"\xAA" * len(vmem)
    finally:
        hv.close()
