"""The fuzz loop: generate a step, run it, ask the oracle; minimize and save failures."""
from __future__ import annotations

import collections
import json
import os
import random
import time
import traceback
from dataclasses import dataclass, field

from pvhyp.fuzz import oracle, x86
from pvhyp.fuzz.ops import Op, Step, all_ops
from pvhyp.fuzz.world import World
from pvhyp.host import build_hypervisor
from pvhyp.hypercall_table import HypercallContext

MEMORY_MB = 32              # every world's hypervisor: room for the attacker, the victim and dom0
RESET_EVERY = 2000          # a fresh world every so many steps keeps reproducers short
SAMPLE_PERIOD, SAMPLED = 1000, 100   # coverage traces 100 steps in every 1,000 (tracing costs ~10x)


def make_hv():
    """A fresh hypervisor for one world: every handler, no CPU engine (steps go straight into the table)."""
    return build_hypervisor(MEMORY_MB, cpu=False)


def make_cpu_hv():
    """A fresh hypervisor with the CPU engine, for the x86 target's worlds (pvhyp.fuzz.x86)."""
    return build_hypervisor(MEMORY_MB, cpu=True)


def make_hv_for(world: str):
    """The hypervisor factory a reproducer of attacker kind `world` replays on."""
    return make_cpu_hv if world == x86.WORLD_KIND else make_hv


TARGETS = ("hypercall", "x86")
X86_SHARE = 0.7             # of an x86 target's steps, how many run guest code (the rest: hypercalls)


@dataclass
class Failure:
    kind: str               # a stable signature: what went wrong, where
    detail: str
    steps: list[Step]
    path: str | None = None
    world: str = "process"  # the attacker kind the steps ran against


@dataclass
class Stats:
    execs: int = 0
    per_hypercall: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    ops_seen: set = field(default_factory=set)
    ops_succeeded: set = field(default_factory=set)
    failures: list = field(default_factory=list)
    cpu_events: collections.Counter = field(default_factory=collections.Counter)   # x86: PvEntry.counts summed
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def distinct_results(self) -> int:
        return len({r for c in self.per_hypercall.values() for r in c})


class Fuzzer:
    def __init__(self, make_hv, seed: int = 0, hypercalls: list[str] | None = None,
                 privileged: bool = False, full_every: int = 1000, out_dir: str | None = None,
                 kinds: tuple[str, ...] = ("x86", "x86", "process"), checkers=None, target: str = "hypercall"):
        if target not in TARGETS:
            raise ValueError(f"unknown fuzz target {target!r} (one of: {', '.join(TARGETS)})")
        if target == "x86":
            kinds = (x86.WORLD_KIND,)
        self.target = target
        self.make_hv = make_hv
        self.rng = random.Random(seed)
        self.seed = seed
        self.privileged = privileged
        self.full_every = full_every
        self.out_dir = out_dir
        ops = all_ops()
        if hypercalls:
            unknown = set(hypercalls) - {op.hypercall for op in ops}
            if unknown:
                raise ValueError(f"no fuzz ops for hypercall(s): {', '.join(sorted(unknown))}")
            ops = [op for op in ops if op.hypercall in hypercalls]
        self.ops: list[Op] = ops
        self.stats = Stats()
        self.checkers = checkers if checkers is not None else oracle.available_checkers()
        self.kinds = kinds          # attacker kinds drawn per world; x86 ones reach the page-table paths
        self._start_world()

    def close(self) -> None:
        """Stop the current world's threads and release its hypervisor."""
        self._close_world()

    # --- the world ---

    def _close_world(self) -> None:
        kernel = self.world.kernel
        if kernel is not None and kernel.vcpu.arch is not None:
            self.stats.cpu_events.update(kernel.cpu.counts)
        self.world.close()

    def _new_world(self) -> None:
        self._close_world()
        self._start_world()

    def _start_world(self) -> None:
        kind = self.rng.choice(self.kinds)
        seed = self.rng.getrandbits(32)
        self.world = World(self.make_hv(), privileged=self.privileged, seed=seed, kind=kind)
        if kind == x86.WORLD_KIND:
            self.world.kernel = x86.GuestKernel(self.world, random.Random(seed))
        self.ctx = HypercallContext(self.world.attacker.vcpus[0])
        self.history: list[Step] = []

    # --- one step ---

    def generate(self) -> Step:
        from abi.xen import HYPERCALL_NUMBERS
        if self.world.kernel is not None and self.rng.random() < X86_SHARE:
            return x86.generate_step(self.world, self.rng)
        op = self.rng.choice(self.ops)
        if op.hypercall == "multicall":
            return self._multicall()
        nr = HYPERCALL_NUMBERS.get(op.hypercall, 0)
        return op.generate(self.world, self.rng, nr)

    def _multicall(self) -> Step:
        from abi.xen import HYPERCALL_NUMBERS, multicall_entry
        subs = [op for op in self.ops if op.hypercall not in ("raw", "multicall")] or self.ops
        n = self.rng.choice([1, 2, 3, 4])
        entries, writes = [], []
        for _ in range(n):
            op = self.rng.choice(subs)
            sub = op.generate(self.world, self.rng, HYPERCALL_NUMBERS.get(op.hypercall, 0))
            if self.rng.random() < 0.05:
                sub.nr = HYPERCALL_NUMBERS["multicall"]          # nesting must be refused
            writes += sub.writes
            args = [a & 0xFFFF_FFFF_FFFF_FFFF for a in (sub.args + [0] * 6)[:6]]
            entries.append(multicall_entry.build({"op": sub.nr, "result": 0, "args": args}))
        addr = self.world.buffer_address(self.rng, len(entries) * multicall_entry.sizeof())
        writes.append((addr, b"".join(entries)))
        return Step("multicall", HYPERCALL_NUMBERS["multicall"], [addr, n], writes)

    def execute(self, step: Step):
        """Run a step; returns (result, exception-or-None)."""
        for addr, data in step.writes:
            if 0 <= addr and addr + len(data) <= self.world.memory_size:
                self.world.write(addr, data)
        args = (list(step.args) + [0] * 6)[:6]
        try:
            return self.world.hv.hypercalls.dispatch(self.ctx, step.nr, args), None
        except Exception as e:     # the oracle's first rule: nothing escapes a handler
            return None, e

    def harvest(self, step: Step, result) -> None:
        if result != 0 or not step.outputs:
            return
        for addr, struct in step.outputs:
            try:
                values = struct.parse(self.world.read(addr, struct.sizeof()))
            except Exception:
                continue
            for key, v in values.items():
                if isinstance(v, int):
                    if key.endswith("port"):
                        self.world.harvest("port", v)
                    elif key == "handle":
                        self.world.harvest("handle", v)

    def step_once(self, step: Step | None = None, full: bool = False) -> Failure | None:
        step = step or self.generate()
        self.history.append(step)
        if step.nr == x86.X86_NR:
            failure = self._x86_step(step)
            if failure is None and full:
                failure = self._final_check()
            return failure
        result, exc = self.execute(step)
        name = self.world.hv.hypercalls.name(step.nr)
        self.stats.execs += 1
        self.stats.per_hypercall[name][result if exc is None else "exception"] += 1
        self.stats.ops_seen.add(step.op)
        if exc is not None:
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            return Failure(f"exception {type(exc).__name__} at {os.path.basename(tb.filename)}:{tb.lineno}",
                           "".join(traceback.format_exception(exc)), list(self.history))
        if result is not None and result >= 0:
            self.stats.ops_succeeded.add(step.op)
        problem = oracle.check_result(name, result, (list(step.args) + [0] * 6)[:6])
        if problem:
            return Failure(f"result {name}", problem, list(self.history))
        self.harvest(step, result)
        if full:
            problems = oracle.full_check(self.world, self.checkers)
            if problems:
                return Failure(f"invariant {problems[0].split(':')[0]}", "\n".join(problems),
                               list(self.history))
        return None

    def _x86_step(self, step: Step) -> Failure | None:
        """Guest code on the engine: the run's end must be one Xen could have, nothing may escape."""
        kernel = self.world.kernel
        if kernel is None:          # a reproducer's x86 step on a world without a vCPU: nothing runs
            return None
        outcome, exc = kernel.run_step(step)
        self.stats.execs += 1
        self.stats.per_hypercall[step.op][outcome if exc is None else "exception"] += 1
        self.stats.ops_seen.add(step.op)
        if exc is not None:
            return Failure(f"{outcome} {x86.describe(exc)}", "".join(traceback.format_exception(exc)),
                           list(self.history))
        self.stats.ops_succeeded.add(step.op)
        problem = kernel.check_after_step()
        if problem:
            return Failure(f"cpu {problem.split(':')[0]}", problem, list(self.history))
        return None

    def _world_is_dead(self) -> bool:
        """An x86 attacker that crashed (or shut down) runs no more code: start a new world."""
        attacker = self.world.attacker
        return self.world.kernel is not None and (attacker.is_shut_down or attacker.is_dying)

    # --- the loop ---

    def run(self, steps: int | None = None, seconds: float | None = None, progress=None,
            sampler=None) -> Stats:
        """Fuzz until `steps` or `seconds`. A `sampler` (start()/stop(), e.g. coverage.py) is
        on for the first SAMPLED steps of every SAMPLE_PERIOD."""
        last_report = 0.0
        while True:
            if sampler is not None:
                phase = self.stats.execs % SAMPLE_PERIOD
                if phase == 0:
                    sampler.start()
                elif phase == SAMPLED:
                    sampler.stop()
            if steps is not None and self.stats.execs >= steps:
                break
            if seconds is not None and self.stats.elapsed >= seconds:
                break
            full = (self.stats.execs + 1) % self.full_every == 0
            failure = self.step_once(full=full)
            if failure is None and (len(self.history) >= RESET_EVERY or self._world_is_dead()):
                failure = self._final_check()
                self._new_world()
            if failure is not None:
                self._record(failure)
                self._new_world()
            if progress and self.stats.elapsed - last_report >= 0.5:
                last_report = self.stats.elapsed
                progress(self)
        if sampler is not None and self.stats.execs % SAMPLE_PERIOD < SAMPLED:
            sampler.stop()
        failure = self._final_check()
        if failure is not None:
            self._record(failure)
        return self.stats

    def _final_check(self) -> Failure | None:
        problems = oracle.full_check(self.world, self.checkers)
        if problems:
            return Failure(f"invariant {problems[0].split(':')[0]}", "\n".join(problems), list(self.history))
        return None

    def _record(self, failure: Failure) -> None:
        failure.world = self.world.kind
        failure.steps = minimize(self.make_hv, failure, self.privileged, self.checkers)
        self.stats.failures.append(failure)
        if self.out_dir:
            os.makedirs(self.out_dir, exist_ok=True)
            failure.path = os.path.join(self.out_dir, f"repro-{len(self.stats.failures):03d}.json")
            save_reproducer(failure, failure.path, self.privileged)


# --- reproducers ---------------------------------------------------------------

def save_reproducer(failure: Failure, path: str, privileged: bool) -> None:
    with open(path, "w") as f:
        json.dump({"kind": failure.kind, "detail": failure.detail, "privileged": privileged,
                   "world": failure.world, "steps": [s.to_json() for s in failure.steps]}, f, indent=1)


def replay(make_hv, steps: list[Step], privileged: bool = False, checkers=None,
           world: str = "process") -> Failure | None:
    """Run `steps` on a fresh world of attacker kind `world`; the first failure, or None."""
    fz = Fuzzer(make_hv, privileged=privileged, kinds=(world,), checkers=checkers)
    try:
        for step in steps:
            failure = fz.step_once(step)
            if failure is not None:
                return failure
        failure = fz._final_check()
        if failure is not None:
            failure.steps = list(steps)
        return failure
    finally:
        fz.close()


def load_reproducer(path: str) -> tuple[list[Step], bool, str, str]:
    """(steps, privileged, failure kind, attacker world kind) of a saved reproducer."""
    with open(path) as f:
        data = json.load(f)
    return ([Step.from_json(s) for s in data["steps"]], bool(data.get("privileged")), data.get("kind", ""),
            data.get("world", "process"))


def minimize(make_hv, failure: Failure, privileged: bool, checkers, budget_s: float = 30.0) -> list[Step]:
    """Delta debugging over the steps: the shortest list found that still fails the same way."""
    steps = failure.steps
    deadline = time.monotonic() + budget_s

    def still_fails(candidate: list[Step]) -> bool:
        f = replay(make_hv, candidate, privileged, checkers, failure.world)
        return f is not None and f.kind == failure.kind

    if not still_fails(steps):
        return steps           # not reproducible from a fresh world: keep it whole
    chunk = max(1, len(steps) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i, removed = 0, False
        while i < len(steps) and time.monotonic() < deadline:
            candidate = steps[:i] + steps[i + chunk:]
            if candidate and still_fails(candidate):
                steps, removed = candidate, True
            else:
                i += chunk
        if not removed:
            chunk //= 2
    return steps
