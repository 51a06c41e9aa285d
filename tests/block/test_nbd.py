"""The NBD client: its sans-IO protocol on crafted bytes, then against Debian's real qemu-nbd."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from dom0.block import nbd as N
from dom0.block.image import open_image

needs_qemu = pytest.mark.skipif(shutil.which("qemu-nbd") is None or shutil.which("qemu-img") is None,
                                reason="Debian's qemu-utils (qemu-nbd, qemu-img) is not installed")


def greeting(flags=N.FLAG_FIXED_NEWSTYLE | N.FLAG_NO_ZEROES) -> bytes:
    return struct.pack(">QQH", N.NBDMAGIC, N.IHAVEOPT, flags)


def opt_reply(kind: int, body: bytes = b"") -> bytes:
    return struct.pack(">QIII", N.OPT_REPLY_MAGIC, N.OPT_GO, kind, len(body)) + body


def ready_protocol() -> N.NbdProtocol:
    p = N.NbdProtocol()
    p.feed(greeting())
    info = struct.pack(">HQH", N.INFO_EXPORT, 1 << 20, N.TFLAG_SEND_FLUSH | N.TFLAG_SEND_TRIM)
    events = p.feed(opt_reply(N.REP_INFO, info) + opt_reply(N.REP_ACK)[:10])
    assert events == []
    (ready,) = p.feed(opt_reply(N.REP_ACK)[10:])      # byte by byte is fine too
    assert (ready.size, ready.can_flush, ready.can_trim, ready.readonly) == (1 << 20, True, True, False)
    p.data_to_send()
    return p


def test_handshake_sends_fixed_newstyle_and_go():
    p = N.NbdProtocol("exp")
    assert p.feed(greeting()) == []
    out = p.data_to_send()
    assert out[:4] == struct.pack(">I", 3)
    assert out[4:20] == struct.pack(">QII", N.IHAVEOPT, N.OPT_GO, 4 + 3 + 2)
    assert out[20:] == struct.pack(">I", 3) + b"exp" + b"\0\0"


@pytest.mark.parametrize("server_bytes", [
    b"NOTNBD!!" + bytes(10),                                            # not NBD
    greeting(flags=0),                                                  # oldstyle-ish: no fixed newstyle
    greeting() + opt_reply(N.REP_ERROR_BIT | 1, b"no such export"),    # GO refused
    greeting() + opt_reply(N.REP_ACK),                                  # ACK without the size
])
def test_bad_handshakes_raise(server_bytes):
    with pytest.raises(N.NbdError):
        N.NbdProtocol().feed(server_bytes)


def test_replies_are_matched_by_cookie_and_read_data_waits_for_all_bytes():
    p = ready_protocol()
    a = p.request(N.CMD_READ, 0, 8)
    b = p.request(N.CMD_WRITE, 512, 4, b"data")
    sent = p.data_to_send()
    assert len(sent) == 2 * 28 + 4
    assert p.feed(struct.pack(">IIQ", N.SIMPLE_REPLY_MAGIC, 0, b)) == [N.Reply(b, 0)]
    assert p.feed(struct.pack(">IIQ", N.SIMPLE_REPLY_MAGIC, 0, a) + b"1234") == []
    assert p.feed(b"5678") == [N.Reply(a, 0, b"12345678")]
    c = p.request(N.CMD_READ, 0, 8)
    assert p.feed(struct.pack(">IIQ", N.SIMPLE_REPLY_MAGIC, 5, c)) == [N.Reply(c, 5)]   # error: no data
    with pytest.raises(N.NbdError):
        p.feed(struct.pack(">IIQ", N.SIMPLE_REPLY_MAGIC, 0, 999))                      # unknown cookie
    with pytest.raises(N.NbdError):
        ready_protocol().feed(struct.pack(">IIQ", 0xDEADBEEF, 0, 1))


@pytest.fixture
def qcow2(tmp_path):
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(base)], check=True, capture_output=True)
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)],
                   check=True)
    return base, overlay


@needs_qemu
def test_against_qemu_nbd_read_write_flush_trim_and_copy_on_write(tmp_path, qcow2):
    base, overlay = qcow2
    before = base.read_bytes()
    image = open_image(str(overlay), "qcow2", False, str(tmp_path / "work"), "vbd-1-51712")
    try:
        assert image.sectors == 32768 and not image.readonly and image.can_discard
        page = memoryview(bytearray(4096))
        image.read_into(0, [page])
        assert bytes(page) == b"\x5a" * 4096                  # from the backing file
        page[:] = b"\xa5" * 4096
        image.write_from(8192, [page[:512], page[512:]])
        image.flush()
        out = [memoryview(bytearray(2048)), memoryview(bytearray(2048))]
        image.read_into(8192, out)
        assert bytes(out[0]) + bytes(out[1]) == b"\xa5" * 4096
        image.discard(1 << 20, 1 << 20)
        with pytest.raises(OSError) as e:                      # past the end: the server's EINVAL
            image.read_into(16 << 20, [memoryview(bytearray(512))])
        assert e.value.errno == 22
        image.read_into(0, [page])                             # the connection still works
    finally:
        image.close()
    assert base.read_bytes() == before                         # the template is never written
    check = subprocess.run(["qemu-io", "-c", "read -P 0xa5 8k 4k", str(overlay)], capture_output=True, text=True)
    assert "read 4096/4096" in check.stdout, check.stdout + check.stderr
    assert not os.path.exists(tmp_path / "work" / "vbd-1-51712.nbd")   # server stopped, socket gone


@needs_qemu
def test_a_dead_server_is_an_io_error_not_a_crash(tmp_path, qcow2):
    _, overlay = qcow2
    image = open_image(str(overlay), "qcow2", True, str(tmp_path), "ro")
    try:
        assert image.readonly and not image.can_discard
        image.server.process.kill()
        image.server.process.wait()
        buf = memoryview(bytearray(512))
        for _ in range(2):
            with pytest.raises(OSError) as e:
                image.read_into(0, [buf])
            assert e.value.errno == 5
    finally:
        image.close()


@needs_qemu
def test_an_image_qemu_cannot_open_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"not a qcow2 image" * 100)
    with pytest.raises(OSError) as e:
        open_image(str(bad), "qcow2", False, str(tmp_path), "bad")
    assert "qemu-nbd could not serve" in str(e.value)
