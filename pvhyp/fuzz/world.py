"""The world a fuzz run attacks: a hostile domain, a victim, and pools of values.

The attacker is either an x86 PV domain (kind "x86": real page tables, pinned
and validated, pfn N mapped at virtual N << 12, so it can pin, update and
unpin tables, and its argument pointers go through its page tables), or a
process domain (kind "process": pseudo-physical pointers, frames that can
never become page tables). Either way an argument at address A lives in pfn
A >> 12. Kind "x86cpu" is the x86 attacker with a running vCPU as well: its
code comes from pvhyp.fuzz.x86, whose GuestKernel the runner sets as `kernel`. The attacker is unprivileged unless asked otherwise; the victim is a
passive process domain, and nothing an unprivileged attacker does may change
its memory.
"""
from __future__ import annotations

import hashlib
import random
import threading
from typing import TYPE_CHECKING

from abi.xen import DOMID_COW, DOMID_INVALID, DOMID_IO, DOMID_SELF, DOMID_XEN
from pvhyp.channel import InProcessChannel, create_process_domain  # noqa: F401
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from pvhyp.fuzz.x86 import GuestKernel

ATTACKER_PAGES = 96
BUFFER_PAGES = 8            # pfns 0..7 hold argument buffers; the rest are frames to play with
VICTIM_PAGES = 32
WAKE_AFTER_S = 0.005        # how long a blocked attacker vCPU waits for its "event"
PTE_FLAG_CHOICES = (0x0, 0x1, 0x3, 0x5, 0x7, 0x27, 0x67, 0x87, 0x107, 0x1E7,
                    0x8000_0000_0000_0007, 0x800, 0xFFF, 0x7FF0_0000_0000_0007)


class World:
    def __init__(self, hv, privileged: bool = False, seed: int = 0, kind: str = "process"):
        self.hv = hv
        self.dom0 = None
        self.kind = kind
        attacker_domid = 0 if privileged else 1
        if not privileged:
            self.dom0 = create_process_domain(hv, 16, privileged=True, domid=0)
        table_pfns: list[int] = []
        if kind in ("x86", "x86cpu"):
            from pvhyp.mm.testbed import build_pv_domain
            tables = build_pv_domain(hv, ATTACKER_PAGES, privileged=privileged, domid=attacker_domid)
            self.attacker = tables.domain
            table_pfns = list(tables.table_pfns)
        elif kind == "process":
            self.attacker = create_process_domain(hv, ATTACKER_PAGES, privileged=privileged,
                                                  domid=attacker_domid)
        else:
            raise ValueError(f"unknown attacker kind {kind!r}")
        self.table_pfns = table_pfns
        self.attacker_frames = tuple(self.attacker.p2m)
        self.victim = create_process_domain(hv, VICTIM_PAGES, domid=2)
        rng = random.Random(seed)
        victim_mem = InProcessChannel(hv, self.victim).memory
        victim_mem[:] = rng.randbytes(len(victim_mem))
        # dom0 may legitimately rewrite any guest's memory; an unprivileged attacker never.
        self.privileged = privileged
        self.victim_frames = tuple(self.victim.p2m)
        self.victim_digest = self.victim_memory_digest()

        # The fuzzer plays the attacker's vCPU: when a step blocks it (SCHEDOP_block,
        # SCHEDOP_poll), something must wake it as an event or timer would.
        self._closing = threading.Event()
        self._waker = threading.Thread(target=self._wake_blocked, name="fuzz-waker", daemon=True)
        self._waker.start()

        a, v = self.attacker, self.victim
        self.pools: dict[str, list[int]] = {
            "own_pfn": list(range(len(a.p2m))),
            "own_mfn": list(a.p2m),
            "own_pt_mfn": [a.p2m[p] for p in table_pfns] + list(a.p2m[BUFFER_PAGES:]),
            "foreign_mfn": list(v.p2m) + [v.shared_info_mfn],
            "xen_mfn": [0, hv.m2p_first_mfn, hv.m2p_first_mfn + hv.m2p_nr_frames - 1],
            "bad_mfn": [hv.memory.nr_frames, hv.memory.nr_frames + 1, (1 << 40) - 1, (1 << 52) - 1, 1 << 63],
            "domid": [a.domid, v.domid, 0, DOMID_SELF, DOMID_IO, DOMID_XEN, DOMID_COW, DOMID_INVALID,
                      0x7FFF, 0xFFFF, 3, 100],
            "port": [0, 1, 2, 3, 4, 5, 63, 64, 1023, 4095, 4096, 0xFFFF_FFFF],
            "gref": [0, 1, 2, 7, 8, 31, 32, 511, 512, 4096, 0xFFFF_FFFF],
            "handle": [0, 1, 2, 0xFFFF_FFFF],
            "vcpu": [0, 1, 31, 0xFFFF_FFFF],
        }
        # Kind "x86cpu": the runner gives the attacker its vCPU and little kernel
        # (pvhyp.fuzz.x86.GuestKernel); close() releases it with the world.
        self.kernel: GuestKernel | None = None

    def _wake_blocked(self) -> None:
        while not self._closing.wait(WAKE_AFTER_S):
            for vcpu in self.attacker.vcpus:
                if vcpu.blocked:
                    self.hv.sched.wake(vcpu)

    def close(self) -> None:
        self._closing.set()
        for vcpu in self.attacker.vcpus:
            vcpu.kick()
        self._waker.join(1.0)
        if self.kernel is not None:
            self.kernel.close()
        self.hv.close()

    # --- attacker memory (argument buffers) ---

    def buffer_address(self, rng: random.Random, size: int) -> int:
        """A pseudo-physical address in the buffer pages with room for `size` bytes."""
        limit = BUFFER_PAGES * PAGE_SIZE - max(size, 1)
        return rng.randrange(0, max(limit, 1)) & ~7

    def pointer(self, rng: random.Random, size: int = 8) -> int:
        """Mostly good pointers into the attacker's buffers, sometimes hostile ones."""
        roll = rng.random()
        if roll < 0.85:
            return self.buffer_address(rng, size)
        end = len(self.attacker.p2m) << PAGE_SHIFT
        return rng.choice([0, end - 4, end, end + PAGE_SIZE, 1 << 47, 0xFFFF_8000_0000_0000,
                           0xFFFF_FFFF_FFFF_FFF8, (1 << 64) - 1])

    @property
    def memory_size(self) -> int:
        return len(self.attacker.p2m) << PAGE_SHIFT

    def write(self, addr: int, data: bytes) -> None:
        """Put argument bytes at attacker address `addr` exactly as the attacker could."""
        buf = self.hv.memory.buf
        pos = 0
        while pos < len(data):
            a = addr + pos
            n = min(len(data) - pos, PAGE_SIZE - (a & (PAGE_SIZE - 1)))
            ma = self._machine_address(a, write=True)
            if ma is not None:      # where the attacker could not store, no argument bytes land
                buf[ma:ma + n] = data[pos:pos + n]
            pos += n

    def read(self, addr: int, size: int) -> bytes:
        out = bytearray()
        buf = self.hv.memory.buf
        while len(out) < size:
            a = addr + len(out)
            n = min(size - len(out), PAGE_SIZE - (a & (PAGE_SIZE - 1)))
            ma = self._machine_address(a, write=False)
            out += bytes(n) if ma is None else buf[ma:ma + n]
        return bytes(out)

    def _machine_address(self, addr: int, write: bool) -> int | None:
        """Where a store/load of the attacker at `addr` lands, or None if it would fault.

        An x86 attacker's stores go through its own page tables (never the P2M:
        MMU_MACHPHYS_UPDATE may point a pfn at one of its page tables, which its
        PTEs still do not map writable). A process attacker stores through the
        mapping of its original frames, while it still owns them.
        """
        if self.kind != "process":
            from pvhyp.guest_access import GuestFault, translate
            try:
                return translate(self.attacker.vcpus[0], addr, write)
            except GuestFault:
                return None
        pfn = addr >> PAGE_SHIFT
        if not 0 <= pfn < len(self.attacker_frames):
            return None
        mfn = self.attacker_frames[pfn]
        if not self.hv.frames.owned_by(mfn, self.attacker.domid):
            return None
        return (mfn << PAGE_SHIFT) | (addr & (PAGE_SIZE - 1))

    # --- invariants that belong to the world ---

    def victim_memory_digest(self) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        view = self.hv.memory.view
        for mfn in self.victim_frames:
            h.update(view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT])
        return h.digest()

    def harvest(self, kind: str, value: int) -> None:
        pool = self.pools.setdefault(kind, [])
        if value not in pool:
            pool.append(value)
            if len(pool) > 64:
                del pool[12]
