"""Helpers for the PV vCPU tests: an x86-style guest with a hand-built 4-level table over a few pages.

`guest.va(i)` is the virtual address of data page i (user, writable),
`guest.maddr(i)` its machine address; `guest.call(name, *args)` makes the
hypercall from vCPU 0 (or `vcpu=`) through the real dispatcher.
"""
from __future__ import annotations

from abi.xen import HYPERCALL_NUMBERS
from pvhyp.hypercall_table import HypercallContext

P, RW, US = 1, 2, 4
DATA_VA = 0x40_0000
NR_DATA_PAGES = 8


class Guest:
    def __init__(self, hv, domain):
        self.hv, self.domain = hv, domain
        self.vcpu = domain.vcpus[0]
        mem = hv.memory
        l4, l3, l2, l1 = hv.populate(domain, 4)
        self.data_mfns = hv.populate(domain, NR_DATA_PAGES)
        for table, index, target in ((l4, (DATA_VA >> 39) & 511, l3), (l3, (DATA_VA >> 30) & 511, l2),
                                     (l2, (DATA_VA >> 21) & 511, l1)):
            mem.write_u64((table << 12) + index * 8, (target << 12) | P | RW | US)
        for i, mfn in enumerate(self.data_mfns):
            mem.write_u64((l1 << 12) + (((DATA_VA >> 12) + i) & 511) * 8, (mfn << 12) | P | RW | US)
        self.l4 = l4
        for v in domain.vcpus:
            v.guest_table = l4
        # vCPU 0 runs, as after the domain builder.
        self.vcpu.online = True
        self.vcpu.pv.is_initialised = True

    def va(self, page: int, offset: int = 0) -> int:
        return DATA_VA + page * 4096 + offset

    def maddr(self, page: int, offset: int = 0) -> int:
        return (self.data_mfns[page] << 12) + offset

    def write(self, page: int, data: bytes, offset: int = 0) -> int:
        self.hv.memory.write(self.maddr(page, offset), data)
        return self.va(page, offset)

    def read(self, page: int, length: int, offset: int = 0) -> bytes:
        return self.hv.memory.read(self.maddr(page, offset), length)

    def call(self, name: str, *args: int, vcpu=None) -> int:
        ctx = HypercallContext(vcpu or self.vcpu)
        return self.hv.hypercalls.dispatch(ctx, HYPERCALL_NUMBERS[name], list(args) + [0] * (6 - len(args)))


def bind_virq(guest, virq: int, vcpu_id: int = 0) -> int:
    """EVTCHNOP_bind_virq through the real handler; returns the port."""
    import struct

    from abi.event_channel import EVTCHNOP_bind_virq
    va = guest.write(6, struct.pack("<III", virq, vcpu_id, 0))
    assert guest.call("event_channel_op", EVTCHNOP_bind_virq, va) == 0
    return struct.unpack("<I", guest.read(6, 4, 8))[0]


def port_pending(guest, port: int) -> bool:
    from pvhyp.event_channel import evtchn_port_is_pending
    return evtchn_port_is_pending(guest.domain, port)


def clear_port(guest, port: int) -> None:
    maddr = (guest.domain.shared_info_mfn << 12) + 2048 + port // 8
    guest.hv.memory.buf[maddr] &= ~(1 << (port % 8)) & 0xFF
