"""Every privileged op asks the one policy (pvhyp/xsm.py, `hv.xsm`).

The table below lists each privileged hypercall (and sub-op), and each
privcmd-like request of the channels process domains use (pvhyp/channel.py,
pvhyp/channel_server.py), with arguments that succeed for the privileged
domain acting on a domU. With the dummy
policy each returns what it always did and asks the hooks named in its row;
with a policy that refuses everything each returns the refusal Xen gives at
that place (-EPERM, except where Xen reports it otherwise: a grant op's
status, a reservation op's count of extents done). Every hook of the policy
is named by some row, so a new hook needs a new row.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Callable

import pytest

from abi import domctl as D
from abi import errno as E
from abi import event_channel as EA
from abi import grant_table as G
from abi import memory as M
from abi import physdev as P
from abi import sched as S
from abi import sysctl as SY
from abi import version as V
from abi import xen as X
from abi.xen import HYPERCALL_NUMBERS
from pvguest.hypercall_channel import ChannelError, SocketChannel
from pvhyp import domctl as domctl_mech
from pvhyp.channel import ChannelError as InProcessChannelError
from pvhyp.channel import InProcessChannel, create_process_domain
from pvhyp.channel_server import ChannelServer
from pvhyp.hypercall_table import HypercallContext
from pvhyp.mm.testbed import build_pv_domain
from pvhyp.xsm import DUMMY_POLICY, DummyPolicy

HOOKS = sorted(name for name, value in vars(DummyPolicy).items()
               if callable(value) and not name.startswith("_"))

ARG_VA = 0x6000         # the argument struct (pfn 6, writable in a test PV domain)
BUF_VA = 0x8000         # buffers the op writes into (pfns 8-9)
PRESENT, RW = 0x1, 0x2


class Probe(DummyPolicy):
    """The dummy policy, except that the hooks in `deny` refuse; records every hook asked."""

    def __init__(self, deny=()):
        self.deny = set(deny)
        self.asked: list[str] = []


def _probe_hook(name: str):
    dummy = getattr(DummyPolicy, name)

    def hook(self, *args):
        self.asked.append(name)
        return -E.EPERM if name in self.deny else dummy(self, *args)
    return hook


for _name in HOOKS:
    setattr(Probe, _name, _probe_hook(_name))


class Caller:
    """An x86 PV domain making hypercalls through the real table, arguments in its own memory."""

    def __init__(self, hv, privileged: bool = False, domid: int | None = None):
        self.tables = build_pv_domain(hv, 64, privileged=privileged, domid=domid)
        self.domain = self.tables.domain
        self.domid = self.domain.domid
        self.hv = hv
        self.ctx = HypercallContext(self.domain.vcpus[0])

    def mfn(self, pfn: int) -> int:
        return self.domain.p2m[pfn]

    def call(self, name: str, *args: int) -> int:
        return self.hv.hypercalls.dispatch(self.ctx, HYPERCALL_NUMBERS[name], (list(args) + [0] * 6)[:6])

    def op(self, name: str, cmd: int, st, fields: dict, *extra: int) -> tuple[int, dict]:
        """One struct-argument op: (rc, the struct as the hypervisor left it)."""
        value = dict(st.parse(bytes(st.sizeof())))
        value.update(fields)
        self.ctx.write(ARG_VA, st.build(value))
        rc = self.call(name, cmd, ARG_VA, *extra)
        return rc, st.parse(self.ctx.read(ARG_VA, st.sizeof()))

    def control(self, name: str, st, cmd: int, domid: int, payload_struct=None, payload: dict | None = None) -> int:
        """domctl/sysctl: the header, and the op's payload at the union."""
        raw = bytearray(st.sizeof())
        version = D.XEN_DOMCTL_INTERFACE_VERSION if name == "domctl" else SY.XEN_SYSCTL_INTERFACE_VERSION
        struct.pack_into("<II", raw, 0, cmd, version)
        if name == "domctl":
            struct.pack_into("<H", raw, 8, domid)
        if payload_struct is not None:
            value = dict(payload_struct.parse(bytes(payload_struct.sizeof())))
            value.update(payload or {})
            data = payload_struct.build(value)
            raw[len(raw) - 128:len(raw) - 128 + len(data)] = data
        self.ctx.write(ARG_VA, bytes(raw))
        return self.call(name, ARG_VA)

    def mmu_update(self, reqs, foreigndom: int) -> int:
        self.ctx.write(BUF_VA, b"".join(struct.pack("<QQ", ptr, val) for ptr, val in reqs))
        return self.call("mmu_update", BUF_VA, len(reqs), 0, foreigndom)

    def mmuext_op(self, ops, foreigndom: int) -> int:
        self.ctx.write(BUF_VA, b"".join(struct.pack("<I4xQQ", cmd, a1, a2) for cmd, a1, a2 in ops))
        return self.call("mmuext_op", BUF_VA, len(ops), 0, foreigndom)


class ChannelCaller:
    """A process domain making the socket channel's requests (pvguest's client, the real server)."""

    def __init__(self, hv, server: ChannelServer, privileged: bool = False, domid: int | None = None):
        self.domain = create_process_domain(hv, 16, privileged=privileged, domid=domid)
        self.domid = self.domain.domid
        self.hv = hv
        self.server = server
        self._channel: SocketChannel | None = None
        self.sockets: list[socket.socket] = []      # channels handed out, closed at the end

    @property
    def channel(self) -> SocketChannel:
        """Attached on first use: a domain another caller connects must have no channel yet."""
        if self._channel is None:
            self._channel = SocketChannel(self.server.attach(self.domain))
        return self._channel

    def request(self, name: str, *args) -> int:
        """One request: 0, or the -errno the channel answered."""
        try:
            result = getattr(self.channel, name)(*args)
        except ChannelError as e:
            return -e.errno
        if isinstance(result, socket.socket):
            self.sockets.append(result)
        return 0

    def in_process_map_foreign(self, domid: int, pfns) -> int:
        """The same foreign map through the in-process channel (`pvhyp run`, tests)."""
        try:
            InProcessChannel(self.hv, self.domain).map_foreign(domid, pfns)
        except InProcessChannelError as e:
            return -e.errno
        return 0

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self._channel is not None:
            self._channel.close()


@dataclass
class Row:
    op: str
    hooks: set[str]
    call: Callable[..., int]                  # (dom0, domU) -> the result to compare
    allowed: int | Callable[..., int]
    denied: int = -E.EPERM
    via: type = field(default=Caller)         # Caller (hypercalls) or ChannelCaller


def _grant(dom0, domu, cmd, st, fields) -> int:
    rc, out = dom0.op("grant_table_op", cmd, st, fields, 1)
    return rc if rc else out["status"]


def _evtchn_reset(dom0, domu) -> int:
    domctl_mech.domain_pause_by_systemcontroller(dom0.domain, domu.domain)
    return dom0.op("event_channel_op", EA.EVTCHNOP_reset, EA.evtchn_reset, {"dom": domu.domid})[0]


def _pt_of_another_domain(dom0, domu) -> int:
    # dom0 writes into domU's L1 (pt_owner domU, pg_owner dom0): it passes on its
    # right to map domU's frame (priv_mapping) for the new entry.
    slot = (domu.tables.l1s[0] << 12) + 10 * 8
    return dom0.mmu_update([(slot | X.MMU_NORMAL_PT_UPDATE, domu.mfn(11) << 12 | PRESENT)],
                           (domu.domid + 1) << 16 | X.DOMID_SELF)


ROWS = [
    Row("domctl getdomaininfo", {"domctl"},
        lambda a, b: a.control("domctl", D.xen_domctl, D.XEN_DOMCTL_getdomaininfo, b.domid), 0),
    Row("domctl getvcpuinfo", {"domctl"},
        lambda a, b: a.control("domctl", D.xen_domctl, D.XEN_DOMCTL_getvcpuinfo, b.domid), 0),
    Row("sysctl physinfo", {"sysctl"},
        lambda a, b: a.control("sysctl", SY.xen_sysctl, SY.XEN_SYSCTL_physinfo, 0), 0),
    Row("sysctl getdomaininfolist", {"sysctl", "getdomaininfo"},
        lambda a, b: a.control("sysctl", SY.xen_sysctl, SY.XEN_SYSCTL_getdomaininfolist, 0,
                               SY.xen_sysctl_getdomaininfolist, {"max_domains": 2, "buffer": BUF_VA}), 0),
    Row("console_io read", {"console_io"}, lambda a, b: a.call("console_io", X.CONSOLEIO_read, 0, BUF_VA), 0),
    Row("console_io write", {"console_io"}, lambda a, b: a.call("console_io", X.CONSOLEIO_write, 0, BUF_VA), 0),
    Row("xen_version build_id", {"xen_version"}, lambda a, b: a.call("xen_version", V.XENVER_build_id, 0),
        -E.ENODATA),
    Row("sched_op remote_shutdown", {"schedop_shutdown"},
        lambda a, b: a.op("sched_op", S.SCHEDOP_remote_shutdown, S.sched_remote_shutdown,
                          {"domain_id": b.domid, "reason": S.SHUTDOWN_poweroff})[0], 0),
    Row("physdev_op apic_read", {"physdev_resource"},
        lambda a, b: a.call("physdev_op", P.PHYSDEVOP_apic_read, ARG_VA), -E.ENOSYS),
    Row("event_channel_op alloc_unbound", {"evtchn_unbound"},
        lambda a, b: a.op("event_channel_op", EA.EVTCHNOP_alloc_unbound, EA.evtchn_alloc_unbound,
                          {"dom": b.domid, "remote_dom": a.domid})[0], 0),
    Row("event_channel_op status", {"evtchn_status"},
        lambda a, b: a.op("event_channel_op", EA.EVTCHNOP_status, EA.evtchn_status,
                          {"dom": b.domid, "port": 0})[0], 0),
    Row("event_channel_op reset", {"evtchn_reset"}, _evtchn_reset, 0),
    Row("grant_table_op setup_table", {"grant_setup"},
        lambda a, b: _grant(a, b, G.GNTTABOP_setup_table, G.gnttab_setup_table,
                            {"dom": b.domid, "nr_frames": 1, "frame_list": BUF_VA}),
        G.GNTST_okay, G.GNTST_permission_denied),
    Row("grant_table_op get_status_frames", {"grant_setup"},
        lambda a, b: _grant(a, b, G.GNTTABOP_get_status_frames, G.gnttab_get_status_frames,
                            {"dom": b.domid, "nr_frames": 0, "frame_list": BUF_VA}),
        G.GNTST_okay, G.GNTST_permission_denied),
    Row("grant_table_op query_size", {"grant_query_size"},
        lambda a, b: _grant(a, b, G.GNTTABOP_query_size, G.gnttab_query_size, {"dom": b.domid}),
        G.GNTST_okay, G.GNTST_permission_denied),
    Row("grant_table_op get_version", {"grant_query_size"},
        lambda a, b: a.op("grant_table_op", G.GNTTABOP_get_version, G.gnttab_get_version, {"dom": b.domid}, 1)[0],
        0),
    Row("memory_op increase_reservation", {"memory_adjust_reservation"},
        lambda a, b: a.op("memory_op", M.XENMEM_increase_reservation, M.xen_memory_reservation,
                          {"nr_extents": 1, "domid": b.domid})[0],
        1, 0),      # extents done: Xen reports a refusal as none done
    Row("memory_op current_reservation", {"memory_stat_reservation"},
        lambda a, b: (a.ctx.write(ARG_VA, struct.pack("<H", b.domid)),
                      a.call("memory_op", M.XENMEM_current_reservation, ARG_VA))[1],
        lambda a, b: b.domain.tot_pages),
    Row("memory_op set_memory_map", {"domain_memory_map"},
        lambda a, b: a.op("memory_op", M.XENMEM_set_memory_map, M.xen_foreign_memory_map,
                          {"domid": b.domid, "map": {"nr_entries": 1, "buffer": BUF_VA}})[0], 0),
    Row("memory_op machine_memory_map", {"machine_memory_map"},
        lambda a, b: a.op("memory_op", M.XENMEM_machine_memory_map, M.xen_memory_map,
                          {"nr_entries": 2, "buffer": BUF_VA})[0], 0),
    Row("memory_op claim_pages", {"claim_pages"},
        lambda a, b: a.op("memory_op", M.XENMEM_claim_pages, M.xen_memory_reservation, {"domid": b.domid})[0], 0),
    Row("mmu_update machphys of another domain", {"mmu_update"},
        lambda a, b: a.mmu_update([(b.mfn(9) << 12 | X.MMU_MACHPHYS_UPDATE, 9)], b.domid), 0),
    Row("mmu_update page table of another domain", {"mmu_update", "priv_mapping"}, _pt_of_another_domain, 0),
    Row("mmuext_op clear_page of another domain", {"mmuext_op"},
        lambda a, b: a.mmuext_op([(X.MMUEXT_CLEAR_PAGE, b.mfn(12), 0)], b.domid), 0),
    Row("update_va_mapping_otherdomain", {"update_va_mapping"},
        lambda a, b: a.call("update_va_mapping_otherdomain", 21 << 12, b.mfn(3) << 12 | PRESENT | RW, 0, b.domid),
        0),
    # --- the channels' privcmd-like requests (dom0's) ---
    Row("channel map_foreign", {"map_gmfn_foreign"},
        lambda a, b: a.request("map_foreign", b.domid, [0]), 0, via=ChannelCaller),
    Row("in-process channel map_foreign", {"map_gmfn_foreign"},
        lambda a, b: a.in_process_map_foreign(b.domid, [0]), 0, via=ChannelCaller),
    Row("channel readconsole", {"sysctl", "readconsole"},
        lambda a, b: a.request("readconsole", b.domid), 0, via=ChannelCaller),
    Row("channel create_domain", {"domctl"}, lambda a, b: a.request("create_domain", 8), 0, via=ChannelCaller),
    Row("channel connect_domain", {"domctl"},
        lambda a, b: a.request("connect_domain", b.domid), 0, via=ChannelCaller),
    Row("channel destroy_domain", {"domctl"},
        lambda a, b: a.request("destroy_domain", b.domid), 0, via=ChannelCaller),
    Row("channel domain_info", {"sysctl", "getdomaininfo"},
        lambda a, b: a.request("domain_info"), 0, via=ChannelCaller),
    Row("channel domain_info of one domain", {"sysctl", "getdomaininfo"},
        lambda a, b: a.request("domain_info", b.domid), 0, via=ChannelCaller),
    Row("channel inspect", {"inspect_domain"},
        lambda a, b: a.request("inspect", b.domid, "evtchn"), 0, via=ChannelCaller),
]


@pytest.fixture
def make_caller(hv):
    """make_caller(row, privileged=False, domid=None): a caller of the row's kind."""
    server = ChannelServer(hv)
    made: list[ChannelCaller] = []

    def make(row: Row, privileged: bool = False, domid: int | None = None):
        if row.via is Caller:
            return Caller(hv, privileged=privileged, domid=domid)
        caller = ChannelCaller(hv, server, privileged=privileged, domid=domid)
        made.append(caller)
        return caller
    yield make
    for caller in made:
        caller.close()
    server.close()


@pytest.fixture
def domains(hv):
    return Caller(hv, privileged=True, domid=0), Caller(hv)


def _expected_allowed(row: Row, dom0: Caller, domu: Caller) -> int:
    return row.allowed(dom0, domu) if callable(row.allowed) else row.allowed


def test_the_dummy_policy_is_every_hypervisors_default(hv):
    assert hv.xsm is DUMMY_POLICY


def test_every_hook_has_a_row():
    assert set(HOOKS) == set().union(*(row.hooks for row in ROWS))


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.op)
def test_privileged_op_succeeds_under_the_dummy_policy_and_asks_its_hooks(hv, make_caller, row):
    dom0, domu = make_caller(row, privileged=True, domid=0), make_caller(row)
    hv.xsm = probe = Probe()
    expected = _expected_allowed(row, dom0, domu)
    assert row.call(dom0, domu) == expected
    assert set(probe.asked) == row.hooks


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.op)
def test_privileged_op_is_refused_by_a_deny_all_policy(hv, make_caller, row):
    dom0, domu = make_caller(row, privileged=True, domid=0), make_caller(row)
    hv.xsm = Probe(deny=HOOKS)
    assert row.call(dom0, domu) == row.denied


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.op)
def test_an_unprivileged_domain_is_refused_by_the_dummy_policy(hv, make_caller, row):
    """The dummy policy's own answer for a domU acting on another domU (or on the host)."""
    make_caller(row, privileged=True, domid=0)
    domu, other = make_caller(row), make_caller(row)
    if row.op == "console_io write":
        pytest.skip("any domain may write to the console (Xen's debug-build rule)")
    assert row.call(domu, other) == row.denied


def test_a_refused_priv_mapping_is_ebusy(hv, domains):
    """get_page_from_l1e reports the policy's refusal as Xen does: -EBUSY."""
    dom0, domu = domains
    hv.xsm = Probe(deny={"priv_mapping"})
    assert _pt_of_another_domain(dom0, domu) == -E.EBUSY
