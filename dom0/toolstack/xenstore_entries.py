"""The xenstore entries libxl writes for a domain (libxl__domain_make, libxl__build_post).

/local/domain/N is the domain's home: readable by it, owned by dom0; the
few nodes a guest must write (control/shutdown acknowledgement, data,
device, ...) are owned by the guest. /vm/UUID holds the VM-level facts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Nodes libxl creates writable by the guest.
GUEST_WRITABLE = ("device", "data", "drivers", "feature", "attr", "error",
                  "control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                  "control/feature-suspend", "control/sysrq")
CONSOLE_LIMIT = 1048576


@dataclass
class DomainEntries:
    domid: int
    name: str
    uuid: str
    memory_kb: int
    maxmem_kb: int
    vcpus: int
    maxvcpus: int
    kernel: str
    cmdline: str
    store_ring_ref: int
    store_port: int
    console_ring_ref: int
    console_port: int
    start_time: float
    vm_data: dict[str, str] = field(default_factory=dict)     # the config's vm_data = [ "KEY=VALUE" ]


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def write_domain(xs, e: DomainEntries) -> None:
    dom, vm = domain_path(e.domid), f"/vm/{e.uuid}"
    roperm = ["n0", f"r{e.domid}"]
    rwperm = [f"n{e.domid}"]
    with xs.transaction() as t:
        for path in (dom, vm):
            t.mkdir(path)
            t.set_perms(path, roperm)
        t.write(f"{vm}/uuid", e.uuid)
        t.write(f"{vm}/name", e.name)
        t.write(f"{vm}/start_time", f"{e.start_time:.2f}")
        t.write(f"{vm}/image/ostype", "linux")
        t.write(f"{vm}/image/kernel", e.kernel)
        t.write(f"{vm}/image/cmdline", e.cmdline)
        t.write(f"{dom}/vm", vm)
        t.write(f"{dom}/name", e.name)
        t.write(f"{dom}/domid", str(e.domid))
        # The guest's identity where XenServer's guest agents look (vm-data/, readable by
        # the guest); the Debian template's pvhyp-identity unit makes it the host name.
        t.write(f"{dom}/vm-data/hostname", e.name)
        for key, value in e.vm_data.items():
            t.write(f"{dom}/vm-data/{key}", value)
        for path in GUEST_WRITABLE:
            t.mkdir(f"{dom}/{path}")
            t.set_perms(f"{dom}/{path}", rwperm)
        t.write(f"{dom}/memory/static-max", str(e.maxmem_kb))
        t.write(f"{dom}/memory/target", str(e.memory_kb))
        t.write(f"{dom}/memory/videoram", "-1")
        for cpu in range(e.maxvcpus):
            t.write(f"{dom}/cpu/{cpu}/availability", "online" if cpu < e.vcpus else "offline")
        t.write(f"{dom}/store/ring-ref", str(e.store_ring_ref))
        t.write(f"{dom}/store/port", str(e.store_port))
        t.write(f"{dom}/console/ring-ref", str(e.console_ring_ref))
        t.write(f"{dom}/console/port", str(e.console_port))
        t.write(f"{dom}/console/limit", str(CONSOLE_LIMIT))
        t.write(f"{dom}/console/type", "xenconsoled")
        t.write(f"{dom}/console/output", "pty")


def write_console_tty(xs, domid: int, tty: str) -> None:
    xs.write(f"{domain_path(domid)}/console/tty", tty)


def write_dom0(xs) -> None:
    """What xencommons leaves for dom0: its name and id."""
    xs.mkdir("/local/domain/0")
    xs.write("/local/domain/0/name", "Domain-0")
    xs.write("/local/domain/0/domid", "0")
    xs.write("/vm", "")
    xs.write("/local/domain/0/memory/target", "0")


def remove_domain(xs, domid: int, uuid: str) -> None:
    for path in (domain_path(domid), f"/vm/{uuid}"):
        try:
            xs.rm(path)
        except Exception:
            pass        # already gone
