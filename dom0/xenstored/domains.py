"""Domain bookkeeping: INTRODUCE, RELEASE, RESUME, SET_TARGET,
GET_DOMAIN_PATH and IS_DOMAIN_INTRODUCED, plus the toolstack-facing methods
the engine re-exports (``introduce_domain``, ``release_domain``, ...).

An introduced domain owns exactly one ring connection.  Introducing or
releasing a domain fires the special @introduceDomain / @releaseDomain
watches (dom0 itself is never announced).
"""

from __future__ import annotations

from .errors import XsError
from .paths import DOMID_SELF, c_atoi, domain_path
from .payload import exactly_one_string, split_strings

OK = b"OK\0"


def introduce_domain(engine, domid: int, gfn: int = 0, port: int = 0) -> int:
    """Register a guest's ring connection; return its connection id.

    Re-introducing a known domain keeps its connection but forgets its
    watches, transactions and buffered bytes (the guest reconnects)."""
    from .core import _Domain  # the record type lives with the engine

    known = engine.domains.get(domid)
    if known is not None:
        known.port, known.gfn = port, gfn
        engine.reset_connection(known.conn_id)
        return known.conn_id
    engine.domain_birth.setdefault(domid, engine.store.generation)
    conn_id = engine.open_connection(domid, is_domain=True)
    engine.domains[domid] = _Domain(domid, conn_id, gfn, port)
    if domid != 0:
        engine.fire_special(b"@introduceDomain")
    return conn_id


def release_domain(engine, domid: int) -> None:
    """Forget a domain and its connection, then tell @releaseDomain watchers.

    Its nodes stay: removing /local/domain/<domid> is the toolstack's job."""
    domain = engine.domains.pop(domid, None)
    if domain is None:
        raise XsError("ENOENT")
    engine.close_connection(domain.conn_id)
    engine.forget_domain(domid)
    for conn in engine.connections.values():
        if conn.target_domid == domid:
            conn.target_domid = None
    engine.fire_special(b"@releaseDomain")
    if engine.release_hook is not None:
        engine.release_hook(domid)


def mark_domain_shutdown(engine, domid: int) -> None:
    """The hypervisor reported the domain shut down or crashed."""
    domain = engine.domains.get(domid)
    if domain is not None and not domain.shutdown:
        domain.shutdown = True
        engine.fire_special(b"@releaseDomain")


def domain_usage(engine, domid: int) -> str:
    domain = engine.domains.get(domid)
    if domain is None:
        raise XsError("ENOENT")
    conn = engine.connections[domain.conn_id]
    rows = (("nodes", engine.store.owned_count(domid)),
            ("watches", len(conn.watches)),
            ("transactions", len(conn.transactions)),
            ("outstanding", conn.outstanding))
    return f"Domain {domid}:\n" + "".join(f"{name:<16}: {value:8d}\n" for name, value in rows)


def _one_domid(payload: bytes) -> int:
    text = exactly_one_string(payload)
    if text is None:
        raise XsError("EINVAL")
    return c_atoi(text)


def _introduced(engine, domid: int):
    domain = engine.domains.get(domid)
    if domain is None:
        raise XsError("ENOENT")
    return domain


def do_introduce(engine, conn, view, payload):
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
        introduce_domain(engine, domid, gfn, port)
    return OK


def do_release(engine, conn, view, payload):
    domid = _one_domid(payload)
    if domid == 0:
        raise XsError("EINVAL")
    _introduced(engine, domid)
    release_domain(engine, domid)
    return OK


def do_resume(engine, conn, view, payload):
    domid = _one_domid(payload)
    if domid == 0:
        raise XsError("EINVAL")
    _introduced(engine, domid).shutdown = False
    return OK


def do_set_target(engine, conn, view, payload):
    strings = split_strings(payload)
    if len(strings) < 2:
        raise XsError("EINVAL")
    domid, target = c_atoi(strings[0]), c_atoi(strings[1])
    domain = _introduced(engine, domid)
    _introduced(engine, target)
    engine.connections[domain.conn_id].target_domid = target
    return OK


def do_get_domain_path(engine, conn, view, payload):
    return domain_path(_one_domid(payload)).encode() + b"\0"


def do_is_domain_introduced(engine, conn, view, payload):
    domid = _one_domid(payload)
    known = domid in (0, DOMID_SELF) or domid in engine.domains
    return b"T\0" if known else b"F\0"
