"""Example Python guests, run with `kernel = "python:pvguest.examples.NAME"` in an xl config."""

import json


def write_report(kernel, tag: str, report: dict) -> None:
    """A test guest's result: JSON at its xenstore home's data/report (where tests read it)
    and one `TAG: JSON` line on its console (for a person reading the log)."""
    home = kernel.xenbus.get_domain_path(kernel.domid)
    kernel.xenbus.write(f"{home}/data/report", json.dumps(report))
    kernel.console.write(f"{tag}: {json.dumps(report)}\n")
