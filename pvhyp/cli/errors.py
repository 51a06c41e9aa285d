"""The CLI's one error type, apart from pvhyp/cli/__init__.py so that the
subcommands the package imports never import the package back."""
from __future__ import annotations


class UserError(Exception):
    """Bad user input (config, image, command): printed as one line, exit 2."""
