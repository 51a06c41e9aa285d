"""The xenstore entries of a split device, as libxl writes them (libxl__device_generic_add).

    /local/domain/<fe>/device/<kind>/<devid>/     owned by the guest, readable by dom0
        backend, backend-id, state = 1 (Initialising), + the kind's frontend keys
    /local/domain/0/backend/<kind>/<fe>/<devid>/  owned by dom0, readable by the guest
        frontend, frontend-id, online = 1, state = 1, + the kind's backend keys

Each end then writes its own `state` as the handshake goes; the guest may
write only below its own directory.
"""
from __future__ import annotations

from dom0.xenbus.interfaces import Xenstore

BACKEND_DOMID = 0


def frontend_path(kind: str, domid: int, devid: int) -> str:
    return f"/local/domain/{domid}/device/{kind}/{devid}"


def backend_path(kind: str, domid: int, devid: int, backend_domid: int = BACKEND_DOMID) -> str:
    return f"/local/domain/{backend_domid}/backend/{kind}/{domid}/{devid}"


def write_device(xs: Xenstore, kind: str, domid: int, devid: int, backend: dict[str, str],
                 frontend: dict[str, str]) -> None:
    """Both directories of a new device, in one transaction (the backend is plugged after)."""
    fe, be = frontend_path(kind, domid, devid), backend_path(kind, domid, devid)
    with xs.transaction() as t:
        t.mkdir(fe)
        t.set_perms(fe, [f"n{domid}", f"r{BACKEND_DOMID}"])
        t.write(f"{fe}/backend", be)
        t.write(f"{fe}/backend-id", str(BACKEND_DOMID))
        t.write(f"{fe}/state", "1")
        for key, value in frontend.items():
            t.write(f"{fe}/{key}", value)
        t.mkdir(be)
        t.set_perms(be, [f"n{BACKEND_DOMID}", f"r{domid}"])
        t.write(f"{be}/frontend", fe)
        t.write(f"{be}/frontend-id", str(domid))
        t.write(f"{be}/online", "1")
        t.write(f"{be}/state", "1")
        for key, value in backend.items():
            t.write(f"{be}/{key}", value)


def remove_device(xs: Xenstore, kind: str, domid: int, devid: int) -> None:
    for path in (frontend_path(kind, domid, devid), backend_path(kind, domid, devid)):
        try:
            xs.rm(path)
        except Exception:
            pass        # already gone (the domain's home went first)


def device_ids(xs: Xenstore, kind: str, domid: int) -> list[int]:
    """The devids of `kind` the toolstack wrote for `domid` (backend side)."""
    try:
        names = xs.directory(f"/local/domain/{BACKEND_DOMID}/backend/{kind}/{domid}")
    except Exception:
        return []
    return sorted(int(n) for n in names if n.isdigit())
