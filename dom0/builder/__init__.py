"""The domain builder: turns a PV kernel image into a runnable domain.

Modelled on libxenguest's xc_dom_* (the same steps, in the same order, under
the same names where a reader wants to hold the two side by side):
  image.py     parse: bzImage/compressed unwrapping, ELF, Xen ELF notes (libelf)
  layout.py    xc_dom_build_image + xc_dom_x86's 64-bit PV layout, as pure arithmetic
  x86_64.py    xc_dom_boot_image: populate, load, P2M, start_info, page tables,
               hypercall page, pin, shared_info, vCPU context; all through dom0/xc.py

Everything the builder does to a guest goes through a hypercall channel, so
the toolstack in the dom0 process and the tests use this very code.
"""
from dom0.builder.errors import BuildError
from dom0.builder.image import KernelImage, parse_kernel
from dom0.builder.layout import Layout, plan_layout
from dom0.builder.x86_64 import BuildResult, build_pv_domain

__all__ = ["BuildError", "KernelImage", "parse_kernel", "Layout", "plan_layout",
           "BuildResult", "build_pv_domain"]
