"""`pvhyp fuzz`: the hypercall ABI fuzzer, with the hypervisor's invariants as its oracle.

A hostile unprivileged domain issues hypercalls straight into the dispatcher
(no CPU engine): argument structures are generated from the abi definitions
(`struct_leaves.leaves` walks any construct struct down to its integer fields), with
values drawn from pools of what the world holds (frames the attacker owns and
frames it does not, its ports, grant refs, domids, good and bad pointers) or
raw boundary values. Results feed the pools back (a port alloc_unbound wrote
becomes a port to send on), so chains such as bind-then-send or
pin-then-update-then-unpin are reached.

After every step the oracle (`oracle.py`) checks: no exception escaped a
handler, the result is one Xen could give, and the invariants of the PV MMU,
event channels and grant tables hold, and no other domain's memory changed.
Every failure is minimized to a replayable reproducer (a JSON list of
concrete steps), which `pvhyp fuzz --replay FILE` and the regression tests run.

Modules: struct_leaves (struct -> leaf fields), world (the domains under test),
ops (what a step can be), oracle, runner (the loop, stats, reproducers).
Each world's hypervisor comes from the composition root (`runner.make_hv`:
pvhyp.host.build_hypervisor, every handler, no CPU engine).
"""
