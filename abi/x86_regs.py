"""x86-64 register bits, reset values and exceptions: architectural, not from a Xen header.

Xen's public headers carry a guest's register images but never the meaning
of their bits: ``cpu_user_regs.rflags`` (the IF a guest starts with, the IOPL
a PV kernel may not set), ``vcpu_guest_context.ctrlreg`` (CR0.TS, CR4.DE) and
``.debugreg`` (the DR6/DR7 a vCPU starts with and the bits it may set).  The
domain builder writes these images, the hypervisor checks and loads them and
the CPU engine runs them, so the bits cross the boundary and live here, once,
like the PTE bits of ``abi.x86_pte``.  So do the exception vectors a guest's
``trap_info`` names and the page-fault error code its bounce frame carries.  They come from the Intel SDM / AMD APM
volume 3, under the names Xen gives them (xen/arch/x86/include/asm/
x86-defns.h, debugreg.h, msr-index.h, processor.h), mostly Linux's too.  The registry
marks this module as having no header, and the header cross-check leaves it
out for that reason.
"""

# EFLAGS / RFLAGS.
X86_EFLAGS_CF = 0x0000_0001  # carry
X86_EFLAGS_MBS = 0x0000_0002  # reserved, must be set
X86_EFLAGS_PF = 0x0000_0004  # parity
X86_EFLAGS_AF = 0x0000_0010  # auxiliary carry
X86_EFLAGS_ZF = 0x0000_0040  # zero
X86_EFLAGS_SF = 0x0000_0080  # sign
X86_EFLAGS_TF = 0x0000_0100  # trap (single step)
X86_EFLAGS_IF = 0x0000_0200  # interrupts enabled
X86_EFLAGS_DF = 0x0000_0400  # direction
X86_EFLAGS_OF = 0x0000_0800  # overflow
X86_EFLAGS_IOPL = 0x0000_3000  # I/O privilege level (two bits)
X86_EFLAGS_NT = 0x0000_4000  # nested task
X86_EFLAGS_RF = 0x0001_0000  # resume
X86_EFLAGS_VM = 0x0002_0000  # virtual 8086 mode
X86_EFLAGS_AC = 0x0004_0000  # alignment check
X86_EFLAGS_VIF = 0x0008_0000  # virtual interrupt flag
X86_EFLAGS_VIP = 0x0010_0000  # virtual interrupt pending
X86_EFLAGS_ID = 0x0020_0000  # CPUID available
X86_EFLAGS_IOPL_BIT = 12  # IOPL = (rflags & X86_EFLAGS_IOPL) >> X86_EFLAGS_IOPL_BIT (Linux's name)

# CR0.
X86_CR0_PE = 0x0000_0001  # protected mode
X86_CR0_MP = 0x0000_0002  # monitor coprocessor
X86_CR0_EM = 0x0000_0004  # FPU emulation
X86_CR0_TS = 0x0000_0008  # task switched (lazy FPU)
X86_CR0_ET = 0x0000_0010  # extension type
X86_CR0_NE = 0x0000_0020  # native FPU error reporting
X86_CR0_WP = 0x0001_0000  # supervisor write protect
X86_CR0_AM = 0x0004_0000  # alignment mask
X86_CR0_NW = 0x2000_0000  # not write-through
X86_CR0_CD = 0x4000_0000  # cache disable
X86_CR0_PG = 0x8000_0000  # paging

# CR4.
X86_CR4_VME = 0x0000_0001  # virtual 8086 extensions
X86_CR4_PVI = 0x0000_0002  # protected-mode virtual interrupts
X86_CR4_TSD = 0x0000_0004  # RDTSC privileged
X86_CR4_DE = 0x0000_0008  # debugging extensions (DR4/DR5 fault; I/O breakpoints)
X86_CR4_PSE = 0x0000_0010  # page size extensions
X86_CR4_PAE = 0x0000_0020  # physical address extension
X86_CR4_MCE = 0x0000_0040  # machine check
X86_CR4_PGE = 0x0000_0080  # global pages
X86_CR4_PCE = 0x0000_0100  # RDPMC at any CPL
X86_CR4_OSFXSR = 0x0000_0200  # FXSAVE/FXRSTOR and SSE
X86_CR4_OSXMMEXCPT = 0x0000_0400  # unmasked SSE exceptions
X86_CR4_UMIP = 0x0000_0800  # user-mode instruction prevention
X86_CR4_LA57 = 0x0000_1000  # 5-level paging
X86_CR4_FSGSBASE = 0x0001_0000  # {RD,WR}{FS,GS}BASE
X86_CR4_PCIDE = 0x0002_0000  # process-context identifiers
X86_CR4_OSXSAVE = 0x0004_0000  # XSAVE
X86_CR4_SMEP = 0x0010_0000  # supervisor-mode execution prevention
X86_CR4_SMAP = 0x0020_0000  # supervisor-mode access prevention

# EFER (MSR 0xC0000080).
MSR_EFER = 0xC000_0080
EFER_SCE = 1 << 0  # SYSCALL/SYSRET
EFER_LME = 1 << 8  # long mode enable
EFER_LMA = 1 << 10  # long mode active
EFER_NXE = 1 << 11  # no-execute PTE bit

# DR6 (debug status) and DR7 (debug control): Xen's asm/debugreg.h.
DR_STATUS_RESERVED_ZERO = ~0xFFFF_EFFF & 0xFFFF_FFFF_FFFF_FFFF  # read as zero
DR_STATUS_RESERVED_ONE = 0xFFFF_0FF0  # read as one
X86_DR6_DEFAULT = 0xFFFF_0FF0  # DR6 after reset: the reserved-one bits alone
DR_TRAP_MASK = 0xF  # DR6: B0-B3, which breakpoints hit
DR_STEP = 0x4000  # DR6: BS, a single-step trap
DR_CONTROL_SHIFT = 16  # DR7: R/W and LEN fields of breakpoint n at 16 + 4n
DR_CONTROL_SIZE = 4
DR_RW_EXECUTE = 0x0  # R/W field of a breakpoint: instruction
DR_RW_WRITE = 0x1  # data write
DR_IO = 0x2  # I/O (needs CR4.DE)
DR_RW_READ = 0x3  # data read or write
DR7_ACTIVE_MASK = 0xFF  # the L0-3/G0-3 enable bits
DR_GENERAL_DETECT = 0x2000
DR_CONTROL_RESERVED_ZERO = ~0xFFFF_27FF & 0xFFFF_FFFF_FFFF_FFFF  # read as zero
DR_CONTROL_RESERVED_ONE = 0x400  # read as one
X86_DR7_DEFAULT = 0x400  # DR7 after reset: the reserved-one bit alone

# Exception vectors (Xen 4.17's asm/processor.h names).
TRAP_divide_error = 0
TRAP_debug = 1
TRAP_nmi = 2
TRAP_int3 = 3
TRAP_overflow = 4
TRAP_bounds = 5
TRAP_invalid_op = 6
TRAP_no_device = 7
TRAP_double_fault = 8
TRAP_copro_seg = 9
TRAP_invalid_tss = 10
TRAP_no_segment = 11
TRAP_stack_error = 12
TRAP_gp_fault = 13
TRAP_page_fault = 14
TRAP_spurious_int = 15
TRAP_copro_error = 16
TRAP_alignment_check = 17
TRAP_machine_check = 18
TRAP_simd_error = 19
TRAP_virtualisation = 20

# Page-fault error code (Xen's PFEC_*).
PFEC_page_present = 1 << 0  # 0: not present; 1: a protection violation
PFEC_write_access = 1 << 1
PFEC_user_mode = 1 << 2
PFEC_reserved_bit = 1 << 3
PFEC_insn_fetch = 1 << 4
