"""Linux's KVM ABI (<linux/kvm.h>, x86-64), the parts the KVM engine uses, through cffi.

The structs are declared here as the header lays them out and
tests/kvm/test_kvm_abi.py compiles a C program against Debian's
linux-libc-dev header to check every size, offset and ioctl number (as
tests/abi checks abi/ against Xen's headers). `kvm_run` is declared up to the
exit union; only the members of the exits the engine reads are named.

`ioctl()` calls libc's ioctl through cffi, which releases the GIL for the
call (KVM_RUN blocks for as long as guest code runs) and reports EINTR as
an error instead of retrying it: a kick interrupts KVM_RUN with a signal.
"""
from __future__ import annotations

import os

import cffi

CDEF = """
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx;
    uint64_t rsi, rdi, rsp, rbp;
    uint64_t r8,  r9,  r10, r11;
    uint64_t r12, r13, r14, r15;
    uint64_t rip, rflags;
};
struct kvm_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t  type;
    uint8_t  present, dpl, db, s, l, g, avl;
    uint8_t  unusable;
    uint8_t  padding;
};
struct kvm_dtable {
    uint64_t base;
    uint16_t limit;
    uint16_t padding[3];
};
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t apic_base;
    uint64_t interrupt_bitmap[4];
};
struct kvm_userspace_memory_region {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
};
struct kvm_run_io {
    uint8_t  direction;
    uint8_t  size;
    uint16_t port;
    uint32_t count;
    uint64_t data_offset;
};
struct kvm_run_internal {
    uint32_t suberror;
    uint32_t ndata;
    uint64_t data[16];
};
struct kvm_run_fail_entry {
    uint64_t hardware_entry_failure_reason;
    uint32_t cpu;
};
struct kvm_cpuid_entry2 {
    uint32_t function;
    uint32_t index;
    uint32_t flags;
    uint32_t eax, ebx, ecx, edx;
    uint32_t padding[3];
};
struct kvm_cpuid2 {
    uint32_t nent;
    uint32_t padding;
    struct kvm_cpuid_entry2 entries[];
};
struct kvm_msr_entry {
    uint32_t index;
    uint32_t reserved;
    uint64_t data;
};
struct kvm_msrs {
    uint32_t nmsrs;
    uint32_t pad;
    struct kvm_msr_entry entries[];
};
struct kvm_debugregs {
    uint64_t db[4];
    uint64_t dr6;
    uint64_t dr7;
    uint64_t flags;
    uint64_t reserved[9];
};
struct kvm_vcpu_events_exception {
    uint8_t  injected;
    uint8_t  nr;
    uint8_t  has_error_code;
    uint8_t  pending;
    uint32_t error_code;
};
struct kvm_vcpu_events {
    struct kvm_vcpu_events_exception exception;
    uint8_t  interrupt[4];
    uint8_t  nmi[4];
    uint32_t sipi_vector;
    uint32_t flags;
    uint8_t  smi[4];
    uint8_t  triple_fault[1];
    uint8_t  reserved[26];
    uint8_t  exception_has_payload;
    uint64_t exception_payload;
};
struct kvm_sync_regs {
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_vcpu_events events;
};
struct kvm_run {
    uint8_t  request_interrupt_window;
    uint8_t  immediate_exit;
    uint8_t  padding1[6];
    uint32_t exit_reason;
    uint8_t  ready_for_interrupt_injection;
    uint8_t  if_flag;
    uint16_t flags;
    uint64_t cr8;
    uint64_t apic_base;
    union {
        struct kvm_run_io io;
        struct kvm_run_internal internal;
        struct kvm_run_fail_entry fail_entry;
        char padding[256];
    };
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    union {
        struct kvm_sync_regs regs;
        char padding[2048];
    } s;
};
int ioctl(int fd, unsigned long request, ...);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)
_libc = ffi.dlopen(None)

# <asm-generic/ioctl.h>: dir << 30 | size << 16 | type << 8 | nr
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, struct: str | None = None) -> int:
    size = ffi.sizeof(struct) if struct else 0
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


# ioctls on /dev/kvm
KVM_GET_API_VERSION = _ioc(_IOC_NONE, 0x00)
KVM_CREATE_VM = _ioc(_IOC_NONE, 0x01)
KVM_CHECK_EXTENSION = _ioc(_IOC_NONE, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _ioc(_IOC_NONE, 0x04)
KVM_GET_SUPPORTED_CPUID = _ioc(_IOC_READ | _IOC_WRITE, 0x05, "struct kvm_cpuid2")
# ioctls on a VM
KVM_CREATE_VCPU = _ioc(_IOC_NONE, 0x41)
KVM_SET_USER_MEMORY_REGION = _ioc(_IOC_WRITE, 0x46, "struct kvm_userspace_memory_region")
KVM_SET_TSS_ADDR = _ioc(_IOC_NONE, 0x47)
# ioctls on a vCPU
KVM_RUN = _ioc(_IOC_NONE, 0x80)
KVM_GET_REGS = _ioc(_IOC_READ, 0x81, "struct kvm_regs")
KVM_SET_REGS = _ioc(_IOC_WRITE, 0x82, "struct kvm_regs")
KVM_GET_SREGS = _ioc(_IOC_READ, 0x83, "struct kvm_sregs")
KVM_SET_SREGS = _ioc(_IOC_WRITE, 0x84, "struct kvm_sregs")
KVM_GET_MSRS = _ioc(_IOC_READ | _IOC_WRITE, 0x88, "struct kvm_msrs")
KVM_SET_MSRS = _ioc(_IOC_WRITE, 0x89, "struct kvm_msrs")
KVM_SET_CPUID2 = _ioc(_IOC_WRITE, 0x90, "struct kvm_cpuid2")
KVM_GET_VCPU_EVENTS = _ioc(_IOC_READ, 0x9F, "struct kvm_vcpu_events")
KVM_GET_DEBUGREGS = _ioc(_IOC_READ, 0xA1, "struct kvm_debugregs")
KVM_SET_DEBUGREGS = _ioc(_IOC_WRITE, 0xA2, "struct kvm_debugregs")

KVM_API_VERSION = 12
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_SYNC_REGS = 74
KVM_SYNC_X86_REGS = 1 << 0      # kvm_run.kvm_valid_regs / kvm_dirty_regs: s.regs.regs

# kvm_run.exit_reason
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_NAMES = {value: name for name, value in globals().items() if name.startswith("KVM_EXIT_")
                  and isinstance(value, int)}
KVM_EXIT_IO_OUT = 1

# The names the layout test checks against the header, struct by struct.
CHECKED_STRUCTS = {
    "kvm_regs": ("rax", "rsi", "r8", "r15", "rip", "rflags"),
    "kvm_segment": ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl",
                    "unusable"),
    "kvm_dtable": ("base", "limit"),
    "kvm_sregs": ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt", "gdt", "idt", "cr0", "cr2", "cr3", "cr4",
                  "cr8", "efer", "apic_base", "interrupt_bitmap"),
    "kvm_userspace_memory_region": ("slot", "flags", "guest_phys_addr", "memory_size", "userspace_addr"),
    "kvm_cpuid_entry2": ("function", "index", "flags", "eax", "ebx", "ecx", "edx"),
    "kvm_msr_entry": ("index", "data"),
    "kvm_debugregs": ("db", "dr6", "dr7", "flags"),
    "kvm_sync_regs": ("regs", "sregs", "events"),
    "kvm_vcpu_events": ("exception", "exception.injected", "exception.nr", "exception.pending",
                        "exception.error_code", "sipi_vector", "flags", "exception_has_payload",
                        "exception_payload"),
}
# kvm_run's members are checked by offset (the C union members are anonymous there too).
CHECKED_RUN_MEMBERS = ("immediate_exit", "exit_reason", "io", "internal", "fail_entry", "kvm_valid_regs",
                       "kvm_dirty_regs", "s")
CHECKED_IOCTLS = ("KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
                  "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION",
                  "KVM_SET_TSS_ADDR", "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS",
                  "KVM_SET_SREGS", "KVM_GET_MSRS", "KVM_SET_MSRS", "KVM_SET_CPUID2", "KVM_GET_VCPU_EVENTS", "KVM_GET_DEBUGREGS",
                  "KVM_SET_DEBUGREGS", "KVM_API_VERSION", "KVM_CAP_IMMEDIATE_EXIT", "KVM_CAP_SYNC_REGS", "KVM_SYNC_X86_REGS", "KVM_EXIT_IO",
                  "KVM_EXIT_INTR", "KVM_EXIT_SHUTDOWN", "KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_FAIL_ENTRY",
                  "KVM_EXIT_HLT", "KVM_EXIT_MMIO", "KVM_EXIT_EXCEPTION", "KVM_EXIT_IO_OUT")


class KvmError(OSError):
    """An ioctl KVM refused, with the request's name."""


_IOCTL_NAMES = {value: name for name, value in globals().items()
                if name.startswith("KVM_") and isinstance(value, int) and (value >> 8) & 0xFF == KVMIO}


def ioctl(fd: int, request: int, arg=0) -> int:
    """libc ioctl(fd, request, arg); `arg` an int or a cffi pointer. Raises KvmError (errno set)."""
    if isinstance(arg, int):
        result = _libc.ioctl(fd, request, ffi.cast("unsigned long", arg))
    else:
        result = _libc.ioctl(fd, request, arg)
    if result < 0:
        err = ffi.errno
        raise KvmError(err, f"{_IOCTL_NAMES.get(request, hex(request))}: {os.strerror(err)}")
    return int(result)


def new(ctype: str, init=None):
    return ffi.new(ctype, init)
