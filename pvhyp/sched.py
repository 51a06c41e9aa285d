"""A credit-style round-robin scheduler for vCPU threads, and runstate accounting.

Each x86 vCPU runs on its own host thread (the CPU engine's); at most
`nr_pcpus` of them (the host's cores) hold a "physical CPU" at once. A vCPU
that wants to run queues at the tail and gets a pCPU in FIFO order; it keeps
it for a time slice (10 ms), after which it goes back to the tail if anyone
is waiting. The engine's loop is:

    while hv.sched.wait_to_run(vcpu):       # False: offline for good / domain gone
        ... run guest code ...
        if hv.sched.slice_expired(vcpu):    # also True when it must stop running
            hv.sched.deschedule(vcpu)

A waiting vCPU preempts one whose slice is over by calling
`vcpu.arch.kick()` (an x86 vCPU's engine), so the running thread
leaves unicorn and asks `slice_expired`. SCHEDOP_yield, SCHEDOP_block and
SCHEDOP_poll call `yield_`, `block` and `poll` on the vCPU's own thread;
they return once it may run again. `VCPU.kick()` calls `wake` (an event,
a timer); a wake that arrives before `block` whose event may still sit in the
engine's post queue is kept, so none is lost (see _posted_work_applied).

Process domains (dom0, Python guests) run in their own processes: their
vCPUs never take a pCPU here, and block/poll never park the thread that
dispatched for them (the process waits on its own channel for the kick);
wake and the runstate work the same for them.

The runstate (running/runnable/blocked/offline, time in each) is kept per
vCPU in `vcpu.sched` and copied to the guest's runstate area on every
change, with XEN_RUNSTATE_UPDATE set around the copy when the domain enabled
VMASST_TYPE_runstate_update_flag.
"""
from __future__ import annotations

import collections
import os
import struct
import threading
from typing import TYPE_CHECKING

from abi.vcpu import RUNSTATE_blocked, RUNSTATE_offline, RUNSTATE_runnable, RUNSTATE_running
from abi.xen import VMASST_TYPE_runstate_update_flag
from pvhyp.domain import sched_unit_of, timers_of
from pvhyp.guest_access import GuestFault, copy_to_guest
from pvhyp.pv import state as pv_state

if TYPE_CHECKING:
    from pvhyp.domain import VCPU, Domain

_RUNSTATE_INFO = struct.Struct("<i4xQ4Q")      # struct vcpu_runstate_info, 48 bytes
_STATE_ENTRY_TIME_TOP_BYTE = 8 + 7

DEFAULT_SLICE_NS = 10_000_000
_WAIT_STEP_S = 0.05                 # how often a thread waiting for a pCPU re-checks preemption
# A blocked vCPU sleeps until its wake (an event, a timer: both notify its condition).
# The timeout is only a backstop against a wake-up lost by a bug of ours: long, since
# every idle vCPU pays it (once every 50 ms for three idle guests cost more than their ticks).
BLOCK_BACKSTOP_S = 2.0


class SchedUnit:
    """vcpu.sched: one vCPU's scheduling and runstate state."""

    def __init__(self, vcpu: "VCPU", now: int, lock):
        self.vcpu = vcpu
        # This vCPU's own waits (block, wait_to_run) sleep here, on the scheduler's lock:
        # a wake for one vCPU wakes its thread alone, not every blocked vCPU's.
        self.cond = threading.Condition(lock)
        self.runstate = RUNSTATE_offline
        self.state_entry_time = now
        self.time = [0, 0, 0, 0]
        self.has_cpu = False
        self.queued = False
        self.slice_start = 0
        self.wake_pending = False       # a wake arrived that no block has consumed yet
        self.ran_ns = 0                 # total time on a pCPU (fairness checks, benchmarks)


class Scheduler:
    def __init__(self, hv, nr_pcpus: int | None = None, slice_ns: int = DEFAULT_SLICE_NS):
        self.hv = hv
        self.nr_pcpus = nr_pcpus or os.cpu_count() or 1
        self.slice_ns = slice_ns
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)     # `with self.cond` holds the lock; waits are per unit
        self.runq: collections.deque[SchedUnit] = collections.deque()
        self.running: set[SchedUnit] = set()

    def now(self) -> int:
        return self.hv.time.now()

    # --- runnability ------------------------------------------------------------
    @staticmethod
    def _gone(vcpu: "VCPU") -> bool:
        d = vcpu.domain
        return d.is_dying or d.is_shut_down

    @staticmethod
    def _may_run(vcpu: "VCPU") -> bool:
        return vcpu.online and not vcpu.blocked and not vcpu.pause_count and not vcpu.domain.pause_count

    # --- runstate ------------------------------------------------------------------
    def _set_runstate(self, unit: SchedUnit, state: int) -> None:
        if unit.runstate == state:
            return
        now = self.now()
        delta = now - unit.state_entry_time
        if delta > 0:
            unit.time[unit.runstate] += delta
        switch = RUNSTATE_running in (unit.runstate, state)
        unit.runstate = state
        unit.state_entry_time = now
        # Xen copies the area out when the vCPU is switched in or out (context_switch),
        # not at every change: blocked -> runnable while it waits is seen when it runs.
        # Each copy walks the guest's page tables, three times with the update flag.
        if switch:
            self.update_runstate_area(unit.vcpu)

    def runstate_info(self, vcpu: "VCPU") -> dict:
        """Xen's vcpu_runstate_get: the current state's time counted up to now."""
        unit = sched_unit_of(vcpu)
        with self.cond:
            times = list(unit.time)
            delta = self.now() - unit.state_entry_time
            if delta > 0:
                times[unit.runstate] += delta
            return {"state": unit.runstate, "state_entry_time": unit.state_entry_time, "time": times}

    def pack_runstate(self, vcpu: "VCPU", live: bool = False) -> bytes:
        unit = sched_unit_of(vcpu)
        if live:
            info = self.runstate_info(vcpu)
            return _RUNSTATE_INFO.pack(info["state"], info["state_entry_time"], *info["time"])
        return _RUNSTATE_INFO.pack(unit.runstate, unit.state_entry_time, *unit.time)

    def update_runstate_area(self, vcpu: "VCPU", live: bool = False) -> bool:
        """Copy the runstate to the guest's registered area; False if it did not reach it."""
        va = vcpu.pv.runstate_guest if vcpu.pv is not None else 0
        if not va:
            return True
        record = bytearray(self.pack_runstate(vcpu, live))
        flagged = bool(vcpu.domain.vm_assist & (1 << VMASST_TYPE_runstate_update_flag))
        try:
            if flagged:
                top = record[_STATE_ENTRY_TIME_TOP_BYTE] | 0x80
                copy_to_guest(vcpu, va + _STATE_ENTRY_TIME_TOP_BYTE, bytes([top]))
                record[_STATE_ENTRY_TIME_TOP_BYTE] = top
            copy_to_guest(vcpu, va, bytes(record))
            if flagged:
                copy_to_guest(vcpu, va + _STATE_ENTRY_TIME_TOP_BYTE, bytes([top & 0x7F]))
        except GuestFault:
            return False
        return True

    # --- the engine's side -----------------------------------------------------------
    def wait_to_run(self, vcpu: "VCPU") -> bool:
        """Block until `vcpu` holds a pCPU (True), or can never run again (False)."""
        unit = sched_unit_of(vcpu)
        with self.cond:
            if unit.has_cpu:
                return True
            while True:
                if self._gone(vcpu):
                    self._dequeue(unit)
                    return False
                if not self._may_run(vcpu):
                    self._dequeue(unit)
                    self._set_runstate(unit, RUNSTATE_offline if not vcpu.online else RUNSTATE_blocked)
                    unit.cond.wait(_WAIT_STEP_S)
                    continue
                if not unit.queued:
                    unit.queued = True
                    self.runq.append(unit)
                    self._set_runstate(unit, RUNSTATE_runnable)
                if self.runq[0] is unit and len(self.running) < self.nr_pcpus:
                    self.runq.popleft()
                    unit.queued = False
                    unit.has_cpu = True
                    self.running.add(unit)
                    unit.slice_start = self.now()
                    self._set_runstate(unit, RUNSTATE_running)
                    self._notify_queued()       # the next in line may have a free pCPU too
                    break
                self._preempt_expired()
                unit.cond.wait(_WAIT_STEP_S)
        self.hv.time.update_vcpu_system_time(vcpu)
        return True

    def slice_expired(self, vcpu: "VCPU") -> bool:
        """Should the running vCPU give up its pCPU now?"""
        unit = sched_unit_of(vcpu)
        if not unit.has_cpu:
            return True
        if self._gone(vcpu) or not self._may_run(vcpu):
            return True
        return bool(self.runq) and self.now() - unit.slice_start >= self.slice_ns

    def deschedule(self, vcpu: "VCPU") -> None:
        """Give up the pCPU; the vCPU goes to the tail if it is still runnable."""
        unit = sched_unit_of(vcpu)
        with self.cond:
            self._release(unit)
            if self._may_run(vcpu) and not self._gone(vcpu):
                unit.queued = True
                self.runq.append(unit)
                self._set_runstate(unit, RUNSTATE_runnable)
            elif not vcpu.online:
                self._set_runstate(unit, RUNSTATE_offline)
            self._notify_queued()

    def yield_(self, vcpu: "VCPU") -> bool:
        """SCHEDOP_yield: let the others waiting run first."""
        if not sched_unit_of(vcpu).has_cpu:
            return True
        self.deschedule(vcpu)
        return self.wait_to_run(vcpu)

    def block(self, vcpu: "VCPU") -> None:
        """SCHEDOP_block (after the caller enabled event delivery): sleep until woken.

        Returns at once when an event is already pending for delivery or a
        wake came since the last block.
        """
        unit = sched_unit_of(vcpu)
        if not vcpu.domain.paging:
            # A process domain's "CPU" is an OS process that waits on its own
            # channel; parking the thread that dispatched for it would stall
            # that channel (or an in-process caller such as the fuzzer).
            vcpu.blocked = not (unit.wake_pending or pv_state.local_events_need_delivery(vcpu))
            unit.wake_pending = False
            return
        with self.cond:
            if self._posted_work_applied(vcpu):
                unit.wake_pending = False       # guest memory is current: a wake that mattered shows there
            vcpu.blocked = True
            if unit.wake_pending or pv_state.local_events_need_delivery(vcpu):
                unit.wake_pending = False
                vcpu.blocked = False
                return
            had_cpu = unit.has_cpu
            self._release(unit)
            self._set_runstate(unit, RUNSTATE_blocked)
            while vcpu.blocked and not unit.wake_pending and not self._gone(vcpu):
                unit.cond.wait(BLOCK_BACKSTOP_S)
            unit.wake_pending = False
            vcpu.blocked = False
            if not had_cpu:
                self._set_runstate(unit, RUNSTATE_running)
                return
        self.wait_to_run(vcpu)

    @staticmethod
    def _posted_work_applied(vcpu: "VCPU") -> bool:
        """Has every vcpu.post() so far reached guest memory?

        Without an engine post() runs at once. The engine queues it while the
        vCPU runs and drains the queue between hypercalls, so an event may
        still sit there: an earlier wake has to count (a spurious return,
        never a lost wake-up).
        """
        return vcpu.arch is None

    def poll(self, vcpu: "VCPU", ports: tuple[int, ...], deadline: int) -> None:
        """SCHEDOP_poll's wait: block until a polled port fires, any wake, or the deadline.

        `vcpu.poll_evtchn` tells the event channels what we wait for (Xen's
        v->poll_evtchn: the port when there is one, -1 for several); their
        evtchn_check_pollers clears it and kicks us.
        """
        if not vcpu.domain.paging:
            return          # see block(): a process waits on its channel, not here
        vcpu.poll_evtchn = ports[0] if len(ports) == 1 else -1
        if deadline:
            self.hv.time.set_poll_timeout(vcpu, deadline if deadline < 1 << 63 else deadline - (1 << 64))
        try:
            self.block(vcpu)
        finally:
            vcpu.poll_evtchn = None
            self.hv.time.timers.stop_timer(timers_of(vcpu).poll)

    def poll_timeout(self, vcpu: "VCPU") -> None:
        if vcpu.poll_evtchn is not None:
            vcpu.poll_evtchn = None
            self.wake(vcpu)

    def wake(self, vcpu: "VCPU") -> None:
        """An event or timer for `vcpu`: end its block (now, or the next one)."""
        unit = vcpu.sched
        if unit is None:
            return
        with self.cond:
            unit.wake_pending = True
            vcpu.blocked = False
            unit.cond.notify_all()

    def vcpu_up(self, vcpu: "VCPU") -> bool:
        """VCPUOP_up: True if it was down (and is now runnable)."""
        with self.cond:
            was_down = not vcpu.online
            vcpu.online = True
            if was_down:
                self._set_runstate(sched_unit_of(vcpu), RUNSTATE_runnable)
            sched_unit_of(vcpu).cond.notify_all()
        return was_down

    def vcpu_down(self, vcpu: "VCPU") -> None:
        with self.cond:
            vcpu.online = False
            unit = sched_unit_of(vcpu)
            if not unit.has_cpu:
                self._dequeue(unit)
                self._set_runstate(unit, RUNSTATE_offline)
            unit.cond.notify_all()
        if vcpu.arch is not None:
            vcpu.arch.kick()

    # --- internals ----------------------------------------------------------------------
    def _release(self, unit: SchedUnit) -> None:
        if unit.has_cpu:
            unit.has_cpu = False
            unit.ran_ns += max(0, self.now() - unit.slice_start)
            self.running.discard(unit)
            if unit.runstate == RUNSTATE_running:
                self._set_runstate(unit, RUNSTATE_runnable)
            self._notify_queued()           # a pCPU is free
        self._dequeue(unit)

    def _notify_queued(self) -> None:
        """Wake the vCPUs waiting for a pCPU (the run queue: a few at most)."""
        for waiting in self.runq:
            waiting.cond.notify()

    def _dequeue(self, unit: SchedUnit) -> None:
        if unit.queued:
            unit.queued = False
            try:
                self.runq.remove(unit)
            except ValueError:
                pass
            self._notify_queued()           # the head may have changed

    def _preempt_expired(self) -> None:
        now = self.now()
        for unit in self.running:
            if now - unit.slice_start >= self.slice_ns:
                if unit.vcpu.arch is not None:
                    unit.vcpu.arch.kick()

    def domain_created(self, domain: "Domain") -> None:
        now = self.now()
        for vcpu in domain.vcpus:
            vcpu.sched = SchedUnit(vcpu, now, self.lock)
            if vcpu.online:
                vcpu.sched.runstate = RUNSTATE_runnable

    def domain_destroyed(self, domain: "Domain") -> None:
        with self.cond:
            for vcpu in domain.vcpus:
                if vcpu.sched is not None:
                    self._release(vcpu.sched)
                    vcpu.sched.cond.notify_all()


def attach(hv) -> None:
    hv.sched = Scheduler(hv)
    hv.domain_create_hooks.append(hv.sched.domain_created)
    hv.domain_destroy_hooks.append(hv.sched.domain_destroyed)
