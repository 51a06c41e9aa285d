"""The domain requests: INTRODUCE, RELEASE, RESUME, SET_TARGET,
GET_DOMAIN_PATH and IS_DOMAIN_INTRODUCED.

The bookkeeping itself (an introduced domain owns exactly one ring
connection; introducing or releasing one fires the special @introduceDomain /
@releaseDomain watches, dom0 itself is never announced) belongs to the
engine, whose ``introduce_domain``, ``release_domain``, ... the toolstack
calls directly.
"""

from __future__ import annotations

from abi.xen import DOMID_SELF

from .core import Connection, Engine, IntroducedDomain
from .errors import XsError
from .paths import c_atoi, domain_path
from .payload import OK, exactly_one_string, split_strings
from .store import View


def _one_domid(payload: bytes) -> int:
    text = exactly_one_string(payload)
    if text is None:
        raise XsError("EINVAL")
    return c_atoi(text)


def _introduced(engine: Engine, domid: int) -> IntroducedDomain:
    domain = engine.domains.get(domid)
    if domain is None:
        raise XsError("ENOENT")
    return domain


def do_introduce(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    strings = split_strings(payload)
    if len(strings) < 3:
        raise XsError("EINVAL")
    domid, gfn, port = (c_atoi(s) for s in strings[:3])
    if port == 0:
        raise XsError("EINVAL")
    if engine.introduce_hook is not None:
        # The transport maps the page, binds the port and registers the
        # domain through introduce_domain(), or raises XsError.
        engine.introduce_hook(domid, gfn, port)
    else:
        engine.introduce_domain(domid, gfn, port)
    return OK


def do_release(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    domid = _one_domid(payload)
    if domid == 0:
        raise XsError("EINVAL")
    _introduced(engine, domid)
    engine.release_domain(domid)
    return OK


def do_resume(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    domid = _one_domid(payload)
    if domid == 0:
        raise XsError("EINVAL")
    _introduced(engine, domid).shutdown = False
    return OK


def do_set_target(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    strings = split_strings(payload)
    if len(strings) < 2:
        raise XsError("EINVAL")
    domid, target = c_atoi(strings[0]), c_atoi(strings[1])
    domain = _introduced(engine, domid)
    _introduced(engine, target)
    engine.connections[domain.conn_id].target_domid = target
    return OK


def do_get_domain_path(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    return domain_path(_one_domid(payload)).encode() + b"\0"


def do_is_domain_introduced(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    domid = _one_domid(payload)
    known = domid in (0, DOMID_SELF) or domid in engine.domains
    return b"T\0" if known else b"F\0"
