"""Console output is bounded everywhere it is kept, and says when it dropped some (issue 14, defect 5).

A guest that writes console_io without a newline, floods hypervisor.log,
reboots to get a fresh log cap, or prints to a pty nobody reads must not grow
dom0 (or the disk) without bound, nor stall dom0's loop; what is dropped is
announced once.
"""
from __future__ import annotations

import os
import time

from abi.xen import HYPERCALL_NUMBERS, CONSOLEIO_write
from dom0.console import backend as console_backend
from dom0.console.backend import ConsoleBackend, HypervisorLog
from pvguest.console import ConsoleFrontend
from pvhyp.channel import InProcessChannel, create_process_domain

CONSOLE_IO = HYPERCALL_NUMBERS["console_io"]
CHUNK = 4096


class ConsoleReader:
    """dom0's readconsole, straight from the hypervisor's per-domain buffers (what OP_READCONSOLE serves)."""

    def __init__(self, hv):
        self.hv = hv

    def readconsole(self, domid: int, offset: int = 0, max_bytes: int = 65536):
        return self.hv.get_domain(domid).console.read(offset, max_bytes)


def console_io(ch, data: bytes) -> None:
    for at in range(0, len(data), CHUNK):
        chunk = data[at:at + CHUNK]
        ch.memory[0:len(chunk)] = chunk
        assert ch.hypercall(CONSOLE_IO, CONSOLEIO_write, len(chunk), 0) == 0


def test_a_line_without_end_is_written_in_bounded_pieces(hv, tmp_path):
    guest = InProcessChannel(hv, create_process_domain(hv, 8))
    hv_log = HypervisorLog(str(tmp_path))
    reader = ConsoleReader(hv)
    for _ in range(50):                         # 200 KiB, never a newline
        console_io(guest, b"x" * CHUNK)
        hv_log.poll(reader, [guest.domid])
    text = open(hv_log.path, "rb").read()
    assert text.count(b"x") >= 50 * CHUNK - 8192           # out in the log, not held in dom0
    assert all(len(line) <= 8192 for line in text.split(b"\n"))
    assert text.startswith(f"(d{guest.domid}) ".encode())
    hv_log.close()


def test_hypervisor_log_is_capped_and_says_so(hv, tmp_path, monkeypatch):
    monkeypatch.setattr(console_backend, "MAX_HYPERVISOR_LOG_BYTES", 64 << 10, raising=False)
    guest = InProcessChannel(hv, create_process_domain(hv, 8))
    hv_log = HypervisorLog(str(tmp_path))
    reader = ConsoleReader(hv)
    for _ in range(256):                        # 1 MiB of lines
        console_io(guest, (b"y" * 63 + b"\n") * (CHUNK // 64))
        hv_log.poll(reader, [guest.domid])
    hv_log.close()
    size = os.path.getsize(hv_log.path)
    assert size <= (64 << 10) + (64 << 10)              # the cap, and room for pvhyp's own notes
    text = open(hv_log.path, "rb").read()
    assert text.count(b"reached") == 1 and b"bytes of output dropped" in text


def session_of(backend, domid, name):
    page = memoryview(bytearray(4096))
    session = backend.add_domain(domid, name, page, lambda: None)
    return ConsoleFrontend(page, lambda: backend.kick(domid), lambda t: None), session


def test_a_rebooting_guest_shares_one_log_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(console_backend, "MAX_LOG_BYTES", 16 << 10)
    try:
        import dom0.console.bounded as bounded
        monkeypatch.setattr(bounded, "MARKER_RESERVE", 4096)
    except ImportError:
        pass
    backend = ConsoleBackend(str(tmp_path), lambda f, cb: None, lambda f: None)
    for boot in range(60):                      # each boot prints 10 KiB, under the same name
        front, session = session_of(backend, 10 + boot, "rebooter")
        front.write("z" * 10240)
        backend.remove_domain(10 + boot)
    log = open(session.log_path, "rb").read()
    assert len(log) <= (16 << 10) + 4096, len(log)
    assert log.count(b"reached") == 1


def drain(fd) -> bytes:
    got = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


def test_a_pty_nobody_reads_never_blocks_and_reports_what_it_dropped(tmp_path):
    backend = ConsoleBackend(str(tmp_path), lambda f, cb: None, lambda f: None)
    front, session = session_of(backend, 7, "unread")
    started = time.monotonic()
    for _ in range(64):                         # 1 MiB: far more than a pty holds
        front.write("w" * 16384)
    assert time.monotonic() - started < 30      # (only a stall would take long; not a speed claim)
    assert session.bytes_out == 64 * 16384
    user = os.open(session.tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        drain(user)                             # what the pty held before it filled
        front.write("after the flood\n")
        deadline = time.monotonic() + 5
        seen = b""
        while b"after the flood" not in seen and time.monotonic() < deadline:
            seen += drain(user)
            time.sleep(0.01)
        assert b"bytes dropped" in seen and b"after the flood" in seen
        assert seen.index(b"bytes dropped") < seen.index(b"after the flood")
    finally:
        os.close(user)
        backend.remove_domain(7)


def test_lines_and_tails_are_bounded():
    from dom0.console.bounded import LineAssembler, TailBuffer
    lines = LineAssembler(max_line=8)
    assert lines.feed(b"ab\ncd") == [b"ab"]
    assert lines.feed(b"efghijklmnop") == [b"cdefghij"]     # a full line goes out without its newline
    assert lines.flush() == b"klmnop" and lines.flush() == b""
    tail = TailBuffer(4)
    tail.append(b"123456")
    assert bytes(tail) == b"[pvhyp: 2 bytes dropped before this]\n3456"
    assert b"56" in tail and b"12" not in tail


def test_capped_log_counts_across_sessions(tmp_path):
    from dom0.console.bounded import MARKER_RESERVE, CappedLog
    path = str(tmp_path / "g.log")
    first = CappedLog(path, 100, "the log of g")
    first.write(b"@" * 150)
    first.close()
    second = CappedLog(path, 100, "the log of g")
    second.write(b"#" * 10)
    second.close()
    text = open(path, "rb").read()
    assert text.count(b"@") == 100 and b"#" not in text
    assert text.count(b"reached 100 bytes") == 1
    assert b"[pvhyp: 50 bytes of output dropped" in text and b"[pvhyp: 10 bytes of output dropped" in text
    assert len(text) <= 100 + MARKER_RESERVE


def test_pvhyp_run_keeps_tails_of_what_a_guest_floods(monkeypatch):
    """`pvhyp run` (OneShot) keeps the last RUN_TAIL_BYTES of the ring and of console_io in memory,
    and the (dN) lines it prints are bounded, whatever the guest writes."""
    import pvhyp.host as host_module
    from pvhyp.cli.run_cmd import run_guest
    monkeypatch.setattr(host_module, "RUN_TAIL_BYTES", 16 << 10, raising=False)
    printed: list[int] = []
    kept: dict[str, int] = {}
    real_close = host_module.OneShot.close

    def measure_then_close(run):
        kept["ring"] = len(bytes(run._ring))
        kept["console_io"] = len(bytes(run.console_io))
        real_close(run)

    monkeypatch.setattr(host_module.OneShot, "close", measure_then_close)
    result = run_guest('name = "flood"\nkernel = "python:pvguest.examples.hostile:console_flooder"\n'
                       'memory = 4\ncmdline = "bytes=262144"\n', "<flood>", timeout=120,
                       ring_sink=lambda data: printed.append(len(data)))
    assert result.reason == "poweroff", result
    assert printed                                          # it went by live (what the pty could take)
    assert result.ring.count(b"f") >= 262144                # and dom0's log of the ring has all of it
    assert kept["ring"] <= (16 << 10) + 100 and kept["console_io"] <= (16 << 10) + 100, kept
    assert b"bytes dropped before this" in result.console_io


def test_process_logs_are_capped():
    import io
    import logging

    from dom0.console.bounded import CappedStreamHandler
    stream = io.StringIO()
    handler = CappedStreamHandler(stream, cap=1000)
    logger = logging.getLogger("test_console_bounds.capped")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(1000):
            logger.warning("guest misbehaved again (%d)", i)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert len(text) <= 1000 + 100 and text.count("reached 1000 bytes") == 1
    assert handler.dropped > 900


def test_a_ring_broken_and_mended_forever_is_reported_a_few_times(tmp_path, caplog):
    import struct

    from abi.io.console import XENCONS_OUT_CONS_OFFSET, XENCONS_OUT_PROD_OFFSET
    backend = ConsoleBackend(str(tmp_path), lambda f, cb: None, lambda f: None)
    front, session = session_of(backend, 8, "flipper")
    page = front.from_guest.page
    with caplog.at_level("WARNING", logger="dom0.console"):
        for _ in range(200):
            struct.pack_into("<I", page, XENCONS_OUT_CONS_OFFSET, 0)
            struct.pack_into("<I", page, XENCONS_OUT_PROD_OFFSET, 0xFFFF_0000)     # broken
            backend.service_all()
            struct.pack_into("<I", page, XENCONS_OUT_PROD_OFFSET, 0)               # mended
            backend.service_all()
    assert 1 <= len([r for r in caplog.records if "console ring" in r.getMessage()]) <= 8
    backend.remove_domain(8)
    assert os.path.getsize(session.log_path) <= console_backend.MAX_LOG_BYTES + (64 << 10)
