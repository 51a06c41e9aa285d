"""Every EVTCHNOP through the real hypercall path, with Xen's answers."""
from __future__ import annotations

import pytest

from abi import errno as E
from abi import event_channel as EA
from abi import xen as X
from abi.sched import SHUTDOWN_poweroff
from pvhyp import event_channel as ev
from tests.evtchn.evtchn_kit import Guest, connect

SELF = X.DOMID_SELF


def status(g, port, dom=SELF):
    rc, out = g.evtchn("status", dom=dom, port=port)
    return rc, out


# --- alloc_unbound / bind_interdomain -------------------------------------------------

def test_alloc_unbound_gives_lowest_free_port_and_status_unbound(a, b):
    assert a.alloc_unbound(b.domid) == 1
    assert a.alloc_unbound(SELF) == 2
    rc, st = status(a, 1)
    assert rc == 0 and st["status"] == EA.EVTCHNSTAT_unbound and st["u"]["unbound"]["dom"] == b.domid
    rc, st = status(a, 2)
    assert st["u"]["unbound"]["dom"] == a.domid          # DOMID_SELF recorded as the caller


def test_alloc_unbound_in_another_domain_needs_privilege(a, b, dom0):
    rc, _ = a.evtchn("alloc_unbound", dom=b.domid, remote_dom=a.domid)
    assert rc == -E.EPERM
    rc, out = dom0.evtchn("alloc_unbound", dom=b.domid, remote_dom=dom0.domid)
    assert rc == 0 and out["port"] == 1
    assert status(b, 1)[1]["u"]["unbound"]["dom"] == dom0.domid
    assert a.evtchn("alloc_unbound", dom=0x7000, remote_dom=0)[0] == -E.ESRCH


def test_bind_interdomain_links_both_ends_and_sets_local_pending(a, b):
    pa, pb = connect(a, b)
    rc, st = status(a, pa)
    assert st["status"] == EA.EVTCHNSTAT_interdomain
    assert st["u"]["interdomain"] == {"dom": b.domid, "port": pb} or \
        (st["u"]["interdomain"]["dom"], st["u"]["interdomain"]["port"]) == (b.domid, pb)
    assert b.pending(pb) and b.upcall_pending()          # conservative notification on bind
    assert not a.pending(pa)


def test_bind_interdomain_refusals(a, b, hv):
    pa = a.alloc_unbound(b.domid)
    other = a.alloc_unbound(a.domid)                     # not offered to b
    assert b.evtchn("bind_interdomain", remote_dom=a.domid, remote_port=other)[0] == -E.EINVAL
    assert b.evtchn("bind_interdomain", remote_dom=a.domid, remote_port=4000)[0] == -E.EINVAL
    assert b.evtchn("bind_interdomain", remote_dom=a.domid, remote_port=0)[0] == -E.EINVAL
    assert b.evtchn("bind_interdomain", remote_dom=0x7000, remote_port=pa)[0] == -E.ESRCH
    b.bind_interdomain(a.domid, pa)
    # Already bound: no longer unbound.
    assert b.evtchn("bind_interdomain", remote_dom=a.domid, remote_port=pa)[0] == -E.EINVAL


def test_loopback_interdomain_channel_to_self(a):
    p1 = a.alloc_unbound(SELF)
    p2 = a.bind_interdomain(SELF, p1)
    a.clear_pending(p2)
    assert a.send(p2) == 0 and a.pending(p1)


# --- send, mask, unmask -----------------------------------------------------------------

def test_send_sets_peer_pending_selector_and_upcall(a, b):
    pa, pb = connect(a, b)
    b.clear_pending(pb)
    b.ack_upcall()
    assert a.send(pa) == 0
    assert b.pending(pb) and b.upcall_pending()
    assert b.pending_sel() == 1 << (pb // 64)
    # A second send while pending changes nothing and needs no new upcall.
    b.ack_upcall()
    assert a.send(pa) == 0 and not b.upcall_pending()


def test_masked_port_is_pending_without_upcall_until_unmasked(a, b):
    pa, pb = connect(a, b)
    b.clear_pending(pb)
    b.ack_upcall()
    b.mask(pb)
    a.send(pa)
    assert b.pending(pb) and not b.upcall_pending() and b.pending_sel() == 0
    assert b.evtchn("unmask", port=pb)[0] == 0
    assert not b.masked(pb) and b.upcall_pending() and b.pending_sel() == 1


def test_send_refusals_and_silent_drop(a, b):
    unbound = a.alloc_unbound(b.domid)
    assert a.send(unbound) == 0                          # dropped silently
    assert a.send(0) == -E.EINVAL                        # reserved
    assert a.send(5) == -E.EINVAL                        # free
    assert a.send(64) == -E.EINVAL                       # beyond the allocated bucket
    assert a.send(0xFFFF_FFFF) == -E.EINVAL
    rc, out = a.evtchn("bind_virq", virq=X.VIRQ_TIMER, vcpu=0)
    assert a.send(out["port"]) == -E.EINVAL              # VIRQ ports are not sendable


def test_unmask_invalid_port(a):
    assert a.evtchn("unmask", port=64)[0] == -E.EINVAL
    assert a.evtchn("unmask", port=3)[0] == 0            # valid but free: Xen just unmasks


# --- close --------------------------------------------------------------------------------

def test_close_interdomain_leaves_peer_unbound_to_closer(a, b):
    pa, pb = connect(a, b)
    assert a.evtchn("close", port=pa)[0] == 0
    assert status(a, pa)[1]["status"] == EA.EVTCHNSTAT_closed
    rc, st = status(b, pb)
    assert st["status"] == EA.EVTCHNSTAT_unbound and st["u"]["unbound"]["dom"] == a.domid
    assert a.evtchn("close", port=pa)[0] == -E.EINVAL   # double close
    assert a.evtchn("close", port=0)[0] == -E.EINVAL
    assert a.evtchn("close", port=1000)[0] == -E.EINVAL
    # The peer can be re-bound by a.
    pa2 = a.bind_interdomain(b.domid, pb)
    assert status(a, pa2)[1]["status"] == EA.EVTCHNSTAT_interdomain


def test_close_clears_pending_but_not_mask(a, b):
    pa, pb = connect(a, b)
    b.mask(pb)
    a.send(pa)
    assert b.pending(pb)
    b.evtchn("close", port=pb)
    assert not b.pending(pb) and b.masked(pb)


def test_freed_port_is_reused_lowest_first(a, b):
    p1, p2, p3 = (a.alloc_unbound(b.domid) for _ in range(3))
    a.evtchn("close", port=p2)
    assert a.alloc_unbound(b.domid) == p2


# --- VIRQs --------------------------------------------------------------------------------

def test_bind_virq_rules(a):
    rc, out = a.evtchn("bind_virq", virq=X.VIRQ_TIMER, vcpu=1)
    assert rc == 0
    assert a.evtchn("bind_virq", virq=X.VIRQ_TIMER, vcpu=1)[0] == -E.EEXIST
    assert a.evtchn("bind_virq", virq=X.VIRQ_TIMER, vcpu=0)[0] == 0     # per-vcpu: each vcpu its own
    assert a.evtchn("bind_virq", virq=X.VIRQ_CONSOLE, vcpu=1)[0] == -E.EINVAL   # global: vcpu 0 only
    assert a.evtchn("bind_virq", virq=X.NR_VIRQS, vcpu=0)[0] == -E.EINVAL
    assert a.evtchn("bind_virq", virq=0xFFFF_FFFF, vcpu=0)[0] == -E.EINVAL
    assert a.evtchn("bind_virq", virq=X.VIRQ_TIMER, vcpu=2)[0] == -E.ENOENT
    st = status(a, out["port"])[1]
    assert st["status"] == EA.EVTCHNSTAT_virq and st["u"]["virq"] == X.VIRQ_TIMER and st["vcpu"] == 1


def test_per_vcpu_virq_is_delivered_to_that_vcpu(a):
    rc, out = a.evtchn("bind_virq", virq=X.VIRQ_TIMER, vcpu=1)
    ev.send_guest_vcpu_virq(a.domain.vcpus[1], X.VIRQ_TIMER)
    assert a.pending(out["port"]) and a.upcall_pending(1) and not a.upcall_pending(0)
    ev.send_guest_vcpu_virq(a.domain.vcpus[0], X.VIRQ_DEBUG)          # unbound: nothing happens


def test_global_virq_follows_bind_vcpu(a):
    rc, out = a.evtchn("bind_virq", virq=X.VIRQ_CONSOLE, vcpu=0)
    port = out["port"]
    assert a.evtchn("bind_vcpu", port=port, vcpu=1)[0] == 0
    ev.send_guest_global_virq(a.domain, X.VIRQ_CONSOLE)
    assert a.pending(port) and a.upcall_pending(1) and not a.upcall_pending(0)


def test_close_virq_unbinds_it(a):
    rc, out = a.evtchn("bind_virq", virq=X.VIRQ_TIMER, vcpu=0)
    a.evtchn("close", port=out["port"])
    assert X.VIRQ_TIMER not in a.domain.vcpus[0].virq_to_evtchn
    assert a.evtchn("bind_virq", virq=X.VIRQ_TIMER, vcpu=0)[0] == 0


# --- IPI, pIRQ, bind_vcpu ----------------------------------------------------------------

def test_ipi_notifies_own_vcpu(a):
    rc, out = a.evtchn("bind_ipi", vcpu=1)
    assert rc == 0
    assert a.send(out["port"]) == 0
    assert a.pending(out["port"]) and a.upcall_pending(1)
    assert a.evtchn("bind_ipi", vcpu=7)[0] == -E.ENOENT
    assert status(a, out["port"])[1]["status"] == EA.EVTCHNSTAT_ipi


def test_bind_pirq_is_refused(a, dom0):
    assert a.evtchn("bind_pirq", pirq=3, flags=0)[0] == -E.EPERM
    assert a.evtchn("bind_pirq", pirq=100000, flags=0)[0] == -E.EINVAL
    assert dom0.evtchn("bind_pirq", pirq=9, flags=EA.BIND_PIRQ__WILL_SHARE)[0] == -E.EPERM


def test_bind_vcpu_rules(a, b):
    pa, pb = connect(a, b)
    assert a.evtchn("bind_vcpu", port=pa, vcpu=1)[0] == 0
    assert status(a, pa)[1]["vcpu"] == 1
    b.clear_pending(pb)
    assert b.evtchn("bind_vcpu", port=pb, vcpu=1)[0] == 0
    b.ack_upcall(0)
    a.send(pa)
    assert b.upcall_pending(1) and not b.upcall_pending(0)
    rc, out = a.evtchn("bind_ipi", vcpu=0)
    assert a.evtchn("bind_vcpu", port=out["port"], vcpu=1)[0] == -E.EINVAL
    rc, out = a.evtchn("bind_virq", virq=X.VIRQ_TIMER, vcpu=0)
    assert a.evtchn("bind_vcpu", port=out["port"], vcpu=1)[0] == -E.EINVAL
    assert a.evtchn("bind_vcpu", port=pa, vcpu=2)[0] == -E.ENOENT
    assert a.evtchn("bind_vcpu", port=5, vcpu=0)[0] == -E.EINVAL
    assert a.evtchn("bind_vcpu", port=999, vcpu=0)[0] == -E.EINVAL


# --- status and reset across domains -------------------------------------------------------

def test_status_of_another_domain(a, b, dom0):
    pa = a.alloc_unbound(b.domid)
    assert status(b, pa, dom=a.domid)[0] == -E.EPERM
    assert status(b, 500, dom=a.domid)[0] == -E.EINVAL          # port validity first
    assert status(b, pa, dom=0x7000)[0] == -E.ESRCH
    rc, st = status(dom0, pa, dom=a.domid)
    assert rc == 0 and st["status"] == EA.EVTCHNSTAT_unbound
    assert status(a, 0)[1]["status"] == EA.EVTCHNSTAT_closed    # reserved port 0 reads closed


def test_reset(a, b, dom0):
    pa, pb = connect(a, b)
    a.evtchn("bind_virq", virq=X.VIRQ_TIMER, vcpu=0)
    assert b.evtchn("reset", dom=a.domid)[0] == -E.EPERM
    assert dom0.evtchn("reset", dom=a.domid)[0] == -E.EINVAL    # only a paused domain
    assert dom0.evtchn("reset", dom=0x7000)[0] == -E.ESRCH
    assert a.evtchn("reset", dom=SELF)[0] == 0
    assert all(c.state in (ev.ECS_FREE, ev.ECS_RESERVED) for c in a.domain.evtchn.chans)
    assert status(b, pb)[1]["status"] == EA.EVTCHNSTAT_unbound
    assert a.domain.vcpus[0].virq_to_evtchn == {}
    b.domain.pause_count = 1
    assert dom0.evtchn("reset", dom=b.domid)[0] == 0
    b.domain.pause_count = 0


# --- dispatcher ----------------------------------------------------------------------------

def test_fifo_and_unknown_ops(a):
    for cmd in (EA.EVTCHNOP_expand_array, EA.EVTCHNOP_set_priority, 14, 99, 0xFFFF_FFFF):
        assert a.call("event_channel_op", cmd, a.arg) == -E.ENOSYS


def test_init_control_checks_as_xen_then_refuses_fifo(a):
    """Xen's errors for bad requests (XSA-188's PoC checks them); pvhyp offers 2-level only."""
    def init(**fields):
        args = dict(control_gfn=2, offset=0, vcpu=0, link_bits=0, _pad=[0] * 7) | fields
        return a.op("event_channel_op", EA.EVTCHNOP_init_control, EA.evtchn_init_control, args)[0]
    assert init(vcpu=5) == -E.ENOENT
    assert init(offset=4) == -E.EINVAL
    assert init(offset=4096 - 8) == -E.EINVAL
    assert init(control_gfn=(1 << 64) - 2) == -E.EINVAL
    assert init() == -E.ENOSYS


def test_bad_argument_pointer_is_efault(a):
    assert a.call("event_channel_op", EA.EVTCHNOP_alloc_unbound, 1 << 40) == -E.EFAULT
    assert a.call("event_channel_op", EA.EVTCHNOP_send, (len(a.ch.memory)) - 2) == -E.EFAULT


def test_copy_back_keeps_guest_padding(a, b):
    pa = a.alloc_unbound(b.domid)
    raw = bytearray(EA.evtchn_bind_interdomain.build(
        {"remote_dom": a.domid, "remote_port": pa, "local_port": 0}))
    raw[2:4] = b"\xAB\xCD"                  # the padding after remote_dom
    b.put(b.arg, bytes(raw))
    assert b.call("event_channel_op", EA.EVTCHNOP_bind_interdomain, b.arg) == 0
    out = b.get(b.arg, len(raw))
    assert out[2:4] == b"\xAB\xCD" and int.from_bytes(out[8:12], "little") == 1


def test_compat_hypercall_forwards(a, b):
    pa = a.alloc_unbound(b.domid)
    op = EA.evtchn_op.build({"cmd": EA.EVTCHNOP_bind_interdomain,
                             "u": {"bind_interdomain": {"remote_dom": a.domid, "remote_port": pa,
                                                        "local_port": 0}}})
    b.put(b.arg, op)
    assert b.call("event_channel_op_compat", b.arg) == 0
    parsed = EA.evtchn_op.parse(b.get(b.arg, len(op)))
    assert parsed["u"]["bind_interdomain"]["local_port"] == 1
    b.put(b.arg, EA.evtchn_op.build({"cmd": EA.EVTCHNOP_reset, "u": {"reset": {"dom": SELF}}}))
    assert b.call("event_channel_op_compat", b.arg) == -E.ENOSYS


# --- limits -------------------------------------------------------------------------------

def test_ports_grow_by_bucket_and_stop_at_max_evtchn_port(a, b):
    assert status(a, 64)[0] == -E.EINVAL
    for expected in range(1, 64):
        assert a.alloc_unbound(b.domid) == expected
    assert a.alloc_unbound(b.domid) == 64                        # a second bucket
    assert status(a, 100)[1]["status"] == EA.EVTCHNSTAT_closed
    ev.set_max_evtchn_port(a.domain, 70)
    for expected in range(65, 71):
        assert a.alloc_unbound(b.domid) == expected
    assert a.evtchn("alloc_unbound", dom=SELF, remote_dom=b.domid)[0] == -E.ENOSPC
    assert a.evtchn("bind_ipi", vcpu=0)[0] == -E.ENOSPC


def test_domu_default_limit_and_2level_ceiling(a, dom0):
    assert a.domain.evtchn.max_evtchn_port == 1023
    for _ in range(1023):
        dom0.alloc_unbound(a.domid)
    assert dom0.domain.evtchn.valid_evtchns == EA.EVTCHN_2L_NR_CHANNELS // 4
    ev.set_max_evtchn_port(dom0.domain, 1 << 30)
    while dom0.evtchn("alloc_unbound", dom=SELF, remote_dom=0)[0] == 0:
        pass
    assert dom0.domain.evtchn.valid_evtchns == EA.EVTCHN_2L_NR_CHANNELS
    assert dom0.evtchn("alloc_unbound", dom=SELF, remote_dom=0)[0] == -E.ENOSPC


# --- domain destruction and the checker ---------------------------------------------------

def test_destroying_a_domain_unbinds_its_peers(hv, a, b):
    pa, pb = connect(a, b)
    hv.destroy_domain(a.domid)
    rc, st = status(b, pb)
    assert st["status"] == EA.EVTCHNSTAT_unbound and st["u"]["unbound"]["dom"] == a.domid
    assert ev.check_consistency(hv) == []


def test_checker_reports_a_broken_link(hv, a, b):
    pa, pb = connect(a, b)
    b.domain.evtchn.chans[pb].remote_port = 9
    problems = ev.check_consistency(hv)
    assert any("does not point back" in p for p in problems)
    b.domain.evtchn.chans[pb].remote_port = pa


def test_trace_records_sends(hv, a, b):
    records = []
    hv.trace.add_sink(records.append)
    pa, pb = connect(a, b)
    a.send(pa)
    assert any(r["kind"] == "event" and r.get("op") == "send" for r in records)
    assert any(r["kind"] == "event" and r.get("op") == "set_pending" and r["dom"] == b.domid for r in records)


@pytest.mark.parametrize("virq", [X.VIRQ_TIMER, X.VIRQ_DEBUG, X.VIRQ_XENOPROF, X.VIRQ_XENPMU])
def test_per_vcpu_virqs(virq):
    assert not ev.virq_is_global(virq)


# --- hypervisor-side consumers and vcpu_info placement ----------------------------------

def test_xen_attached_channel(a, b):
    seen = []
    xport = ev.alloc_unbound_xen_event_channel(a.domain, 0, b.domid, lambda v, port: seen.append(port))
    pb = b.bind_interdomain(a.domid, xport)
    assert a.evtchn("close", port=xport)[0] == -E.EINVAL      # the guest cannot close it
    assert a.send(xport) == -E.EINVAL                         # nor send through it
    assert a.evtchn("bind_vcpu", port=xport, vcpu=1)[0] == -E.EINVAL
    assert b.send(pb) == 0 and seen == [xport]                # b's notification reaches the consumer
    b.clear_pending(pb)
    ev.notify_via_xen_event_channel(a.domain, xport)
    assert b.pending(pb)
    assert a.evtchn("reset", dom=SELF)[0] == 0
    assert status(a, xport)[1]["status"] == EA.EVTCHNSTAT_interdomain   # reset leaves it


def test_registered_vcpu_info_and_vcpus_beyond_the_legacy_array(hv):
    from tests.evtchn.evtchn_kit import Guest
    g = Guest(hv, vcpus=33)
    info_pfn = 20
    g.domain.vcpus[1].vcpu_info_maddr = g.domain.pfn_to_mfn(info_pfn) << 12   # VCPUOP_register_vcpu_info
    p1 = g.evtchn("bind_ipi", vcpu=1)[1]["port"]
    p32 = g.evtchn("bind_ipi", vcpu=32)[1]["port"]
    woken = []
    g.domain.vcpus[32].wake_callback = lambda v: woken.append(v.vcpu_id)
    g.send(p1)
    assert g.page(info_pfn)[ev.OFF_UPCALL_PENDING] == 1 and not g.upcall_pending(1)
    g.send(p32)                                # no vcpu_info yet: pending bit and a kick only
    assert g.pending(p32) and woken == [32]


def test_a_shutdown_raises_dom_exc_in_dom0(hv, a):
    """Xen's domain_shutdown raises VIRQ_DOM_EXC in the hardware domain: the toolstack acts
    on a shutdown at once (`xl shutdown -w` then `xl list`) instead of at its next poll."""
    dom0 = Guest(hv, privileged=True, domid=ev.HARDWARE_DOMID)
    rc, out = dom0.evtchn("bind_virq", virq=X.VIRQ_DOM_EXC, vcpu=0)
    assert rc == 0 and not dom0.pending(out["port"])
    a.domain.shutdown(SHUTDOWN_poweroff)
    assert dom0.pending(out["port"]) and dom0.upcall_pending(0)
