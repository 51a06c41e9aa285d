"""The world a fuzz run attacks: a hostile domain, a victim, and pools of values.

Both are process domains (pseudo-physical addressing), so the attacker's
argument buffers stay reachable whatever it does to its own page tables.
The attacker is unprivileged unless asked otherwise; the victim is passive,
and nothing the attacker does may change the victim's memory.
"""
from __future__ import annotations

import hashlib
import random

from pvhyp.channel import InProcessChannel, create_process_domain
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE

DOMID_SELF, DOMID_IO, DOMID_XEN, DOMID_COW, DOMID_INVALID = 0x7FF0, 0x7FF1, 0x7FF2, 0x7FF3, 0x7FF4
ATTACKER_PAGES = 96
BUFFER_PAGES = 8            # pfns 0..7 hold argument buffers; the rest are frames to play with
VICTIM_PAGES = 32
PTE_FLAG_CHOICES = (0x0, 0x1, 0x3, 0x5, 0x7, 0x27, 0x67, 0x87, 0x107, 0x1E7,
                    0x8000_0000_0000_0007, 0x800, 0xFFF, 0x7FF0_0000_0000_0007)


class World:
    def __init__(self, hv, privileged: bool = False, seed: int = 0):
        self.hv = hv
        self.dom0 = None
        if privileged:
            self.attacker = create_process_domain(hv, ATTACKER_PAGES, privileged=True, domid=0)
        else:
            self.dom0 = create_process_domain(hv, 16, privileged=True, domid=0)
            self.attacker = create_process_domain(hv, ATTACKER_PAGES, domid=1)
        self.victim = create_process_domain(hv, VICTIM_PAGES, domid=2)
        self.channel = InProcessChannel(hv, self.attacker)
        rng = random.Random(seed)
        victim_mem = InProcessChannel(hv, self.victim).memory
        victim_mem[:] = rng.randbytes(len(victim_mem))
        # dom0 may legitimately rewrite any guest's memory; an unprivileged attacker never.
        self.privileged = privileged
        self.victim_frames = tuple(self.victim.p2m)
        self.victim_digest = self.victim_memory_digest()

        a, v = self.attacker, self.victim
        self.pools: dict[str, list[int]] = {
            "own_pfn": list(range(len(a.p2m))),
            "own_mfn": list(a.p2m),
            "own_pt_mfn": list(a.p2m[BUFFER_PAGES:]),
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

    def write(self, addr: int, data: bytes) -> None:
        self.channel.memory[addr:addr + len(data)] = data

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.channel.memory[addr:addr + size])

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
