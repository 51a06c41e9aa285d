"""Every GNTTABOP through the real hypercall path, between process domains."""
from __future__ import annotations

import pytest

from abi import errno as E
from abi import grant_table as GA
from abi import xen as X
from pvhyp import grant_table as gnt
from pvhyp.channel import ChannelError
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE
from tests.evtchn.evtchn_kit import DATA_PAGE, build

SELF = X.DOMID_SELF
RW = GA.GTF_reading | GA.GTF_writing
HOST = GA.GNTMAP_host_map


def granted(a, b, ref=10, pfn=DATA_PAGE, flags=GA.GTF_permit_access, fill=b"A"):
    a.page(pfn)[:] = fill * PAGE_SIZE
    a.grant(ref, b.domid, pfn, flags)
    return ref


# --- table ops ----------------------------------------------------------------------------

def test_setup_table_and_query_size(a, b, dom0):
    rc, out = a.gnttab("query_size", dom=SELF)
    assert rc == 0 and (out["nr_frames"], out["max_nr_frames"], out["status"]) == (1, 64, GA.GNTST_okay)
    frames = a.table_frames(4)
    assert len(set(frames)) == 4 and all(a.domain.hv.frames.owned_by(f, a.domid) for f in frames)
    assert a.gnttab("query_size", dom=SELF)[1]["nr_frames"] == 4
    assert a.table_frames(2) == frames[:2]                      # never shrinks, same frames
    rc, out = a.gnttab("setup_table", dom=SELF, nr_frames=65, frame_list=a.arg + 512)
    assert rc == 0 and out["status"] == GA.GNTST_general_error
    rc, out = a.gnttab("setup_table", dom=b.domid, nr_frames=1, frame_list=a.arg + 512)
    assert out["status"] == GA.GNTST_permission_denied
    rc, out = a.gnttab("setup_table", dom=0x7000, nr_frames=1, frame_list=a.arg + 512)
    assert out["status"] == GA.GNTST_bad_domain
    rc, out = dom0.gnttab("setup_table", dom=b.domid, nr_frames=2, frame_list=dom0.arg + 512)
    assert out["status"] == GA.GNTST_okay
    assert a.gnttab("query_size", dom=b.domid)[1]["status"] == GA.GNTST_permission_denied
    assert dom0.gnttab("query_size", dom=b.domid)[1]["nr_frames"] == 2


def test_single_struct_ops_want_count_one(a):
    assert a.gnttab("query_size", count=2, dom=SELF)[0] == -E.EINVAL
    assert a.gnttab("setup_table", count=0, dom=SELF, nr_frames=1, frame_list=a.arg + 512)[0] == -E.EINVAL
    assert a.gnttab("get_status_frames", count=3, dom=SELF, nr_frames=0, frame_list=0)[0] == -E.EINVAL


def test_setup_table_frame_list_outside_memory(a):
    rc, out = a.gnttab("setup_table", dom=SELF, nr_frames=1, frame_list=1 << 40)
    assert rc == 0 and out["status"] == GA.GNTST_bad_virt_addr


def test_max_version_one_answers_enosys(a):
    assert gnt.gnttab_set_limits(a.domain, 4, 16, max_version=1) == 0
    assert a.gnttab("set_version", version=2)[0] == -E.ENOSYS
    assert a.gnttab("query_size", dom=SELF)[1]["max_nr_frames"] == 4
    rc, out = a.gnttab("setup_table", dom=SELF, nr_frames=5, frame_list=a.arg + 512)
    assert out["status"] == GA.GNTST_general_error


def test_versions(a, b):
    assert a.gnttab("get_version", dom=SELF)[1]["version"] == 1
    assert b.gnttab("get_version", dom=a.domid)[0] == -E.EPERM
    assert b.gnttab("get_version", dom=0x7000)[0] == -E.ESRCH
    rc, out = a.gnttab("set_version", version=3)
    assert rc == -E.EINVAL and out["version"] == 1              # copied back even on error
    rc, out = a.gnttab("get_status_frames", dom=SELF, nr_frames=1, frame_list=a.arg + 512)
    assert out["status"] == GA.GNTST_general_error               # v1 has no status frames
    assert a.gnttab("set_version", version=2) == (0, {"version": 2})
    assert a.gnttab("set_version", version=2)[0] == 0
    rc, out = a.gnttab("get_status_frames", dom=SELF, nr_frames=1, frame_list=a.arg + 512)
    assert out["status"] == GA.GNTST_okay
    status_mfn = int.from_bytes(a.get(a.arg + 512, 8), "little")
    assert a.domain.hv.frames.owned_by(status_mfn, a.domid)
    assert a.gnttab("set_version", version=1)[0] == 0
    assert not a.domain.hv.frames.owned_by(status_mfn, a.domid)  # status frames given back


def test_set_version_keeps_reserved_entries_and_refuses_when_busy(a, b):
    granted(a, b, ref=1)                                        # GNTTAB_RESERVED_XENSTORE
    granted(a, b, ref=20, pfn=DATA_PAGE + 1)
    m = b.map_grant(a.domid, 20)
    assert a.gnttab("set_version", version=2)[0] == -E.EBUSY
    assert b.unmap_grant(m["handle"]) == GA.GNTST_okay
    assert a.gnttab("set_version", version=2)[0] == 0
    assert a.flags(1) == GA.GTF_permit_access and a.flags(20) == 0   # others wiped
    e = a._entry(1)
    assert int.from_bytes(e[2:4], "little") == b.domid and int.from_bytes(e[8:16], "little") == DATA_PAGE


# --- map / unmap ---------------------------------------------------------------------------

def test_map_sets_flags_and_lets_the_process_map_the_frame(a, b):
    ref = granted(a, b)
    out = b.map_grant(a.domid, ref)
    assert out["status"] == GA.GNTST_okay and out["handle"] == 0
    mfn = a.domain.pfn_to_mfn(DATA_PAGE)
    assert out["dev_bus_addr"] == mfn << PAGE_SHIFT
    assert a.gstatus(ref) == RW
    view = b.ch.map_machine_frame(out["dev_bus_addr"] >> PAGE_SHIFT)
    assert bytes(view[:4]) == b"AAAA"
    view[:5] = b"hello"
    assert bytes(a.page(DATA_PAGE)[:5]) == b"hello"
    del view
    assert b.unmap_grant(out["handle"]) == GA.GNTST_okay
    assert a.gstatus(ref) == 0
    with pytest.raises(ChannelError):
        b.ch.map_machine_frame(mfn)


def test_readonly_map(a, b, hv):
    ref = granted(a, b, flags=GA.GTF_permit_access | GA.GTF_readonly)
    assert b.map_grant(a.domid, ref)["status"] == GA.GNTST_general_error   # writable map of r/o grant
    assert a.gstatus(ref) == 0
    out = b.map_grant(a.domid, ref, HOST | GA.GNTMAP_readonly)
    assert out["status"] == GA.GNTST_okay and a.gstatus(ref) == GA.GTF_reading
    mfn = out["dev_bus_addr"] >> PAGE_SHIFT
    assert hv.may_host_map(b.domain, mfn, False) and not hv.may_host_map(b.domain, mfn, True)
    assert b.unmap_grant(out["handle"]) == GA.GNTST_okay


def test_several_mappings_pin_and_unpin(a, b):
    ref = granted(a, b)
    h1 = b.map_grant(a.domid, ref, HOST | GA.GNTMAP_readonly, host_addr=0x1000)["handle"]
    h2 = b.map_grant(a.domid, ref, HOST, host_addr=0x2000)["handle"]
    assert (h1, h2) == (0, 1) and a.gstatus(ref) == RW
    assert b.unmap_grant(h2, host_addr=0x2000) == GA.GNTST_okay
    assert a.gstatus(ref) == GA.GTF_reading                     # writing goes with the last writer
    assert b.unmap_grant(h1, host_addr=0x1000) == GA.GNTST_okay
    assert a.gstatus(ref) == 0


def test_device_map(a, b):
    ref = granted(a, b)
    out = b.map_grant(a.domid, ref, GA.GNTMAP_device_map, host_addr=0)
    assert out["status"] == GA.GNTST_okay
    # An unmap naming neither the host address nor the bus address does nothing.
    assert b.unmap_grant(out["handle"], host_addr=0) == GA.GNTST_okay and a.gstatus(ref) == RW
    assert b.unmap_grant(out["handle"], host_addr=0, dev_bus_addr=0x1000) == GA.GNTST_bad_dev_addr
    assert b.unmap_grant(out["handle"], host_addr=0, dev_bus_addr=out["dev_bus_addr"]) == GA.GNTST_okay
    assert a.gstatus(ref) == 0


@pytest.mark.parametrize("case,status", [
    ("no_flags", GA.GNTST_bad_gntref),
    ("ref_beyond_table", GA.GNTST_bad_gntref),
    ("huge_ref", GA.GNTST_bad_gntref),
    ("bad_domain", GA.GNTST_bad_domain),
    ("domid_self", GA.GNTST_bad_domain),
    ("granted_to_other", GA.GNTST_general_error),
    ("not_granted", GA.GNTST_general_error),
    ("accept_transfer", GA.GNTST_general_error),
    ("frame_not_owned", GA.GNTST_bad_page),
    ("contains_pte", GA.GNTST_general_error),
])
def test_map_refusals(a, b, dom0, case, status):
    ref = granted(a, b)
    op = {"dom": a.domid, "ref": ref, "flags": HOST}
    if case == "no_flags":
        op["flags"] = GA.GNTMAP_readonly
    elif case == "ref_beyond_table":
        op["ref"] = 512
    elif case == "huge_ref":
        op["ref"] = 0xFFFF_FFFF
    elif case == "bad_domain":
        op["dom"] = 0x7000
    elif case == "domid_self":
        op["dom"] = SELF
    elif case == "granted_to_other":
        a.grant(ref, dom0.domid, DATA_PAGE)
    elif case == "not_granted":
        a.set_flags(ref, 0)
    elif case == "accept_transfer":
        a.set_flags(ref, GA.GTF_accept_transfer)
    elif case == "frame_not_owned":
        a.grant(ref, b.domid, 10_000)
    elif case == "contains_pte":
        op["flags"] = HOST | GA.GNTMAP_contains_pte
    out = b.map_grant(op["dom"], op["ref"], op["flags"])
    assert out["status"] == status
    assert a.gstatus(ref) == 0


def test_only_one_grantee_at_a_time(a, b, dom0):
    ref = granted(a, b)
    out = b.map_grant(a.domid, ref)
    a.grant(ref, dom0.domid, DATA_PAGE, GA.GTF_permit_access | RW)     # guest re-targets it while busy
    assert dom0.map_grant(a.domid, ref)["status"] == GA.GNTST_general_error
    assert b.unmap_grant(out["handle"]) == GA.GNTST_okay


def test_revoke_while_mapped_keeps_the_mapping_until_unmap(a, b):
    ref = granted(a, b)
    out = b.map_grant(a.domid, ref)
    a.set_flags(ref, 0)                                         # a hostile revoke
    mfn = out["dev_bus_addr"] >> PAGE_SHIFT
    assert b.domain.hv.may_host_map(b.domain, mfn, True)      # still mapped: Xen keeps it too
    assert b.map_grant(a.domid, ref, HOST | GA.GNTMAP_readonly, host_addr=0x3000)["status"] == GA.GNTST_okay
    assert b.unmap_grant(out["handle"]) == GA.GNTST_okay
    assert b.unmap_grant(1, host_addr=0x3000) == GA.GNTST_okay
    assert b.map_grant(a.domid, ref)["status"] == GA.GNTST_general_error   # revoked for new users


def test_unmap_refusals(a, b):
    ref = granted(a, b)
    out = b.map_grant(a.domid, ref)
    assert b.unmap_grant(out["handle"], host_addr=0x999000) == GA.GNTST_general_error
    assert b.unmap_grant(7) == GA.GNTST_bad_handle               # free handle
    assert b.unmap_grant(100_000) == GA.GNTST_bad_handle         # beyond maptrack
    assert a.unmap_grant(out["handle"]) == GA.GNTST_bad_handle   # a has no such handle
    assert b.unmap_grant(out["handle"]) == GA.GNTST_okay
    assert b.unmap_grant(out["handle"]) == GA.GNTST_bad_handle   # double unmap


def test_map_batch_and_unmap_batch(a, b):
    for i in range(4):
        granted(a, b, ref=10 + i, pfn=DATA_PAGE + i)
    items = [{"dom": a.domid, "ref": 10 + i, "flags": HOST, "host_addr": 0x1000 * (i + 1)} for i in range(4)]
    items.insert(2, {"dom": a.domid, "ref": 9999, "flags": HOST, "host_addr": 0x9000})
    rc, outs = b.ops(GA.GNTTABOP_map_grant_ref, GA.gnttab_map_grant_ref, items)
    assert rc == 0
    assert [o["status"] for o in outs] == [0, 0, GA.GNTST_bad_gntref, 0, 0]
    assert outs[2]["handle"] == 0 and outs[2]["dev_bus_addr"] == 0      # untouched on failure
    unmaps = [{"handle": o["handle"], "host_addr": items[i]["host_addr"], "dev_bus_addr": 0}
              for i, o in enumerate(outs) if o["status"] == 0]
    rc, outs = b.ops(GA.GNTTABOP_unmap_grant_ref, GA.gnttab_unmap_grant_ref, unmaps + unmaps[:1])
    assert rc == 0 and [o["status"] for o in outs] == [0, 0, 0, 0, GA.GNTST_bad_handle]


def test_batch_running_off_guest_memory_faults(a, b):
    granted(a, b)
    end = len(b.ch.memory) - GA.gnttab_map_grant_ref.sizeof()
    b.put(end, b"\0" * GA.gnttab_map_grant_ref.sizeof())
    assert b.call("grant_table_op", GA.GNTTABOP_map_grant_ref, end, 3) == -E.EFAULT


def test_maptrack_limit(hv, a, b):
    assert gnt.gnttab_set_limits(b.domain, 64, 1025) == -E.EINVAL
    assert gnt.gnttab_set_limits(b.domain, 0, 1) == -E.EINVAL
    assert gnt.gnttab_set_limits(b.domain, 64, 1) == 0
    for i in range(4):
        granted(a, b, ref=10 + i, pfn=DATA_PAGE + i)
    statuses = []
    for n in range(256):
        statuses.append(b.map_grant(a.domid, 10 + n % 4, HOST | GA.GNTMAP_readonly, host_addr=n << 12)["status"])
    # One entry always stays on the free list (Xen's per-vcpu lists keep one).
    assert statuses[:255] == [GA.GNTST_okay] * 255 and statuses[255] == GA.GNTST_no_space
    for h in range(255):
        assert b.unmap_grant(h, host_addr=h << 12) == GA.GNTST_okay


def test_pin_counter_overflow_is_refused(a, b):
    ref = granted(a, b)
    handles = [b.map_grant(a.domid, ref, HOST | GA.GNTMAP_readonly, host_addr=n << 12) for n in range(129)]
    assert [h["status"] for h in handles[:128]] == [0] * 128
    assert handles[128]["status"] == GA.GNTST_general_error
    for n, h in enumerate(handles[:128]):
        assert b.unmap_grant(h["handle"], host_addr=n << 12) == 0


# --- copy ----------------------------------------------------------------------------------

def copy_op(src, dest, length, flags):
    return {"source": src, "dest": dest, "len": length, "flags": flags}


def ptr(domid, ref=None, gmfn=None, offset=0):
    return {"u": {"ref": ref} if ref is not None else {"gmfn": gmfn}, "domid": domid, "offset": offset}


def test_copy_into_and_out_of_grants(a, b):
    ref = granted(a, b, fill=b"\0")
    b.page(DATA_PAGE)[:11] = b"from b page"
    ops = [
        copy_op(ptr(SELF, gmfn=DATA_PAGE), ptr(a.domid, ref=ref, offset=100), 11, GA.GNTCOPY_dest_gref),
        copy_op(ptr(a.domid, ref=ref, offset=100), ptr(SELF, gmfn=DATA_PAGE + 1, offset=5), 11,
                GA.GNTCOPY_source_gref),
    ]
    rc, outs = b.ops(GA.GNTTABOP_copy, GA.gnttab_copy, ops)
    assert rc == 0 and [o["status"] for o in outs] == [0, 0]
    assert bytes(a.page(DATA_PAGE)[100:111]) == b"from b page"
    assert bytes(b.page(DATA_PAGE + 1)[5:16]) == b"from b page"
    assert a.gstatus(ref) == 0                                  # released at the end of the batch


@pytest.mark.parametrize("op,status", [
    (copy_op(ptr(SELF, gmfn=DATA_PAGE, offset=4000), ptr(SELF, gmfn=DATA_PAGE + 1), 200, 0), GA.GNTST_bad_copy_arg),
    (copy_op(ptr(SELF, gmfn=DATA_PAGE), ptr(SELF, gmfn=DATA_PAGE + 1, offset=4095), 2, 0), GA.GNTST_bad_copy_arg),
    (copy_op(ptr(SELF, gmfn=10_000), ptr(SELF, gmfn=DATA_PAGE), 1, 0), GA.GNTST_bad_page),
    (copy_op(ptr(SELF, gmfn=DATA_PAGE), ptr(1, gmfn=DATA_PAGE), 1, 0), GA.GNTST_permission_denied),
    (copy_op(ptr(SELF, gmfn=DATA_PAGE), ptr(0x7000, ref=0), 1, GA.GNTCOPY_dest_gref), GA.GNTST_bad_domain),
    (copy_op(ptr(SELF, gmfn=DATA_PAGE), ptr(1, ref=600), 1, GA.GNTCOPY_dest_gref), GA.GNTST_bad_gntref),
    (copy_op(ptr(SELF, gmfn=DATA_PAGE), ptr(1, ref=11), 1, GA.GNTCOPY_dest_gref), GA.GNTST_general_error),
])
def test_copy_refusals(a, b, op, status):
    assert a.domid == 1
    granted(a, b)
    rc, outs = b.ops(GA.GNTTABOP_copy, GA.gnttab_copy, [op])
    assert rc == 0 and outs[0]["status"] == status
    assert a.gstatus(10) == 0


def test_copy_from_readonly_grant_but_not_into_it(a, b):
    ref = granted(a, b, flags=GA.GTF_permit_access | GA.GTF_readonly, fill=b"r")
    ops = [copy_op(ptr(a.domid, ref=ref), ptr(SELF, gmfn=DATA_PAGE), 8, GA.GNTCOPY_source_gref),
           copy_op(ptr(SELF, gmfn=DATA_PAGE), ptr(a.domid, ref=ref), 8, GA.GNTCOPY_dest_gref)]
    rc, outs = b.ops(GA.GNTTABOP_copy, GA.gnttab_copy, ops)
    assert [o["status"] for o in outs] == [GA.GNTST_okay, GA.GNTST_general_error]
    assert bytes(b.page(DATA_PAGE)[:8]) == b"rrrrrrrr" and a.gstatus(ref) == 0


def test_copy_status_only_is_written_back(a, b):
    granted(a, b)
    raw = bytearray(build(GA.gnttab_copy, copy_op(ptr(SELF, gmfn=DATA_PAGE), ptr(SELF, gmfn=DATA_PAGE + 1), 4, 0)))
    raw[12:16] = b"\x11\x22\x33\x44"                 # the source pointer's padding
    b.put(b.arg, bytes(raw))
    assert b.call("grant_table_op", GA.GNTTABOP_copy, b.arg, 1) == 0
    assert b.get(b.arg, len(raw))[12:16] == b"\x11\x22\x33\x44"


# --- v2: sub-page and transitive grants -----------------------------------------------------

def test_v2_map_uses_the_status_frame(a, b):
    a.gnttab("set_version", version=2)
    ref = granted(a, b)
    out = b.map_grant(a.domid, ref)
    assert out["status"] == GA.GNTST_okay
    assert a.gstatus(ref) == RW and a.flags(ref) == GA.GTF_permit_access   # entry untouched
    assert b.unmap_grant(out["handle"]) == GA.GNTST_okay and a.gstatus(ref) == 0


def test_v2_sub_page_grant_copies_within_its_window_only(a, b):
    a.gnttab("set_version", version=2)
    a.page(DATA_PAGE)[:] = b"s" * PAGE_SIZE
    a.grant(12, b.domid, DATA_PAGE, GA.GTF_permit_access | GA.GTF_sub_page, sub=(256, 64))
    assert b.map_grant(a.domid, 12)["status"] == GA.GNTST_general_error     # never mapped
    ops = [copy_op(ptr(a.domid, ref=12, offset=256), ptr(SELF, gmfn=DATA_PAGE), 64, GA.GNTCOPY_source_gref),
           copy_op(ptr(a.domid, ref=12, offset=255), ptr(SELF, gmfn=DATA_PAGE), 8, GA.GNTCOPY_source_gref),
           copy_op(ptr(a.domid, ref=12, offset=300), ptr(SELF, gmfn=DATA_PAGE), 21, GA.GNTCOPY_source_gref)]
    rc, outs = b.ops(GA.GNTTABOP_copy, GA.gnttab_copy, ops)
    assert [o["status"] for o in outs] == [0, GA.GNTST_general_error, GA.GNTST_general_error]
    assert a.gstatus(12) == 0


def test_v2_transitive_grant_copy(hv, a, b, dom0):
    # a grants to b; b passes it on to dom0 transitively; dom0 copies from it.
    a.page(DATA_PAGE)[:6] = b"origin"
    a.grant(10, b.domid, DATA_PAGE)
    b.gnttab("set_version", version=2)
    b.grant(20, dom0.domid, 0, GA.GTF_transitive, trans=(a.domid, 10))
    rc, outs = dom0.ops(GA.GNTTABOP_copy, GA.gnttab_copy,
                        [copy_op(ptr(b.domid, ref=20), ptr(SELF, gmfn=DATA_PAGE), 6, GA.GNTCOPY_source_gref)])
    assert outs[0]["status"] == GA.GNTST_okay
    assert bytes(dom0.page(DATA_PAGE)[:6]) == b"origin"
    assert a.gstatus(10) == 0 and b.gstatus(20) == 0
    assert dom0.map_grant(b.domid, 20)["status"] == GA.GNTST_general_error   # transitive: copy only


# --- swap, cache_flush, transfer, dispatcher -----------------------------------------------

def test_swap_grant_ref(a, b):
    granted(a, b, ref=10)
    a.grant(11, b.domid, DATA_PAGE + 1)
    rc, outs = a.ops(GA.GNTTABOP_swap_grant_ref, GA.gnttab_swap_grant_ref,
                     [{"ref_a": 10, "ref_b": 11}, {"ref_a": 10, "ref_b": 600}, {"ref_a": 3, "ref_b": 3}])
    assert [o["status"] for o in outs] == [0, GA.GNTST_bad_gntref, 0]
    assert int.from_bytes(a._entry(10)[4:8], "little") == DATA_PAGE + 1
    out = b.map_grant(a.domid, 10)
    rc, outs = a.ops(GA.GNTTABOP_swap_grant_ref, GA.gnttab_swap_grant_ref, [{"ref_a": 10, "ref_b": 11}])
    assert outs[0]["status"] == GA.GNTST_eagain
    b.unmap_grant(out["handle"])


def test_cache_flush(a, b):
    ref = granted(a, b)
    mine = b.domain.pfn_to_mfn(DATA_PAGE) << PAGE_SHIFT
    theirs = a.domain.pfn_to_mfn(DATA_PAGE) << PAGE_SHIFT

    def flush(addr, op, offset=0, length=64, cmd=GA.GNTTABOP_cache_flush):
        b.put(b.arg, GA.gnttab_cache_flush.build({"a": {"dev_bus_addr": addr}, "offset": offset,
                                                  "length": length, "op": op}))
        return b.call("grant_table_op", cmd, b.arg, 1)

    assert flush(mine, GA.GNTTAB_CACHE_CLEAN) == 0
    assert flush(mine, GA.GNTTAB_CACHE_INVAL) == -E.EOPNOTSUPP
    assert flush(mine, GA.GNTTAB_CACHE_CLEAN, offset=4090, length=10) == -E.EINVAL
    assert flush(mine, GA.GNTTAB_CACHE_SOURCE_GREF | GA.GNTTAB_CACHE_CLEAN) == -E.EINVAL
    assert flush(mine, GA.GNTTAB_CACHE_CLEAN, length=0) == 0
    assert flush(theirs, GA.GNTTAB_CACHE_CLEAN) == -E.EINVAL   # not mapped by b
    out = b.map_grant(a.domid, ref)
    assert flush(theirs, GA.GNTTAB_CACHE_CLEAN | GA.GNTTAB_CACHE_INVAL) == 0
    assert flush(0, GA.GNTTAB_CACHE_CLEAN) == -E.EPERM          # a hypervisor frame
    assert flush(1 << 50, GA.GNTTAB_CACHE_CLEAN) == -E.EINVAL
    assert flush(mine, GA.GNTTAB_CACHE_CLEAN, length=0, cmd=GA.GNTTABOP_cache_flush | 0x1000) == -E.EILSEQ
    b.unmap_grant(out["handle"])


def test_dispatcher_edges(a):
    # A process domain keeps its memory mapped: it cannot give a page away.
    rc, outs = a.ops(GA.GNTTABOP_transfer, GA.gnttab_transfer,
                     [{"mfn": DATA_PAGE, "domid": a.domid, "ref": 0}, {"mfn": 1 << 40, "domid": 0, "ref": 0}])
    assert rc == 0 and [o["status"] for o in outs] == [GA.GNTST_general_error, GA.GNTST_bad_page]
    assert a.call("grant_table_op", GA.GNTTABOP_dump_table, a.arg, 1) == -E.ENOSYS
    assert a.call("grant_table_op", 99, a.arg, 1) == -E.ENOSYS
    assert a.call("grant_table_op", GA.GNTTABOP_map_grant_ref | 0x1000, a.arg, 1) == -E.EINVAL
    assert a.call("grant_table_op", GA.GNTTABOP_map_grant_ref, a.arg, 0x8000_0000) == -E.EINVAL
    assert a.call("grant_table_op", GA.GNTTABOP_map_grant_ref, a.arg, 0) == 0
    assert a.call("grant_table_op", GA.GNTTABOP_unmap_grant_ref, 1 << 40, 5) == -E.EFAULT


# --- domain destruction --------------------------------------------------------------------

def test_destroying_the_granter_keeps_the_mapped_frame_until_unmap(hv, a, b):
    ref = granted(a, b, fill=b"k")
    out = b.map_grant(a.domid, ref)
    mfn = out["dev_bus_addr"] >> PAGE_SHIFT
    hv.destroy_domain(a.domid)
    # An orphan: neither free nor anyone's (the MMU's or the grant table's own marker).
    assert hv.frames.owner[mfn] != -1 and hv.frames.owner[mfn] not in hv.domains
    assert bytes(b.ch.map_machine_frame(mfn)[:2]) == b"kk"
    assert b.unmap_grant(out["handle"]) == GA.GNTST_okay
    assert hv.frames.owner[mfn] == -1                              # freed with the last unmap


def test_destroying_the_mapper_releases_its_pins(hv, a, b):
    ref = granted(a, b)
    b.map_grant(a.domid, ref)
    hv.destroy_domain(b.domid)
    assert a.gstatus(ref) == 0 and a.domain.grant_table.active[ref].pin == 0


def test_checker_reports_pin_without_mapping(hv, a, b):
    ref = granted(a, b)
    a.domain.grant_table.active[ref].pin = 1
    assert any("pin" in p for p in gnt.check_consistency(hv))
    a.domain.grant_table.active[ref].pin = 0


def test_limits_from_the_domain_config(hv):
    d = hv.create_domain(config={"max_grant_frames": 8, "max_maptrack_frames": 4, "grant_opts": 1,
                                 "max_evtchn_port": 31})
    assert (d.grant_table.max_grant_frames, d.grant_table.max_maptrack_frames, d.grant_table.max_version) == (8, 4, 1)
    assert d.evtchn.max_evtchn_port == 31
    d = hv.create_domain(config={"max_grant_frames": -1, "max_maptrack_frames": -1, "grant_opts": 2})
    assert (d.grant_table.max_grant_frames, d.grant_table.max_maptrack_frames) == (64, 1024)


def test_unmap_and_replace_in_a_process_domain(a, b):
    ref = granted(a, b)
    out = b.map_grant(a.domid, ref, host_addr=0x5000)
    op = GA.GNTTABOP_unmap_and_replace
    rc, outs = b.ops(op, GA.gnttab_unmap_and_replace, [{"host_addr": 0x5000, "new_addr": 0x6000,
                                                        "handle": out["handle"]}])
    assert outs[0]["status"] == GA.GNTST_general_error          # nothing to move in a p2m-like slot
    rc, outs = b.ops(op, GA.gnttab_unmap_and_replace, [{"host_addr": 0x5000, "new_addr": 0,
                                                        "handle": out["handle"]}])
    assert outs[0]["status"] == GA.GNTST_okay and a.gstatus(ref) == 0
