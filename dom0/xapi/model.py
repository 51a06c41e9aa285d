"""The XenAPI datamodel over pvhyp's toolstack, and the one table of its messages.

Every message is a row of MESSAGES: name -> (parameters with their XAPI types, handler,
role). `Api.call` is the trust boundary and its rules are:
* an unknown name is MESSAGE_METHOD_UNKNOWN [name]; a wrong number of parameters
  MESSAGE_PARAMETER_COUNT_MISMATCH [name, expected, received] (the session counted,
  as xapi counts it); every message but session.login_with_password takes a live
  session first (SESSION_INVALID [handle]);
* each parameter is checked against its type before the handler runs: a ref that
  names no object of its class is HANDLE_INVALID [class, ref], a value of the wrong
  type FIELD_TYPE_ERROR [name] (an `int` may come as XML-RPC's decimal string);
* a handler's ToolstackError/StoreError/CloneError is INTERNAL_ERROR [its one line];
  any other exception INTERNAL_ERROR with its type, the traceback in dom0's log.
  Nothing else leaves `call`.
* `Async.<message>` runs the message and answers a task ref (task.get_status/result).
Records are computed from the toolstack (running domains), the VM store (halted VMs,
templates) and the hypervisor's domain_info on each call; refs are "OpaqueRef:<uuid>"
of the object, stable for as long as the object lives. Roles: the one user is the CLI
user (dom0.xapi.session), so every session is pool-admin; the column says what a
smaller role would need.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import traceback
import uuid as uuidlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from dom0.images.clone import CloneError, clone
from dom0.toolstack.domains import ToolstackError
from dom0.xapi import errors as E
from dom0.xapi.errors import ApiError
from dom0.xapi.events import EventLog, Subscription, parse_token, token_of
from dom0.xapi.session import Session, Sessions
from dom0.xapi.store import StoredVm, StoreError, VmStore
from dom0.xapi.wire import Timestamp

log = logging.getLogger("dom0.xapi")
NULL_REF = "OpaqueRef:NULL"
API_VERSION = (2, 21)           # XenServer 8's XenAPI version (host.API_version_major/minor)
MAX_TASKS = 1000
MAX_EVENT_WAIT = 3600.0
CLEAN_SHUTDOWN_WAIT = 1200.0    # xapi's default for a guest to act on a clean shutdown
_NS = uuidlib.UUID("0c5b2b9e-4a57-4a3c-8d1e-6a2f7f0e9d31")
IMAGE_SUFFIXES = (".img", ".raw", ".qcow2", ".qcow", ".vhd")
COUNTERS_RATE_PREFIX = "hypercalls/"


def stable_uuid(*parts: object) -> str:
    return str(uuidlib.uuid5(_NS, "/".join(str(p) for p in parts)))


def ref_of(uuid: str) -> str:
    return f"OpaqueRef:{uuid}"


class Pending:
    """An answer that waits (event.from/next, clean_shutdown) without blocking the loop:
    `check()` gives the result when it is ready (None: not yet), `expire()` at the deadline."""

    def __init__(self, check: Callable[[], Any], deadline: float, expire: Callable[[], Any]):
        self.check = check
        self.deadline = deadline
        self.expire = expire

    def poll(self, now: float) -> tuple[bool, Any]:
        """(done, result or ApiError)."""
        try:
            result = self.check()
            if result is not None:
                return True, result
            if now >= self.deadline:
                return True, self.expire()
        except ApiError as e:
            return True, e
        except Exception as e:
            log.error("a waiting call failed:\n%s", traceback.format_exc())
            return True, ApiError(E.INTERNAL_ERROR, f"{type(e).__name__}")
        return False, None


@dataclass
class Message:
    params: list[tuple[str, str]]       # (name, XAPI type): "session", "VM ref", "string", "int", ...
    handler: Callable[..., Any]
    role: str = "read-only"
    optional: int = 0                   # trailing parameters a call may leave out (xapi's older forms)


@dataclass
class Task:
    uuid: str
    name: str
    created: float
    status: str = "pending"
    finished: float = 0.0
    result: str = ""
    error_info: list[str] | None = None
    pending: Pending | None = None


class Api:
    def __init__(self, toolstack, store: VmStore, sessions: Sessions, url: Callable[[], str],
                 image_cache: str | None = None):
        self.toolstack = toolstack
        self.store = store
        self.sessions = sessions
        self.url = url                      # the server's base URL ("http://127.0.0.1:8080")
        self.events = EventLog()
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.node = os.uname().nodename
        self.host_uuid = stable_uuid("host", self.node)
        self.pool_uuid = stable_uuid("pool", self.node)
        self.dom0_uuid = stable_uuid("dom0", self.node)
        self.srs = {stable_uuid("sr", store.directory): ("Local storage", store.directory)}
        if image_cache:
            self.srs[stable_uuid("sr", image_cache)] = ("pvhyp image cache", image_cache)
        self.samples: dict[str, tuple[float, dict[str, float]]] = {}   # VM uuid -> last counter sample
        self.classes: dict[str, Callable[[], dict[str, dict]]] = {
            "pool": self._pools, "host": self._hosts, "host_metrics": self._host_metrics, "VM": self._vms,
            "VBD": self._vbds, "VDI": self._vdis, "SR": self._srs, "VIF": self._vifs,
            "network": self._networks, "console": self._consoles, "task": self._tasks,
            "session": self._sessions}
        self.messages = self._table()
        self._memo: dict[str, Any] | None = None

    # --- the trust boundary ---

    def call(self, method: str, params: list) -> Any:
        """The result of one call, a Pending, or ApiError. Never raises anything else."""
        try:
            if method.startswith("Async."):
                return self._async(method[len("Async."):], params)
            return self._dispatch(method, params)
        except ApiError:
            raise
        except (ToolstackError, StoreError, CloneError) as e:
            raise ApiError(E.INTERNAL_ERROR, " ".join(str(e).split())[:400]) from None
        except Exception as e:
            log.error("%s failed:\n%s", method[:100], traceback.format_exc())
            raise ApiError(E.INTERNAL_ERROR, f"{type(e).__name__} in {method[:100]}") from None

    def _dispatch(self, method: str, params: list) -> Any:
        message = self.messages.get(method)
        if message is None:
            raise ApiError(E.MESSAGE_METHOD_UNKNOWN, method[:200])
        if not len(message.params) - message.optional <= len(params) <= len(message.params):
            raise ApiError(E.MESSAGE_PARAMETER_COUNT_MISMATCH, method, len(message.params), len(params))

        def checked() -> list:
            given = list(params) + [None] * (len(message.params) - len(params))
            return [self._check(method, name, kind, value) for (name, kind), value in zip(message.params, given)]
        if message.role == "read-only":
            with self.one_look():
                return message.handler(*checked())
        args = checked()
        try:
            return message.handler(*args)
        finally:
            if message.role not in ("read-only", "none") and self.sessions.sessions:
                self.refresh()      # a state a call made is an event even if it lasts less than a tick

    def _check(self, method: str, name: str, kind: str, value: Any) -> Any:
        if kind == "session":
            return self.sessions.get(value)
        if kind == "any":
            return value
        if kind.endswith(" ref"):
            cls = kind[:-4]
            if not isinstance(value, str):
                raise ApiError(E.FIELD_TYPE_ERROR, name)
            records = self.classes[cls]()
            if value not in records:
                raise ApiError(E.HANDLE_INVALID, cls, value[:200])
            return value
        if kind == "int":
            if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) < 21:
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool) or not -(1 << 63) <= value < (1 << 63):
                raise ApiError(E.FIELD_TYPE_ERROR, name)
            return value
        if kind == "float":
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                try:
                    number = float(value)
                except (ValueError, OverflowError):
                    number = math.nan
                if math.isfinite(number):       # a NaN timeout would wait for ever
                    return number
            raise ApiError(E.FIELD_TYPE_ERROR, name)
        expected: type = {"string": str, "bool": bool, "map": dict, "set": list}[kind]
        if not isinstance(value, expected):
            raise ApiError(E.FIELD_TYPE_ERROR, name)
        if isinstance(value, str) and len(value) > 4096:
            raise ApiError(E.INVALID_VALUE, name, value[:40] + "...")
        return value

    # --- the table ---

    def _table(self) -> dict[str, Message]:
        S = ("session_id", "session")
        t: dict[str, Message] = {
            "session.login_with_password": Message(
                [("uname", "any"), ("pwd", "any"), ("version", "any"), ("originator", "any")], self.login, "none",
                optional=2),    # login_with_password(user, password) of older clients, as xapi takes it
            "session.logout": Message([S], self.logout),
            "session.get_this_host": Message([S, ("self", "session ref")], lambda s, _: ref_of(self.host_uuid)),
            "session.get_this_user": Message([S, ("self", "session ref")], lambda s, ref: self.sessions.sessions[ref].user),
            "system.listMethods": Message([], lambda: sorted(self.messages)),
            "pool.get_master": Message([S, ("self", "pool ref")], lambda s, _: ref_of(self.host_uuid)),
            "host.get_API_version_major": Message([S, ("self", "host ref")], lambda s, _: API_VERSION[0]),
            "host.get_API_version_minor": Message([S, ("self", "host ref")], lambda s, _: API_VERSION[1]),
            "VM.start": Message([S, ("vm", "VM ref"), ("start_paused", "bool"), ("force", "bool")],
                                self.vm_start, "vm-operator"),
            "VM.clean_shutdown": Message([S, ("vm", "VM ref")], self.vm_clean_shutdown, "vm-operator"),
            "VM.hard_shutdown": Message([S, ("vm", "VM ref")], self.vm_hard_shutdown, "vm-operator"),
            "VM.clean_reboot": Message([S, ("vm", "VM ref")], self.vm_clean_reboot, "vm-operator"),
            "VM.hard_reboot": Message([S, ("vm", "VM ref")], self.vm_hard_reboot, "vm-operator"),
            "VM.pause": Message([S, ("vm", "VM ref")], self.vm_pause, "vm-operator"),
            "VM.unpause": Message([S, ("vm", "VM ref")], self.vm_unpause, "vm-operator"),
            "VM.clone": Message([S, ("vm", "VM ref"), ("new_name", "string")],
                                lambda s, vm, name: self.vm_clone(vm, name, full=False), "vm-admin"),
            "VM.copy": Message([S, ("vm", "VM ref"), ("new_name", "string"), ("sr", "any")],
                               lambda s, vm, name, sr: self.vm_clone(vm, name, full=True), "vm-admin"),
            "VM.destroy": Message([S, ("self", "VM ref")], self.vm_destroy, "vm-admin"),
            "VM.set_name_label": Message([S, ("self", "VM ref"), ("value", "string")],
                                         lambda s, vm, v: self.vm_rename(vm, name=v), "vm-admin"),
            "VM.set_name_description": Message([S, ("self", "VM ref"), ("value", "string")],
                                               lambda s, vm, v: self.vm_rename(vm, description=v), "vm-admin"),
            "VM.get_data_sources": Message([S, ("self", "VM ref")], self.vm_data_sources),
            "VM.query_data_source": Message([S, ("self", "VM ref"), ("data_source", "string")], self.vm_query),
            "VDI.destroy": Message([S, ("self", "VDI ref")], self.vdi_destroy, "vm-admin"),
            "task.destroy": Message([S, ("self", "task ref")], self.task_destroy),
            "task.cancel": Message([S, ("self", "task ref")], lambda s, ref: None),
            "event.register": Message([S, ("classes", "set")], self.event_register),
            "event.unregister": Message([S, ("classes", "set")], self.event_unregister),
            "event.next": Message([S], self.event_next),
            "event.from": Message([S, ("classes", "set"), ("token", "any"), ("timeout", "float")], self.event_from),
            "event.get_current_id": Message([S], self.event_current_id),
            "event.inject": Message([S, ("class", "string"), ("ref", "string")], self.event_inject),
        }
        for cls, records in self.classes.items():
            self._accessors(t, cls, records)
        return t

    def _accessors(self, table: dict[str, Message], cls: str, records: Callable[[], dict[str, dict]]) -> None:
        """get_all, get_all_records, get_record, get_by_uuid, get_by_name_label and one get_<field>
        per field of the class's record: the same generated set for every class, as xapi's."""
        S = ("session_id", "session")
        me = ("self", f"{cls} ref")
        table[f"{cls}.get_all"] = Message([S], lambda s: list(records()))
        table[f"{cls}.get_all_records"] = Message([S], lambda s: records())
        table[f"{cls}.get_record"] = Message([S, me], lambda s, ref: records()[ref])

        def by_uuid(session: Session, uuid: str) -> str:
            for ref, record in records().items():
                if record.get("uuid") == uuid:
                    return ref
            raise ApiError(E.UUID_INVALID, cls, uuid[:100])
        table[f"{cls}.get_by_uuid"] = Message([S, ("uuid", "string")], by_uuid)
        sample = self._field_names(cls)
        if "name_label" in sample:
            table[f"{cls}.get_by_name_label"] = Message(
                [S, ("label", "string")],
                lambda s, label: [ref for ref, r in records().items() if r.get("name_label") == label])
        for name in sample:
            table[f"{cls}.get_{name}"] = Message([S, me], lambda s, ref, name=name: records()[ref][name])

    def _field_names(self, cls: str) -> list[str]:
        return list(FIELDS[cls])

    # --- records ---

    def snapshot(self) -> dict[str, dict[str, dict]]:
        with self.one_look():
            return {cls: fn() for cls, fn in self.classes.items() if cls != "session"}

    @contextlib.contextmanager
    def one_look(self) -> Iterator[None]:
        """Within it, the VMs and the domains are read once (a snapshot or a read-only call
        looks at them from several classes; each read of the domains asks the hypervisor)."""
        outer = self._memo is not None
        if not outer:
            self._memo = {}
        try:
            yield
        finally:
            if not outer:
                self._memo = None

    def _memoized(self, key: str, fn: Callable[[], Any]) -> Any:
        if self._memo is None:
            return fn()
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def refresh(self) -> None:
        """Compare the model with the last look (events); the server calls it on its ticks."""
        self.events.refresh(self.snapshot())

    def _pools(self) -> dict[str, dict]:
        return {ref_of(self.pool_uuid): {
            "uuid": self.pool_uuid, "name_label": "", "name_description": "", "master": ref_of(self.host_uuid),
            "default_SR": ref_of(next(iter(self.srs))), "other_config": {}, "tags": []}}

    def _hosts(self) -> dict[str, dict]:
        info = self.toolstack.info()
        return {ref_of(self.host_uuid): {
            "uuid": self.host_uuid, "name_label": self.node, "name_description": "pvhyp host",
            "hostname": self.node, "address": self.url().split("//", 1)[-1].rsplit(":", 1)[0],
            "API_version_major": API_VERSION[0], "API_version_minor": API_VERSION[1],
            "API_version_vendor": "XenSource", "API_version_vendor_implementation": {},
            "enabled": True, "software_version": {
                "product_brand": "pvhyp", "product_version": "0.1.0", "platform_name": "XCP",
                "xen": f"{info['xen_major']}.{info['xen_minor']}{info['xen_extra']}", "xapi": "1.0",
                "linux": info["release"], "hostname": self.node},
            "capabilities": [info["xen_caps"]], "cpu_info": {"cpu_count": str(os.cpu_count() or 1)},
            "resident_VMs": [ref for ref, r in self._vms().items() if r["power_state"] != "Halted"],
            "metrics": ref_of(stable_uuid("host_metrics", self.node)), "other_config": {}, "tags": []}}

    def _host_metrics(self) -> dict[str, dict]:
        info = self.toolstack.info()
        uuid = stable_uuid("host_metrics", self.node)
        return {ref_of(uuid): {"uuid": uuid, "memory_total": info["total_memory"] << 20,
                               "memory_free": info["free_memory"] << 20, "live": True,
                               "last_updated": Timestamp(time.time() // 10 * 10), "other_config": {}}}

    def _domains(self) -> dict[int, dict]:
        return self._memoized("domains", lambda: {d["domid"]: d for d in self.toolstack.channel.domain_info()["domains"]})

    def _running(self) -> dict[str, Any]:
        """VM uuid -> the toolstack's Guest, for every domain it runs."""
        return {g.uuid.lower(): g for g in self.toolstack.guests.values()}

    def _vms(self) -> dict[str, dict]:
        return self._memoized("vms", self._read_vms)

    def _read_vms(self) -> dict[str, dict]:
        domains = self._domains()
        running = self._running()
        stored = self.store.entries()
        vms = {ref_of(self.dom0_uuid): self._vm_record(self.dom0_uuid, "Domain-0", "The control domain",
                                                       None, domains.get(0), control=True)}
        for uuid, entry in stored.items():
            guest = running.get(uuid)
            vms[ref_of(uuid)] = self._vm_record(uuid, entry.config.name, entry.description, entry,
                                                domains.get(guest.domid) if guest else None, guest=guest)
        for uuid, guest in running.items():
            if uuid not in stored:
                vms[ref_of(uuid)] = self._vm_record(uuid, guest.name, "", None, domains.get(guest.domid), guest=guest)
        return vms

    def _vm_record(self, uuid: str, name: str, description: str, entry: StoredVm | None, info: dict | None,
                   guest: Any = None, control: bool = False) -> dict:
        cfg = entry.config if entry is not None else (guest.config if guest is not None else None)
        if control or (guest is not None and info is not None):
            paused = bool(info and info.get("paused")) or bool(guest is not None and guest.paused)
            power = "Paused" if paused else "Running"
        else:
            power = "Halted"
        mem = (cfg.memory if cfg else (info["tot_pages"] * 4 // 1024 if info else 0)) << 20
        vcpus = cfg.vcpus if cfg else (info["online_vcpus"] if info else 1)
        domid = 0 if control else (guest.domid if guest is not None and power != "Halted" else -1)
        is_template = bool(entry and entry.is_template)
        ops = (["clone", "copy", "destroy"] if is_template else
               {"Halted": ["start", "clone", "copy", "destroy"], "Running": ["clean_shutdown", "hard_shutdown",
                "clean_reboot", "hard_reboot", "pause"], "Paused": ["unpause", "hard_shutdown"]}[power])
        return {
            "uuid": uuid, "name_label": name, "name_description": description, "power_state": power,
            "is_a_template": is_template, "is_default_template": False, "is_a_snapshot": False,
            "is_control_domain": control, "domid": domid, "domarch": "x64" if domid >= 0 else "",
            "allowed_operations": [] if control else ops, "current_operations": {},
            "user_version": 1, "resident_on": ref_of(self.host_uuid) if power != "Halted" else NULL_REF,
            "affinity": NULL_REF, "memory_overhead": 0, "memory_target": mem, "memory_static_max": mem,
            "memory_dynamic_max": mem, "memory_dynamic_min": mem, "memory_static_min": mem,
            "VCPUs_params": {}, "VCPUs_max": (cfg.maxvcpus or cfg.vcpus) if cfg else vcpus,
            "VCPUs_at_startup": vcpus,
            "actions_after_shutdown": cfg.on_poweroff if cfg else "destroy",
            "actions_after_reboot": cfg.on_reboot if cfg else "restart",
            "actions_after_crash": cfg.on_crash if cfg else "destroy",
            "consoles": [ref_of(stable_uuid("console", uuid))] if domid >= 0 else [],
            "VIFs": [ref_of(stable_uuid("vif", uuid, i)) for i in range(len(cfg.vifs))] if cfg else [],
            "VBDs": [ref_of(stable_uuid("vbd", uuid, d.vdev)) for d in cfg.disks] if cfg else [],
            "crash_dumps": [], "VTPMs": [], "PV_bootloader": "", "PV_kernel": cfg.kernel if cfg else "",
            "PV_ramdisk": cfg.ramdisk if cfg else "", "PV_args": cfg.cmdline if cfg else "",
            "PV_bootloader_args": "", "PV_legacy_args": "", "HVM_boot_policy": "", "HVM_boot_params": {},
            "platform": {}, "PCI_bus": "", "other_config": {"pvhyp_config": entry.path} if entry else {},
            "metrics": NULL_REF, "guest_metrics": NULL_REF, "last_booted_record": "", "recommendations": "",
            "xenstore_data": {}, "ha_always_run": False, "ha_restart_priority": "", "snapshot_of": NULL_REF,
            "snapshots": [], "tags": [], "blocked_operations": {}, "parent": NULL_REF, "children": [],
        }

    def _configs(self) -> list[tuple[str, Any, StoredVm | None]]:
        """(VM uuid, config, store entry) of every VM that has a config."""
        out: list[tuple[str, Any, StoredVm | None]] = [(uuid, e.config, e) for uuid, e in self.store.entries().items()]
        known = {u for u, _, _ in out}
        out += [(u, g.config, None) for u, g in self._running().items() if u not in known]
        return out

    def _disk_path(self, target: str, entry: StoredVm | None) -> str:
        path = os.path.expanduser(target)
        if not os.path.isabs(path):
            path = os.path.join(entry.directory if entry else self.store.directory, path)
        return os.path.abspath(path)

    def _sr_of(self, path: str) -> str:
        for uuid, (_, directory) in self.srs.items():
            if path.startswith(directory.rstrip("/") + "/"):
                return uuid
        return next(iter(self.srs))

    def _vdi_paths(self) -> dict[str, str]:
        """VDI uuid -> image path: every disk of a config, and every image file in an SR's directory."""
        paths = {}
        for _, cfg, entry in self._configs():
            for disk in cfg.disks:
                if disk.target:
                    path = self._disk_path(disk.target, entry)
                    paths[stable_uuid("vdi", path)] = path
        for _, directory in self.srs.values():
            for sub in _dirs(directory):
                for name in _listdir(sub):
                    if name.endswith(IMAGE_SUFFIXES):
                        path = os.path.join(sub, name)
                        paths[stable_uuid("vdi", path)] = path
        return paths

    def _vdis(self) -> dict[str, dict]:
        users: dict[str, list[str]] = {}
        for uuid, cfg, entry in self._configs():
            for disk in cfg.disks:
                if disk.target:
                    users.setdefault(self._disk_path(disk.target, entry), []).append(
                        ref_of(stable_uuid("vbd", uuid, disk.vdev)))
        out = {}
        for uuid, path in self._vdi_paths().items():
            try:
                size = os.stat(path).st_size
            except OSError:
                size = 0
            out[ref_of(uuid)] = {"uuid": uuid, "name_label": os.path.basename(path), "name_description": path,
                                 "SR": ref_of(self._sr_of(path)), "VBDs": users.get(path, []),
                                 "virtual_size": size, "physical_utilisation": size, "type": "user",
                                 "sharable": False, "read_only": False, "location": path,
                                 "managed": True, "missing": not os.path.exists(path), "other_config": {},
                                 "tags": []}
        return out

    def _srs(self) -> dict[str, dict]:
        vdis = self._vdis()
        return {ref_of(uuid): {"uuid": uuid, "name_label": name, "name_description": directory,
                               "type": "file", "content_type": "user", "shared": False,
                               "VDIs": [ref for ref, v in vdis.items() if v["SR"] == ref_of(uuid)],
                               "PBDs": [], "other_config": {"path": directory}, "tags": []}
                for uuid, (name, directory) in self.srs.items()}

    def _vbds(self) -> dict[str, dict]:
        vms = self._vms()
        out = {}
        for uuid, cfg, entry in self._configs():
            attached = vms.get(ref_of(uuid), {}).get("power_state") in ("Running", "Paused")
            for disk in cfg.disks:
                vbd = stable_uuid("vbd", uuid, disk.vdev)
                vdi = ref_of(stable_uuid("vdi", self._disk_path(disk.target, entry))) if disk.target else NULL_REF
                out[ref_of(vbd)] = {"uuid": vbd, "VM": ref_of(uuid), "VDI": vdi, "device": disk.vdev,
                                    "userdevice": disk.vdev, "bootable": True,
                                    "mode": "RO" if disk.readonly else "RW",
                                    "type": "CD" if disk.devtype == "cdrom" else "Disk",
                                    "empty": not disk.target, "currently_attached": attached,
                                    "other_config": {}}
        return out

    def _bridge(self, vif) -> str:
        return vif.bridge or "xenbr0"

    def _vifs(self) -> dict[str, dict]:
        vms = self._vms()
        out = {}
        for uuid, cfg, _ in self._configs():
            attached = vms.get(ref_of(uuid), {}).get("power_state") in ("Running", "Paused")
            for i, vif in enumerate(cfg.vifs):
                vu = stable_uuid("vif", uuid, i)
                out[ref_of(vu)] = {"uuid": vu, "device": str(i), "VM": ref_of(uuid), "MAC": vif.mac,
                                   "network": ref_of(stable_uuid("network", self._bridge(vif))), "MTU": 1500,
                                   "currently_attached": attached, "other_config": {}}
        return out

    def _networks(self) -> dict[str, dict]:
        vifs = self._vifs()
        bridges = {"xenbr0"} | {self._bridge(v) for _, cfg, _ in self._configs() for v in cfg.vifs}
        out = {}
        for bridge in sorted(bridges):
            nu = stable_uuid("network", bridge)
            out[ref_of(nu)] = {"uuid": nu, "name_label": bridge, "name_description": "a dom0 bridge",
                               "bridge": bridge, "MTU": 1500,
                               "VIFs": [r for r, v in vifs.items() if v["network"] == ref_of(nu)],
                               "PIFs": [], "other_config": {}, "tags": []}
        return out

    def _consoles(self) -> dict[str, dict]:
        out = {}
        for ref, vm in self._vms().items():
            for console in vm["consoles"]:
                cu = console[len("OpaqueRef:"):]
                out[console] = {"uuid": cu, "protocol": "vt100", "VM": ref,
                                "location": f"{self.url()}/console?ref={console}", "other_config": {}}
        return out

    def _tasks(self) -> dict[str, dict]:
        return {ref_of(t.uuid): {
            "uuid": t.uuid, "name_label": t.name, "name_description": "", "status": t.status,
            "progress": 1.0 if t.status != "pending" else 0.0, "created": Timestamp(t.created),
            "finished": Timestamp(t.finished), "result": t.result, "error_info": t.error_info or [],
            "resident_on": ref_of(self.host_uuid), "type": "<none/>", "allowed_operations": [],
            "current_operations": {}, "other_config": {}, "subtask_of": NULL_REF, "subtasks": [],
            "backtrace": ""} for t in self.tasks.values()}

    def _sessions(self) -> dict[str, dict]:
        return {ref: {"uuid": s.uuid, "this_host": ref_of(self.host_uuid), "this_user": NULL_REF,
                      "last_active": Timestamp(s.created), "pool": False, "originator": s.originator,
                      "auth_user_name": s.user, "is_local_superuser": True, "rbac_permissions": [],
                      "other_config": {}}
                for ref, s in self.sessions.sessions.items()}

    # --- sessions ---

    def login(self, user: Any, password: Any, version: Any, originator: Any) -> str:
        return self.sessions.login(user, password, originator if isinstance(originator, str) else "").ref

    def logout(self, session: Session) -> None:
        self.sessions.logout(session.ref)

    # --- VM lifecycle ---

    def _power(self, vm: str) -> str:
        return self._vms()[vm]["power_state"]

    def _expect(self, vm: str, *states: str) -> str:
        actual = self._power(vm)
        if actual not in states:
            raise ApiError(E.VM_BAD_POWER_STATE, vm, states[0].lower(), actual.lower())
        return actual

    def _stored(self, vm: str) -> StoredVm:
        entry = self.store.entries().get(vm[len("OpaqueRef:"):])
        if entry is None:
            raise ApiError(E.OPERATION_NOT_ALLOWED, "this VM has no config in the VM store (created by `pvhyp create`)")
        return entry

    def _guest(self, vm: str):
        if vm == ref_of(self.dom0_uuid):
            raise ApiError(E.OPERATION_NOT_ALLOWED, "Domain-0 is the control domain")
        return self._running()[vm[len("OpaqueRef:"):]]

    def vm_start(self, session: Session, vm: str, start_paused: bool, force: bool) -> None:
        entry = self._stored(vm)
        if entry.is_template:
            raise ApiError(E.VM_IS_TEMPLATE, vm)
        self._expect(vm, "Halted")
        self.toolstack.create_parsed(entry.config, cwd=entry.directory, paused=start_paused)

    def vm_clean_shutdown(self, session: Session, vm: str) -> Pending:
        self._expect(vm, "Running")
        self.toolstack.shutdown(self._guest(vm).domid)
        return self._until_halted(vm)

    def _until_halted(self, vm: str) -> Pending:
        def expire():
            return ApiError(E.VM_BAD_POWER_STATE, vm, "halted", self._power(vm).lower())
        return Pending(lambda: "" if self._power(vm) == "Halted" else None,
                       time.monotonic() + CLEAN_SHUTDOWN_WAIT, expire)

    def vm_hard_shutdown(self, session: Session, vm: str) -> None:
        self._expect(vm, "Running", "Paused")
        self.toolstack.destroy(self._guest(vm).domid)

    def vm_clean_reboot(self, session: Session, vm: str) -> None:
        self._expect(vm, "Running")
        self.toolstack.reboot(self._guest(vm).domid)

    def vm_hard_reboot(self, session: Session, vm: str) -> None:
        self._expect(vm, "Running", "Paused")
        guest = self._guest(vm)
        self.toolstack.destroy(guest.domid)
        entry = self.store.entries().get(guest.uuid.lower())
        cfg, cwd = (entry.config, entry.directory) if entry else (guest.config, None)
        self.toolstack.create_parsed(cfg, cwd=cwd)

    def vm_pause(self, session: Session, vm: str) -> None:
        self._expect(vm, "Running")
        self.toolstack.pause(self._guest(vm).domid)

    def vm_unpause(self, session: Session, vm: str) -> None:
        self._expect(vm, "Paused")
        self.toolstack.unpause(self._guest(vm).domid)

    def vm_clone(self, vm: str, new_name: str, full: bool) -> Pending:
        """`pvhyp clone` into the store, on a thread of its own: a full copy of a disk takes as long
        as the disk is big, and dom0's loop never waits for it (the answer is a Pending)."""
        entry = self._stored(vm)
        if not entry.is_template:
            self._expect(vm, "Halted")
        out = self.store.path_for(new_name)
        outcome: list[Any] = []

        def work() -> None:
            try:
                made = clone(entry.path, new_name, full=full, out=out, cwd=entry.directory)
                self.store.mark(made["config"], entry.description)
                outcome.append(ref_of(made["uuid"]))
            except CloneError as e:
                outcome.append(ApiError(E.INTERNAL_ERROR, " ".join(str(e).split())[:400]))
            except Exception as e:
                log.error("cloning %s failed:\n%s", entry.path, traceback.format_exc())
                outcome.append(ApiError(E.INTERNAL_ERROR, f"{type(e).__name__} in VM.clone"))
        worker = threading.Thread(target=work, name=f"xapi clone {new_name}", daemon=True)
        worker.start()

        def done() -> Any:
            if not outcome:
                return None
            if isinstance(outcome[0], ApiError):
                raise outcome[0]
            self.refresh()
            return outcome[0]
        return Pending(done, float("inf"), lambda: None)

    def vm_destroy(self, session: Session, vm: str) -> None:
        entry = self._stored(vm)
        self._expect(vm, "Halted")
        self.store.remove(entry)

    def vm_rename(self, vm: str, name: str | None = None, description: str | None = None) -> None:
        if name is not None and self._power(vm) != "Halted":
            raise ApiError(E.VM_BAD_POWER_STATE, vm, "halted", self._power(vm).lower())
        self.store.rewrite(self._stored(vm), name=name, description=description)

    def vdi_destroy(self, session: Session, vdi: str) -> None:
        record = self._vdis()[vdi]
        if record["VBDs"]:
            raise ApiError("VDI_IN_USE", vdi, "destroy")
        if not record["location"].startswith(self.store.directory + "/"):
            raise ApiError(E.OPERATION_NOT_ALLOWED, "only images in the VM store are destroyed")
        os.unlink(record["location"])

    # --- data sources (the RRD calls the web console's teaching panel reads) ---

    def _sample(self, vm: str) -> dict[str, float]:
        record = self._vms()[vm]
        values = {"memory": float(record["memory_static_max"]), "memory_target": float(record["memory_target"]),
                  "vcpus": float(record["VCPUs_at_startup"])}
        if record["domid"] < 0:
            return values
        info = self._domains().get(record["domid"], {})
        if info.get("cpu_time_ns") is not None:
            values["cpu_time"] = info["cpu_time_ns"] / 1e9
        counters = {k: float(v) for k, v in (info.get("counters") or {}).items()
                    if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)}
        values.update(counters)
        now = time.monotonic()
        last = self.samples.get(vm)
        if last is not None and now > last[0]:
            for key, value in counters.items():
                if key.startswith(COUNTERS_RATE_PREFIX) and key in last[1]:
                    name = "hypercalls_per_s/" + key[len(COUNTERS_RATE_PREFIX):]
                    values[name] = max(0.0, (value - last[1][key]) / (now - last[0]))
        if last is None or now - last[0] >= 0.5:
            self.samples[vm] = (now, counters)
        return values

    def vm_data_sources(self, session: Session, vm: str) -> list[dict]:
        return [{"name_label": name, "name_description": name, "enabled": True, "standard": True,
                 "min": 0.0, "max": 0.0, "units": "B" if name.startswith("memory") else "", "value": value}
                for name, value in sorted(self._sample(vm).items())]

    def vm_query(self, session: Session, vm: str, name: str) -> float:
        values = self._sample(vm)
        if name not in values:
            raise ApiError(E.INVALID_VALUE, "data_source", name[:100])
        return values[name]

    # --- tasks ---

    def _async(self, method: str, params: list) -> str:
        if method not in self.messages or method.startswith(("session.", "event.", "system.")):
            raise ApiError(E.MESSAGE_METHOD_UNKNOWN, f"Async.{method}"[:200])
        if params:
            self.sessions.get(params[0])
        task = Task(str(uuidlib.uuid4()), f"Async.{method}", time.time())
        try:
            result = self.call(method, params)
        except ApiError as e:
            self._finish(task, e)
        else:
            if isinstance(result, Pending):
                task.pending = result
            else:
                self._finish(task, result)
        while len(self.tasks) >= MAX_TASKS:
            self.tasks.popitem(last=False)
        self.tasks[task.uuid] = task
        return ref_of(task.uuid)

    @staticmethod
    def _finish(task: Task, result: Any) -> None:
        task.finished, task.pending = time.time(), None
        if isinstance(result, ApiError):
            task.status, task.error_info = "failure", result.description
        else:
            task.status = "success"
            task.result = f"<value>{result}</value>" if result not in (None, "") else ""

    def task_destroy(self, session: Session, task: str) -> None:
        self.tasks.pop(task[len("OpaqueRef:"):], None)

    def tick(self) -> None:
        """Finish tasks whose call waited (clean_shutdown)."""
        now = time.monotonic()
        for task in list(self.tasks.values()):
            if task.pending is not None:
                done, result = task.pending.poll(now)
                if done:
                    self._finish(task, result)

    # --- events ---

    def _known_classes(self) -> set[str]:
        return {c.lower() for c in self.classes}

    def event_register(self, session: Session, classes: list) -> None:
        Subscription(classes, self._known_classes())     # checked now, kept as given
        self.refresh()
        session.subscription = (session.subscription or set()) | {c.lower() for c in classes}
        session.next_generation = self.events.generation

    def event_unregister(self, session: Session, classes: list) -> None:
        Subscription(classes, self._known_classes())
        if session.subscription is not None:
            session.subscription -= {c.lower() for c in classes}

    def event_next(self, session: Session) -> Pending:
        if session.subscription is None:
            raise ApiError(E.SESSION_NOT_REGISTERED, session.ref)

        def check():
            wanted = Subscription(sorted(session.subscription or ()), self._known_classes())
            found = self.events.since(session.next_generation, wanted)
            session.next_generation = self.events.generation
            return found or None
        return Pending(check, time.monotonic() + MAX_EVENT_WAIT, lambda: [])

    def event_from(self, session: Session, classes: list, token: Any, timeout: float) -> Pending:
        wanted = Subscription(classes, self._known_classes())
        since = parse_token(token)
        self.refresh()

        def result(events: list) -> dict:
            return {"events": events, "valid_ref_counts": {}, "token": token_of(self.events.generation)}

        def check():
            found = self.events.since(since, wanted)
            return result(found) if found else None
        wait = min(max(timeout, 0.0), MAX_EVENT_WAIT)
        return Pending(check, time.monotonic() + wait, lambda: result([]))

    def event_current_id(self, session: Session) -> str:
        self.refresh()
        return str(self.events.generation)

    def event_inject(self, session: Session, cls: str, ref: str) -> str:
        name = next((c for c in self.classes if c.lower() == cls.lower()), None)
        if name is None:
            raise ApiError(E.EVENT_SUBSCRIPTION_PARSE_FAILURE, cls[:100])
        if ref not in self.classes[name]():
            raise ApiError(E.HANDLE_INVALID, name, ref[:200])
        self.refresh()
        return self.events.inject(name, ref)

    # --- the web console's contract (dom0.webui) ---

    def pty_path(self, console_ref: str) -> str | None:
        """The guest's console pty for an XAPI console ref; None if unknown or not running."""
        try:
            console = self._consoles().get(console_ref) if isinstance(console_ref, str) else None
            if console is None:
                return None
            domid = self._vms()[console["VM"]]["domid"]
            session = self.toolstack.consoles.sessions.get(domid)
            return session.tty if session is not None else None
        except Exception:
            log.exception("looking up console %s", str(console_ref)[:100])
            return None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _dirs(directory: str) -> list[str]:
    """`directory` and its immediate subdirectories (the image cache keeps one per image kind)."""
    subs = [os.path.join(directory, n) for n in _listdir(directory)]
    return [directory] + [s for s in subs if os.path.isdir(s) and not os.path.islink(s)]


# The fields of each class's record (get_<field> is generated for each): one list, read by
# Api._accessors and docs/xenapi.md.
FIELDS: dict[str, tuple[str, ...]] = {
    "pool": ("uuid", "name_label", "name_description", "master", "default_SR", "other_config", "tags"),
    "host": ("uuid", "name_label", "name_description", "hostname", "address", "API_version_vendor",
             "API_version_vendor_implementation", "enabled", "software_version", "capabilities", "cpu_info",
             "resident_VMs", "metrics", "other_config", "tags"),
    "host_metrics": ("uuid", "memory_total", "memory_free", "live", "last_updated", "other_config"),
    "VM": ("uuid", "name_label", "name_description", "power_state", "is_a_template", "is_default_template",
           "is_a_snapshot", "is_control_domain", "domid", "domarch", "allowed_operations", "current_operations",
           "user_version", "resident_on", "affinity", "memory_overhead", "memory_target", "memory_static_max",
           "memory_dynamic_max", "memory_dynamic_min", "memory_static_min", "VCPUs_params", "VCPUs_max",
           "VCPUs_at_startup", "actions_after_shutdown", "actions_after_reboot", "actions_after_crash",
           "consoles", "VIFs", "VBDs", "crash_dumps", "VTPMs", "PV_bootloader", "PV_kernel", "PV_ramdisk",
           "PV_args", "PV_bootloader_args", "PV_legacy_args", "HVM_boot_policy", "HVM_boot_params", "platform",
           "PCI_bus", "other_config", "metrics", "guest_metrics", "last_booted_record", "recommendations",
           "xenstore_data", "ha_always_run", "ha_restart_priority", "snapshot_of", "snapshots", "tags",
           "blocked_operations", "parent", "children"),
    "VBD": ("uuid", "VM", "VDI", "device", "userdevice", "bootable", "mode", "type", "empty",
            "currently_attached", "other_config"),
    "VDI": ("uuid", "name_label", "name_description", "SR", "VBDs", "virtual_size", "physical_utilisation",
            "type", "sharable", "read_only", "location", "managed", "missing", "other_config", "tags"),
    "SR": ("uuid", "name_label", "name_description", "type", "content_type", "shared", "VDIs", "PBDs",
           "other_config", "tags"),
    "VIF": ("uuid", "device", "VM", "MAC", "network", "MTU", "currently_attached", "other_config"),
    "network": ("uuid", "name_label", "name_description", "bridge", "MTU", "VIFs", "PIFs", "other_config", "tags"),
    "console": ("uuid", "protocol", "VM", "location", "other_config"),
    "task": ("uuid", "name_label", "name_description", "status", "progress", "created", "finished", "result",
             "error_info", "resident_on", "type", "allowed_operations", "current_operations", "other_config",
             "subtask_of", "subtasks", "backtrace"),
    "session": ("uuid", "this_host", "this_user", "last_active", "pool", "originator", "auth_user_name",
                "is_local_superuser", "rbac_permissions", "other_config"),
}
