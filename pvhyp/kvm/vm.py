"""/dev/kvm, a VM and its vCPUs: file descriptors and ioctls, no x86 or PV policy.

One `KvmVm` per guest domain (its vCPUs share KVM's shadow page tables); its
one memory slot is the whole machine memory at guest-physical 0, so a PV
guest's page tables, which hold machine frame numbers, are used as they are.
"""
from __future__ import annotations

import mmap
import os
import signal
import threading

from pvhyp.kvm import kvm_abi as K

# $PVHYP_KVM_DEVICE stands in for /dev/kvm (the tests simulate a machine without one).
KVM_DEVICE = os.environ.get("PVHYP_KVM_DEVICE") or "/dev/kvm"
# The signal that kicks a vCPU thread out of KVM_RUN (pthread_kill); its handler does nothing.
KICK_SIGNAL = signal.SIGUSR1


class KvmUnavailable(Exception):
    """/dev/kvm cannot run our guests here; the message says why (one line)."""


_kick_handler_lock = threading.Lock()
_kick_handler_installed = False


def install_kick_handler() -> None:
    """A no-op handler for KICK_SIGNAL, so pthread_kill interrupts KVM_RUN (EINTR) instead of
    killing the process. signal.signal only works on the main thread: call this there first."""
    global _kick_handler_installed
    with _kick_handler_lock:
        if _kick_handler_installed:
            return
        current = signal.getsignal(KICK_SIGNAL)
        if current not in (signal.SIG_DFL, None):
            if not getattr(current, "_pvhyp_kick", False):
                raise KvmUnavailable(f"signal {KICK_SIGNAL.name} already has a handler: cannot kick vCPUs with it")
        else:
            if threading.current_thread() is not threading.main_thread():
                raise KvmUnavailable("the vCPU kick signal handler must be installed from the main thread")

            def _kick(_signum, _frame) -> None:
                pass
            _kick._pvhyp_kick = True            # type: ignore[attr-defined]
            signal.signal(KICK_SIGNAL, _kick)
            signal.siginterrupt(KICK_SIGNAL, False)
        _kick_handler_installed = True


class Kvm:
    """The open /dev/kvm."""

    def __init__(self, path: str = KVM_DEVICE):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise KvmUnavailable(f"{path}: {err.strerror}") from None
        try:
            version = K.ioctl(self.fd, K.KVM_GET_API_VERSION)
            if version != K.KVM_API_VERSION:
                raise KvmUnavailable(f"{path}: KVM API version {version}, not {K.KVM_API_VERSION}")
            if not K.ioctl(self.fd, K.KVM_CHECK_EXTENSION, K.KVM_CAP_IMMEDIATE_EXIT):
                raise KvmUnavailable(f"{path}: no KVM_CAP_IMMEDIATE_EXIT")
            self.vcpu_mmap_size = K.ioctl(self.fd, K.KVM_GET_VCPU_MMAP_SIZE)
        except OSError as err:
            os.close(self.fd)
            raise KvmUnavailable(f"{path}: {err}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class KvmVm:
    """A VM whose guest-physical space is `size` bytes of host memory at `host_address`."""

    def __init__(self, kvm: Kvm, host_address: int, size: int):
        self.kvm = kvm
        self.fd = K.ioctl(kvm.fd, K.KVM_CREATE_VM, 0)
        self.host_address = host_address
        self.size = size
        self._region = K.new("struct kvm_userspace_memory_region *",
                             {"slot": 0, "flags": 0, "guest_phys_addr": 0, "memory_size": size,
                              "userspace_addr": host_address})
        K.ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION, self._region)
        self.vcpus: list[KvmVcpu] = []
        self._next_vcpu_id = 0
        self._lock = threading.Lock()

    def create_vcpu(self) -> "KvmVcpu":
        with self._lock:
            vcpu = KvmVcpu(self, self._next_vcpu_id)
            self._next_vcpu_id += 1
            self.vcpus.append(vcpu)
        return vcpu

    def reset_shadow_pages(self) -> None:
        """Delete the memory slot and add it again: KVM drops every shadow page (slow)."""
        self._region.memory_size = 0
        K.ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION, self._region)
        self._region.memory_size = self.size
        K.ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION, self._region)

    def close(self) -> None:
        for vcpu in list(self.vcpus):
            vcpu.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class KvmVcpu:
    """One KVM vCPU: register structs, KVM_RUN, and a kick another thread can send."""

    def __init__(self, vm: KvmVm, vcpu_id: int):
        self.vm = vm
        self.fd = K.ioctl(vm.fd, K.KVM_CREATE_VCPU, vcpu_id)
        self._mmap = mmap.mmap(self.fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_struct = K.ffi.cast("struct kvm_run *", K.ffi.from_buffer(self._mmap))
        # With KVM_CAP_SYNC_REGS, KVM stores the GPRs in kvm_run at every exit and loads them
        # from there when marked dirty: get/set_regs become copies instead of ioctls (two
        # ioctls of ~10 us saved per exit on kvm_pvm).
        self._synced_regs = None
        if K.ioctl(vm.kvm.fd, K.KVM_CHECK_EXTENSION, K.KVM_CAP_SYNC_REGS) & K.KVM_SYNC_X86_REGS:
            self.run_struct.kvm_valid_regs = K.KVM_SYNC_X86_REGS
            self._synced_regs = K.ffi.addressof(self.run_struct.s.regs, "regs")
        self._regs_size = K.ffi.sizeof("struct kvm_regs")
        self.regs = K.new("struct kvm_regs *")
        self._scratch_regs = K.new("struct kvm_regs *")
        self._events = K.new("struct kvm_vcpu_events *")
        self.sregs = K.new("struct kvm_sregs *")
        self.thread_id: int | None = None       # the thread inside run(), for kick()

    def get_regs(self):
        self._read_regs(self.regs)
        return self.regs

    def _read_regs(self, into) -> None:
        if self._synced_regs is not None:
            K.ffi.memmove(into, self._synced_regs, self._regs_size)
        else:
            K.ioctl(self.fd, K.KVM_GET_REGS, into)

    def current_rip(self) -> int:
        """Where the vCPU stopped, read into a scratch struct: `regs` may hold a copy
        the caller still needs (the guest's registers while a stub runs)."""
        self._read_regs(self._scratch_regs)
        return int(self._scratch_regs.rip)

    def exception_in_flight(self) -> bool:
        """KVM holds an exception it has not delivered yet (a kick came between the fault and
        its delivery through the IDT): the vCPU must run on before its state is touched."""
        K.ioctl(self.fd, K.KVM_GET_VCPU_EVENTS, self._events)
        exception = self._events.exception
        return bool(exception.injected or exception.pending)

    def set_regs(self) -> None:
        if self._synced_regs is not None:
            K.ffi.memmove(self._synced_regs, self.regs, self._regs_size)
            self.run_struct.kvm_dirty_regs |= K.KVM_SYNC_X86_REGS
        else:
            K.ioctl(self.fd, K.KVM_SET_REGS, self.regs)

    def get_sregs(self):
        K.ioctl(self.fd, K.KVM_GET_SREGS, self.sregs)
        return self.sregs

    def set_sregs(self) -> None:
        K.ioctl(self.fd, K.KVM_SET_SREGS, self.sregs)

    def set_msrs(self, values: dict[int, int]) -> int:
        msrs = K.new("struct kvm_msrs *", {"nmsrs": len(values), "entries": len(values)})
        for i, (index, value) in enumerate(values.items()):
            msrs.entries[i].index = index
            msrs.entries[i].data = value
        return K.ioctl(self.fd, K.KVM_SET_MSRS, msrs)

    def set_cpuid(self, entries: list[tuple[int, int, int, int, int, int, int]]) -> None:
        """(function, index, flags, eax, ebx, ecx, edx) entries."""
        cpuid = K.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": len(entries)})
        for i, (function, index, flags, eax, ebx, ecx, edx) in enumerate(entries):
            e = cpuid.entries[i]
            e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx = function, index, flags, eax, ebx, ecx, edx
        K.ioctl(self.fd, K.KVM_SET_CPUID2, cpuid)

    def get_debugregs(self):
        dbg = K.new("struct kvm_debugregs *")
        K.ioctl(self.fd, K.KVM_GET_DEBUGREGS, dbg)
        return dbg

    def set_debugregs(self, dbg) -> None:
        K.ioctl(self.fd, K.KVM_SET_DEBUGREGS, dbg)

    def run(self) -> int:
        """KVM_RUN until an exit; KVM_EXIT_INTR when a kick (signal or immediate_exit) ended it."""
        run = self.run_struct
        self.thread_id = threading.get_ident()
        try:
            K.ioctl(self.fd, K.KVM_RUN, 0)
        except OSError as err:
            if err.errno not in (4, 11):        # EINTR: kicked; EAGAIN: retry
                raise
            run.immediate_exit = 0
            return K.KVM_EXIT_INTR
        finally:
            self.thread_id = None
        return int(run.exit_reason)

    def kick(self) -> None:
        """From any thread: end the current (or next) KVM_RUN with KVM_EXIT_INTR."""
        run = self.run_struct
        if run is None:
            return              # closed: nothing runs any more
        run.immediate_exit = 1
        thread_id = self.thread_id
        if thread_id is not None:
            try:
                signal.pthread_kill(thread_id, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass

    def close(self) -> None:
        if self.fd >= 0:
            self.run_struct = None
            self._mmap.close()
            os.close(self.fd)
            self.fd = -1
