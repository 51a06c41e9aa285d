"""HYPERVISOR_grant_table_op(cmd, uop, count): Xen's do_grant_table_op.

Batched ops copy each element in, run it, and copy back what Xen copies
back: the whole element for map_grant_ref, only `status` for unmap, copy,
swap. Xen may preempt a long batch with a continuation; pvhyp runs the
batch to its end (a fault in guest memory still stops it with -EFAULT at
the element that faulted, as in Xen).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from abi import errno as E
from abi import grant_table as G
from abi.fast import codec
from hypercalls import hypercall
from hypercalls.fields import field_offsets, patch, read_op
from pvhyp import grant_table as gnt
from pvhyp.guest_access import handle_ok

if TYPE_CHECKING:
    from construct import Construct

    from pvhyp.hypercall_table import HypercallContext

GNTTABOP_CONTINUATION_ARG_SHIFT = 12
GNTTABOP_CMD_MASK = (1 << GNTTABOP_CONTINUATION_ARG_SHIFT) - 1
U64 = 8


def _write_field(ctx: HypercallContext, struct: Construct, addr: int, name: str, value: int) -> None:
    """__copy_field_to_guest: only that field's bytes."""
    offset, _, size = field_offsets(struct)[name]
    ctx.write(addr + offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))


def _batch(ctx: HypercallContext, struct: Construct, uop: int, count: int,
           run: Callable[[dict[str, Any]], Any], status_only: bool = True) -> int:
    size = codec(struct).size
    for i in range(count):
        addr = uop + i * size
        raw, op = read_op(ctx, struct, addr)
        changed = run(op)
        if status_only:
            _write_field(ctx, struct, addr, "status", op["status"])
        else:
            ctx.write(addr, bytes(patch(struct, raw, **{k: op[k] for k in changed})))
    return 0


def _map(ctx: HypercallContext, uop: int, count: int) -> int:
    def run(op: dict[str, Any]) -> tuple[str, ...]:
        gnt.map_grant_ref(ctx.vcpu, op)
        return ("status", "handle", "dev_bus_addr") if op["status"] == G.GNTST_okay else ("status",)
    return _batch(ctx, G.gnttab_map_grant_ref, uop, count, run, status_only=False)


def _unmap(ctx: HypercallContext, uop: int, count: int) -> int:
    def run(op: dict[str, Any]) -> None:
        op["status"] = gnt.unmap_common(ctx.vcpu, op["host_addr"], op["dev_bus_addr"], 0, op["handle"])
    return _batch(ctx, G.gnttab_unmap_grant_ref, uop, count, run)


def _unmap_and_replace(ctx: HypercallContext, uop: int, count: int) -> int:
    def run(op: dict[str, Any]) -> None:
        op["status"] = gnt.unmap_common(ctx.vcpu, op["host_addr"], 0, op["new_addr"], op["handle"])
    return _batch(ctx, G.gnttab_unmap_and_replace, uop, count, run)


def _swap(ctx: HypercallContext, uop: int, count: int) -> int:
    def run(op: dict[str, Any]) -> None:
        op["status"] = gnt.swap_grant_ref(ctx.domain, op["ref_a"], op["ref_b"])
    return _batch(ctx, G.gnttab_swap_grant_ref, uop, count, run)


def _copy(ctx: HypercallContext, uop: int, count: int) -> int:
    batch = gnt.CopyBatch(ctx.domain)
    try:
        def run(op: dict[str, Any]) -> None:
            op["status"] = batch.one(op)
        return _batch(ctx, G.gnttab_copy, uop, count, run)
    finally:
        batch.finish()


def _transfer(ctx: HypercallContext, uop: int, count: int) -> int:
    def run(op: dict[str, Any]) -> None:
        op["status"] = gnt.gnttab_transfer_one(ctx.domain, op)
    return _batch(ctx, G.gnttab_transfer, uop, count, run)


def _frame_list_op(ctx: HypercallContext, struct: Construct, uop: int, count: int,
                   run: Callable[[dict[str, Any]], list[int]]) -> int:
    """setup_table / get_status_frames: one struct, a list of frames written to frame_list."""
    if count != 1:
        return -E.EINVAL
    raw, op = read_op(ctx, struct, uop)
    if not handle_ok(ctx.domain, op["frame_list"]):
        return -E.EFAULT
    frames = run(op)
    from pvhyp.guest_access import GuestFault
    for i, frame in enumerate(frames):
        try:
            ctx.write(op["frame_list"] + i * U64, frame.to_bytes(U64, "little"))
        except GuestFault:
            op["status"] = G.GNTST_bad_virt_addr
    _write_field(ctx, struct, uop, "status", op["status"])
    return 0


def _setup_table(ctx: HypercallContext, uop: int, count: int) -> int:
    return _frame_list_op(ctx, G.gnttab_setup_table, uop, count,
                          lambda op: gnt.gnttab_setup_table(ctx.domain, op))


def _get_status_frames(ctx: HypercallContext, uop: int, count: int) -> int:
    return _frame_list_op(ctx, G.gnttab_get_status_frames, uop, count,
                          lambda op: gnt.gnttab_get_status_frames(ctx.domain, op))


def _query_size(ctx: HypercallContext, uop: int, count: int) -> int:
    if count != 1:
        return -E.EINVAL
    raw, op = read_op(ctx, G.gnttab_query_size, uop)
    gnt.gnttab_query_size(ctx.domain, op)
    fields = ("status", "nr_frames", "max_nr_frames") if op["status"] == G.GNTST_okay else ("status",)
    ctx.write(uop, bytes(patch(G.gnttab_query_size, raw, **{k: op[k] for k in fields})))
    return 0


def _set_version(ctx: HypercallContext, uop: int, count: int) -> int:
    raw, op = read_op(ctx, G.gnttab_set_version, uop)
    rc = gnt.gnttab_set_version(ctx.domain, op)
    ctx.write(uop, bytes(patch(G.gnttab_set_version, raw, version=op["version"])))
    return rc


def _get_version(ctx: HypercallContext, uop: int, count: int) -> int:
    raw, op = read_op(ctx, G.gnttab_get_version, uop)
    rc = gnt.gnttab_get_version(ctx.domain, op)
    if rc == 0:
        _write_field(ctx, G.gnttab_get_version, uop, "version", op["version"])
    return rc


def _cache_flush(ctx: HypercallContext, uop: int, count: int, cur_ref: int) -> int:
    size = codec(G.gnttab_cache_flush).size
    for i in range(count):
        raw, op = read_op(ctx, G.gnttab_cache_flush, uop + i * size)
        while True:
            ret, cur_ref = gnt.cache_flush(ctx.domain, op, cur_ref)
            if ret < 0:
                return ret
            if ret == 0:
                break
        cur_ref = 0
    return 0


BATCHED = {
    G.GNTTABOP_map_grant_ref: _map,
    G.GNTTABOP_unmap_grant_ref: _unmap,
    G.GNTTABOP_unmap_and_replace: _unmap_and_replace,
    G.GNTTABOP_transfer: _transfer,
    G.GNTTABOP_copy: _copy,
    G.GNTTABOP_swap_grant_ref: _swap,
}
SINGLE = {
    G.GNTTABOP_setup_table: _setup_table,
    G.GNTTABOP_query_size: _query_size,
    G.GNTTABOP_set_version: _set_version,
    G.GNTTABOP_get_status_frames: _get_status_frames,
    G.GNTTABOP_get_version: _get_version,
}


@hypercall("grant_table_op")
def do_grant_table_op(ctx: HypercallContext, cmd: int, uop: int, count: int) -> int:
    cmd &= 0xFFFF_FFFF
    count &= 0xFFFF_FFFF
    if count >= 1 << 31:                # Xen: (int)count < 0
        return -E.EINVAL
    opaque_in = cmd & ~GNTTABOP_CMD_MASK
    cmd &= GNTTABOP_CMD_MASK
    if cmd != G.GNTTABOP_cache_flush and opaque_in:
        return -E.EINVAL
    if ctx.domain.grant_table is None:
        return -E.ENOSYS
    if cmd in BATCHED:
        if not handle_ok(ctx.domain, uop):
            return -E.EFAULT
        return BATCHED[cmd](ctx, uop, count)
    if cmd == G.GNTTABOP_cache_flush:
        if not handle_ok(ctx.domain, uop):
            return -E.EFAULT
        return _cache_flush(ctx, uop, count, opaque_in)
    if cmd in SINGLE:
        return SINGLE[cmd](ctx, uop, count)
    return -E.ENOSYS
