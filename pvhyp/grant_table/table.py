"""A domain's grant table: shared frames, v2 status frames, active entries, maptrack.

Xen's `struct grant_table` and the helpers that read the guest-written
entries. The shared and status frames are machine frames owned by the
domain (Xen shares its Xen-heap pages with the guest), so the guest maps
them like its own memory; entries are read from and written to those
frames directly. Xen updates the flags word with cmpxchg against a racing
guest; pvhyp writes the 16-bit word in one aligned store (abi.shared_memory),
which is as narrow: the guest never sees it half written or cleared.
"""
from __future__ import annotations

from abi import grant_table as G
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE

INITIAL_NR_GRANT_FRAMES = 1
DEFAULT_MAX_GRANT_FRAMES = 64           # Xen's opt_max_grant_frames / libxl default
DEFAULT_MAX_MAPTRACK_FRAMES = 1024      # Xen's opt_max_maptrack_frames / libxl default

GNTPIN_hstw_inc, GNTPIN_hstr_inc, GNTPIN_devw_inc, GNTPIN_devr_inc = 1, 1 << 8, 1 << 16, 1 << 24
GNTPIN_hstw_mask, GNTPIN_hstr_mask = 0xFF, 0xFF << 8
GNTPIN_devw_mask, GNTPIN_devr_mask = 0xFF << 16, 0xFF << 24


def gntpin_incr2oflow_mask(incr: int) -> int:
    return incr << 7


def _offset(st, name: str) -> int:
    offset = 0
    for sub in st.subcons:
        if sub.name == name:
            return offset
        offset += sub.sizeof()
    raise KeyError(name)


def _member(union, name: str):
    return next(m for m in union.subcons if m.name == name)


V1_SIZE = G.grant_entry_v1.sizeof()
V1_FRAME = _offset(G.grant_entry_v1, "frame")
V2_SIZE = G.grant_entry_v2.sizeof()
HDR_FLAGS = _offset(G.grant_entry_header, "flags")
_full, _sub, _trans = (_member(G.grant_entry_v2, n).subcon for n in ("full_page", "sub_page", "transitive"))
V2_FULL_FRAME = _offset(_full, "frame")
V2_SUB_OFF = _offset(_sub, "page_off")
V2_SUB_LEN = _offset(_sub, "length")
V2_SUB_FRAME = _offset(_sub, "frame")
V2_TRANS_DOMID = _offset(_trans, "trans_domid")
V2_TRANS_GREF = _offset(_trans, "gref")
STATUS_SIZE = G.grant_status_t.sizeof()

SHGNT_PER_PAGE_V1 = PAGE_SIZE // V1_SIZE
SHGNT_PER_PAGE_V2 = PAGE_SIZE // V2_SIZE
STGNT_PER_PAGE = PAGE_SIZE // STATUS_SIZE

# Maptrack: Xen's struct grant_mapping is 16 bytes, so 256 handles per frame.
MAPTRACK_PER_PAGE = PAGE_SIZE // 16
MAPTRACK_TAIL = 0xFFFF_FFFF
INVALID_MAPTRACK_HANDLE = 0xFFFF_FFFF


def grant_to_status_frames(grant_frames: int) -> int:
    return -(-grant_frames * SHGNT_PER_PAGE_V2 // STGNT_PER_PAGE)


class ActiveEntry:
    """Xen's active_grant_entry: how the granted frame is in use right now."""
    __slots__ = ("pin", "domid", "mfn", "gfn", "start", "length", "is_sub_page",
                 "trans_domain", "trans_gref")

    def __init__(self):
        self.pin = 0
        self.domid = 0
        self.mfn = 0
        self.gfn = 0
        self.start = 0
        self.length = PAGE_SIZE
        self.is_sub_page = False
        self.trans_domain = None
        self.trans_gref = 0


class MapTrack:
    """Xen's grant_mapping: one handle of the mapping domain. `flags` 0 = free."""
    __slots__ = ("ref", "flags", "domid", "vcpu", "rgt", "mfn", "host_addr")

    def __init__(self, ref: int, vcpu: int):
        self.ref = ref              # free: next handle in the vCPU's free list
        self.flags = 0
        self.domid = 0
        self.vcpu = vcpu
        self.rgt = None             # the granting domain's table (outlives a destroyed domain)
        self.mfn = 0
        self.host_addr = 0


class GrantTable:
    def __init__(self, domain, max_grant_frames: int = DEFAULT_MAX_GRANT_FRAMES,
                 max_maptrack_frames: int = DEFAULT_MAX_MAPTRACK_FRAMES, max_version: int = 2):
        self.domain = domain
        self.domid = domain.domid
        self.hv = domain.hv
        self.gt_version = 1
        self.max_version = max_version
        self.max_grant_frames = max_grant_frames
        self.max_maptrack_frames = max_maptrack_frames
        self.shared: list[int] = []         # mfns of the shared frames
        self.status: list[int] = []         # mfns of the v2 status frames
        self.active: list[ActiveEntry] = []
        self.maptrack: list[MapTrack] = []
        self.maptrack_head: dict[int, int] = {}     # vcpu -> free-list head
        self.maptrack_tail: dict[int, int] = {}
        # What this domain has mapped, per mfn: [read-only, writable] mapping counts.
        self.mapped: dict[int, list[int]] = {}
        # Process domains: host_addr -> mfn of the grant mapped there.
        self.host_maps: dict[int, int] = {}
        self.grow_table(INITIAL_NR_GRANT_FRAMES)

    # --- sizes ---
    @property
    def nr_grant_frames(self) -> int:
        return len(self.shared)

    @property
    def nr_status_frames(self) -> int:
        return len(self.status)

    def nr_grant_entries(self) -> int:
        per = SHGNT_PER_PAGE_V1 if self.gt_version == 1 else SHGNT_PER_PAGE_V2
        return self.nr_grant_frames * per

    @property
    def maptrack_limit(self) -> int:
        return len(self.maptrack)

    # --- growth (frames belong to the domain so that it may map them) ---
    def _alloc_frames(self, count: int) -> list[int] | None:
        from pvhyp.grant_table import refs
        from pvhyp.mm.frametable import OutOfMemory
        try:
            mfns = self.hv.frames.alloc(self.domid, count)
        except OutOfMemory:
            return None
        refs.hold_table_frames(self.hv, self.domain, mfns)
        return mfns

    def grow_table(self, req_nr_frames: int) -> bool:
        req_nr_frames = max(req_nr_frames, INITIAL_NR_GRANT_FRAMES)
        new = self._alloc_frames(req_nr_frames - self.nr_grant_frames)
        if new is None:
            return False
        if self.gt_version > 1 and not self.populate_status_frames(req_nr_frames):
            for mfn in new:
                self._free_frame(mfn)
            return False
        self.shared.extend(new)
        need_active = req_nr_frames * SHGNT_PER_PAGE_V1
        self.active.extend(ActiveEntry() for _ in range(need_active - len(self.active)))
        return True

    def populate_status_frames(self, req_nr_frames: int) -> bool:
        want = grant_to_status_frames(req_nr_frames)
        new = self._alloc_frames(want - self.nr_status_frames) if want > self.nr_status_frames else []
        if new is None:
            return False
        self.status.extend(new)
        return True

    def _free_frame(self, mfn: int) -> bool:
        from pvhyp.grant_table import refs
        return refs.free_table_frame(self.hv, mfn)

    def status_frames_busy(self) -> bool:
        """A status frame still referenced beyond the table's own hold (mapped by the guest)."""
        return any(self.hv.frames.count[mfn] > 1 for mfn in self.status)

    def unpopulate_status_frames(self) -> None:
        for mfn in self.status:
            self._free_frame(mfn)
        self.status = []

    # --- guest-visible entries ---
    @property
    def _words(self):
        return self.hv.memory.words

    def entry_maddr(self, ref: int) -> int:
        if self.gt_version == 1:
            return (self.shared[ref // SHGNT_PER_PAGE_V1] << PAGE_SHIFT) + (ref % SHGNT_PER_PAGE_V1) * V1_SIZE
        return (self.shared[ref // SHGNT_PER_PAGE_V2] << PAGE_SHIFT) + (ref % SHGNT_PER_PAGE_V2) * V2_SIZE

    def status_maddr(self, ref: int) -> int:
        """Where GTF_reading/GTF_writing live: the entry's flags (v1) or its status word (v2)."""
        if self.gt_version == 1:
            return self.entry_maddr(ref) + HDR_FLAGS
        return (self.status[ref // STGNT_PER_PAGE] << PAGE_SHIFT) + (ref % STGNT_PER_PAGE) * STATUS_SIZE

    def header(self, ref: int) -> tuple[int, int]:
        """(flags, domid) of an entry, read once as Xen reads the combined word."""
        raw = self._words.load_u32(self.entry_maddr(ref) + HDR_FLAGS)
        return raw & 0xFFFF, raw >> 16

    def read_u16(self, maddr: int) -> int:
        return self._words.load_u16(maddr)

    def write_u16(self, maddr: int, value: int) -> None:
        self._words.store_u16(maddr, value)

    def set_flags(self, maddr: int, bits: int) -> None:
        self.write_u16(maddr, self.read_u16(maddr) | bits)

    def clear_flags(self, maddr: int, bits: int) -> None:
        """gnttab_clear_flags: confined to the 2 bytes of the flags/status word."""
        self.write_u16(maddr, self.read_u16(maddr) & ~bits)

    def frame(self, ref: int) -> int:
        base = self.entry_maddr(ref)
        if self.gt_version == 1:
            return self._words.load_u32(base + V1_FRAME)
        return self._words.load_u64(base + V2_FULL_FRAME)

    def set_frame(self, ref: int, frame: int) -> None:
        base = self.entry_maddr(ref)
        if self.gt_version == 1:
            self._words.store_u32(base + V1_FRAME, frame)
        else:
            self._words.store_u64(base + V2_FULL_FRAME, frame)

    def sub_page(self, ref: int) -> tuple[int, int, int]:
        """v2 sub-page entry: (frame, page_off, length)."""
        base = self.entry_maddr(ref)
        words = self._words
        return (words.load_u64(base + V2_SUB_FRAME), words.load_u16(base + V2_SUB_OFF),
                words.load_u16(base + V2_SUB_LEN))

    def transitive(self, ref: int) -> tuple[int, int]:
        base = self.entry_maddr(ref)
        return self._words.load_u16(base + V2_TRANS_DOMID), self._words.load_u32(base + V2_TRANS_GREF)

    def clear_frames(self) -> None:
        for mfn in self.shared:
            self.hv.memory.scrub(mfn)

    # --- maptrack handles (per-vCPU free lists, as Xen keeps them) ---
    def _get_from_list(self, vcpu: int) -> int:
        head = self.maptrack_head.get(vcpu, MAPTRACK_TAIL)
        if head == MAPTRACK_TAIL:
            return INVALID_MAPTRACK_HANDLE
        nxt = self.maptrack[head].ref
        # Xen keeps one entry in each list so that frees can always append at the tail.
        if nxt == MAPTRACK_TAIL:
            return INVALID_MAPTRACK_HANDLE
        self.maptrack_head[vcpu] = nxt
        return head

    def _steal(self, vcpu: int) -> int:
        n = len(self.domain.vcpus)
        for i in range(1, n + 1):
            victim = (vcpu + i) % n
            handle = self._get_from_list(victim)
            if handle != INVALID_MAPTRACK_HANDLE:
                self.maptrack[handle].vcpu = vcpu
                return handle
        return INVALID_MAPTRACK_HANDLE

    def get_maptrack_handle(self, vcpu: int) -> int:
        handle = self._get_from_list(vcpu)
        if handle != INVALID_MAPTRACK_HANDLE:
            return handle
        if self.maptrack_limit // MAPTRACK_PER_PAGE >= self.max_maptrack_frames:
            if self.maptrack_tail.get(vcpu, MAPTRACK_TAIL) == MAPTRACK_TAIL:
                handle = self._steal(vcpu)
                if handle == INVALID_MAPTRACK_HANDLE:
                    return handle
                self.maptrack[handle].ref = MAPTRACK_TAIL
                self.maptrack_tail[vcpu] = handle
                if self.maptrack_head.get(vcpu, MAPTRACK_TAIL) == MAPTRACK_TAIL:
                    self.maptrack_head[vcpu] = handle
            return self._steal(vcpu)
        handle = self.maptrack_limit
        self.maptrack.extend(MapTrack(handle + i + 1, vcpu) for i in range(MAPTRACK_PER_PAGE))
        if self.maptrack_tail.get(vcpu, MAPTRACK_TAIL) == MAPTRACK_TAIL:
            self.maptrack_tail[vcpu] = handle + MAPTRACK_PER_PAGE - 1
        self.maptrack[handle + MAPTRACK_PER_PAGE - 1].ref = self.maptrack_head.get(vcpu, MAPTRACK_TAIL)
        self.maptrack_head[vcpu] = handle + 1
        return handle

    def put_maptrack_handle(self, handle: int) -> None:
        entry = self.maptrack[handle]
        entry.ref = MAPTRACK_TAIL
        vcpu = entry.vcpu
        tail = self.maptrack_tail.get(vcpu, MAPTRACK_TAIL)
        self.maptrack_tail[vcpu] = handle
        if tail == MAPTRACK_TAIL:
            self.maptrack_head[vcpu] = handle
        else:
            self.maptrack[tail].ref = handle

    # --- what the mapping domain holds (for may_host_map) ---
    def note_mapped(self, mfn: int, readonly: bool, delta: int) -> None:
        counts = self.mapped.setdefault(mfn, [0, 0])
        counts[0 if readonly else 1] += delta
        if counts == [0, 0]:
            del self.mapped[mfn]
