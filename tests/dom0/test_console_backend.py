"""The console backend on its own: rings to log and pty, input back, a corrupt ring isolated."""
from __future__ import annotations

import os
import struct
import time

from abi.io.console import XENCONS_OUT_CONS_OFFSET, XENCONS_OUT_PROD_OFFSET
from dom0.console import backend as console_backend
from dom0.console.backend import ConsoleBackend
from pvguest.console import ConsoleFrontend


def make(tmp_path):
    readers = {}
    backend = ConsoleBackend(str(tmp_path), lambda f, cb: readers.__setitem__(f, cb),
                             lambda f: readers.pop(f, None))
    return backend, readers


def guest(backend, domid, name):
    page = memoryview(bytearray(4096))
    kicks = []
    session = backend.add_domain(domid, name, page, lambda: kicks.append(1))
    return ConsoleFrontend(page, lambda: backend.kick(domid), lambda t: None), session, kicks


def read_pty(fd, want: bytes, timeout=5.0) -> bytes:
    got, deadline = b"", time.monotonic() + timeout
    os.set_blocking(fd, False)
    while want not in got and time.monotonic() < deadline:
        try:
            got += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.01)
    return got


def test_output_reaches_log_and_pty_and_input_reaches_the_guest(tmp_path):
    backend, readers = make(tmp_path)
    front, session, kicks = guest(backend, 3, "g3")
    front.write("hello console\n")
    assert "hello console\n" in open(session.log_path).read()
    user = os.open(session.tty, os.O_RDWR | os.O_NOCTTY)
    try:
        assert b"hello console" in read_pty(user, b"hello console")
        os.write(user, b"typed")
        deadline = time.monotonic() + 5
        got = b""
        while got != b"typed" and time.monotonic() < deadline:
            readers[session.master]()          # the loop saw the pty readable
            got += front.read()
        assert got == b"typed" and kicks
    finally:
        os.close(user)
    backend.remove_domain(3)
    assert session.master not in readers


def test_a_scribbled_ring_is_skipped_and_others_carry_on(tmp_path):
    backend, _ = make(tmp_path)
    bad, bad_session, _ = guest(backend, 4, "bad")
    good, good_session, _ = guest(backend, 5, "good")
    page = bad.from_guest.page
    struct.pack_into("<I", page, XENCONS_OUT_CONS_OFFSET, 0)
    struct.pack_into("<I", page, XENCONS_OUT_PROD_OFFSET, 0xFFFF_0000)
    before = bytes(page)
    backend.service_all()
    backend.service_all()
    assert bytes(page) == before                               # nothing moved, nothing written back
    assert open(bad_session.log_path).read().count("is corrupt") == 1
    good.write("still fine\n")
    backend.service_all()
    assert "still fine" in open(good_session.log_path).read()
    # the guest repairs its indexes: served again
    struct.pack_into("<II", page, XENCONS_OUT_CONS_OFFSET, 0, 0)
    bad.write("repaired\n")
    assert "repaired" in open(bad_session.log_path).read()


def test_the_log_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(console_backend, "MAX_LOG_BYTES", 4096)
    backend, _ = make(tmp_path)
    front, session, _ = guest(backend, 6, "chatty")
    for _ in range(10):
        front.write("x" * 1000)
    log = open(session.log_path).read()
    assert log.count("x") <= 4096 and "reached 4096 bytes" in log
    assert session.bytes_out == 10000                          # the ring was drained all the same
