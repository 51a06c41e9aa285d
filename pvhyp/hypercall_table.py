"""The hypercall table: the only way from pvhyp into the handlers.

pvhyp never imports `hypercalls` but in its composition root (pvhyp/host.py),
which fills this table with the package's `install(table)`. Every
caller (the CPU engine's syscall hook, the process channel of dom0 and Python
guests, the fuzzer, multicall) goes through `dispatch`.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Callable

from abi import errno as xen_errno
from pvhyp.guest_access import GuestFault, copy_from_guest, copy_to_guest

if TYPE_CHECKING:
    from pvhyp.domain import VCPU
    from pvhyp.hypervisor import Hypervisor

NR_HYPERCALLS = 64
MASK64 = 0xFFFF_FFFF_FFFF_FFFF


class HypercallContext:
    """What a handler gets: the hypervisor, the calling vCPU, and guest memory access."""

    __slots__ = ("hv", "vcpu", "domain")

    def __init__(self, vcpu: "VCPU"):
        self.vcpu = vcpu
        self.domain = vcpu.domain
        self.hv = vcpu.domain.hv

    def read(self, addr: int, length: int) -> bytes:
        return copy_from_guest(self.vcpu, addr, length)

    def write(self, addr: int, data: bytes) -> None:
        copy_to_guest(self.vcpu, addr, data)

    def read_struct(self, struct, addr: int):
        """Parse one abi struct from guest memory (fast codec, same layout as construct)."""
        from abi.fast import codec
        c = codec(struct)
        return c.parse(self.read(addr, c.size))

    def write_struct(self, struct, addr: int, value) -> None:
        from abi.fast import codec
        self.write(addr, codec(struct).build(value))


class Handler:
    __slots__ = ("name", "fn", "nargs")

    def __init__(self, name: str, fn: Callable, nargs: int):
        self.name, self.fn, self.nargs = name, fn, nargs


class HypercallTable:
    def __init__(self, hv: "Hypervisor"):
        self.hv = hv
        self.handlers: list[Handler | None] = [None] * NR_HYPERCALLS

    @property
    def counts(self) -> list[int]:
        """Hypercalls made, by number, summed over the live domains (dispatch counts them per
        domain only, `domain.hypercall_counts`: one increment on the hot path, not two)."""
        with self.hv.lock:
            domains = list(self.hv.domains.values())
        return [sum(col) for col in zip(*(d.hypercall_counts for d in domains))] if domains else [0] * NR_HYPERCALLS

    def register(self, number: int, name: str, fn: Callable) -> None:
        params = list(inspect.signature(fn).parameters.values())[1:]   # after ctx
        self.handlers[number] = Handler(name, fn, len(params))

    def name(self, number: int) -> str:
        h = self.handlers[number] if 0 <= number < NR_HYPERCALLS else None
        if h is not None:
            return h.name
        from abi.xen import HYPERCALL_NAMES
        return HYPERCALL_NAMES.get(number, f"hypercall_{number}")

    def dispatch(self, ctx: HypercallContext, number: int, args) -> int:
        """Run hypercall `number`; returns Xen's result (a count, 0 or -errno).

        A bad guest pointer is -EFAULT here, whichever handler met it. Any
        other exception is a hypervisor bug: it propagates to the caller,
        which crashes the calling domain (never the hypervisor) and reports.
        """
        handler = self.handlers[number] if 0 <= number < NR_HYPERCALLS else None
        trace = self.hv.trace
        started = trace.now() if trace.enabled else None     # a timeline slice: when it began
        if handler is None:
            result = -xen_errno.ENOSYS
        else:
            ctx.domain.hypercall_counts[number] += 1
            try:
                result = handler.fn(ctx, *[a & MASK64 for a in args[:handler.nargs]])
            except GuestFault:
                result = -xen_errno.EFAULT
        vcpu = ctx.vcpu
        if started is None:
            trace.remember("hypercall", vcpu.domain.domid, vcpu.vcpu_id,
                           nr=number, name=self.name(number), args=list(args[:6]), result=result)
        else:
            trace.emit("hypercall", vcpu.domain.domid, vcpu.vcpu_id, t=started, dur=trace.now() - started,
                       nr=number, name=self.name(number), args=list(args[:6]), result=result)
        return result
