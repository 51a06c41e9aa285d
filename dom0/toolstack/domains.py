"""Domain lifecycle in dom0: what `xl create/destroy/shutdown/...` do, over the hypercall channel.

A Python guest (kernel = "python:MODULE") is prepared the way the PV domain
builder prepares a kernel (pvguest.kernel describes the page layout): the
hypervisor creates a process domain, dom0 writes start_info, allocates the
xenstore and console event channels in the guest (alloc_unbound, remote
dom0) and binds them, writes libxl's xenstore entries, introduces the domain
to xenstored, attaches the console backend, and starts the guest's process
with its own channel socket. An x86 kernel goes to the domain builder.
When a domain shuts down, its on_poweroff / on_reboot / on_crash action runs.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import uuid as uuidlib
from dataclasses import dataclass, field

from abi.errno import ENOSYS
from abi.sched import SHUTDOWN_NAMES
from abi.xen import start_info
from dom0.builder import BuildError, build_pv_domain
from dom0.builder.image import MAX_KERNEL_FILE, MAX_RAMDISK_SIZE, read_image_file
from dom0.rundir import open_log
from dom0.toolstack import disks
from dom0.toolstack import xenstore_entries as entries
from dom0.toolstack.config import ConfigError, DomainConfig, parse_config
from dom0.toolstack.inspect import Inspector, InspectRequestError
from dom0.toolstack.network import NetworkError
from dom0.toy import attach_all as attach_toys
from dom0.xc import XenCtrl, XenError
from dom0.xenstored import XsError
from pvguest import kernel as layout
from pvguest.evtchn import EventChannelError
from pvguest.hypercall_channel import ChannelError
from pvguest.spawn import start_python_module

log = logging.getLogger("dom0.toolstack")


class ToolstackError(Exception):
    """A one-line answer to a toolstack request that cannot be carried out."""


@dataclass
class Guest:
    domid: int
    name: str
    config: DomainConfig
    uuid: str
    created: float
    process: subprocess.Popen | None = None
    local_ports: list[int] = field(default_factory=list)    # dom0's ends of its event channels
    shutdown_seen: str | None = None
    paused: bool = False
    kind: str = "python"        # or "x86": built by dom0.builder, run by the CPU engine


class Toolstack:
    def __init__(self, channel, xs, rings, consoles, evtchn, run_dir: str, backends=None, vifs=None):
        self.channel = channel
        self.vifs = vifs                # dom0.toolstack.network.Vifs: the vif devices
        self.backends = backends        # dom0.xenbus.XenbusBackends: split-driver devices
        self.cwd: str | None = None     # the user's directory for the create under way
        self.xs = xs
        self.rings = rings
        self.consoles = consoles
        self.evtchn = evtchn
        self.run_dir = run_dir
        self.guests: dict[int, Guest] = {}
        self.started = time.time()
        self.xc: XenCtrl | None = None      # made on first use (x86 guests)
        entries.write_dom0(xs)

    # --- lookups ---

    def resolve(self, dom) -> int:
        """A domain given by id or name (as xl accepts both)."""
        text = str(dom)
        if text.isdigit():
            domid = int(text)
            if domid == 0 or domid in self.guests:
                return domid
            raise ToolstackError(f"no domain with id {domid}")
        if text == "Domain-0":
            return 0
        for g in self.guests.values():
            if g.name == text:
                return g.domid
        raise ToolstackError(f"no domain named {text!r}")

    def _guest(self, dom) -> Guest:
        domid = self.resolve(dom)
        if domid == 0:
            raise ToolstackError("that is Domain-0")
        return self.guests[domid]

    # --- create ---

    def create(self, config: str, source: str = "<config>", cwd: str | None = None) -> dict:
        try:
            cfg = parse_config(config, source)
        except ConfigError as e:
            raise ToolstackError(str(e)) from None
        guest = self.create_parsed(cfg, cwd)
        return {"domid": guest.domid, "name": guest.name, "warnings": cfg.warnings,
                "tty": self.consoles.sessions[guest.domid].tty}

    def create_parsed(self, cfg: DomainConfig, cwd: str | None = None, paused: bool = False) -> Guest:
        """Create from a parsed config (xl create; XAPI's VM.start, which may leave it paused)."""
        self.cwd = cwd          # relative disk targets are the user's
        if any(g.name == cfg.name for g in self.guests.values()):
            raise ToolstackError(f"domain {cfg.name!r} already exists")
        guest = self._create_python(cfg) if cfg.python_guest else self._create_x86(cfg, paused=paused)
        if paused and cfg.python_guest:
            self.pause(guest.domid)
        return guest

    def _create_x86(self, cfg: DomainConfig, uuid: str | None = None, paused: bool = False) -> Guest:
        """xl create of a PV kernel: createdomain, the builder, the rings, unpause."""
        self._check_memory(cfg)
        try:
            kernel = read_image_file(cfg.kernel, cfg.where("kernel"), MAX_KERNEL_FILE)
            # a ramdisk is loaded into the guest's memory: it cannot be larger than that
            ramdisk = read_image_file(cfg.ramdisk, cfg.where("ramdisk"), min(MAX_RAMDISK_SIZE, cfg.memory << 20)) \
                if cfg.ramdisk else b""
        except BuildError as e:
            raise ToolstackError(str(e)) from None
        if self.xc is None:
            self.xc = XenCtrl(self.channel)
        xc = self.xc
        guest_uuid = uuid or cfg.uuid or str(uuidlib.uuid4())
        try:
            domid = xc.domain_create(max_vcpus=cfg.maxvcpus, handle=uuidlib.UUID(guest_uuid).bytes)
        except XenError as e:
            raise ToolstackError(f"the hypervisor refused to create {cfg.name!r}: {e}") from None
        guest = Guest(domid, cfg.name, cfg, guest_uuid, time.time(), kind="x86")
        self.guests[domid] = guest
        try:
            store_port, store_local = self._bind(guest)
            console_port, console_local = self._bind(guest)
            built = build_pv_domain(xc, domid, kernel, cfg.memory, ramdisk=ramdisk, cmdline=cfg.cmdline,
                                    store_evtchn=store_port, console_evtchn=console_port)
            lay = built.layout
            store_page, console_page = self.channel.map_foreign(domid, [lay.xenstore_pfn, lay.console_pfn])
            self._connect(guest, store_page, built.p2m[lay.xenstore_pfn], store_port, store_local,
                          console_page, built.p2m[lay.console_pfn], console_port, console_local)
            if paused:
                guest.paused = True
            else:
                xc.domain_unpause(domid)
        except (BuildError, XenError, ChannelError, EventChannelError) as e:
            self.destroy(domid)
            raise ToolstackError(f"building {cfg.name!r} from {cfg.kernel} failed: {e}") from None
        except Exception as e:
            log.exception("building %s failed", cfg.name)
            self.destroy(domid)
            raise ToolstackError(f"building {cfg.name!r} failed: {e}") from None
        return guest

    def _check_memory(self, cfg: DomainConfig) -> None:
        """Refuse, before anything is built, a guest bigger than the hypervisor's free memory: the
        answer Xen's populate_physmap would give at the end (ENOMEM), without dom0 first making
        a page list of that size."""
        free_pages = self.channel.domain_info(0)["host"]["free_pages"]
        if cfg.memory * 256 > free_pages:
            raise ToolstackError(f"{cfg.where('memory')}: cannot allocate {cfg.memory} MiB, the hypervisor "
                                 f"has {free_pages // 256} MiB free (-ENOMEM)")

    def _create_python(self, cfg: DomainConfig, uuid: str | None = None) -> Guest:
        nr_pages = cfg.memory * 256
        if nr_pages < layout.MIN_PAGES:
            raise ToolstackError(f"memory {cfg.memory} MiB is too small")
        self._check_memory(cfg)
        try:
            domid = self.channel.create_domain(nr_pages, cfg.vcpus)
        except ChannelError as e:
            raise ToolstackError(f"the hypervisor refused to create {cfg.name!r}: error {e.errno}") from None
        guest = Guest(domid, cfg.name, cfg, uuid or cfg.uuid or str(uuidlib.uuid4()), time.time())
        self.guests[domid] = guest
        try:
            self._prepare_python(guest)
        except Exception as e:
            log.exception("creating %s failed", cfg.name)
            self.destroy(domid)
            raise ToolstackError(f"creating {cfg.name!r} failed: {e}") from None
        return guest

    def _bind(self, guest: Guest) -> tuple[int, int]:
        """An event channel for a ring: (guest's port, dom0's port); (0, 0) without event channels."""
        try:
            remote = self.evtchn.alloc_unbound(remote_dom=0, dom=guest.domid)
            local = self.evtchn.bind_interdomain(guest.domid, remote)
        except EventChannelError as e:
            if e.rc == -ENOSYS:
                return 0, 0     # no event channels in this hypervisor: both ends poll
            raise
        guest.local_ports.append(local)
        return remote, local

    def _notifier(self, local_port: int):
        if not local_port:
            return lambda: None
        return lambda: self._send(local_port)

    def _send(self, port: int) -> None:
        try:
            self.evtchn.send(port)
        except EventChannelError as e:
            log.warning("notifying port %d failed: %s", port, e)

    def _prepare_python(self, guest: Guest) -> None:
        cfg, domid = guest.config, guest.domid
        start_page, store_page, console_page = self.channel.map_foreign(
            domid, [layout.START_INFO_PFN, layout.XENSTORE_PFN, layout.CONSOLE_PFN])
        store_port, store_local = self._bind(guest)
        console_port, console_local = self._bind(guest)
        info = start_info.build({
            "magic": b"xen-3.0-x86_64".ljust(32, b"\0"), "nr_pages": cfg.memory * 256,
            "shared_info": 0, "flags": 0,
            "store_mfn": layout.XENSTORE_PFN, "store_evtchn": store_port,
            "console": {"domU": {"mfn": layout.CONSOLE_PFN, "evtchn": console_port}},
            "pt_base": 0, "nr_pt_frames": 0, "mfn_list": 0, "mod_start": 0, "mod_len": 0,
            "cmd_line": cfg.cmdline.encode().ljust(1024, b"\0"), "first_p2m_pfn": 0,
            "nr_p2m_frames": 0,
        })
        start_page[:len(info)] = info
        self._connect(guest, store_page, layout.XENSTORE_PFN, store_port, store_local,
                      console_page, layout.CONSOLE_PFN, console_port, console_local)
        guest.process = self._spawn(guest)

    def _connect(self, guest: Guest, store_page, store_ref: int, store_port: int, store_local: int,
                 console_page, console_ref: int, console_port: int, console_local: int) -> None:
        """libxl's entries, xenstored's introduction and the console backend, for any kind of guest."""
        cfg, domid = guest.config, guest.domid
        entries.write_domain(self.xs, entries.DomainEntries(
            domid=domid, name=cfg.name, uuid=guest.uuid, memory_kb=cfg.memory * 1024,
            maxmem_kb=cfg.maxmem * 1024, vcpus=cfg.vcpus, maxvcpus=cfg.maxvcpus,
            kernel=cfg.kernel, cmdline=cfg.cmdline, store_ring_ref=store_ref,
            store_port=store_port, console_ring_ref=console_ref, console_port=console_port,
            start_time=guest.created, vm_data=cfg.vm_data))
        self.rings.introduce(domid, store_page, self._notifier(store_local), gfn=store_ref, port=store_port)
        session = self.consoles.add_domain(domid, cfg.name, console_page, self._notifier(console_local))
        entries.write_console_tty(self.xs, domid, session.tty)
        if cfg.disks and self.backends is not None:
            try:
                disks.attach_all(self.xs, self.backends, domid, cfg.disks, self.cwd)
            except disks.DiskError as e:
                raise ToolstackError(str(e)) from None
        if cfg.vifs and self.vifs is not None:
            try:
                self.vifs.create_all(domid, cfg.name, cfg.vifs)
            except NetworkError as e:
                raise ToolstackError(str(e)) from None
        if cfg.toys and self.backends is not None:
            try:
                attach_toys(self.xs, self.backends, domid, cfg.toys)
            except ValueError as e:
                raise ToolstackError(str(e)) from None

    def _spawn(self, guest: Guest) -> subprocess.Popen:
        module = guest.config.python_guest
        assert module is not None           # only Python guests are spawned (create() chose by it)
        sock = self.channel.connect_domain(guest.domid)
        env = dict(os.environ, PVHYP_CHANNEL_FD=str(sock.fileno()))
        stderr = open_log(os.path.join(self.consoles.log_dir, f"guest-{guest.name}.stderr"))
        try:
            return start_python_module(
                "pvguest.run", [module], pass_fds=[sock.fileno()], env=env, stdin=subprocess.DEVNULL,
                stdout=stderr, stderr=stderr, start_new_session=True)
        finally:
            sock.close()
            os.close(stderr)

    # --- destroy and friends ---

    def destroy(self, dom) -> dict:
        domid = dom if isinstance(dom, int) else self.resolve(dom)
        if domid == 0:
            raise ToolstackError("Domain-0 cannot be destroyed")
        guest = self.guests.pop(domid, None)
        if guest is None:
            raise ToolstackError(f"no domain with id {domid}")
        if guest.process is not None and guest.process.poll() is None:
            guest.process.kill()
            guest.process.wait()
        if self.backends is not None:
            self.backends.destroy_domain(domid)     # unmaps its pages, flushes and closes its images
        try:
            self.rings.release(domid)
        except XsError:
            pass        # never introduced (creation failed before the rings were up)
        self.consoles.remove_domain(domid)
        for port in guest.local_ports:
            try:
                self.evtchn.close(port)
            except EventChannelError:
                pass
        entries.remove_domain(self.xs, domid, guest.uuid)
        try:
            if guest.kind == "x86" and self.xc is not None:
                self.xc.domain_destroy(domid)
            else:
                self.channel.destroy_domain(domid)
        except Exception as e:       # already gone, or refused: nothing left for dom0 to undo
            log.warning("destroying d%d: %s", domid, e)
        return {"domid": domid, "name": guest.name}

    def destroy_all(self) -> None:
        for domid in list(self.guests):
            self.destroy(domid)

    def shutdown(self, dom, reboot: bool = False) -> dict:
        guest = self._guest(dom)
        # The PV protocol: the guest's xenbus watcher sees control/shutdown and acts.
        self.xs.write(f"{entries.domain_path(guest.domid)}/control/shutdown",
                      "reboot" if reboot else "poweroff")
        return {"domid": guest.domid, "name": guest.name}

    def reboot(self, dom) -> dict:
        return self.shutdown(dom, reboot=True)

    def pause(self, dom) -> dict:
        guest = self._guest(dom)
        if guest.kind == "x86":
            xc = self.xc
            assert xc is not None           # made when the x86 guest was created
            self._xc_call("pause", lambda: xc.domain_pause(guest.domid))
        elif guest.process is not None and guest.process.poll() is None:
            os.kill(guest.process.pid, signal.SIGSTOP)
        guest.paused = True
        return {"domid": guest.domid}

    def unpause(self, dom) -> dict:
        guest = self._guest(dom)
        if guest.kind == "x86":
            xc = self.xc
            assert xc is not None           # made when the x86 guest was created
            self._xc_call("unpause", lambda: xc.domain_unpause(guest.domid))
        elif guest.process is not None and guest.process.poll() is None:
            os.kill(guest.process.pid, signal.SIGCONT)
        guest.paused = False
        return {"domid": guest.domid}

    def _xc_call(self, what: str, fn) -> None:
        try:
            fn()
        except Exception as e:
            raise ToolstackError(f"{what} failed: {e}") from None

    def console(self, dom) -> dict:
        domid = self.resolve(dom)
        session = self.consoles.sessions.get(domid)
        if session is None:
            raise ToolstackError(f"domain {dom} has no PV console")
        return {"domid": domid, "tty": session.tty, "log": session.log_path}

    # --- devices (xl network-attach/-detach/-list, block-attach/-detach/-list) ---

    def _network(self, call):
        if self.vifs is None:
            raise ToolstackError("this dom0 runs no network backend")
        try:
            return call(self.vifs)
        except NetworkError as e:
            raise ToolstackError(str(e)) from None

    def network_attach(self, dom, spec: str) -> dict:
        guest = self._guest(dom)
        return {"domid": guest.domid, **self._network(lambda v: v.attach(guest.domid, guest.name, spec))}

    def network_detach(self, dom, which: str) -> dict:
        guest = self._guest(dom)
        return {"domid": guest.domid, **self._network(lambda v: v.detach(guest.domid, str(which)))}

    def network_list(self, dom) -> dict:
        guest = self._guest(dom)
        return self._network(lambda v: v.list(guest.domid))

    def _backends(self):
        if self.backends is None:
            raise ToolstackError("this dom0 runs no device backends")
        return self.backends

    def block_attach(self, dom, spec: str, cwd: str | None = None) -> dict:
        guest = self._guest(dom)
        try:
            devid = disks.attach_spec(self.xs, self._backends(), guest.domid, spec, cwd)
        except disks.DiskError as e:
            raise ToolstackError(str(e)) from None
        return {"domid": guest.domid, "devid": devid}

    def block_detach(self, dom, vdev: str, force: bool = False) -> dict:
        guest = self._guest(dom)
        try:
            devid = disks.detach(self._backends(), guest.domid, vdev, force)
        except disks.DiskError as e:
            raise ToolstackError(str(e)) from None
        return {"domid": guest.domid, "devid": devid}

    def block_list(self, dom) -> dict:
        guest = self._guest(dom)
        return {"domid": guest.domid, "disks": disks.listing(self._backends(), guest.domid)}

    # --- reports ---

    def _state(self, info: dict, guest: Guest | None) -> str:
        # xl list's six columns: running, blocked, paused, shutdown, crashed, dying
        alive = (guest is None or guest.kind == "x86"
                 or (guest.process is not None and guest.process.poll() is None))
        running = alive and not info["shutdown"] and not info["dying"]
        flags = ["r" if running and not info["blocked"] else "-",
                 "b" if info["blocked"] else "-",
                 "p" if info["paused"] or (guest is not None and guest.paused) else "-",
                 "s" if info["shutdown"] and info["shutdown_reason"] != 3 else "-",
                 "c" if info["shutdown"] and info["shutdown_reason"] == 3 else "-",
                 "d" if info["dying"] else "-"]
        return "".join(flags)

    def _time(self, info: dict, guest: Guest | None) -> float:
        # xl shows CPU time; an x86 domain has it (runstate), a process domain's "CPU" is an
        # OS process, so its time alive stands in
        if info.get("cpu_time_ns") is not None:
            return round(info["cpu_time_ns"] / 1e9, 1)
        return round(time.time() - (guest.created if guest else self.started), 1)

    def list(self) -> dict:
        rows = []
        for info in self.channel.domain_info()["domains"]:
            guest = self.guests.get(info["domid"])
            if info["domid"] != 0 and guest is None:
                continue    # not ours (a test's, or being torn down)
            rows.append({"name": guest.name if guest else "Domain-0", "domid": info["domid"],
                         "mem": info["tot_pages"] * 4 // 1024, "vcpus": info["online_vcpus"],
                         "state": self._state(info, guest),
                         "time": self._time(info, guest)})
        return {"domains": rows}

    def info(self) -> dict:
        host = self.channel.domain_info()["host"]
        return {"host": os.uname().nodename, "release": os.uname().release,
                "xen_major": 4, "xen_minor": 17, "xen_extra": "-pvhyp",
                "total_memory": host["total_pages"] * 4 // 1024,
                "free_memory": host["free_pages"] * 4 // 1024,
                "nr_domains": host["nr_domains"], "xen_caps": "xen-3.0-x86_64",
                "toolstack": "pvhyp dom0", "uptime": round(time.time() - self.started, 1)}

    def dmesg(self) -> dict:
        """Every domain's console_io output, as Xen's console ring shows it: (dN) per line."""
        lines = []
        for info in self.channel.domain_info()["domains"]:
            domid = info["domid"]
            data, _ = self.channel.readconsole(domid, 0)
            prefix = "" if domid == 0 else f"(d{domid}) "
            lines += [prefix + line for line in data.decode(errors="replace").splitlines()]
        return {"text": "\n".join(lines) + ("\n" if lines else "")}

    def vcpu_list(self, dom=None) -> dict:
        rows = []
        wanted = None if dom is None else self.resolve(dom)
        for info in self.channel.domain_info()["domains"]:
            guest = self.guests.get(info["domid"])
            if (info["domid"] != 0 and guest is None) or (wanted is not None and info["domid"] != wanted):
                continue
            for vcpu in range(info["vcpus"]):
                rows.append({"name": guest.name if guest else "Domain-0", "domid": info["domid"],
                             "vcpu": vcpu, "state": "b" if info["blocked"] else "r",
                             "online": vcpu < info["online_vcpus"]})
        return {"vcpus": rows}

    def uptime(self) -> dict:
        now = time.time()
        rows = [{"name": "Domain-0", "domid": 0, "uptime": round(now - self.started, 1)}]
        rows += [{"name": g.name, "domid": g.domid, "uptime": round(now - g.created, 1)}
                 for g in sorted(self.guests.values(), key=lambda g: g.domid)]
        return {"domains": rows}

    def domid(self, name) -> dict:
        return {"domid": self.resolve(name)}

    def inspect(self, dom, view: str, arg: str | None = None, vcpu: int = 0, verbose: bool = False) -> dict:
        """`pvhyp inspect DOM --VIEW`: one live view (dom0/toolstack/inspect.py)."""
        domid = self.resolve(dom)
        inspector = Inspector(self.channel, self.rings.engine, self.rings, self.backends, self.consoles)
        try:
            data = inspector.inspect(domid, view, arg, vcpu, verbose)
        except InspectRequestError as e:
            raise ToolstackError(str(e)) from None
        name = "Domain-0" if domid == 0 else self.guests[domid].name
        return {"domid": domid, "name": name, "view": view, "data": data}

    def domname(self, domid) -> dict:
        domid = self.resolve(domid)
        return {"name": "Domain-0" if domid == 0 else self.guests[domid].name}

    # --- watching domains (xl's domain-death loop) ---

    def periodic(self) -> None:
        if not self.guests:
            return
        states = {i["domid"]: i for i in self.channel.domain_info()["domains"]}
        for guest in list(self.guests.values()):
            info = states.get(guest.domid)
            returncode = guest.process.poll() if guest.process is not None else None
            exited = returncode is not None
            reason = None
            if info is not None and info["shutdown"]:
                reason = SHUTDOWN_NAMES.get(info["shutdown_reason"], "crash")
                if exited and returncode == 0 and reason == "crash":
                    reason = "poweroff"     # the process halted cleanly without SCHEDOP_shutdown
            elif exited:
                reason = "poweroff" if returncode == 0 else "crash"
            if reason is None or guest.shutdown_seen == reason:
                continue
            guest.shutdown_seen = reason
            self._on_shutdown(guest, reason)

    def _on_shutdown(self, guest: Guest, reason: str) -> None:
        cfg = guest.config
        action = {"poweroff": cfg.on_poweroff, "reboot": cfg.on_reboot}.get(reason, cfg.on_crash)
        log.info("domain %s (d%d) shut down: %s; action %s", guest.name, guest.domid, reason, action)
        session = self.consoles.sessions.get(guest.domid)
        if session is not None:
            session.service()
            session.log.note(f"[pvhyp: {guest.name} shut down ({reason}), action {action}]\n")
        if action in ("destroy", "coredump-destroy"):
            self.destroy(guest.domid)
        elif action in ("restart", "rename-restart", "coredump-restart", "soft-reset"):
            self.destroy(guest.domid)
            try:
                if cfg.python_guest:
                    self._create_python(cfg, uuid=guest.uuid)
                else:
                    self._create_x86(cfg, uuid=guest.uuid)
            except ToolstackError as e:
                log.error("restarting %s failed: %s", guest.name, e)
        # preserve: leave it for `xl destroy`

    def commands(self) -> dict:
        return {"create": self.create, "destroy": self.destroy, "shutdown": self.shutdown,
                "reboot": self.reboot, "pause": self.pause, "unpause": self.unpause,
                "console": self.console, "list": self.list, "info": self.info,
                "dmesg": self.dmesg, "vcpu-list": self.vcpu_list, "uptime": self.uptime,
                "domid": self.domid, "domname": self.domname, "block-attach": self.block_attach,
                "block-detach": self.block_detach, "block-list": self.block_list,
                "network-attach": self.network_attach, "network-detach": self.network_detach,
                "network-list": self.network_list, "inspect": self.inspect}
