"""Starting a Python module of ours as a process of its own, with the working directory off its path.

`python -m MODULE` puts the current directory first on `sys.path`, ahead of
the standard library: a `tty.py` in the directory where root ran `pvhyp up`
would be imported into the hypervisor, dom0 or a guest. Every process of
ours (hostd, dom0, Python guests) is started here instead, with `-P` and
`PYTHONSAFEPATH=1` (Python 3.11: no implicit path entry, for this child and
any Python it starts) and a PYTHONPATH from which empty and relative entries
(the working directory again, by another name) are removed. The directory
that holds our own packages goes first, so a source checkout without an
install still finds them: it is where the running code came from already.

It lives in pvguest because every side starts processes of ours: the
hypervisor (hostd, dom0) and dom0 (Python guests) may both import pvguest.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

# The directory holding abi/, dom0/, pvguest/, pvhyp/ (a checkout, or site-packages).
CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_command(args: Sequence[str]) -> list[str]:
    """argv running this interpreter on `args` (["-m", MODULE, ...] or ["-c", CODE, ...]) with -P."""
    return [sys.executable, "-P", *args]


def python_module_command(module: str, args: Sequence[str] = ()) -> list[str]:
    """argv that runs `module` as __main__ in this interpreter, the working directory off sys.path."""
    return python_command(["-m", module, *args])


def python_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with PYTHONSAFEPATH set and PYTHONPATH holding absolute entries only."""
    env = dict(os.environ if base is None else base)
    env["PYTHONSAFEPATH"] = "1"
    kept = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(entry)]
    env["PYTHONPATH"] = os.pathsep.join([CODE_ROOT] + [e for e in kept if e != CODE_ROOT])
    return env


def start_python_module(module: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
                        **popen_kwargs: object) -> subprocess.Popen[bytes]:
    """Popen of `module` (see python_module_command); `env` defaults to ours, cleaned the same way."""
    return subprocess.Popen(python_module_command(module, args), env=python_env(env),
                            **popen_kwargs)  # type: ignore[call-overload]
