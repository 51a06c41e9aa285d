"""The main job `pvhyp` runs with no arguments (README's first Quick start command)."""
from __future__ import annotations


def run(args) -> int:
    # Until x86 guests boot, the main job is the ABI tour.
    from pvhyp.cli import abi_cmd
    print("pvhyp: Xen 4.17 public ABI, as pvhyp declares it (try `pvhyp abi start_info`)\n")
    return abi_cmd.tour()
