"""The main job `pvhyp` runs with no arguments (README's first Quick start command).

Debian 12's stock kernel as a PV guest, on the software CPU: the image is
built from Debian's packages on first use (`pvhyp image debian`), then it
boots as `pvhyp run` would boot examples/debian.cfg, console in the
foreground.  On a terminal the busybox shell is yours (`poweroff -f` ends
it; Ctrl-] destroys it from outside).  Otherwise the lines on stdin are
typed into the shell once it is up, then `poweroff -f`: `bin/pvhyp <
/dev/null` boots, shows the shell and ends.
"""
from __future__ import annotations

import sys

GUEST_MEMORY_MB = 256


def run(args) -> int:
    from dom0.images import debian
    from pvhyp.cli.bench_boot import MARKER, guest_config
    from pvhyp.cli.errors import UserError
    from pvhyp.cli.run_cmd import run_in_foreground
    try:
        image = debian.find_or_build()      # builds it when missing
    except debian.ImageError as e:
        raise UserError(str(e)) from None   # why it cannot, in one line
    interactive = sys.stdin is not None and not sys.stdin.closed and sys.stdin.isatty()
    print(f"pvhyp: booting Debian's {image.get('release', 'kernel')} as a PV guest on the software CPU "
          f"(some ten seconds to its shell){'; `poweroff -f` in its shell ends it' if interactive else ''}",
          file=sys.stderr, flush=True)
    # On a terminal keys go to the guest as typed; otherwise stdin waits for the shell, then poweroff.
    return run_in_foreground(guest_config(image, GUEST_MEMORY_MB), "<main job>",
                             input_after=None if interactive else MARKER,
                             input_at_end=b"" if interactive else b"poweroff -f\n")
