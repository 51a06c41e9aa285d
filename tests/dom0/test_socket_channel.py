"""The socket hypercall channel: real sockets, the real memfd, clients in other processes."""
from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest

import pvguest.hypercall_channel as client
import pvhyp.channel_server as wire
from abi import errno as E
from abi.sched import SHUTDOWN_crash
from abi.xen import HYPERCALL_NUMBERS, CONSOLEIO_write
from pvguest.hypercall_channel import ChannelError, SocketChannel
from pvhyp.channel import create_process_domain

CONSOLE_IO = HYPERCALL_NUMBERS["console_io"]


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_both_sides_speak_the_same_wire_format():
    names = [n for n in dir(wire) if n.startswith("OP_") or n in (
        "HEADER", "HELLO", "HYPERCALL", "MAP_FOREIGN", "MAP_MACHINE_FRAME", "READCONSOLE",
        "CREATE_DOMAIN", "DOMID_ARG", "RESULT", "READCONSOLE_RESULT", "ALL_DOMAINS", "MAX_PAYLOAD")]
    assert len(names) > 20
    for name in names:
        ours, theirs = getattr(wire, name), getattr(client, name)
        if isinstance(ours, struct.Struct):
            ours, theirs = ours.format, theirs.format
        assert ours == theirs, name


def test_a_guest_process_makes_hypercalls_on_its_own_memory(hv, server, run_python):
    d = create_process_domain(hv, 16)
    out = run_python(server.attach(d), f"""
from pvguest.hypercall_channel import SocketChannel
ch = SocketChannel.from_env()
ch.memory[4096:4096 + 14] = b"from a process"
print(ch.domid, len(ch.memory), ch.hypercall({CONSOLE_IO}, {CONSOLEIO_write}, 14, 4096), ch.hypercall(63))
""")
    assert out.split() == [str(d.domid), str(16 * 4096), "0", str(-E.ENOSYS)]
    assert d.console.read(0, 100)[0] == b"from a process"
    # what the process wrote is the domain's own frame in machine memory
    assert hv.memory.read(d.p2m[1] << 12, 14) == b"from a process"


def test_privileged_requests_are_refused_to_a_guest(hv, server):
    d = create_process_domain(hv, 8)
    other = create_process_domain(hv, 8)
    ch = SocketChannel(server.attach(d))
    for request in (lambda: ch.map_foreign(other.domid, [0]), lambda: ch.create_domain(8),
                    lambda: ch.connect_domain(other.domid), lambda: ch.destroy_domain(other.domid),
                    lambda: ch.domain_info(), lambda: ch.readconsole(other.domid)):
        with pytest.raises(ChannelError) as e:
            request()
        assert e.value.errno == E.EPERM
    with pytest.raises(ChannelError) as e:
        ch.map_machine_frame(other.p2m[0])
    assert e.value.errno == E.EPERM
    assert other.domid in hv.domains
    ch.close()


def test_dom0_maps_a_guest_and_starts_it_in_a_process(hv, server, run_python):
    dom0 = create_process_domain(hv, 16, privileged=True, domid=0)
    ch0 = SocketChannel(server.attach(dom0))
    domid = ch0.create_domain(8)
    page, = ch0.map_foreign(domid, [3])
    page[0:7] = b"by dom0"
    with pytest.raises(ChannelError) as e:
        ch0.map_foreign(domid, [8])                     # beyond its memory
    assert e.value.errno == E.EINVAL
    out = run_python(ch0.connect_domain(domid), """
from pvguest.hypercall_channel import SocketChannel
ch = SocketChannel.from_env()
print(bytes(ch.memory[3 * 4096:3 * 4096 + 7]).decode())
ch.memory[5 * 4096:5 * 4096 + 8] = b"by guest"
""")
    assert out.strip() == "by dom0"
    page5, = ch0.map_foreign(domid, [5], writable=False)
    assert bytes(page5[:8]) == b"by guest"
    info = ch0.domain_info()
    assert [d["domid"] for d in info["domains"]] == [0, domid]
    wait_until(lambda: hv.get_domain(domid).is_shut_down)     # its process exited: crashed to the system
    ch0.destroy_domain(domid)
    assert domid not in hv.domains
    with pytest.raises(ChannelError) as e:
        ch0.destroy_domain(0)
    assert e.value.errno == E.EINVAL
    ch0.close()


def test_a_kick_wakes_the_process(hv, server):
    d = create_process_domain(hv, 8)
    ch = SocketChannel(server.attach(d))
    assert not ch.wait_for_event(0.05)
    threading.Timer(0.05, d.vcpus[0].kick).start()
    assert ch.wait_for_event(5)
    assert not ch.wait_for_event(0)
    ch.close()


@pytest.mark.parametrize("frame", [
    struct.pack("<HHI", 0x77, 0, 0),                                  # unknown op
    struct.pack("<HHI", wire.OP_HYPERCALL, 0, 8) + b"\0" * 8,         # short hypercall
    struct.pack("<HHI", wire.OP_HYPERCALL, 1, 56) + b"\0" * 56,       # flags set
    struct.pack("<HHI", wire.OP_HYPERCALL, 0, 0xFFFF_FFFF),           # oversized
    struct.pack("<HHI", wire.OP_MAP_FOREIGN, 0, 8) + struct.pack("<HHI", 0, 1, 1000),   # count lies
    b"\x02\x00",                                                      # half a header, then EOF
])
def test_a_malformed_frame_closes_only_that_channel(hv, server, frame):
    victim = create_process_domain(hv, 8)
    bystander = create_process_domain(hv, 8)
    raw = server.attach(victim)
    healthy = SocketChannel(server.attach(bystander))
    _, ancdata, _, _ = raw.recvmsg(64, socket.CMSG_SPACE(8))      # the greeting and its two fds
    for fd in struct.unpack("<2i", ancdata[0][2]):
        os.close(fd)
    raw.sendall(frame)
    if len(frame) < 8:
        raw.shutdown(socket.SHUT_WR)
    raw.settimeout(5)
    try:
        assert raw.recv(64) == b""              # the hypervisor hung up...
    except ConnectionResetError:
        pass                                    # ...with our bytes still unread
    wait_until(lambda: server.disconnects)
    assert server.disconnects[0][0] == victim.domid
    wait_until(lambda: victim.is_shut_down)
    assert victim.shutdown_reason == SHUTDOWN_crash
    healthy.memory[0:2] = b"ok"
    assert healthy.hypercall(CONSOLE_IO, CONSOLEIO_write, 2, 0) == 0
    assert not bystander.is_shut_down
    healthy.close()


def test_a_hypervisor_bug_crashes_the_calling_domain_not_the_hypervisor(hv, server):
    def buggy(ctx, arg):
        raise RuntimeError("a handler bug")
    hv.hypercalls.register(62, "buggy", buggy)
    d = create_process_domain(hv, 8)
    ch = SocketChannel(server.attach(d))
    with pytest.raises(client.ChannelClosed):
        ch.hypercall(62, 1)
    wait_until(lambda: d.is_shut_down)
    assert d.shutdown_reason == SHUTDOWN_crash
    other = SocketChannel(server.attach(create_process_domain(hv, 8)))
    assert other.hypercall(63) == -E.ENOSYS
    other.close()


FRAME_OPS = [wire.OP_MAP_FOREIGN, wire.OP_MAP_MACHINE_FRAME, wire.OP_READCONSOLE, wire.OP_CREATE_DOMAIN,
             wire.OP_CONNECT_DOMAIN, wire.OP_DOMAIN_INFO, wire.OP_HELLO, wire.OP_REPLY, 0xFFFF]


def test_random_frames_never_reach_a_hypervisor_bug(hv, server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    bystander = SocketChannel(server.attach(create_process_domain(hv, 8)))

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(privileged=st.booleans(),
           frames=st.lists(st.tuples(st.sampled_from(FRAME_OPS), st.binary(max_size=64),
                                     st.integers(0, 3)), min_size=1, max_size=4))
    def send(privileged, frames):
        d = create_process_domain(hv, 4, privileged=privileged)
        raw = server.attach(d)
        _, ancdata, _, _ = raw.recvmsg(64, socket.CMSG_SPACE(8))
        for fd in struct.unpack("<2i", ancdata[0][2]):
            os.close(fd)
        raw.settimeout(5)
        try:
            for op, payload, lie in frames:
                raw.sendall(struct.pack("<HHI", op, 0, len(payload) + lie) + payload)
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        raw.close()
        wait_until(lambda: server.connection_of(d.domid) is None)
        for created in [x for x in hv.domains if x not in (0, d.domid, bystander.domid)]:
            hv.destroy_domain(created)       # domains the random frames managed to create
        hv.destroy_domain(d.domid)

    send()
    assert not [r for _, r in server.disconnects if "bug" in r]
    assert bystander.hypercall(63) == -E.ENOSYS
    bystander.close()


def test_create_domain_beyond_memory_is_enomem_and_leaves_nothing(hv, server):
    ch0 = SocketChannel(server.attach(create_process_domain(hv, 16, privileged=True, domid=0)))
    before = (set(hv.domains), hv.frames.free_frames)
    for pages in (hv.frames.nr_frames, hv.frames.free_frames):
        with pytest.raises(ChannelError) as e:
            ch0.create_domain(pages)
        assert e.value.errno == E.ENOMEM
    with pytest.raises(ChannelError) as e:
        ch0.create_domain(0)
    assert e.value.errno == E.EINVAL
    assert (set(hv.domains), hv.frames.free_frames) == before
    first, second = ch0.create_domain(4), ch0.create_domain(4)
    ch0.destroy_domain(first)
    assert ch0.create_domain(4) > second          # ids move on, as Xen's rover does
    ch0.close()
