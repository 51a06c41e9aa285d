"""A PV test guest driven through the real hypercall table."""
from __future__ import annotations

import struct

from abi import xen as X
from pvhyp.host import build_hypervisor
from pvhyp.hypercall_table import HypercallContext
from pvhyp.hypervisor import Hypervisor
from pvhyp.mm.testbed import build_pv_domain

DOMID_SELF = X.DOMID_SELF
REQS_VA = 0x1000          # request arrays (pfns 1-4)
DONE_VA = 0x5000          # *success_count
BUF_VA = 0x6000           # other arguments (pfns 6-7)
FIRST_FREE_PFN = 8        # pfns from here on are the guest's to play with


def make_hv(memory_mb: int = 16) -> Hypervisor:
    return build_hypervisor(memory_mb, cpu=False)


class Guest:
    def __init__(self, hv, nr_pages: int = 64, privileged: bool = False, read_only_pfns=(), **kw):
        self.hv = hv
        self.tables = build_pv_domain(hv, nr_pages, privileged=privileged, read_only_pfns=read_only_pfns, **kw)
        self.domain = self.tables.domain
        self.vcpu = self.domain.vcpus[0]
        self.ctx = HypercallContext(self.vcpu)

    @property
    def domid(self) -> int:
        return self.domain.domid

    def mfn(self, pfn: int) -> int:
        return self.domain.p2m[pfn]

    def call(self, name: str, *args: int) -> int:
        nr = X.HYPERCALL_NUMBERS[name]
        return self.hv.hypercalls.dispatch(self.ctx, nr, (list(args) + [0] * 6)[:6])

    def done(self) -> int:
        return struct.unpack("<I", self.ctx.read(DONE_VA, 4))[0]

    def mmu_update(self, reqs, foreigndom: int = DOMID_SELF) -> tuple[int, int]:
        self.ctx.write(DONE_VA, b"\xee" * 4)
        self.ctx.write(REQS_VA, b"".join(struct.pack("<QQ", p, v) for p, v in reqs))
        rc = self.call("mmu_update", REQS_VA, len(reqs), DONE_VA, foreigndom)
        return rc, self.done()

    def mmuext(self, ops, foreigndom: int = DOMID_SELF) -> tuple[int, int]:
        self.ctx.write(DONE_VA, b"\xee" * 4)
        self.ctx.write(REQS_VA, b"".join(struct.pack("<I4xQQ", c, a1, a2) for c, a1, a2 in ops))
        rc = self.call("mmuext_op", REQS_VA, len(ops), DONE_VA, foreigndom)
        return rc, self.done()

    def pin(self, level: int, mfn: int, foreigndom: int = DOMID_SELF) -> int:
        return self.mmuext([(X.MMUEXT_PIN_L1_TABLE + level - 1, mfn, 0)], foreigndom)[0]

    def unpin(self, mfn: int) -> int:
        return self.mmuext([(X.MMUEXT_UNPIN_TABLE, mfn, 0)])[0]

    def write_frame_entries(self, mfn: int, entries: dict[int, int]) -> None:
        """Fill an untyped frame directly, as the guest would before pinning it."""
        for slot, value in entries.items():
            self.hv.memory.write_u64((mfn << 12) + slot * 8, value)

    def l1_slot_maddr(self, pfn: int) -> int:
        """Machine address of the boot L1 entry that maps `pfn`."""
        return (self.tables.l1s[pfn // 512] << 12) + (pfn % 512) * 8
