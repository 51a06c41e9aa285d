"""Privileged instructions a PV guest executes at CPL3, answered as Xen does.

They reach us as #GP(0) with RIP at the instruction.  `emulate_privileged`
returns True when it handled one (registers updated, RIP advanced) and False
when the #GP must be bounced to the guest, which is also Xen's answer for
anything it does not know (unknown MSRs, hlt, cli/sti, ...).
The CPUID policy is also here: plain `cpuid` and the forced-emulation form
`ud2; .ascii "xen"; cpuid` get the same answers, a Xen-looking CPU that
shows only features unicorn's TCG really executes.
"""
from __future__ import annotations

from abi.x86_regs import (
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    EFER_SCE,
    MSR_EFER,
    X86_CR0_TS,
    X86_CR4_OSFXSR,
    X86_CR4_OSXMMEXCPT,
    X86_CR4_PAE,
    X86_CR4_PGE,
)
from pvhyp.guest_access import is_canonical_address, read_guest_virtual
from pvhyp.pv.state import CR4_GUEST_CONTROLLED

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
FORCED_EMULATION_PREFIX = bytes.fromhex("0f0b") + b"xen"
# SERIALIZE (CPUID.7.0:EDX[14]); TCG does not know it, so its #UD is completed here.
SERIALIZE_INSN = bytes.fromhex("0f01e8")

MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE = 0xC000_0100, 0xC000_0101, 0xC000_0102
EFER_VALUE = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
MSR_PLATFORM_ID, MSR_UCODE_REV, MSR_MISC_ENABLE, MSR_PAT = 0x17, 0x8B, 0x1A0, 0x277
MSR_DEBUGCTL = 0x1D9
MSR_PLATFORM_INFO, MSR_MISC_FEATURES_ENABLES = 0xCE, 0x140
PLATFORM_INFO_CPUID_FAULTING = 1 << 31
MISC_FEATURES_CPUID_FAULTING = 1 << 0
XEN_PAT = 0x0000_0501_0007_0406            # the PAT Xen runs PV guests with
MISC_ENABLE_VALUE = (1 << 0) | (1 << 11) | (1 << 12)   # fast strings; BTS and PEBS unavailable
# MSRs that read as a constant; writing that same value is accepted, anything else #GPs.
_CONSTANT_MSRS = {MSR_PLATFORM_ID: 0, MSR_UCODE_REV: 0, MSR_MISC_ENABLE: MISC_ENABLE_VALUE, MSR_PAT: XEN_PAT,
                  MSR_DEBUGCTL: 0}

CR0_HOST = 0x8005_003B                     # PE MP ET NE WP AM PG (+TS from the guest)
CR4_FIXED = X86_CR4_PAE | X86_CR4_PGE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT

_GPR_BY_NUMBER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_LEGACY_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3")


def _regs32(eax: int, ebx: int, ecx: int, edx: int) -> tuple[int, int, int, int]:
    return eax & 0xFFFF_FFFF, ebx & 0xFFFF_FFFF, ecx & 0xFFFF_FFFF, edx & 0xFFFF_FFFF


def _le32(raw: bytes, i: int) -> int:
    return int.from_bytes(raw[i:i + 4], "little")


def _ascii_regs(text: str) -> tuple[int, int, int]:
    raw = text.encode().ljust(12, b"\0")
    return _le32(raw, 0), _le32(raw, 4), _le32(raw, 8)


XEN_VERSION_MAJOR, XEN_VERSION_MINOR = 4, 17


# The highest basic leaf: 0x16 (processor frequency), one past Xen 4.17's guest
# limit of 0xd.  Linux's native_calibrate_cpu_early, which an x86-64 PV kernel
# keeps (arch/x86/xen/time.c only replaces calibrate_tsc, with the pvclock), asks
# leaf 0x16 first; without it it polls the PIT with ~100,000 `in al,0x42`, which
# on Xen are cheap trapped reads of ~0 and here are exits.  The frequency given is
# the TSC's, the one the pvclock already publishes, so the guest learns nothing new.
MAX_BASIC_LEAF = 0x16
PIT_BUS_MHZ = 100


def cpuid_policy(leaf: int, subleaf: int, vcpu_id: int = 0, tsc_khz: int = 0) -> tuple[int, int, int, int]:
    """(eax, ebx, ecx, edx) for a PV guest: what TCG runs, nothing more.

    `tsc_khz` is the TSC frequency of the guest's pvclock (0: leaf 0x16 reads as zeros)."""
    if leaf == 0:
        ebx, edx, ecx = _ascii_regs("GenuineIntel")
        return MAX_BASIC_LEAF, ebx, ecx, edx
    if leaf == 1:
        ecx = (1 << 0) | (1 << 9) | (1 << 13) | (1 << 19) | (1 << 20) | (1 << 23) | (1 << 31)  # SSE3 SSSE3 CX16 SSE4.1/2 POPCNT HYPERVISOR
        edx = sum(1 << b for b in (0, 4, 5, 6, 8, 15, 16, 19, 23, 24, 25, 26))  # FPU TSC MSR PAE CX8 CMOV PAT CLFSH MMX FXSR SSE SSE2
        return _regs32(0x000306C3, ((vcpu_id & 0xFF) << 24) | (1 << 16) | (8 << 8), ecx, edx)
    if leaf == 0x4000_0000:
        ebx, ecx, edx = _ascii_regs("XenVMMXenVMM")
        return 0x4000_0005, ebx, ecx, edx
    if leaf == 0x4000_0001:
        return (XEN_VERSION_MAJOR << 16) | XEN_VERSION_MINOR, 0, 0, 0
    if leaf == 0x4000_0002:
        return 1, 0x4000_0000, 0, 0          # one hypercall page, via MSR 0x40000000
    if leaf == 7:
        # No SERIALIZE: TCG does not implement it, so each one was a #UD completed
        # in Python (about 100,000 in a Debian boot, from text_poke_early).  Without
        # it Linux's sync_core() serialises with an `iretq` to itself, which TCG
        # runs with no exit at all.
        return 0, 0, 0, 0
    if leaf == 0x16:
        mhz = tsc_khz // 1000
        return (mhz, mhz, PIT_BUS_MHZ, 0) if mhz else (0, 0, 0, 0)
    if 0x4000_0003 <= leaf <= 0x4000_0005:
        return 0, 0, 0, 0
    if leaf == 0x8000_0000:
        return 0x8000_0008, 0, 0, 0
    if leaf == 0x8000_0001:
        return 0, 0, 1 << 0, (1 << 11) | (1 << 20) | (1 << 29)   # LAHF; SYSCALL NX LM
    if 0x8000_0002 <= leaf <= 0x8000_0004:
        brand = b"pvhyp virtual CPU".ljust(48, b"\0")[(leaf - 0x8000_0002) * 16:][:16]
        return _le32(brand, 0), _le32(brand, 4), _le32(brand, 8), _le32(brand, 12)
    if leaf == 0x8000_0008:
        return 0x3028, 0, 0, 0               # 40 physical, 48 virtual address bits
    return 0, 0, 0, 0


class PrivilegedOps:
    """Emulation of the privileged instructions of one PV vCPU.

    `pv` is the vCPU's PV state (pvhyp.pv.state.PvState); `bouncer` its
    TrapBouncer (CR2 goes to vcpu_info too); `on_new_cr3(mfn) -> bool`
    hands CR3 writes to the PV MMU; `debug_registers` reads/writes DRn the
    way set_debugreg does (None: reads 0, writes refused).
    """

    def __init__(self, engine, pv, bouncer, vcpu_id: int = 0, on_new_cr3=None, debug_registers=None):
        self.engine = engine
        self.pv = pv
        self.bouncer = bouncer
        self.vcpu_id = vcpu_id
        self.on_new_cr3 = on_new_cr3
        self.debug_registers = debug_registers
        self.cpuid_faulting = False         # MISC_FEATURES_ENABLES bit 0

    # --- cpuid ---------------------------------------------------------
    def cpuid_faults(self) -> bool:
        """With CPUID faulting on, a plain cpuid from guest user mode is #GP."""
        return self.cpuid_faulting and not self.pv.kernel_mode

    def cpuid(self) -> None:
        """Answer cpuid from rax/rcx into rax/rbx/rcx/rdx (RIP untouched)."""
        eax, ecx = self.engine.read_many(("rax", "rcx"))
        a, b, c, d = cpuid_policy(eax & 0xFFFF_FFFF, ecx & 0xFFFF_FFFF, self.vcpu_id, self._tsc_khz())
        self.engine.write_many({"rax": a, "rbx": b, "rcx": c, "rdx": d})

    def _tsc_khz(self) -> int:
        hv = self.pv.vcpu.domain.hv
        return hv.time.tsc_khz() if hv is not None else 0

    def is_forced_cpuid(self, rip: int) -> bool:
        """`ud2; "xen"; cpuid` at RIP (Xen's forced-emulation prefix)."""
        code = read_guest_virtual(self.engine.memory, self.engine.cr3, rip, 7)
        return code is not None and code[:5] == FORCED_EMULATION_PREFIX and code[5:7] == b"\x0f\xa2"

    def serialize(self, rip: int) -> bool:
        """Complete a SERIALIZE that TCG refused with #UD (nothing to order in an emulator)."""
        if read_guest_virtual(self.engine.memory, self.engine.cr3, rip, len(SERIALIZE_INSN)) != SERIALIZE_INSN:
            return False
        self.engine.write("rip", rip + len(SERIALIZE_INSN))
        return True

    def forced_cpuid(self, rip: int) -> None:
        """Emulate the cpuid and step past all 7 bytes."""
        self.cpuid()
        self.engine.write("rip", rip + 7)

    # --- #GP(0) at CPL3 --------------------------------------------------
    def emulate_privileged(self, rip: int) -> bool:
        code = read_guest_virtual(self.engine.memory, self.engine.cr3, rip, 15)
        if code is None:
            code = read_guest_virtual(self.engine.memory, self.engine.cr3, rip, 4096 - (rip & 0xFFF))
            if code is None:
                return False
        i = 0
        while i < len(code) and code[i] in _LEGACY_PREFIXES:
            i += 1
        rex = code[i] if i < len(code) and 0x40 <= code[i] <= 0x4F else 0
        i += bool(rex)
        if i < len(code) and code[i] in (0xFA, 0xFB):
            # cli/sti with enough virtual IOPL: accepted and ignored, as Xen
            # does (event masking stays the guest's vcpu_info business).
            if not self.pv.iopl_ok(self.pv.kernel_mode):
                return False
            self.engine.write("rip", rip + i + 1)
            return True
        opcode = code[i:i + 2]
        if len(opcode) < 2 or opcode[0] != 0x0F:
            return False
        if not self.pv.kernel_mode:
            # Xen's emulator runs guest user mode at CPL3 (only kernel mode gets the faked
            # DPL 0 of read_segment), so every ring-0 instruction below is the #GP it was.
            return False
        op = opcode[1]
        if op == 0x32:
            done, length = self._rdmsr(), i + 2
        elif op == 0x30:
            done, length = self._wrmsr(), i + 2
        elif op in (0x20, 0x22, 0x21, 0x23) and i + 2 < len(code):
            modrm = code[i + 2]
            reg = ((modrm >> 3) & 7) | ((rex & 4) << 1)
            gpr = _GPR_BY_NUMBER[(modrm & 7) | ((rex & 1) << 3)]
            length = i + 3
            if op == 0x20:
                done = self._read_cr(reg, gpr)
            elif op == 0x22:
                done = self._write_cr(reg, gpr)
            elif op == 0x21:
                done = self._read_dr(reg, gpr)
            else:
                done = self._write_dr(reg, self.engine.read(gpr))
        elif op == 0x06:                      # clts
            self.pv.cr0_ts = False
            self.engine.set_cr0_ts(False)
            done, length = True, i + 2
        elif op == 0x09:                      # wbinvd: nothing cached worth flushing
            done, length = True, i + 2
        else:
            return False
        if done:
            self.engine.write("rip", rip + length)
        return done

    # --- MSRs ------------------------------------------------------------
    def _msr_read(self, index: int) -> int | None:
        if index == MSR_FS_BASE:
            return self.pv.fs_base
        if index == MSR_GS_BASE:
            return self.pv.gs_base_kernel if self.pv.kernel_mode else self.pv.gs_base_user
        if index == MSR_SHADOW_GS_BASE:
            return self.pv.gs_base_user if self.pv.kernel_mode else self.pv.gs_base_kernel
        if index == MSR_EFER:
            return EFER_VALUE
        if index == MSR_PLATFORM_INFO:
            return PLATFORM_INFO_CPUID_FAULTING     # every cpuid is intercepted: faulting is free
        if index == MSR_MISC_FEATURES_ENABLES:
            return MISC_FEATURES_CPUID_FAULTING if self.cpuid_faulting else 0
        return _CONSTANT_MSRS.get(index)

    def _rdmsr(self) -> bool:
        index = self.engine.read("rcx") & 0xFFFF_FFFF
        value = self._msr_read(index)
        if value is None:
            return False
        self.engine.write_many({"rax": value & 0xFFFF_FFFF, "rdx": value >> 32})
        return True

    def _wrmsr(self) -> bool:
        ecx, eax, edx = self.engine.read_many(("rcx", "rax", "rdx"))
        index = ecx & 0xFFFF_FFFF
        value = ((edx & 0xFFFF_FFFF) << 32) | (eax & 0xFFFF_FFFF)
        if index in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE):
            if not is_canonical_address(value):
                return False
            if index == MSR_FS_BASE:
                self.pv.fs_base = value
                self.engine.write("fs_base", value)
                return True
            # GS_BASE names the base of the running mode, SHADOW_GS_BASE the other one.
            kernel_base = (index == MSR_GS_BASE) == self.pv.kernel_mode
            setattr(self.pv, "gs_base_kernel" if kernel_base else "gs_base_user", value)
            if index == MSR_GS_BASE:
                self.engine.write("gs_base", value)
            return True
        if index == MSR_EFER:
            return value == EFER_VALUE or (value ^ EFER_VALUE) & ~EFER_SCE == 0
        if index == MSR_MISC_FEATURES_ENABLES:
            if value & ~MISC_FEATURES_CPUID_FAULTING:
                return False
            self.cpuid_faulting = bool(value)
            return True
        return index == MSR_UCODE_REV or _CONSTANT_MSRS.get(index) == value

    # --- control and debug registers ----------------------------------------
    def _read_cr(self, cr: int, gpr: str) -> bool:
        if cr == 0:
            value = CR0_HOST | (X86_CR0_TS if self.pv.cr0_ts else 0)
        elif cr == 2:
            value = self.pv.cr2
        elif cr == 3:
            value = self.engine.cr3
        elif cr == 4:
            value = CR4_FIXED | (self.pv.cr4 & CR4_GUEST_CONTROLLED)
        else:
            return False
        self.engine.write(gpr, value)
        return True

    def _write_cr(self, cr: int, gpr: str) -> bool:
        value = self.engine.read(gpr)
        if cr == 0:
            if (value ^ CR0_HOST) & ~X86_CR0_TS & 0xFFFF_FFFF:
                return False                  # only TS may change
            self.pv.cr0_ts = bool(value & X86_CR0_TS)
            self.engine.set_cr0_ts(self.pv.cr0_ts)
            return True
        if cr == 2:
            self.bouncer.set_cr2(value)
            return True
        if cr == 3:
            return self.on_new_cr3 is not None and bool(self.on_new_cr3(value >> 12))
        if cr == 4:
            self.pv.cr4 = value & CR4_GUEST_CONTROLLED
            return True
        return False

    def _read_dr(self, reg: int, gpr: str) -> bool:
        if reg > 7:
            return False
        value = self.debug_registers.get(reg) if self.debug_registers else 0
        if value < 0:
            return False
        self.engine.write(gpr, value)
        return True

    def _write_dr(self, reg: int, value: int) -> bool:
        return reg <= 7 and self.debug_registers is not None and self.debug_registers.set(reg, value) == 0
