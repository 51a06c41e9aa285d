"""HYPERVISOR_console_io from process domains: Xen's results and the per-domain buffer."""
from __future__ import annotations

from abi import errno as E
from abi.xen import HYPERCALL_NUMBERS, CONSOLEIO_read, CONSOLEIO_write
from pvhyp.channel import InProcessChannel, create_process_domain
from pvhyp.console import BUFFER_BYTES

CONSOLE_IO = HYPERCALL_NUMBERS["console_io"]


def channel(hv, privileged=False, domid=None):
    return InProcessChannel(hv, create_process_domain(hv, 8, privileged=privileged, domid=domid))


def test_write_returns_zero_and_keeps_the_text_per_domain(hv):
    a, b = channel(hv), channel(hv)
    a.memory[0:6] = b"hello\n"
    b.memory[0:4] = b"bye\n"
    assert a.hypercall(CONSOLE_IO, CONSOLEIO_write, 6, 0) == 0
    assert b.hypercall(CONSOLE_IO, CONSOLEIO_write, 4, 0) == 0
    assert hv.get_domain(a.domid).console.read(0, 100) == (b"hello\n", 6)
    assert hv.get_domain(b.domid).console.read(0, 100) == (b"bye\n", 4)


def test_domu_text_is_filtered_like_xen_but_dom0_is_not(hv):
    dom0, domu = channel(hv, privileged=True, domid=0), channel(hv)
    for ch in (dom0, domu):
        ch.memory[0:5] = b"a\x1bb\tc"
        assert ch.hypercall(CONSOLE_IO, CONSOLEIO_write, 5, 0) == 0
    assert hv.get_domain(0).console.read(0, 10)[0] == b"a\x1bb\tc"
    assert hv.get_domain(domu.domid).console.read(0, 10)[0] == b"ab\tc"


def test_write_across_chunks_and_a_bad_pointer(hv):
    ch = channel(hv)
    text = bytes(range(0x41, 0x5B)) * 20          # 520 bytes: several of Xen's 127-byte chunks
    ch.memory[100:100 + len(text)] = text
    assert ch.hypercall(CONSOLE_IO, CONSOLEIO_write, len(text), 100) == 0
    assert hv.get_domain(ch.domid).console.read(0, 1000)[0] == text
    # 8 pages of memory: a buffer running past them faults part-way, as Xen's copy does
    assert ch.hypercall(CONSOLE_IO, CONSOLEIO_write, 300, 8 * 4096 - 200) == -E.EFAULT
    assert ch.hypercall(CONSOLE_IO, CONSOLEIO_write, 1, 1 << 60) == -E.EFAULT


def test_read_is_dom0_only_and_count_is_bounded(hv):
    dom0, domu = channel(hv, privileged=True, domid=0), channel(hv)
    assert domu.hypercall(CONSOLE_IO, CONSOLEIO_read, 10, 0) == -E.EPERM
    assert dom0.hypercall(CONSOLE_IO, CONSOLEIO_read, 10, 0) == 0
    assert dom0.hypercall(CONSOLE_IO, CONSOLEIO_read, 0x8000_0000, 0) == -E.E2BIG
    assert dom0.hypercall(CONSOLE_IO, 7, 0, 0) == -E.ENOSYS
    assert domu.hypercall(CONSOLE_IO, 7, 0, 0) == -E.EPERM


def test_the_buffer_is_bounded_and_offsets_stay_absolute(hv):
    ch = channel(hv)
    chunk = b"x" * 4000 + b"\n"
    ch.memory[0:len(chunk)] = chunk
    for _ in range(BUFFER_BYTES // len(chunk) + 5):
        assert ch.hypercall(CONSOLE_IO, CONSOLEIO_write, len(chunk), 0) == 0
    console = hv.get_domain(ch.domid).console
    data, end = console.read(0, 1 << 20)
    assert len(data) == BUFFER_BYTES and end == console.end > BUFFER_BYTES
    assert console.read(end, 10) == (b"", end)
