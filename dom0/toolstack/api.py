"""The toolstack API: JSON lines over a Unix socket (DIR/pvhyp.sock), served in dom0's loop.

Request: {"cmd": NAME, "args": {...}}\\n. Reply: {"ok": true, ...result} or
{"ok": false, "error": "one line"}. Any client on the socket is root in dom0
(the socket is mode 0600), as xl talks to libxl with dom0's privileges.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import traceback

from dom0.rundir import check_listener

log = logging.getLogger("dom0.api")
MAX_LINE = 1 << 20


class ApiServer:
    def __init__(self, path: str, commands: dict, add_reader, remove_reader, user_errors=()):
        self.path = path
        self.commands = commands
        self.add_reader = add_reader
        self.remove_reader = remove_reader
        self.user_errors = tuple(user_errors)
        if os.path.exists(path):
            os.unlink(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.clients: dict[socket.socket, bytes] = {}
        add_reader(self.listener, self._accept)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        self.clients[sock] = b""
        self.add_reader(sock, lambda: self._read(sock))

    def _drop(self, sock: socket.socket) -> None:
        self.clients.pop(sock, None)
        self.remove_reader(sock)
        sock.close()

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        buf = self.clients[sock] + data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            reply = self.handle_line(line)
            try:
                sock.setblocking(True)
                sock.settimeout(5)
                sock.sendall(json.dumps(reply).encode() + b"\n")
                sock.setblocking(False)
            except OSError:
                self._drop(sock)
                return
        if len(buf) > MAX_LINE:
            self._drop(sock)
            return
        self.clients[sock] = buf

    def handle_line(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            cmd = request["cmd"]
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request"}
        fn = self.commands.get(cmd)
        if fn is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        try:
            result = fn(**args)
        except self.user_errors as e:
            return {"ok": False, "error": str(e)}
        except TypeError as e:
            return {"ok": False, "error": f"bad arguments for {cmd}: {e}"}
        except Exception as e:
            log.error("%s failed:\n%s", cmd, traceback.format_exc())
            return {"ok": False, "error": f"internal error in dom0 during {cmd}: {e}"}
        return {"ok": True, **(result or {})}

    def close(self) -> None:
        for sock in list(self.clients):
            self._drop(sock)
        self.remove_reader(self.listener)
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def call(path: str, cmd: str, timeout: float = 30.0, **args) -> dict:
    """Client side: one request, one reply (used by the CLI and tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        check_listener(sock, path)      # nothing is sent to a socket a stranger listens on
        sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("dom0 closed the toolstack connection")
            buf += chunk
    return json.loads(buf)
