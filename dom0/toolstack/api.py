"""The toolstack API: JSON lines over a Unix socket (DIR/pvhyp.sock), served in dom0's loop.

Request: {"cmd": NAME, "args": {...}}\\n. Reply: {"ok": true, ...result} or
{"ok": false, "error": "one line"}. Any client on the socket is root in dom0
(the socket is mode 0600), as xl talks to libxl with dom0's privileges; it is
still hostile input, and these are the rules every connection lives by:

* Every request line gets exactly one reply line, in order, whatever its bytes
  (not UTF-8, not JSON, not an object, a command name that is not a string,
  JSON nested past Python's recursion limit): malformed input is an error reply.
* A request is checked against REQUESTS (the command's parameters and their
  JSON types) before any toolstack code sees it; a command's own failure is an
  error reply (ToolstackError's text, or "internal error" with the traceback in
  dom0's log). No exception leaves `handle_line`.
* A line is at most MAX_LINE bytes: a longer one is answered with an error that
  states the bound, its bytes are skipped up to its newline, and the connection
  goes on with the next line.
* Nothing blocks dom0's loop: replies wait in the connection's output queue and
  are sent when the socket is writable; while any reply is unsent no further line
  is handled or read (the client's own kernel buffer fills instead), so a client
  that never reads holds one reply of dom0's memory and delays nobody. A client's
  pipelined lines are answered LINES_PER_TURN per turn of the loop, so a burst from
  one does not keep the others (or the guests' rings) waiting either.
* At most MAX_CONNECTIONS are held: past it, the one idle longest is closed.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback

from dom0.rundir import check_listener
from dom0.xenstored.unix_socket import accepted, received

log = logging.getLogger("dom0.api")
MAX_LINE = 1 << 20              # bytes in one request line, newline excluded
MAX_ERROR = 400                 # characters of an error reply
_RECV_BYTES = 65536
LINES_PER_TURN = 64             # requests of one connection answered per turn of dom0's loop
# Connections held at once. Each is one short request and reply (the CLI's `call`), so
# at the bound the one idle longest is closed to make room: idle connections can neither
# use up dom0's file descriptors nor lock the toolstack out.
MAX_CONNECTIONS = 64

JSON_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}
DOM = (str, int)                # xl takes a domain by name or by id
# command -> {parameter: (JSON types accepted, required)}. A command missing here is
# refused even if the toolstack has it: every entry point is declared.
REQUESTS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "create": {"config": ((str,), True), "source": ((str,), False), "cwd": ((str,), False)},
    "destroy": {"dom": (DOM, True)},
    "shutdown": {"dom": (DOM, True)},
    "reboot": {"dom": (DOM, True)},
    "pause": {"dom": (DOM, True)},
    "unpause": {"dom": (DOM, True)},
    "console": {"dom": (DOM, True)},
    "list": {},
    "info": {},
    "dmesg": {},
    "vcpu-list": {"dom": (DOM, False)},
    "uptime": {},
    "domid": {"name": (DOM, True)},
    "domname": {"domid": (DOM, True)},
    "block-attach": {"dom": (DOM, True), "spec": ((str,), True), "cwd": ((str,), False)},
    "block-detach": {"dom": (DOM, True), "vdev": ((str,), True), "force": ((bool,), False)},
    "block-list": {"dom": (DOM, True)},
    "network-attach": {"dom": (DOM, True), "spec": ((str,), True)},
    "network-detach": {"dom": (DOM, True), "which": (DOM, True)},
    "network-list": {"dom": (DOM, True)},
    "inspect": {"dom": (DOM, True), "view": ((str,), True), "arg": ((str,), False),
                "vcpu": ((int,), False), "verbose": ((bool,), False)},
}


class RequestError(Exception):
    """The request is refused before any command runs: its text is the reply's error."""


def one_line(text: str, limit: int = MAX_ERROR) -> str:
    """An error for the reply: one line (whitespace runs folded), at most `limit` characters."""
    text = " ".join(text.split()) or "error"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_request(line: bytes) -> tuple[str, dict]:
    """(command, arguments) of one request line, checked against REQUESTS; else RequestError."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):       # not UTF-8 / not JSON / nested too deep
        raise RequestError("malformed request: not a JSON object") from None
    if not isinstance(request, dict):
        raise RequestError("malformed request: not a JSON object")
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        raise RequestError('malformed request: "cmd" must be a string')
    params = REQUESTS.get(cmd)
    if params is None:
        raise RequestError(f"unknown command {cmd[:40]!r}")
    args = request.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RequestError(f'bad arguments for {cmd}: "args" must be a JSON object')
    checked = {}
    for name, value in args.items():
        if name not in params:
            raise RequestError(f"bad arguments for {cmd}: no parameter {name[:40]!r}")
        types, required = params[name]
        if value is None and not required:
            continue                            # null: as if left out
        # JSON true/false are Python bools, and bool is an int: only a bool parameter takes them.
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            raise RequestError(f"bad arguments for {cmd}: {name} must be "
                               + " or ".join(JSON_TYPE_NAMES[t] for t in types))
        checked[name] = value
    missing = [name for name, (_, required) in params.items() if required and name not in checked]
    if missing:
        raise RequestError(f"bad arguments for {cmd}: {missing[0]} is missing")
    return cmd, checked


class _Connection:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = b""            # received, not yet a whole line
        self.out = b""              # replies not yet accepted by the kernel
        self.skipping = False       # inside an over-long line: dropping bytes up to its newline
        self.last_active = time.monotonic()


class ApiServer:
    """The toolstack socket on dom0's loop (`loop`: dom0.xenstored.unix_socket.SocketServer)."""

    def __init__(self, path: str, commands: dict, loop, user_errors=()):
        self.path = path
        self.commands = commands
        self.loop = loop
        self.user_errors = tuple(user_errors)
        if os.path.exists(path):
            os.unlink(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(socket.SOMAXCONN)
        self.listener.setblocking(False)
        self.clients: dict[socket.socket, _Connection] = {}
        loop.watch(self.listener, "the toolstack's listening socket", self._accept, on_failure=lambda: None)

    def _accept(self) -> None:
        for sock in accepted(self.listener):
            self._add_connection(sock)

    def _add_connection(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if len(self.clients) >= MAX_CONNECTIONS:
            idlest = min(self.clients.values(), key=lambda c: c.last_active)
            log.warning("%d toolstack connections: closing the one idle longest", len(self.clients))
            self._drop(idlest)
        conn = self.clients[sock] = _Connection(sock)
        self._rewatch(conn)

    def _rewatch(self, conn: _Connection, more: bool = False) -> None:
        """Read only while no reply waits (the queue stays one reply long); write while one
        does, or while whole lines wait for their turn (`more`: the socket is writable at once,
        so they are served on the loop's next turn, after every other ready file)."""
        busy = bool(conn.out) or more
        self.loop.watch(conn.sock, "a toolstack connection",
                        None if busy else (lambda: self._read(conn)),
                        (lambda: self._write(conn)) if busy else None,
                        on_failure=lambda: self._drop(conn))

    def _drop(self, conn: _Connection) -> None:
        self.clients.pop(conn.sock, None)
        self.loop.unwatch(conn.sock)
        conn.sock.close()

    def _read(self, conn: _Connection) -> None:
        data = received(conn.sock, _RECV_BYTES)
        if data is None:
            return
        if not data:
            self._drop(conn)
            return
        conn.last_active = time.monotonic()
        if conn.skipping:
            if b"\n" not in data:
                return
            conn.skipping = False
            data = data.split(b"\n", 1)[1]
        conn.inbuf += data
        self._serve(conn)

    def _serve(self, conn: _Connection) -> None:
        """Answer whole lines while the output queue is empty, LINES_PER_TURN at most (one
        client's pipelined burst waits for the loop's next turn); then watch for what is left."""
        for _ in range(LINES_PER_TURN):
            if conn.out:
                break
            if b"\n" in conn.inbuf:
                line, conn.inbuf = conn.inbuf.split(b"\n", 1)
                conn.out = self.handle_line(line) if len(line) <= MAX_LINE else self._too_long()
            elif len(conn.inbuf) > MAX_LINE:
                conn.inbuf, conn.skipping = b"", True
                conn.out = self._too_long()
            else:
                break
            if not self._send(conn):
                return
        self._rewatch(conn, more=b"\n" in conn.inbuf)

    @staticmethod
    def _too_long() -> bytes:
        return encode_reply({"ok": False, "error": f"request longer than the toolstack's limit of {MAX_LINE} bytes per line"})

    def _send(self, conn: _Connection) -> bool:
        """As much of the queue as the socket takes now; False if the connection is gone."""
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return False
        conn.out = conn.out[sent:]
        return True

    def _write(self, conn: _Connection) -> None:
        if self._send(conn):
            self._serve(conn)       # lines that waited behind the reply

    def handle_line(self, line: bytes) -> bytes:
        """The reply line (newline included) to one request line. Never raises."""
        try:
            cmd, args = parse_request(line)
        except RequestError as e:
            return encode_reply({"ok": False, "error": one_line(str(e))})
        fn = self.commands.get(cmd)
        if fn is None:
            return encode_reply({"ok": False, "error": f"unknown command {cmd!r}"})
        try:
            return encode_reply({"ok": True, **(fn(**args) or {})})
        except self.user_errors as e:
            return encode_reply({"ok": False, "error": one_line(str(e))})
        except Exception as e:
            log.error("%s failed:\n%s", cmd, traceback.format_exc())
            return encode_reply({"ok": False, "error": one_line(f"internal error in dom0 during {cmd}: {e!r}")})

    def close(self) -> None:
        for conn in list(self.clients.values()):
            self._drop(conn)
        self.loop.unwatch(self.listener)
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def encode_reply(reply: dict) -> bytes:
    return json.dumps(reply).encode() + b"\n"


def call(path: str, cmd: str, timeout: float = 30.0, **args) -> dict:
    """Client side: one request, one reply (used by the CLI and tests)."""
    deadline = time.monotonic() + timeout
    with _connect(path, deadline) as sock:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        check_listener(sock, path)      # nothing is sent to a socket a stranger listens on
        sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("dom0 closed the toolstack connection")
            buf += chunk
    return json.loads(buf)


def _connect(path: str, deadline: float) -> socket.socket:
    """A connection to dom0's socket by `deadline`. A Unix socket with a timeout does not
    wait for room in a full listen queue (connect fails with EAGAIN at once, as when many
    clients connect together), so that wait is done here."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{path}: dom0 accepted no connection in time") from None
            time.sleep(0.01)
        except BaseException:
            sock.close()
            raise
