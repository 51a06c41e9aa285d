"""Two Hypervisors in one process share no lock: each subsystem's lock is set by its attach(hv).

The only module-level locks in pvhyp guard process-wide things (the host TSC
reader, unicorn's probed context layout), never a hypervisor's state.
"""
from __future__ import annotations

import ast
import threading

from pvhyp import event_channel as ev
from pvhyp.channel import create_process_domain
from pvhyp.host import build_hypervisor
from tests.core.source_kit import ROOT, python_files

PVHYP = ROOT / "pvhyp"
PROCESS_WIDE_LOCKS = {("time.py", "_host_tsc_lock"), ("cpu/unicorn_quirks.py", "_cache_lock"),
                      ("kvm/quirks.py", "_cache_lock"),        # the KVM self-test's result, once per process
                      ("kvm/vm.py", "_kick_handler_lock")}     # the process's one kick-signal handler


def _module_level_locks() -> set[tuple[str, str]]:
    found = set()
    for path in python_files("pvhyp"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
                func = node.value.func
                if isinstance(func, ast.Attribute) and func.attr in ("Lock", "RLock", "Condition", "Semaphore"):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        if isinstance(target, ast.Name):
                            found.add((path.relative_to(PVHYP).as_posix(), target.id))
    return found


def test_only_process_wide_locks_live_at_module_level():
    assert _module_level_locks() == PROCESS_WIDE_LOCKS


def test_each_hypervisor_has_its_own_locks():
    a, b = build_hypervisor(16, cpu=False), build_hypervisor(16, cpu=False)
    try:
        assert a.evtchn_lock is not b.evtchn_lock
        assert a.gnttab_lock is not b.gnttab_lock
    finally:
        a.close()
        b.close()


def test_a_held_event_lock_does_not_stop_another_hypervisor():
    a, b = build_hypervisor(16, cpu=False), build_hypervisor(16, cpu=False)
    held, release = threading.Event(), threading.Event()

    def hold_a() -> None:
        with a.evtchn_lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_a)
    holder.start()
    try:
        assert held.wait(10)
        d = create_process_domain(b, 16)
        done = threading.Event()
        result = {}

        def alloc() -> None:
            op = {"dom": d.domid, "remote_dom": d.domid}
            result["rc"] = ev.evtchn_alloc_unbound(d, op)
            done.set()

        threading.Thread(target=alloc, daemon=True).start()
        assert done.wait(5), "an event-channel op on one hypervisor waited for another's lock"
        assert result["rc"] == 0
    finally:
        release.set()
        holder.join()
        a.close()
        b.close()
