"""Grant tables from a process domain: granting our pages, mapping a peer's grant.

The granting side writes v1 entries into its own grant frames (learnt with
GNTTABOP_setup_table, mapped from the memfd); the mapping side asks
GNTTABOP_map_grant_ref with `host_addr` naming a pseudo-physical slot of its
own, and maps the frame the hypervisor reports in dev_bus_addr. The
hypervisor reads and sets an entry's flags while we write it, so every field
is one aligned store (abi.shared_memory), the flags last.
"""
from __future__ import annotations

import struct

from abi import grant_table as G
from abi.shared_memory import SharedWords
from abi.x86_pte import PAGE_SIZE
from abi.xen import DOMID_SELF, HYPERCALL_NUMBERS

GRANT_TABLE_OP = HYPERCALL_NUMBERS["grant_table_op"]
ENTRY = struct.Struct("<HHI")           # grant_entry_v1: flags, domid, frame


class GrantError(Exception):
    def __init__(self, op: str, status: int):
        super().__init__(f"GNTTABOP_{op}: status {status}")
        self.status = status


class GrantTable:
    def __init__(self, channel, scratch_addr: int, nr_frames: int = 1):
        self.channel = channel
        self.scratch = scratch_addr
        frames = self._setup_table(nr_frames)
        self.frames = [channel.map_machine_frame(mfn) for mfn in frames]
        self.frame_words = [SharedWords(frame) for frame in self.frames]
        self.next_ref = G.GNTTAB_NR_RESERVED_ENTRIES      # below: the toolstack's references

    def _op(self, cmd: int, struct_, args: dict, extra: bytes = b"") -> dict:
        data = struct_.build(args)
        mem = self.channel.memory
        mem[self.scratch:self.scratch + len(data)] = data
        rc = self.channel.hypercall(GRANT_TABLE_OP, cmd, self.scratch, 1)
        if rc < 0:
            raise GrantError(str(cmd), rc)
        return struct_.parse(bytes(mem[self.scratch:self.scratch + len(data)]))

    def _setup_table(self, nr_frames: int) -> list[int]:
        frame_list = self.scratch + 256
        out = self._op(G.GNTTABOP_setup_table, G.gnttab_setup_table,
                       {"dom": DOMID_SELF, "nr_frames": nr_frames, "status": 0, "frame_list": frame_list})
        if out["status"] != G.GNTST_okay:
            raise GrantError("setup_table", out["status"])
        raw = bytes(self.channel.memory[frame_list:frame_list + 8 * nr_frames])
        return list(struct.unpack(f"<{nr_frames}Q", raw))

    def _entry_at(self, ref: int) -> tuple[SharedWords, int]:
        per_frame = PAGE_SIZE // ENTRY.size
        if not 0 <= ref < per_frame * len(self.frames):
            raise ValueError(f"grant ref {ref} outside the table")
        return self.frame_words[ref // per_frame], (ref % per_frame) * ENTRY.size

    def grant_access(self, domid: int, pfn: int, readonly: bool = False) -> int:
        """gnttab_grant_foreign_access: a new reference letting `domid` map our page `pfn`."""
        ref = self.next_ref
        self.next_ref += 1
        words, off = self._entry_at(ref)
        # frame and domid first; flags last, so the hypervisor never sees a half-written entry
        words.store_u16(off + 2, domid)
        words.store_u32(off + 4, pfn)
        words.store_u16(off, G.GTF_permit_access | (G.GTF_readonly if readonly else 0))
        return ref

    def end_access(self, ref: int) -> bool:
        """Revoke `ref` unless the grantee still has it mapped (gnttab_end_foreign_access_ref)."""
        words, off = self._entry_at(ref)
        if words.load_u16(off) & (G.GTF_reading | G.GTF_writing):
            return False
        words.store_u16(off, 0)
        return True

    def map_grant_ref(self, dom: int, ref: int, host_addr: int, readonly: bool = False) -> tuple[int, memoryview]:
        """Map `dom`'s grant `ref`; `host_addr`: a page-aligned pseudo-physical slot of ours naming it."""
        flags = G.GNTMAP_host_map | (G.GNTMAP_readonly if readonly else 0)
        out = self._op(G.GNTTABOP_map_grant_ref, G.gnttab_map_grant_ref,
                       {"host_addr": host_addr, "flags": flags, "ref": ref, "dom": dom,
                        "status": 0, "handle": 0, "dev_bus_addr": 0})
        if out["status"] != G.GNTST_okay:
            raise GrantError("map_grant_ref", out["status"])
        view = self.channel.map_machine_frame(out["dev_bus_addr"] >> 12, not readonly)
        return out["handle"], view

    def unmap_grant_ref(self, handle: int, host_addr: int) -> None:
        out = self._op(G.GNTTABOP_unmap_grant_ref, G.gnttab_unmap_grant_ref,
                       {"host_addr": host_addr, "dev_bus_addr": 0, "handle": handle, "status": 0})
        if out["status"] != G.GNTST_okay:
            raise GrantError("unmap_grant_ref", out["status"])
