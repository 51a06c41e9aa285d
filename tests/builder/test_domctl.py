"""domctl/sysctl through dom0's channel: Xen's checks, order of errors and results."""
from __future__ import annotations

import struct

import pytest

from abi import domctl as D
from abi import errno as E
from abi import sysctl as S
from abi.xen import HYPERCALL_NUMBERS
from dom0.xc import XenCtrl, XenError

DOMCTL = HYPERCALL_NUMBERS["domctl"]
SYSCTL = HYPERCALL_NUMBERS["sysctl"]


def errno_of(fn, *args, **kwargs) -> int:
    with pytest.raises(XenError) as excinfo:
        fn(*args, **kwargs)
    return excinfo.value.errno


def raw_domctl(chan, cmd: int, domid: int, version: int = D.XEN_DOMCTL_INTERFACE_VERSION,
               payload: bytes = b"", at: int = 0x1000) -> int:
    raw = bytearray(D.xen_domctl.sizeof())
    struct.pack_into("<IIH", raw, 0, cmd, version, domid)
    raw[16:16 + len(payload)] = payload
    chan.memory[at:at + len(raw)] = raw
    return chan.hypercall(DOMCTL, at)


@pytest.fixture
def domu(machine):
    """An unprivileged process domain with its own XenCtrl."""
    from pvhyp.channel import InProcessChannel, create_process_domain
    hv = machine[0]
    d = create_process_domain(hv, nr_pages=32)
    chan = InProcessChannel(hv, d)
    return d, chan, XenCtrl(chan)


def test_create_getinfo_pause_destroy(machine):
    hv, _dom0, xc = machine
    domid = xc.domain_create(max_vcpus=2, handle=b"U" * 16)
    d = hv.domains[domid]
    assert len(d.vcpus) == 2 and d.handle == b"U" * 16 and d.config["max_grant_frames"] == 64
    info = xc.domain_getinfo(domid)
    assert info["domain"] == domid and info["max_vcpu_id"] == 1 and info["nr_online_vcpus"] == 0
    assert info["flags"] & D.XEN_DOMINF_paused                    # created paused
    assert info["flags"] >> D.XEN_DOMINF_shutdownshift == 0xFFFF  # SHUTDOWN_CODE_INVALID, as Xen reports
    assert info["shared_info_frame"] == d.shared_info_mfn
    xc.domain_unpause(domid)
    assert not xc.domain_getinfo(domid)["flags"] & D.XEN_DOMINF_paused and d.pause_count == 0
    assert errno_of(xc.domain_unpause, domid) == E.EINVAL         # the controller's count cannot go below 0
    xc.domain_pause(domid)
    assert d.pause_count == 1
    xc.domain_setmaxmem(domid, 8192)
    assert d.max_pages == 2048
    xc.domain_max_vcpus(domid, 2)
    assert errno_of(xc.domain_max_vcpus, domid, 3) == E.EINVAL
    xc.domain_destroy(domid)
    assert domid not in hv.domains
    assert errno_of(xc.domain_destroy, domid) == E.ESRCH


def test_createdomain_domid_choice_and_config_checks(machine):
    hv, _dom0, xc = machine
    assert xc.domain_create(domid=7) == 7
    assert errno_of(xc.domain_create, domid=7) == E.EEXIST
    assert xc.domain_create() not in (0, 7)
    assert errno_of(xc.domain_create, max_vcpus=0) == E.EINVAL
    assert errno_of(xc.domain_create, flags=D.XEN_DOMCTL_CDF_hvm) == E.EINVAL
    assert errno_of(xc.domain_create, flags=1 << 20) == E.EINVAL
    assert errno_of(xc.domain_create, max_grant_frames=65) == E.EINVAL
    assert errno_of(xc.domain_create, max_grant_frames=0) == E.EINVAL
    assert errno_of(xc.domain_create, grant_opts=0) == E.EINVAL
    assert errno_of(xc.domain_create, grant_opts=3) == E.EINVAL


def test_getdomaininfo_finds_the_next_domain(machine):
    hv, _dom0, xc = machine
    a = xc.domain_create(domid=5)
    assert xc.domain_getinfo(3)["domain"] == a
    assert errno_of(xc.domain_getinfo, 6) == E.ESRCH
    assert errno_of(xc.domain_getinfo, 0x7FF0) == E.EINVAL


def test_getdomaininfolist_and_physinfo(machine):
    hv, _dom0, xc = machine
    ids = [xc.domain_create() for _ in range(3)]
    infos = xc.domain_getinfolist(0, 16)
    assert [i["domain"] for i in infos] == sorted([0] + ids)
    assert [i["domain"] for i in xc.domain_getinfolist(ids[1], 1)] == [ids[1]]
    info = xc.physinfo()
    assert info["total_pages"] == hv.memory.nr_frames and info["free_pages"] == hv.frames.free_frames
    assert info["capabilities"] & S.XEN_SYSCTL_PHYSCAP_pv


def test_unprivileged_caller_gets_eperm(machine, domu):
    hv, _dom0, xc = machine
    target = xc.domain_create()
    _d, _chan, uxc = domu
    for call, args in [(uxc.domain_create, ()), (uxc.domain_destroy, (target,)),
                       (uxc.domain_pause, (target,)), (uxc.domain_unpause, (target,)),
                       (uxc.domain_getinfo, (target,)), (uxc.domain_setmaxmem, (target, 1 << 20)),
                       (uxc.hypercall_init, (target, 1)), (uxc.physinfo, ()),
                       (uxc.domain_getinfolist, ())]:
        assert errno_of(call, *args) == E.EPERM, call.__name__
    assert target in hv.domains and hv.domains[target].max_pages == 0


def test_check_order_version_lookup_then_privilege(machine, domu):
    hv, _dom0, xc = machine
    _d, chan, _uxc = domu
    assert raw_domctl(chan, D.XEN_DOMCTL_pausedomain, 0, version=0x14) == -E.EACCES
    assert raw_domctl(chan, D.XEN_DOMCTL_pausedomain, 999) == -E.ESRCH      # lookup before XSM, as Xen
    assert raw_domctl(chan, D.XEN_DOMCTL_pausedomain, 0) == -E.EPERM
    assert chan.hypercall(DOMCTL, 1 << 40) == -E.EFAULT
    assert chan.hypercall(SYSCTL, 1 << 40) == -E.EFAULT


def test_unknown_and_self_targeted_ops(machine):
    hv, dom0, xc = machine
    chan = xc.channel
    assert raw_domctl(chan, 999, 0) == -E.ENOSYS
    assert errno_of(xc.domain_pause, 0) == E.EINVAL       # no pausing oneself
    assert errno_of(xc.domain_destroy, 0) == E.EINVAL
    sysctl = bytearray(S.xen_sysctl.sizeof())
    struct.pack_into("<II", sysctl, 0, 999, S.XEN_SYSCTL_INTERFACE_VERSION)
    chan.memory[0x2000:0x2000 + len(sysctl)] = sysctl
    assert chan.hypercall(SYSCTL, 0x2000) == -E.ENOSYS
    struct.pack_into("<II", sysctl, 0, S.XEN_SYSCTL_physinfo, 0x14)
    chan.memory[0x2000:0x2000 + len(sysctl)] = sysctl
    assert chan.hypercall(SYSCTL, 0x2000) == -E.EACCES


def minimal_context(l4_mfn: int) -> dict:
    from abi.arch_x86_xen import VGCF_in_kernel, VGCF_online, vcpu_guest_context
    from abi.cdefs import plain
    c = plain(vcpu_guest_context.parse(bytes(vcpu_guest_context.sizeof())))
    c["flags"] = VGCF_in_kernel | VGCF_online
    c["ctrlreg"][3] = l4_mfn << 12
    c["user_regs"].update(rip=0x100000, rsp=0x200000, cs=0xE033, ss=0xE02B)
    return c


def test_setvcpucontext_validation(machine):
    hv, _dom0, xc = machine
    domid = xc.domain_create(max_vcpus=2)
    d = hv.domains[domid]
    foreign = hv.domains[0].p2m[3]
    assert errno_of(xc.vcpu_getcontext, domid, 0) == E.ENODATA
    assert errno_of(xc.vcpu_setcontext, domid, 0, minimal_context(foreign)) == E.EINVAL   # not its frame
    own = hv.frames.alloc(domid, 1)[0]
    bad = minimal_context(own)
    bad["user_regs"]["rip"] = 0x0000_8000_0000_0000                                  # non-canonical
    assert errno_of(xc.vcpu_setcontext, domid, 0, bad) == E.EINVAL
    bad = minimal_context(own)
    bad["trap_ctxt"][14]["address"] = 0x1234_5678_9ABC_DEF0
    assert errno_of(xc.vcpu_setcontext, domid, 0, bad) == E.EINVAL
    bad = minimal_context(own)
    bad["ldt_ents"], bad["ldt_base"] = 9000, 0x1000
    assert errno_of(xc.vcpu_setcontext, domid, 0, bad) == E.EINVAL
    assert errno_of(xc.vcpu_setcontext, domid, 2, minimal_context(own)) == E.EINVAL   # no vCPU 2
    good = minimal_context(own)
    good["user_regs"]["rflags"] = 0x3000                     # IOPL is virtualised, IF forced on
    xc.vcpu_setcontext(domid, 1, good)
    v = d.vcpus[1]
    assert v.online and v.guest_table == own and v.kernel_mode
    assert v.initial_context["user_regs"]["rflags"] == 0x200
    assert xc.vcpu_getcontext(domid, 1)["ctrlreg"][3] == own << 12


def test_hypercall_init_needs_the_domains_frame(machine):
    from pvhyp.domctl import hypercall_page_bytes
    hv, _dom0, xc = machine
    domid = xc.domain_create()
    assert errno_of(xc.hypercall_init, domid, hv.domains[0].p2m[0]) == E.EINVAL
    assert errno_of(xc.hypercall_init, domid, 1 << 40) == E.EINVAL
    own = hv.frames.alloc(domid, 1)[0]
    xc.hypercall_init(domid, own)
    assert bytes(hv.memory.frame(own)) == hypercall_page_bytes()


def test_vcpuinfo_handle_and_address_size(machine):
    hv, _dom0, xc = machine
    domid = xc.domain_create(max_vcpus=2)
    info = xc.vcpu_getinfo(domid, 1)
    assert (info["vcpu"], info["online"], info["blocked"]) == (1, 0, 0)
    assert errno_of(xc.vcpu_getinfo, domid, 2) == E.EINVAL
    xc.domain_sethandle(domid, b"\x42" * 16)
    assert xc.domain_getinfo(domid)["handle"] == b"\x42" * 16
    assert xc.domain_get_guest_width(domid) == 8
    xc.domain_set_address_size(domid, 64)
    assert errno_of(xc.domain_set_address_size, domid, 32) == E.EOPNOTSUPP
    assert errno_of(xc.domain_set_address_size, domid, 48) == E.EINVAL


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_CMDS = [D.XEN_DOMCTL_createdomain, D.XEN_DOMCTL_destroydomain, D.XEN_DOMCTL_pausedomain,
         D.XEN_DOMCTL_unpausedomain, D.XEN_DOMCTL_getdomaininfo, D.XEN_DOMCTL_max_mem,
         D.XEN_DOMCTL_setvcpucontext, D.XEN_DOMCTL_getvcpucontext, D.XEN_DOMCTL_max_vcpus,
         D.XEN_DOMCTL_hypercall_init, D.XEN_DOMCTL_getvcpuinfo, D.XEN_DOMCTL_setdomainhandle,
         D.XEN_DOMCTL_get_address_size, D.XEN_DOMCTL_set_address_size]


_FRAME_CHANGING = {D.XEN_DOMCTL_createdomain, D.XEN_DOMCTL_destroydomain, D.XEN_DOMCTL_setvcpucontext,
                   D.XEN_DOMCTL_hypercall_init}


def _createdomain_payload(max_vcpus: int, grant_frames: int) -> bytes:
    from dom0.xc import _zeroed
    config = _zeroed(D.xen_domctl_createdomain)
    config.update(max_vcpus=max_vcpus, max_grant_frames=grant_frames, max_maptrack_frames=-1, grant_opts=2)
    return D.xen_domctl_createdomain.build(config)


_PAYLOADS = st.one_of(st.binary(min_size=0, max_size=128),
                      st.builds(_createdomain_payload, st.integers(0, 4), st.integers(-1, 70)))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(_CMDS), st.sampled_from([0, 1, 2, 3, 0x7FF0, 0xFFFF]),
                              _PAYLOADS, st.booleans()), min_size=1, max_size=8))
def test_fuzzed_domctls_from_dom0_answer_with_errnos(machine, ops):
    """Hostile payloads (dom0 is trusted with the privilege, not with well-formed arguments): every
    call returns 0, a domid or -errno, and the MMU's frame accounting stays consistent."""
    hv, _dom0, xc = machine
    chan = xc.channel
    changed_frames = False
    for cmd, domid, payload, point_ctxt_at_memory in ops:
        if point_ctxt_at_memory and cmd in (D.XEN_DOMCTL_setvcpucontext, D.XEN_DOMCTL_getvcpucontext):
            payload = bytearray(payload.ljust(16, b"\0"))
            struct.pack_into("<Q", payload, 8, 0x4000)        # a real buffer of random context bytes
            chan.memory[0x4000:0x4000 + 5168] = bytes(range(256)) * 20 + bytes(48)
        rc = raw_domctl(chan, cmd, domid, payload=bytes(payload))
        assert isinstance(rc, int) and -200 < rc < 0x10000
        changed_frames |= rc == 0 and cmd in _FRAME_CHANGING
    assert 0 in hv.domains
    if changed_frames:
        from pvhyp.mm.checker import check_invariants
        assert check_invariants(hv) == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.integers(0, 40), payload=st.binary(max_size=128))
def test_fuzzed_sysctls(machine, cmd, payload):
    hv, _dom0, xc = machine
    chan = xc.channel
    raw = bytearray(S.xen_sysctl.sizeof())
    struct.pack_into("<II", raw, 0, cmd, S.XEN_SYSCTL_INTERFACE_VERSION)
    raw[8:8 + len(payload)] = payload
    chan.memory[0x2000:0x2000 + len(raw)] = raw
    rc = chan.hypercall(SYSCTL, 0x2000)
    assert rc in (0, -E.ENOSYS, -E.EFAULT)


def test_createdomain_with_no_memory_left_is_enomem(machine):
    hv, _dom0, xc = machine
    hv.frames.alloc(0x7FF2, hv.frames.free_frames)        # the hypervisor takes every free frame
    assert errno_of(xc.domain_create) == E.ENOMEM
