"""The run directory: where `pvhyp up` keeps its sockets, logs, state and pid, and what is trusted in it.

Every local user can create directories in /tmp, so a predictable path there
(the old /tmp/pvhyp-UID) could be made first by someone else, who would then
own the pid root's `pvhyp down` signals, the symlink root's `pvhyp up` writes
through, and the socket `pvhyp create` sends its config to. The rules:

- the default is a directory only its user can have made: /run/pvhyp for root,
  $XDG_RUNTIME_DIR/pvhyp otherwise (/tmp/pvhyp-UID only when that is unset);
- any run directory, default or given, is created 0700 and before use checked
  to be a real directory (not a symlink), owned by us, with no access for group
  or others; otherwise the command refuses with one line (RunDirError);
- files inside are opened relative to the checked directory's fd, never
  following a symlink (O_NOFOLLOW), temporary files with O_EXCL;
- a pid read from it is used only if /proc shows that process is ours and
  started when the pid file says (a reused pid is another process);
- a socket found in it is spoken to only if its listener runs as us or root
  (SO_PEERCRED), so a config is never handed to a stranger.

dom0 and the CLI both use it (the CLI and pvhyp/host.py may import dom0).
"""
from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from dataclasses import dataclass

PID_FILE = "hostd.pid"
HOSTD_MODULE = "pvhyp.cli.hostd"      # what `pvhyp up` starts (python -P -m HOSTD_MODULE --run-dir DIR)
STATE_FILE = "hostd.state"
# What a file of ours in the run directory may hold (pid and state files are a line).
MAX_SMALL_FILE = 64 << 10


class RunDirError(Exception):
    """The run directory cannot be trusted or used: one line naming it and why."""


class UntrustedListener(ConnectionError):
    """A socket in the run directory is served by someone who is neither us nor root."""


def default_path() -> str:
    """The run directory when neither --run-dir nor $PVHYP_RUN_DIR names one."""
    uid = os.getuid()
    if uid == 0:
        return "/run/pvhyp"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return os.path.join(runtime, "pvhyp")
    # Predictable, so someone else may have made it first: open() then refuses it.
    return f"/tmp/pvhyp-{uid}"


def open_nofollow(path: str, flags: int, mode: int = 0o600, dir_fd: int | None = None) -> int:
    """os.open that refuses a symlink as the last component (OSError ELOOP)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def open_log(path: str) -> int:
    """An append-only log file of ours (created 0600), never through a planted symlink."""
    return open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


class RunDir:
    """A checked run directory, held open: files are reached through its fd, not its path."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: str, create: bool = True) -> RunDir:
        """The directory at `path`, made 0700 if absent (and `create`), after the owner and mode checks.

        FileNotFoundError when it is absent and not to be made; RunDirError when it may not be used.
        """
        # The parent canonical (so /var/run/pvhyp and /run/pvhyp are one directory, and the path
        # hostd records matches the one `pvhyp down` is given); the last component is never followed.
        path = os.path.abspath(path)
        path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if create:
            parent = os.path.dirname(path)
            try:
                os.makedirs(parent, mode=0o700, exist_ok=True)
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            except OSError as e:
                raise RunDirError(f"run directory {path}: cannot create it: {e.strerror}") from None
        try:
            fd = open_nofollow(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise
        except OSError as e:
            # O_DIRECTORY | O_NOFOLLOW reports a symlink as ENOTDIR: say which it was
            if os.path.islink(path) or e.errno == errno.ELOOP:
                why = "is a symlink"
            elif e.errno == errno.ENOTDIR:
                why = "is not a directory"
            else:
                why = e.strerror or str(e)
            raise RunDirError(f"run directory {path}: {why}: refusing to use it") from None
        try:
            check_private(path, os.fstat(fd))
        except RunDirError:
            os.close(fd)
            raise
        return cls(path, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def join(self, *names: str) -> str:
        """The path of a file inside, for messages and for what only takes a path (socket bind)."""
        return os.path.join(self.path, *names)

    def open_file(self, name: str, flags: int, mode: int = 0o600) -> int:
        return open_nofollow(name, flags, mode, dir_fd=self.fd)

    def open_log(self, name: str) -> int:
        return self.open_file(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def read_small(self, name: str) -> bytes | None:
        """A file of ours (at most MAX_SMALL_FILE bytes read), or None if absent or unreadable."""
        try:
            fd = self.open_file(name, os.O_RDONLY)
        except OSError:
            return None
        try:
            return os.read(fd, MAX_SMALL_FILE)
        except OSError:
            return None
        finally:
            os.close(fd)

    def write_atomically(self, name: str, data: bytes) -> None:
        """Replace `name` with `data`: a new file (O_EXCL, never through a symlink) renamed over it."""
        tmp = name + ".tmp"
        self.remove(tmp)
        fd = self.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def remove(self, name: str) -> None:
        """Unlink `name` (a symlink itself, never its target); absent is fine."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    # --- the hypervisor process's pid, verified before anyone signals it ---

    def record_pid(self, pid: int) -> None:
        """hostd records itself: pid and the start time /proc gives it (what tells a reused pid apart)."""
        self.write_atomically(PID_FILE, f"{pid} {process_start_time(pid)}\n".encode())

    def running_pid(self) -> int | None:
        """hostd's pid if the process recorded in the pid file is still that process and ours."""
        raw = self.read_small(PID_FILE)
        try:
            pid_text, start_text = (raw or b"").decode("ascii").split()
            pid, start = int(pid_text), int(start_text)
        except ValueError:
            return None
        if pid <= 0 or process_start_time(pid) != start or process_uid(pid) != os.getuid():
            return None
        if not self._is_hostd(process_argv(pid)):
            return None
        return pid

    def _is_hostd(self, argv: list[str]) -> bool:
        """The command line hostd is started with (pvhyp.cli.up_cmd), for this directory."""
        return HOSTD_MODULE in argv and any(
            argv[i] == "--run-dir" and argv[i + 1] == self.path for i in range(len(argv) - 1))

    def open_hostd(self) -> int | None:
        """A pidfd of the recorded hostd, verified after it was opened (so the fd is that process,
        not one that took its pid since), or None if it is not running."""
        pid = self.running_pid()
        if pid is None:
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        if self.running_pid() != pid:
            os.close(pidfd)
            return None
        return pidfd


def check_private(path: str, st: os.stat_result) -> None:
    """A run directory must be ours alone: owned by our uid, no group/other access bits."""
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"run directory {path} is not a directory: refusing to use it")
    if st.st_uid != os.getuid():
        raise RunDirError(f"run directory {path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()}): "
                          f"refusing to use it (remove it, or choose another with --run-dir)")
    if st.st_mode & 0o077:
        raise RunDirError(f"run directory {path} has mode {stat.S_IMODE(st.st_mode):04o}, open to other users: "
                          f"refusing to use it (chmod 700 it)")


@dataclass(frozen=True)
class _ProcStat:
    uid: int
    start_time: int


def _proc_stat(pid: int) -> _ProcStat | None:
    """Owner and start time (clock ticks after boot, field 22 of /proc/PID/stat) of a live process."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        uid = os.fstat(fd).st_uid
        text = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    fields = text[text.rfind(b")") + 1:].split()
    try:
        return _ProcStat(uid, int(fields[19]))
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    found = _proc_stat(pid)
    return None if found is None else found.start_time


def process_argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(MAX_SMALL_FILE)
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")]


def process_uid(pid: int) -> int | None:
    found = _proc_stat(pid)
    return None if found is None else found.uid


# --- sockets found in a run directory ---

_UCRED = struct.Struct("iII")        # struct ucred: pid, uid, gid


def check_listener(sock: socket.socket, path: str) -> None:
    """Refuse (UntrustedListener) a connected Unix socket whose listener is neither us nor root."""
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if uid not in (0, os.getuid()):
        raise UntrustedListener(f"{path} is served by uid {uid}, neither you nor root: refusing to talk to it")
