"""Time: system time, the guest TSC, pvclock records, wallclock and timers.

System time (Xen's NOW()) is nanoseconds since the hypervisor started,
from the host's monotonic clock (or a FakeClock a test drives).

The guest TSC is what `rdtsc` returns on the software CPU. Unicorn's rdtsc
reads the host's own (invariant) TSC, so with the real clock the guest TSC
*is* the host TSC: `hv.time.guest_tsc()` reads it the same way, its rate is
calibrated against the monotonic clock (and refined as time passes), and
each vcpu_time_info record stamps (tsc, system time) afresh, as Xen's
calibration does. The records then carry no TSC_STABLE bit, so a guest
keeps its pvclock monotonic across vCPUs itself (Linux does). With a
FakeClock the TSC is synthetic: now_ns * TSC_HZ / 1e9, exact, stable. An
engine that traps rdtsc (CR4.TSD) answers it with `hv.time.guest_tsc()`.

A record is refreshed when a vCPU is scheduled, its vcpu_info moves, a
time area is registered, and once a second (Xen's calibration), as Xen does.

Timers (Xen's set_timer / stop_timer) live in one queue ordered by
deadline. With the real clock a thread sleeps until the next deadline and
fires what is due; with a FakeClock nothing fires until the test calls
`clock.advance(ns)`, which runs the due callbacks synchronously. A vCPU's
singleshot and periodic timers send VIRQ_TIMER through the event-channel
subsystem's `send_guest_vcpu_virq`; its poll timer wakes it from
SCHEDOP_poll; the domain watchdogs shut the domain down.
"""
from __future__ import annotations

import atexit
import heapq
import itertools
import struct
import threading
import time as host_time
import weakref
from typing import TYPE_CHECKING, Callable

from abi.arch_x86_xen import XEN_LEGACY_MAX_VCPUS
from abi.xen import VIRQ_TIMER, XEN_PVCLOCK_TSC_STABLE_BIT, vcpu_info, vcpu_time_info
from pvhyp.domain import timers_of
from pvhyp.guest_access import GuestFault, copy_to_guest
from pvhyp.memory import PAGE_SHIFT
from pvhyp.thread_name import name_this_thread

if TYPE_CHECKING:
    from pvhyp.domain import VCPU, Domain

NSEC_PER_SEC = 1_000_000_000
TSC_HZ = 2_000_000_000              # the synthetic TSC (FakeClock): 2 GHz
MILLISECS = 1_000_000
STIME_DELTA_MAX = (1 << 62) - 1
NR_DOMAIN_WATCHDOG_TIMERS = 2
CALIBRATION_PERIOD_NS = 1_000_000_000

VCPU_INFO_TIME_OFFSET = vcpu_info.sizeof() - vcpu_time_info.sizeof()
_TIME_INFO_BODY = struct.Struct("<IQQIbB2x")     # pad0 .. pad1, after the version word
_WC_OFFSET = vcpu_info.sizeof() * XEN_LEGACY_MAX_VCPUS + 2 * 64 * 8   # wc_version in shared_info
_U32 = struct.Struct("<I")


def compute_time_scale(ticks_per_sec: int) -> tuple[int, int]:
    """(mul_frac, shift) with ns = ((ticks << shift) * mul_frac) >> 32 (Xen's set_time_scale)."""
    tps64, shift = ticks_per_sec, 0
    while tps64 > 2 * NSEC_PER_SEC:
        tps64 >>= 1
        shift -= 1
    tps32 = tps64 & 0xFFFF_FFFF
    while tps32 <= NSEC_PER_SEC:
        tps32 <<= 1
        shift += 1
    return (NSEC_PER_SEC << 32) // tps32, shift


def scale_delta(delta: int, mul_frac: int, shift: int) -> int:
    """What the guest computes from a TSC delta (pvclock_scale_delta)."""
    delta = delta << shift if shift >= 0 else delta >> -shift
    return (delta * mul_frac) >> 32


TSC_TO_SYSTEM_MUL, TSC_SHIFT = compute_time_scale(TSC_HZ)


# --- clocks ------------------------------------------------------------------

class HostTsc:
    """The host TSC (what unicorn's rdtsc returns to guests) and its calibrated rate."""

    _CALIBRATION_NS = 2_000_000
    _REFINE_NS = 100_000_000

    # rdtsc; shl $32,%rdx; or %rdx,%rax; ret: the host TSC as one 64-bit value.
    _RDTSC_CODE = b"\x0f\x31\x48\xc1\xe2\x20\x48\x09\xd0\xc3"

    def __init__(self):
        # unicorn's rdtsc returns the host TSC (QEMU's cpu_get_host_ticks), so a native
        # rdtsc gives the same values without driving a shared Uc from several threads,
        # which crashed inside emu_start. The emulated read stays as the fallback for a
        # host that refuses an executable mapping.
        self._native = self._native_rdtsc()
        self._uc = None
        if self._native is None:
            from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
            from unicorn.x86_const import UC_X86_REG_RAX, UC_X86_REG_RDX
            self._uc = Uc(UC_ARCH_X86, UC_MODE_64)
            self._uc.mem_map(0x1000, 0x1000)
            self._uc.mem_write(0x1000, b"\x0f\x31")             # rdtsc
            self._regs = (UC_X86_REG_RAX, UC_X86_REG_RDX)
        self._retired = False
        self._lock = threading.Lock()
        self._last = 0
        self._base = self._sample()
        while True:
            ns, tsc = self._sample()
            if ns - self._base[0] >= self._CALIBRATION_NS:
                break
        self._rate = (ns, tsc)

    def _native_rdtsc(self):
        import ctypes
        import mmap
        try:
            self._code_page = mmap.mmap(-1, mmap.PAGESIZE,
                                        prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except (OSError, ValueError):
            return None
        self._code_page.write(self._RDTSC_CODE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._code_page))
        return ctypes.CFUNCTYPE(ctypes.c_uint64)(address)

    def read(self) -> int:
        with self._lock:
            if self._retired:               # interpreter exit: touch nothing native any more
                return self._last
            if self._native is not None:
                self._last = self._native()
                return self._last
            self._uc.emu_start(0x1000, 0x1002)
            rax, rdx = (self._uc.reg_read(r) for r in self._regs)
            self._last = (rdx & 0xFFFF_FFFF) << 32 | (rax & 0xFFFF_FFFF)
        return self._last

    def retire(self) -> None:
        """Stop using unicorn (interpreter exit): a thread inside emu_start with the GIL
        released must not outlive the Uc that finalization frees."""
        with self._lock:
            self._retired = True
            self._uc = None

    def _sample(self) -> tuple[int, int]:
        """(monotonic ns, TSC) read as close together as we can: the tightest of a few tries."""
        best: tuple[int, int, int] | None = None
        for _ in range(3):
            before = host_time.monotonic_ns()
            tsc = self.read()
            after = host_time.monotonic_ns()
            if best is None or after - before < best[0]:
                best = (after - before, (before + after) // 2, tsc)
        assert best is not None         # set on the first of the tries
        return best[1], best[2]

    def hz(self) -> int:
        """Ticks per second over the longest span measured so far (re-measured every 100 ms at most)."""
        if host_time.monotonic_ns() - self._rate[0] > self._REFINE_NS:
            self._rate = self._sample()
        span_ns = self._rate[0] - self._base[0]
        return (self._rate[1] - self._base[1]) * NSEC_PER_SEC // span_ns


# One host TSC reader per process, shared by every Hypervisor in it (the host's TSC is
# one clock): this lock guards that process-wide reader, no hypervisor's state.
_host_tsc: HostTsc | None = None
_host_tsc_lock = threading.Lock()


def host_tsc() -> HostTsc:
    global _host_tsc
    with _host_tsc_lock:
        if _host_tsc is None:
            _host_tsc = HostTsc()
        return _host_tsc


class MonotonicClock:
    """Host monotonic time, zero at construction; wallclock of that zero."""

    def __init__(self):
        self._start = host_time.monotonic_ns()
        self.boot_wallclock_ns = host_time.time_ns()

    def now_ns(self) -> int:
        return host_time.monotonic_ns() - self._start

    def advance(self, ns: int) -> None:
        raise RuntimeError("the host clock cannot be advanced")


class FakeClock:
    """A clock a test moves by hand; advancing it fires the timers that became due."""

    def __init__(self, start_ns: int = 0, boot_wallclock_ns: int = 1_700_000_000 * NSEC_PER_SEC):
        self._now = start_ns
        self.boot_wallclock_ns = boot_wallclock_ns
        self.on_advance: list[Callable[[], object]] = []    # results ignored

    def now_ns(self) -> int:
        return self._now

    def advance(self, ns: int) -> None:
        self._now += ns
        for callback in list(self.on_advance):
            callback()


# --- timers --------------------------------------------------------------------

class Timer:
    """Xen's struct timer: a callback and, while armed, a deadline."""

    __slots__ = ("callback", "deadline", "_generation")

    def __init__(self, callback: Callable[[], None]):
        self.callback = callback
        self.deadline: int | None = None
        self._generation = 0

    @property
    def active(self) -> bool:
        return self.deadline is not None


_live_queues: "weakref.WeakSet[TimerQueue]" = weakref.WeakSet()


@atexit.register
def _stop_timer_threads() -> None:
    """At interpreter exit, before modules are torn down: stop every timer thread and
    retire the TSC reader, so no daemon thread is left inside unicorn."""
    for queue in list(_live_queues):
        queue.close()
        thread = queue._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(0.5)
    if _host_tsc is not None:
        _host_tsc.retire()


class TimerQueue:
    def __init__(self, clock) -> None:
        self.clock = clock
        self._heap: list = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.errors: list[str] = []
        _live_queues.add(self)
        if isinstance(clock, FakeClock):
            clock.on_advance.append(self.run_due)

    def set_timer(self, timer: Timer, deadline: int) -> None:
        with self._cond:
            timer._generation += 1
            timer.deadline = deadline
            # The timer thread sleeps until the heap's head (stale entries included); it only
            # needs waking when this deadline comes first.  A guest re-arming its one-shot
            # timer later and later (Linux does, thousands of times a boot) wakes nobody.
            wake = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, next(self._order), timer._generation, timer))
            if not isinstance(self.clock, FakeClock):
                self._ensure_thread()
            if wake:
                self._cond.notify()

    def stop_timer(self, timer: Timer) -> None:
        with self._cond:
            timer._generation += 1
            timer.deadline = None

    def next_deadline(self) -> int | None:
        with self._cond:
            self._drop_stale()
            return self._heap[0][0] if self._heap else None

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and heap[0][2] != heap[0][3]._generation:
            heapq.heappop(heap)

    def _pop_due(self, now: int) -> list[Timer]:
        due = []
        with self._cond:
            while True:
                self._drop_stale()
                if not self._heap or self._heap[0][0] > now:
                    break
                _, _, _, timer = heapq.heappop(self._heap)
                timer.deadline = None
                timer._generation += 1
                due.append(timer)
        return due

    def run_due(self) -> int:
        """Fire every timer whose deadline has passed; returns how many fired.

        A callback that raises is reported to `on_error` and the others still
        run: one broken timer must not stop every domain's clock.
        """
        fired = 0
        while True:
            due = self._pop_due(self.clock.now_ns())
            if not due:
                return fired
            for timer in due:
                try:
                    timer.callback()
                except Exception as error:      # noqa: BLE001 - reported, never lost
                    self.on_error(timer, error)
                fired += 1

    def on_error(self, timer: Timer, error: Exception) -> None:
        self.errors.append(repr(error))

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="pvhyp-timers", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        name_this_thread()
        while True:
            with self._cond:
                if self._closed:
                    return
                self._drop_stale()
                if self._heap:
                    wait = (self._heap[0][0] - self.clock.now_ns()) / NSEC_PER_SEC
                    if wait > 0:
                        self._cond.wait(wait)
                        continue
                else:
                    self._cond.wait()
                    continue
            self.run_due()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()


# --- per-vCPU and per-domain timer state ------------------------------------------

class VcpuTimers:
    """vcpu.timer: Xen's singleshot, periodic and poll timers of one vCPU."""

    def __init__(self, keeper: "TimeKeeper", vcpu: "VCPU"):
        self.singleshot = Timer(lambda: keeper.send_timer_event(vcpu))
        self.periodic = Timer(lambda: keeper.periodic_timer_work(vcpu))
        self.poll = Timer(lambda: keeper.poll_timeout(vcpu))
        self.periodic_period = 0
        self.periodic_last_event = 0
        self.area_version = 0           # the version of our copy of the guest's time area
        self.lock = threading.Lock()


class TimeKeeper:
    """hv.time: the clock, the timer queue, and the time records guests read."""

    def __init__(self, hv, clock=None) -> None:
        self.hv = hv
        self.clock = clock or MonotonicClock()
        self.timers = TimerQueue(self.clock)
        self.watchdogs: dict[int, list[Timer | None]] = {}
        self.timer_events_sent = 0
        self._calibration = Timer(self._calibrate)

    def use_clock(self, clock) -> None:
        """Replace the clock (tests: a FakeClock) before any timer is armed."""
        self.timers.close()
        self.clock = clock
        self.timers = TimerQueue(clock)

    def now(self) -> int:
        return self.clock.now_ns()

    @property
    def synthetic_tsc(self) -> bool:
        return isinstance(self.clock, FakeClock)

    def guest_tsc(self) -> int:
        if self.synthetic_tsc:
            return self.clock.now_ns() * TSC_HZ // NSEC_PER_SEC
        return host_tsc().read()

    def tsc_khz(self) -> int:
        """The TSC frequency the guests' time records are scaled for (CPUID leaf 0x16 says it too)."""
        return TSC_HZ // 1000 if self.synthetic_tsc else host_tsc().hz() // 1000

    def next_deadline(self) -> int | None:
        return self.timers.next_deadline()

    # --- published records -----------------------------------------------
    def time_record(self) -> bytes:
        """The body of vcpu_time_info after `version`, stamped now."""
        if self.synthetic_tsc:
            now = self.clock.now_ns()
            return _TIME_INFO_BODY.pack(0, now * TSC_HZ // NSEC_PER_SEC, now, TSC_TO_SYSTEM_MUL, TSC_SHIFT,
                                        XEN_PVCLOCK_TSC_STABLE_BIT)
        tsc_source = host_tsc()
        mul, shift = compute_time_scale(tsc_source.hz())
        tsc = tsc_source.read()
        return _TIME_INFO_BODY.pack(0, tsc, self.clock.now_ns(), mul, shift, 0)

    def update_vcpu_system_time(self, vcpu: "VCPU") -> None:
        """Rewrite the vCPU's vcpu_info.time (and its time area) with the version protocol."""
        vcpu.post(lambda: self._write_time(vcpu))

    def _write_time(self, vcpu: "VCPU") -> None:
        body = self.time_record()
        memory = self.hv.memory
        maddr = vcpu.vcpu_info_maddr
        if maddr:
            at = maddr + VCPU_INFO_TIME_OFFSET
            # The version word is what a reading vCPU trusts: one aligned store each time.
            odd = ((memory.words.load_u32(at) + 1) | 1) & 0xFFFF_FFFF
            memory.words.store_u32(at, odd)
            memory.write(at + 4, body)
            memory.words.store_u32(at, odd + 1)
        pv = vcpu.pv
        if pv is not None and pv.time_info_guest:
            self._write_time_area(vcpu, pv.time_info_guest, body)

    def _write_time_area(self, vcpu: "VCPU", va: int, body: bytes) -> None:
        # The area has its own version sequence, kept in our copy of it.
        timers = timers_of(vcpu)
        odd = ((timers.area_version + 1) | 1) & 0xFFFF_FFFF
        try:
            copy_to_guest(vcpu, va, _U32.pack(odd))
            copy_to_guest(vcpu, va + 4, body)
            copy_to_guest(vcpu, va, _U32.pack((odd + 1) & 0xFFFF_FFFF))
        except GuestFault:
            return                      # the guest unmapped its area: Xen skips it silently too
        timers.area_version = odd + 1

    def update_domain_wallclock_time(self, domain: "Domain") -> None:
        """shared_info.wc_*: the wallclock at system time zero, under wc_version."""
        if not domain.shared_info_mfn:
            return
        memory = self.hv.memory
        at = (domain.shared_info_mfn << PAGE_SHIFT) + _WC_OFFSET
        wall = self.clock.boot_wallclock_ns
        sec, nsec = divmod(wall, NSEC_PER_SEC)
        odd = ((memory.words.load_u32(at) + 1) | 1) & 0xFFFF_FFFF
        memory.words.store_u32(at, odd)
        memory.write(at + 4, struct.pack("<III", sec & 0xFFFF_FFFF, nsec, sec >> 32))
        memory.words.store_u32(at, odd + 1)

    # --- vCPU timers (Xen: common/sched/core.c) --------------------------------
    def send_timer_event(self, vcpu: "VCPU") -> None:
        self.timer_events_sent += 1
        try:
            from pvhyp.event_channel import send_guest_vcpu_virq
        except ImportError:
            vcpu.kick()
            return
        send_guest_vcpu_virq(vcpu, VIRQ_TIMER)

    def set_timer_op(self, vcpu: "VCPU", timeout: int) -> int:
        """HYPERVISOR_set_timer_op: arm (or with 0, stop) the singleshot timer; always 0."""
        timers = timers_of(vcpu)
        if timeout == 0:
            self.timers.stop_timer(timers.singleshot)
            return 0
        if timeout >= 1 << 63:
            timeout -= 1 << 64          # s_time_t is signed
        now = self.now()
        offset = timeout - now
        if timeout < 0 or (offset > 0 and (offset >> 50) & 0xFFFF_FFFF):
            # Xen's answer to a timeout wrapped negative or ~13 days out: 100 ms.
            self.timers.set_timer(timers.singleshot, now + 100 * MILLISECS)
        else:
            self.timers.set_timer(timers.singleshot, timeout)
        self.timers.run_due()
        return 0

    def set_singleshot_timer(self, vcpu: "VCPU", timeout_abs_ns: int) -> None:
        if timeout_abs_ns >= 1 << 63:
            timeout_abs_ns -= 1 << 64
        if timeout_abs_ns < self.now():
            self.timers.stop_timer(timers_of(vcpu).singleshot)
            self.send_timer_event(vcpu)
            return
        self.timers.set_timer(timers_of(vcpu).singleshot, timeout_abs_ns)

    def stop_singleshot_timer(self, vcpu: "VCPU") -> None:
        self.timers.stop_timer(timers_of(vcpu).singleshot)

    def set_periodic_timer(self, vcpu: "VCPU", period_ns: int) -> None:
        timers = timers_of(vcpu)
        with timers.lock:
            self.timers.stop_timer(timers.periodic)
            timers.periodic_period = period_ns
            if period_ns:
                self._periodic_work_locked(vcpu)

    def periodic_timer_work(self, vcpu: "VCPU") -> None:
        with timers_of(vcpu).lock:
            self._periodic_work_locked(vcpu)

    def _periodic_work_locked(self, vcpu: "VCPU") -> None:
        timers = timers_of(vcpu)
        if not timers.periodic_period:
            return
        now = self.now()
        next_event = timers.periodic_last_event + timers.periodic_period
        if now >= next_event:
            self.send_timer_event(vcpu)
            timers.periodic_last_event = now
            next_event = now + timers.periodic_period
        self.timers.set_timer(timers.periodic, next_event)

    def set_poll_timeout(self, vcpu: "VCPU", deadline: int) -> None:
        self.timers.set_timer(timers_of(vcpu).poll, deadline)

    def poll_timeout(self, vcpu: "VCPU") -> None:
        self.hv.sched.poll_timeout(vcpu)

    # --- domain watchdogs ---------------------------------------------------------
    def domain_watchdog(self, domain: "Domain", wid: int, timeout_s: int) -> int:
        """SCHEDOP_watchdog: 0 creates one (returns its id), else kick (timeout) or kill (0)."""
        from abi.errno import EINVAL, ENOSPC
        from abi.sched import SHUTDOWN_watchdog
        if wid > NR_DOMAIN_WATCHDOG_TIMERS:
            return -EINVAL
        slots = self.watchdogs.setdefault(domain.domid, [None] * NR_DOMAIN_WATCHDOG_TIMERS)
        with domain.lock:
            if wid == 0:
                for i, slot in enumerate(slots):
                    if slot is None:
                        new = slots[i] = Timer(lambda: self._watchdog_fired(domain, SHUTDOWN_watchdog))
                        self.timers.set_timer(new, self.now() + timeout_s * NSEC_PER_SEC)
                        return i + 1
                return -ENOSPC
            timer = slots[wid - 1]
            if timer is None:
                return -EINVAL
            if timeout_s == 0:
                self.timers.stop_timer(timer)
                slots[wid - 1] = None
            else:
                self.timers.set_timer(timer, self.now() + timeout_s * NSEC_PER_SEC)
            return 0

    def _watchdog_fired(self, domain: "Domain", reason: int) -> None:
        if domain.is_shut_down or domain.is_dying:
            return
        domain.shutdown(reason)

    # --- calibration (Xen: time_calibration, once a second) ----------------------
    def _calibrate(self) -> None:
        """Restamp every vCPU's record, so TSC rate estimates never drift far."""
        domains = [d for d in list(self.hv.domains.values()) if not d.is_dying]
        for domain in domains:
            for vcpu in domain.vcpus:
                if vcpu.online and vcpu.timer is not None:
                    self.update_vcpu_system_time(vcpu)
        if domains:
            self.timers.set_timer(self._calibration, self.now() + CALIBRATION_PERIOD_NS)

    # --- lifetime -------------------------------------------------------------------
    def domain_created(self, domain: "Domain") -> None:
        for vcpu in domain.vcpus:
            vcpu.timer = VcpuTimers(self, vcpu)
        self.update_domain_wallclock_time(domain)
        for vcpu in domain.vcpus:
            self._write_time(vcpu)
        if not self.synthetic_tsc and not self._calibration.active:
            self.timers.set_timer(self._calibration, self.now() + CALIBRATION_PERIOD_NS)

    def domain_destroyed(self, domain: "Domain") -> None:
        for vcpu in domain.vcpus:
            timers = vcpu.timer
            if timers is not None:
                for timer in (timers.singleshot, timers.periodic, timers.poll):
                    self.timers.stop_timer(timer)
        for watchdog in self.watchdogs.pop(domain.domid, []):
            if watchdog is not None:
                self.timers.stop_timer(watchdog)


def attach(hv) -> None:
    hv.time = TimeKeeper(hv)
    hv.close_hooks.append(lambda: hv.time.timers.close())     # the timer thread
    hv.domain_create_hooks.append(hv.time.domain_created)
    hv.domain_destroy_hooks.append(hv.time.domain_destroyed)
