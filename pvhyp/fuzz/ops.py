"""What one fuzz step can be: a hypercall, its arguments, and the bytes of its buffers.

Ops are discovered from the abi modules: every `EVTCHNOP_x` in
abi/event_channel.py becomes an op whose buffer is `evtchn_x`, and so on for
each family. Values come from the world's pools by field name (a field called
`port` gets ports, `mfn` gets frames, `dom` gets domids, pointers get mostly
good buffer addresses), or raw boundary values.
"""
from __future__ import annotations

import importlib
import random
import re
from dataclasses import dataclass, field
from typing import Callable

import construct as cs

from abi.xen import DOMID_SELF
from pvhyp.fuzz.struct_leaves import leaves
from pvhyp.fuzz.world import PTE_FLAG_CHOICES, World

MASK64 = (1 << 64) - 1


@dataclass
class Step:
    op: str
    nr: int
    args: list[int]
    writes: list[tuple[int, bytes]] = field(default_factory=list)
    outputs: list[tuple[int, cs.Construct]] = field(default_factory=list)   # (addr, struct) to harvest

    def to_json(self) -> dict:
        return {"op": self.op, "nr": self.nr, "args": self.args,
                "writes": [[a, d.hex()] for a, d in self.writes]}

    @classmethod
    def from_json(cls, obj: dict) -> "Step":
        return cls(obj["op"], obj["nr"], list(obj["args"]),
                   [(a, bytes.fromhex(d)) for a, d in obj["writes"]])


# --- values --------------------------------------------------------------------

_CATEGORIES = (
    (re.compile(r"(^|_)(g?mfn|g?pfn|gpfn|frame|src_mfn|first_gfn|gfn|idx)s?$"), "frame"),
    (re.compile(r"port$"), "port"),
    (re.compile(r"(^|_)(ref|gref)$"), "gref"),
    (re.compile(r"(^|_)handle$"), "handle"),
    (re.compile(r"(^|_)(dom|domid|domain|remote_dom|foreigndom)$"), "domid"),
    (re.compile(r"(^|_)vcpu(id)?$"), "vcpu"),
    (re.compile(r"(addr|ptr|start|buffer|^p$|^arg$|extent_start|host_addr|va)$"), "pointer"),
    (re.compile(r"(^|_)(nr|count|size|len|length|order|nr_extents|nr_ports|nr_frames|entries)(_|$)"), "small"),
)


def boundary(rng: random.Random, size: int) -> int:
    bits = size * 8
    choice = rng.random()
    if choice < 0.5:
        return rng.choice([0, 1, 2, 3, 7, 8, 15, 16, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000,
                           (1 << (bits - 1)) - 1, 1 << (bits - 1), (1 << bits) - 1, (1 << bits) - 2])
    if choice < 0.8:
        return rng.randrange(0, 64)
    return rng.getrandbits(bits)


def pte(world: World, rng: random.Random) -> int:
    kind = rng.choice(["own_mfn", "own_mfn", "own_pt_mfn", "foreign_mfn", "xen_mfn", "bad_mfn"])
    return ((rng.choice(world.pools[kind]) << 12) | rng.choice(PTE_FLAG_CHOICES)) & MASK64


def frame(world: World, rng: random.Random) -> int:
    kind = rng.choices(["own_pfn", "own_mfn", "own_pt_mfn", "foreign_mfn", "xen_mfn", "bad_mfn"],
                       weights=[3, 4, 3, 2, 1, 1])[0]
    return rng.choice(world.pools[kind])


def value_for(name: str, size: int, world: World, rng: random.Random) -> int:
    if rng.random() < 0.08:
        return rng.getrandbits(size * 8)
    if name == "val":
        return pte(world, rng) & ((1 << size * 8) - 1)
    for pattern, category in _CATEGORIES:
        if pattern.search(name):
            if category == "frame":
                v = frame(world, rng)
            elif category == "pointer":
                v = world.pointer(rng, 64)
            elif category == "small":
                v = rng.choice([0, 1, 2, 3, 4, 8, 16, 64, 512, 1024, 4096, 0x7FFF_FFFF, 0xFFFF_FFFF])
            else:
                v = rng.choice(world.pools[category])
            return v & ((1 << size * 8) - 1)
    return boundary(rng, size)


def fill(struct, world: World, rng: random.Random, overrides: dict | None = None) -> bytes:
    """Bytes of `struct` with every leaf field drawn by its name."""
    size = struct.sizeof()
    buf = bytearray(rng.randbytes(size) if rng.random() < 0.1 else bytes(size))
    for path, offset, width in leaves(struct):
        name = path.rsplit(".", 1)[-1].split("[", 1)[0]
        v = (overrides or {}).get(name)
        if v is None:
            v = value_for(name, width, world, rng)
        buf[offset:offset + width] = (v & ((1 << width * 8) - 1)).to_bytes(width, "little")
    return bytes(buf)


# --- ops ------------------------------------------------------------------------

@dataclass
class Op:
    name: str
    hypercall: str
    generate: Callable[[World, random.Random, int], Step]
    cmd: int | None = None    # the sub-op, for command families
    struct: cs.Construct | None = None     # the argument buffer's abi struct, when known
    shape: str = ""           # how the arguments are laid out ("cmd_ptr", ...)


def _module_structs(module) -> dict[str, cs.Construct]:
    return {n: v for n, v in vars(module).items()
            if isinstance(v, cs.Construct) and not n.startswith("_") and isinstance(v, cs.Struct)}


def _struct_for(structs: dict, candidates: list[str]):
    for c in candidates:
        if c in structs:
            return structs[c]
    return None


# family: hypercall -> (abi module, command prefix, struct-name candidates for a command suffix, arg shape)
_FAMILIES = {
    "event_channel_op": ("abi.event_channel", "EVTCHNOP_", lambda s: [f"evtchn_{s}", f"evtchn_{s}_t"], "cmd_ptr"),
    "grant_table_op": ("abi.grant_table", "GNTTABOP_", lambda s: [f"gnttab_{s}", f"gnttab_{s}_t"], "cmd_ptr_count"),
    "memory_op": ("abi.memory", "XENMEM_", lambda s: {
        "increase_reservation": ["xen_memory_reservation"], "decrease_reservation": ["xen_memory_reservation"],
        "populate_physmap": ["xen_memory_reservation"], "machphys_mfn_list": ["xen_machphys_mfn_list"],
        "machphys_mapping": ["xen_machphys_mapping"], "memory_map": ["xen_memory_map"],
        "machine_memory_map": ["xen_memory_map"], "set_memory_map": ["xen_foreign_memory_map"],
        "add_to_physmap": ["xen_add_to_physmap"], "add_to_physmap_batch": ["xen_add_to_physmap_batch"],
        "remove_from_physmap": ["xen_remove_from_physmap"], "exchange": ["xen_memory_exchange"],
        "current_reservation": [], "maximum_reservation": [], "maximum_ram_page": []}.get(s, [f"xen_{s}"]), "cmd_ptr"),
    "sched_op": ("abi.sched", "SCHEDOP_", lambda s: [f"sched_{s}", f"sched_{s}_t"], "cmd_ptr"),
    "vcpu_op": ("abi.vcpu", "VCPUOP_", lambda s: [f"vcpu_{s}", f"vcpu_{s.replace('register_', '')}",
                                                    f"vcpu_set_{s}", "vcpu_runstate_info"], "cmd_vcpu_ptr"),
    "xen_version": ("abi.version", "XENVER_", lambda s: [f"xen_{s}", f"xen_{s}_info", f"xen_{s}_t"], "cmd_ptr"),
    "callback_op": ("abi.callback", "CALLBACKOP_", lambda s: [f"callback_{s}"], "cmd_ptr"),
    "physdev_op": ("abi.physdev", "PHYSDEVOP_", lambda s: [f"physdev_{s}"], "cmd_ptr"),
}


def _family_ops(hypercall: str) -> list[Op]:
    module_name, prefix, candidates, shape = _FAMILIES[hypercall]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return []
    structs = _module_structs(module)
    ops = []
    for name, cmd in sorted(vars(module).items()):
        if not name.startswith(prefix) or not isinstance(cmd, int) or isinstance(cmd, bool):
            continue
        suffix = name[len(prefix):]
        struct = _struct_for(structs, candidates(suffix))
        ops.append(Op(f"{hypercall}/{suffix}", hypercall, _cmd_generator(hypercall, cmd, struct, shape),
                      cmd=cmd, struct=struct, shape=shape))
    return ops


def _cmd_generator(hypercall: str, cmd: int, struct, shape: str):
    def generate(world: World, rng: random.Random, nr: int) -> Step:
        count = 1
        if shape == "cmd_ptr_count":
            count = rng.choice([1, 1, 1, 2, 3, 8, 0, 0xFFFF_FFFF])
        n = min(count, 8) if struct is not None else 1
        size = struct.sizeof() * n if struct is not None else 64
        addr = world.pointer(rng, size)
        data = b"".join(fill(struct, world, rng) for _ in range(n)) if struct is not None else rng.randbytes(64)
        outputs = [(addr + i * struct.sizeof(), struct) for i in range(n)] if struct is not None else []
        args = {"cmd_ptr": [cmd, addr], "cmd_ptr_count": [cmd, addr, count],
                "cmd_vcpu_ptr": [cmd, rng.choice(world.pools["vcpu"]), addr]}[shape]
        return Step(f"{hypercall}/{cmd}", nr, args, [(addr, data)], outputs)
    return generate


def _array_op(hypercall: str, struct_path: tuple[str, str], arg_shape):
    """mmu_update / mmuext_op / set_trap_table shapes: an array of structs plus scalars."""
    module = importlib.import_module(struct_path[0])
    struct = getattr(module, struct_path[1])

    def generate(world: World, rng: random.Random, nr: int) -> Step:
        count = rng.choice([1, 1, 2, 4, 8, 16, 0, 0xFFFF_FFFF, 1 << 31])
        n = min(count, 16)
        size = struct.sizeof()
        addr = world.pointer(rng, size * n)
        entries = [_special(hypercall, fill(struct, world, rng), world, rng) for _ in range(n)]
        writes = [(addr, b"".join(entries))]
        args = arg_shape(world, rng, addr, count)
        return Step(hypercall, nr, args, writes)
    return Op(hypercall, hypercall, generate)


def _special(hypercall: str, entry: bytes, world: World, rng: random.Random) -> bytes:
    """mmu_update.ptr is a PTE's machine address with the command in its low bits."""
    if hypercall != "mmu_update" or rng.random() < 0.1:
        return entry
    mfn = frame(world, rng) if rng.random() < 0.2 else rng.choice(world.pools["own_pt_mfn"])
    ptr = (mfn << 12) | (rng.randrange(512) << 3) | rng.choice([0, 0, 0, 1, 2, 3])
    return (ptr & MASK64).to_bytes(8, "little") + entry[8:]


def _scalar_op(hypercall: str, arg_makers):
    def generate(world: World, rng: random.Random, nr: int) -> Step:
        return Step(hypercall, nr, [make(world, rng) & MASK64 for make in arg_makers])
    return Op(hypercall, hypercall, generate)


def _domid(w, r): return r.choice(w.pools["domid"])
def _foreigndom(w, r): return DOMID_SELF if r.random() < 0.7 else _domid(w, r)
def _ptr(w, r): return w.pointer(r, 64)
def _small(w, r): return r.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 31, 32, 0xFFFF_FFFF, MASK64])
def _va(w, r): return r.choice([0, 0x1000, 0x40_0000, 0x7FFF_FFFF_F000, 0xFFFF_8000_0000_0000,
                                0xFFFF_FFFF_8000_0000, 1 << 47, r.getrandbits(64) & ~0xFFF])
def _pte(w, r): return pte(w, r)
def _any(w, r): return boundary(r, 8)


def raw_op() -> Op:
    def generate(world: World, rng: random.Random, nr: int) -> Step:
        nr = rng.randrange(0, 64)
        addr = world.buffer_address(rng, 256)
        args = [rng.choice([addr, boundary(rng, 8), frame(world, rng), rng.randrange(64)]) for _ in range(6)]
        return Step("raw", nr, args, [(addr, rng.randbytes(256))])
    return Op("raw", "raw", generate)


def all_ops() -> list[Op]:
    from abi import xen as abi_xen
    ops: list[Op] = []
    for hypercall in _FAMILIES:
        ops += _family_ops(hypercall)
    ops.append(_array_op("mmu_update", ("abi.xen", "mmu_update"),
                         lambda w, r, a, c: [a, c, w.pointer(r, 4), _foreigndom(w, r)]))
    ops.append(_array_op("mmuext_op", ("abi.xen", "mmuext_op"),
                         lambda w, r, a, c: [a, c, w.pointer(r, 4), _foreigndom(w, r)]))
    try:
        ops.append(_array_op("set_trap_table", ("abi.arch_x86_xen", "trap_info"),
                             lambda w, r, a, c: [a]))
    except AttributeError:
        pass
    ops.append(_array_op("multicall", ("abi.xen", "multicall_entry"), lambda w, r, a, c: [a, c]))
    ops += [
        _scalar_op("update_va_mapping", [_va, _pte, _small]),
        _scalar_op("update_va_mapping_otherdomain", [_va, _pte, _small, _domid]),
        _scalar_op("vm_assist", [_small, _small]),
        _scalar_op("stack_switch", [_small, _va]),
        _scalar_op("set_segment_base", [_small, _va]),
        _scalar_op("fpu_taskswitch", [_small]),
        _scalar_op("set_debugreg", [_small, _any]),
        _scalar_op("get_debugreg", [_small]),
        _scalar_op("set_timer_op", [_any]),
        _scalar_op("set_gdt", [_ptr, _small]),
        _scalar_op("update_descriptor", [lambda w, r: frame(w, r) << 12 | r.randrange(512) << 3, _any]),
        _scalar_op("console_io", [_small, _small, _ptr]),
        _scalar_op("set_callbacks", [_va, _va, _va]),
    ]
    for name in ("domctl", "sysctl"):
        ops.append(_scalar_op(name, [_ptr]))
    ops.append(raw_op())
    numbers = abi_xen.HYPERCALL_NUMBERS
    for op in ops:
        if op.hypercall != "raw" and op.hypercall not in numbers:
            raise KeyError(f"fuzz op for unknown hypercall {op.hypercall}")
    return ops
