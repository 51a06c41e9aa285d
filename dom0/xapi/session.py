"""Sessions: who may log in, and the handle every later call carries.

Rules:
* The one user is the one who may use the CLI: the owner of the run directory
  (dom0 and `pvhyp` run as that user). Its credentials are `<run dir>/xapi-credentials`
  (mode 0600, "root:PASSWORD", made by `pvhyp up`); `root` may also log in through
  PAM when python-pam is installed and dom0 runs as root. So a session can do exactly
  what the CLI user can, and every session has the pool-admin role.
* A failed login counts against a window: past MAX_FAILURES in FAILURE_WINDOW seconds
  every login is refused (SESSION_AUTHENTICATION_FAILED) without looking at the
  password, until the window has passed: guessing runs at a few tries a minute. The
  loop never sleeps for it.
* At most MAX_SESSIONS are held; past it the one unused longest is dropped (xapi does
  the same), so logins cannot use up dom0's memory.
"""
from __future__ import annotations

import hmac
import os
import secrets
import time
import uuid as uuidlib
from collections import deque
from dataclasses import dataclass, field

from dom0.xapi.errors import SESSION_AUTHENTICATION_FAILED, SESSION_INVALID, ApiError

CREDENTIALS_FILE = "xapi-credentials"
USER = "root"
MAX_FAILURES = 5
FAILURE_WINDOW = 60.0
MAX_SESSIONS = 500
MAX_CREDENTIALS_BYTES = 4096


def new_credentials() -> tuple[str, bytes]:
    """(password, the credentials file's bytes) for `pvhyp up` to write (mode 0600)."""
    password = secrets.token_urlsafe(18)
    return password, f"{USER}:{password}\n".encode()


def read_credentials(path: str) -> tuple[str, str] | None:
    """(user, password) from the file, None if absent, unreadable or not ours and private."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None
        text = os.read(fd, MAX_CREDENTIALS_BYTES).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    user, colon, password = text.partition(":")
    return (user, password) if colon and user and password else None


@dataclass
class Session:
    ref: str
    uuid: str
    user: str
    originator: str
    created: float
    last_active: float = field(default_factory=time.monotonic)
    subscription: set[str] | None = None     # event.register's classes
    next_generation: int = 0                  # event.next: what this session has seen


class Sessions:
    def __init__(self, credentials_path: str, clock=time.monotonic):
        self.credentials_path = credentials_path
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.failures: deque[float] = deque()

    def login(self, user: object, password: object, originator: str = "") -> Session:
        now = self.clock()
        while self.failures and self.failures[0] < now - FAILURE_WINDOW:
            self.failures.popleft()
        name = user if isinstance(user, str) else ""
        if len(self.failures) >= MAX_FAILURES:
            raise ApiError(SESSION_AUTHENTICATION_FAILED, name[:64],
                           f"too many failed logins: try again in {FAILURE_WINDOW:.0f} seconds")
        if not (isinstance(user, str) and isinstance(password, str) and self._check(user, password)):
            self.failures.append(now)
            raise ApiError(SESSION_AUTHENTICATION_FAILED, name[:64], "Authentication failure")
        if len(self.sessions) >= MAX_SESSIONS:
            idlest = min(self.sessions.values(), key=lambda s: s.last_active)
            del self.sessions[idlest.ref]
        uuid = str(uuidlib.uuid4())
        session = Session(f"OpaqueRef:{uuidlib.uuid4()}", uuid, user, originator[:200], time.time())
        self.sessions[session.ref] = session
        return session

    def _check(self, user: str, password: str) -> bool:
        stored = read_credentials(self.credentials_path)
        if stored is not None and hmac.compare_digest(user.encode(), stored[0].encode()) \
                and hmac.compare_digest(password.encode(), stored[1].encode()):
            return True
        return user == USER and os.getuid() == 0 and _pam_root(password)

    def get(self, ref: object) -> Session:
        """The live session `ref` names; SESSION_INVALID otherwise."""
        session = self.sessions.get(ref) if isinstance(ref, str) else None
        if session is None:
            raise ApiError(SESSION_INVALID, str(ref)[:100])
        session.last_active = self.clock()
        return session

    def logout(self, ref: str) -> None:
        self.sessions.pop(ref, None)

    def user_of(self, session_ref: str) -> str | None:
        """The contract with dom0.webui: whose session this is, None if it is none."""
        session = self.sessions.get(session_ref) if isinstance(session_ref, str) else None
        return session.user if session is not None else None


def _pam_root(password: str) -> bool:
    try:
        import pam  # type: ignore[import-not-found]     # optional: python-pam
    except ImportError:
        return False
    try:
        return bool(pam.pam().authenticate(USER, password, service="login"))
    except Exception:
        return False
