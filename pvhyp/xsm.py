"""The access-control policy: Xen's XSM hooks with the default (dummy) module, xsm/dummy.h.

Every check Xen makes through XSM asks the hypervisor's policy, `hv.xsm`,
through one hook named as Xen's (`evtchn_unbound`, `grant_setup`, `mmu_update`,
`domctl`, ...). A hook takes the calling domain first, then what the check
is about, and returns 0 (allowed) or -EPERM, Xen's convention; the caller
turns a refusal into what Xen reports at that place (-EPERM, a grant op's
GNTST_permission_denied, a reservation op's "no extent done", -EBUSY for a
PTE). No other module decides them, the channels' privcmd-like ops included
(pvhyp/channel.py, pvhyp/channel_server.py: foreign maps, the process-domain
lifecycle, domain info, the console text), each asking the hook of the Xen
operation it stands for. What Xen decides without XSM keeps asking the domain,
as Xen does: hardware-domain rules (SCHEDOP_pin_override, the M2P size, pIRQ
and event-channel limits, the allocation order, XENFEAT_dom0, unfiltered
console text, I/O and cache-flush rights).

`DummyPolicy` is the default of every Hypervisor; it is stateless, so one
instance serves them all. Another policy is installed on one hypervisor by
assigning `hv.xsm` (tests install one that refuses everything).
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from abi import errno as E
from abi.domctl import XEN_DOMCTL_getdomaininfo
from abi.version import (
    XENVER_capabilities,
    XENVER_changeset,
    XENVER_compile_info,
    XENVER_extraversion,
    XENVER_get_features,
    XENVER_guest_handle,
    XENVER_pagesize,
    XENVER_platform_parameters,
    XENVER_version,
)
from abi.xen import DOMID_IO, CONSOLEIO_write
from pvhyp.domctl import is_xenstore_domain

if TYPE_CHECKING:
    from pvhyp.domain import Domain


class Action(enum.IntEnum):
    """Xen's xsm_default_t: who the dummy module lets through."""
    HOOK = 0        # anyone
    DM_PRIV = 1     # the target's device model, or the privileged domain
    TARGET = 2      # the domain itself, its device model, or the privileged domain
    PRIV = 3        # the privileged (control) domain only
    XS_PRIV = 4     # the xenstore domain, a device model on its target, or the privileged domain


def xsm_default_action(action: Action, src: "Domain", target: "Domain | None") -> int:
    """Xen's xsm_default_action: 0 or -EPERM.

    Xen also lets a device model act on its target (d->target, set by
    XEN_DOMCTL_set_target for stub domains); pvhyp has no device-model
    domains, so DM_PRIV is PRIV here and TARGET is "itself or privileged".
    """
    if action == Action.HOOK:
        return 0
    if action == Action.TARGET and src is target:
        return 0
    if action == Action.XS_PRIV and is_xenstore_domain(src):
        return 0
    return 0 if src.is_privileged else -E.EPERM


# xen_version sub-ops every domain gets (Xen: the first ignore XSM altogether, the
# second are XSM_HOOK); the rest are for the privileged domain.
_XENVER_UNCHECKED = frozenset({XENVER_version, XENVER_platform_parameters, XENVER_get_features})
_XENVER_ANYONE = frozenset({XENVER_extraversion, XENVER_compile_info, XENVER_capabilities,
                            XENVER_changeset, XENVER_pagesize, XENVER_guest_handle})


class DummyPolicy:
    """Xen's dummy XSM module: each hook is xsm_default_action with dummy.h's action."""

    __slots__ = ()

    # --- toolstack and host -----------------------------------------------------------
    def domctl(self, src: "Domain", d: "Domain | None", cmd: int) -> int:
        # Xen's DM_PRIV domctls (ioport/memory mapping, pt IRQs) are not offered here.
        action = Action.XS_PRIV if cmd == XEN_DOMCTL_getdomaininfo else Action.PRIV
        return xsm_default_action(action, src, d)

    def getdomaininfo(self, src: "Domain", d: "Domain") -> int:
        """Per domain listed by XEN_SYSCTL_getdomaininfolist (the sysctl itself is PRIV)."""
        return xsm_default_action(Action.HOOK, src, d)

    def inspect_domain(self, src: "Domain", d: "Domain | None") -> int:
        """The channel's OP_INSPECT: a debugger's look at `d`'s page tables, frames, ports
        and grants (`pvhyp inspect`). Xen has no one op for it; the closest are domctls
        that read another domain's internals, XEN_DOMCTL_getpageframeinfo3 (frame types)
        and XEN_DOMCTL_gdbsx_guestmemio (a debugger's reads), which xsm_domctl's default
        makes XSM_PRIV: the privileged domain only."""
        return xsm_default_action(Action.PRIV, src, d)

    def sysctl(self, src: "Domain", cmd: int) -> int:
        return xsm_default_action(Action.PRIV, src, None)

    def readconsole(self, src: "Domain", clear: int) -> int:
        """XEN_SYSCTL_readconsole, asked after the sysctl hook (the socket channel's
        OP_READCONSOLE reads the domains' console_io text, Xen's console ring)."""
        return xsm_default_action(Action.HOOK, src, None)

    def console_io(self, src: "Domain", cmd: int) -> int:
        # CONSOLEIO_write for anyone, as Xen's CONFIG_VERBOSE_DEBUG build (XTF and early
        # kernels write there); pvhyp has no console domain (d->is_console).
        action = Action.HOOK if cmd == CONSOLEIO_write else Action.PRIV
        return xsm_default_action(action, src, None)

    def xen_version(self, src: "Domain", cmd: int) -> int:
        if cmd in _XENVER_UNCHECKED:
            return 0
        action = Action.HOOK if cmd in _XENVER_ANYONE else Action.PRIV
        return xsm_default_action(action, src, None)

    def schedop_shutdown(self, src: "Domain", d: "Domain") -> int:
        """SCHEDOP_remote_shutdown."""
        return xsm_default_action(Action.DM_PRIV, src, d)

    def physdev_resource(self, src: "Domain", cmd: int) -> int:
        """physdev_op's device and interrupt management (PCI, GSI, APIC, MSI, pIRQ maps).

        Xen guards them with several hooks (resource_plug_pci, resource_setup_gsi,
        apic, map_domain_pirq, ...), each PRIV or DM_PRIV, which are one rule here;
        pvhyp implements none of the ops, so one hook stands for them.
        """
        return xsm_default_action(Action.PRIV, src, None)

    # --- event channels ---------------------------------------------------------------
    def evtchn_unbound(self, src: "Domain", d: "Domain") -> int:
        return xsm_default_action(Action.TARGET, src, d)

    def evtchn_status(self, src: "Domain", d: "Domain") -> int:
        return xsm_default_action(Action.TARGET, src, d)

    def evtchn_reset(self, src: "Domain", d: "Domain") -> int:
        return xsm_default_action(Action.TARGET, src, d)

    # --- grant tables -----------------------------------------------------------------
    def grant_setup(self, src: "Domain", d: "Domain") -> int:
        """GNTTABOP_setup_table and get_status_frames."""
        return xsm_default_action(Action.TARGET, src, d)

    def grant_query_size(self, src: "Domain", d: "Domain") -> int:
        """GNTTABOP_query_size and get_version."""
        return xsm_default_action(Action.TARGET, src, d)

    # --- memory -----------------------------------------------------------------------
    def memory_adjust_reservation(self, src: "Domain", d: "Domain") -> int:
        """increase/decrease_reservation and populate_physmap."""
        return xsm_default_action(Action.TARGET, src, d)

    def memory_stat_reservation(self, src: "Domain", d: "Domain") -> int:
        """current/maximum_reservation and maximum_gpfn."""
        return xsm_default_action(Action.TARGET, src, d)

    def domain_memory_map(self, src: "Domain", d: "Domain") -> int:
        """XENMEM_set_memory_map."""
        return xsm_default_action(Action.TARGET, src, d)

    def machine_memory_map(self, src: "Domain") -> int:
        return xsm_default_action(Action.PRIV, src, None)

    def claim_pages(self, src: "Domain", d: "Domain") -> int:
        return xsm_default_action(Action.PRIV, src, d)

    # --- the PV MMU -------------------------------------------------------------------
    def mmu_update(self, src: "Domain", pt_owner: "Domain | None", pg_owner) -> int:
        """One mmu_update request: rights over the page owner (DOMID_IO's frames are
        anyone's), then over the page-table owner (None for MMU_MACHPHYS_UPDATE)."""
        rc = 0
        if pg_owner.domid != DOMID_IO:
            rc = xsm_default_action(Action.TARGET, src, pg_owner)
        if pt_owner is not None and not rc:
            rc = xsm_default_action(Action.TARGET, src, pt_owner)
        return rc

    def mmuext_op(self, src: "Domain", pg_owner) -> int:
        return xsm_default_action(Action.TARGET, src, pg_owner)

    def update_va_mapping(self, src: "Domain", pg_owner) -> int:
        """update_va_mapping(_otherdomain) installing a present entry."""
        return xsm_default_action(Action.TARGET, src, pg_owner)

    def map_gmfn_foreign(self, src: "Domain", t: "Domain | None") -> int:
        """Mapping `t`'s frames by its pfns (XENMAPSPACE_gmfn_foreign; the channels'
        privcmd-like map_foreign). It is asked before the domid is checked, so `t`
        is None for a domid that names no domain (an unprivileged caller gets
        -EPERM, never -ESRCH, as the channels always answered).

        Xen's rule is XSM_TARGET: a domain may also map its own frames this way.
        pvhyp keeps PRIV, what the channels have always allowed (issue 11 changes
        no behaviour): a process domain has its whole memory mapped from the
        start, so it never needs to map itself by pfn.
        """
        return xsm_default_action(Action.PRIV, src, t)

    def priv_mapping(self, pg_owner, real_owner: "Domain") -> int:
        """May `pg_owner` hand on the right to map a frame `real_owner` owns (get_page_from_l1e)?"""
        return xsm_default_action(Action.TARGET, pg_owner, real_owner)


DUMMY_POLICY = DummyPolicy()
