"""Random arguments and random argument buffers: every call answers with an int, never raises.

Blocking calls (SCHEDOP_block/poll) are kept from sleeping by an event that
is always pending for delivery, which is also what Xen checks first.
"""
from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from abi.xen import HYPERCALL_NUMBERS
from pvhyp.hypercall_table import HypercallContext
from tests.pvvcpu.pvvcpu_kit import DATA_VA, NR_DATA_PAGES

MINE = ("set_trap_table", "set_gdt", "stack_switch", "set_callbacks", "fpu_taskswitch", "sched_op_compat",
        "set_debugreg", "get_debugreg", "update_descriptor", "set_timer_op", "xen_version", "vcpu_op",
        "set_segment_base", "sched_op", "callback_op", "physdev_op")

interesting = st.one_of(
    st.integers(0, 16),
    st.sampled_from([DATA_VA, DATA_VA + 4096 * (NR_DATA_PAGES - 1) + 4090, 0xFFFF_8000_0000_0000,
                     0x0000_8000_0000_0000, (1 << 64) - 1, 1 << 63, 0xFFFF_FFFF, 1 << 32]),
    st.integers(0, (1 << 64) - 1),
    st.integers(DATA_VA, DATA_VA + NR_DATA_PAGES * 4096 - 1),
)


def keep_an_event_pending(vcpu):
    maddr = vcpu.vcpu_info_maddr
    buf = vcpu.domain.hv.memory.buf
    buf[maddr], buf[maddr + 1] = 1, 0


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(MINE), args=st.lists(interesting, min_size=6, max_size=6),
       page=st.binary(min_size=64, max_size=64), vcpu_id=st.integers(0, 1))
def test_hostile_arguments_get_an_errno_not_an_exception(guest, name, args, page, vcpu_id):
    for i in range(NR_DATA_PAGES):
        guest.write(i, page * 64)
    vcpu = guest.domain.vcpus[vcpu_id]
    keep_an_event_pending(vcpu)
    result = guest.hv.hypercalls.dispatch(HypercallContext(vcpu), HYPERCALL_NUMBERS[name], args)
    assert isinstance(result, int)
    assert -4096 < result < 1 << 64
