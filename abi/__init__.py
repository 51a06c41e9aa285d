"""Xen 4.17's public ABI for x86-64 PV guests, in construct.

One module per public header, holding the header's shape so the two can be
read side by side: ``abi.xen`` is xen/include/public/xen.h, ``abi.io.blkif``
is io/blkif.h, and so on (``abi.registry.MODULES`` lists them all, with the
architectural modules that have no header: ``x86_pte``, ``x86_regs`` and
``e820``).

Conventions every module follows:

* constants are module-level ints under Xen's exact names (the double
  underscore ``__HYPERVISOR_*`` names too; use ``xen.HYPERCALL_NUMBERS`` from
  inside a class body, where Python would mangle them);
* structs are construct ``Struct`` objects named as the C struct tag, with
  the C field names, little-endian, every alignment gap an explicit
  ``Padding``; C unions are ``abi.cdefs.CUnion`` (parse shows every member,
  build takes one); an op's semantics are the struct's ``.docs`` and its
  fields' IN/OUT notes (``pvhyp abi NAME`` shows them);
* a module reaches another module's definitions through that module
  (``xen.domid_t``), so each object is defined exactly once.

Around the definitions:

* ``abi.registry``: every struct and constant with its header; the header
  cross-check (tests/abi/test_headers.py, gcc against /usr/include/xen),
  ``pvhyp abi``, the strategies and the fuzzer all iterate over it;
* ``abi.fast.codec(struct)``: a generated struct.Struct-based parse/build for
  hot paths, checked against construct;
* ``abi.strategies.strategy_for(struct)``: hypothesis strategies derived
  from the definitions.

Nothing here imports the rest of pvhyp; only the standard library and
construct (and hypothesis, in ``abi.strategies`` alone).
"""
