"""Make ``import abi`` find the package, not this directory.

pytest puts tests/ on sys.path (for tests/conftest.py).  Seen from there,
this directory, tests/abi, is a namespace-package portion called ``abi``, and
Python's path search settles for it before the editable install's finder is
asked: ``abi`` then becomes a namespace package whose submodules still load
(through that finder) but whose __path__ is this directory.  With the
repository root first on sys.path the real package wins.  pytest's
``pythonpath = ["."]`` setting would do the same for the whole suite.
"""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
