"""The fuzzer: a short seeded run finds nothing, and every saved reproducer stays fixed."""
from __future__ import annotations

import pathlib

import pytest

from pvhyp.fuzz import runner
from pvhyp.fuzz.ops import Step
from pvhyp.fuzz.runner import make_hv

CORPUS = sorted((pathlib.Path(__file__).parent / "corpus").glob("*.json"))


def test_short_seeded_run_has_no_oracle_violation():
    fz = runner.Fuzzer(make_hv, seed=1234, full_every=200)
    stats = fz.run(steps=3000)
    fz.close()
    assert stats.execs == 3000
    assert [f"{f.kind}: {f.detail}" for f in stats.failures] == []


def test_privileged_attacker_short_run():
    fz = runner.Fuzzer(make_hv, seed=99, privileged=True, full_every=200)
    stats = fz.run(steps=1000)
    fz.close()
    assert [f"{f.kind}: {f.detail}" for f in stats.failures] == []


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_regression_corpus(path):
    steps, privileged, kind, world = runner.load_reproducer(str(path))
    failure = runner.replay(runner.make_hv_for(world), steps, privileged, world=world)
    assert failure is None, f"{path.name} ({kind}) fails again: {failure.kind}\n{failure.detail}"


def test_an_escaping_exception_is_caught_minimized_and_replayable(tmp_path):
    """Plant a bug (a handler that raises on one argument) and watch the fuzzer report it."""
    def make_buggy_hv():
        hv = make_hv()
        def buggy(ctx, cmd, arg):
            if cmd == 7:
                raise RuntimeError("planted bug")
            return 0
        hv.hypercalls.register(21, "vm_assist", buggy)
        return hv
    fz = runner.Fuzzer(make_buggy_hv, seed=5, hypercalls=["vm_assist"], out_dir=str(tmp_path))
    noise = [Step("vm_assist", 21, [1, 0])] * 5
    failure = fz.step_once(Step("vm_assist", 21, [7, 0]))
    assert failure is not None and failure.kind.startswith("exception RuntimeError")
    failure.steps = noise + failure.steps
    fz._record(failure)
    assert len(fz.stats.failures[0].steps) == 1
    steps, privileged, _, world = runner.load_reproducer(fz.stats.failures[0].path)
    assert runner.replay(make_buggy_hv, steps, privileged, world=world).kind == failure.kind
    fz.close()
