"""The real XenAPI SDK (PyPI `XenAPI`) against `pvhyp up`, with an XTF kernel as the VM.

The flow a XenCenter-like client runs: log in, list VMs and templates, clone a template,
start it (paused, then unpause), follow its power state with event.from, read its console
location, shut it down, destroy it, log out.
"""
from __future__ import annotations

import time

import pytest

XenAPI = pytest.importorskip("XenAPI")


def event_from(x, classes, token, timeout):
    return getattr(x.event, "from")(classes, token, timeout)     # `from` is a Python keyword


def power_states_until(x, vm, token, wanted, timeout=60.0):
    """Follow vm's power state by event.from until `wanted`; the states seen in order."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = event_from(x, ["vm"], token, 5.0)
        token = reply["token"]
        seen += [e["snapshot"]["power_state"] for e in reply["events"] if e["ref"] == vm]
        if wanted in seen:
            return seen, token
    raise AssertionError(f"{vm}: never {wanted} (saw {seen})")


def test_sdk_lifecycle(xapi_host):
    session = xapi_host.session()
    x = session.xenapi
    records = x.VM.get_all_records()
    dom0 = [r for r in records.values() if r["is_control_domain"]]
    assert [r["name_label"] for r in dom0] == ["Domain-0"] and dom0[0]["power_state"] == "Running"
    templates = {r["name_label"]: ref for ref, r in records.items() if r["is_a_template"]}
    assert "xtf-example" in templates
    assert all(ref.startswith("OpaqueRef:") for ref in records)
    assert isinstance(dom0[0]["memory_static_max"], str)    # int64 as a string in XML-RPC

    host = x.host.get_all()[0]
    assert x.session.get_this_host(session.handle) == host
    assert (x.host.get_API_version_major(host), x.host.get_API_version_minor(host)) == ("2", "21")

    vm = x.VM.clone(templates["xtf-example"], "xtf-sdk")
    assert x.VM.get_is_a_template(vm) is False and x.VM.get_power_state(vm) == "Halted"
    assert x.VM.get_by_uuid(x.VM.get_uuid(vm)) == vm
    token = event_from(x, ["vm"], "", 0.0)["token"]

    x.VM.start(vm, True, False)                 # paused: the XTF test waits for us
    assert x.VM.get_power_state(vm) == "Paused"
    [console] = x.VM.get_consoles(vm)
    assert x.console.get_protocol(console) == "vt100"
    assert x.console.get_location(console) == f"{xapi_host.url}/console?ref={console}"
    sources = {d["name_label"]: d["value"] for d in x.VM.get_data_sources(vm)}
    assert {"memory", "memory_target", "vcpus"} <= set(sources)
    assert float(x.VM.query_data_source(vm, "memory")) == 16 << 20
    with pytest.raises(XenAPI.Failure) as failure:
        x.VM.start(vm, False, False)
    assert failure.value.details == ["VM_BAD_POWER_STATE", vm, "halted", "paused"]

    x.VM.unpause(vm)                            # it runs its test and powers off: destroyed, Halted
    seen, token = power_states_until(x, vm, token, "Halted")
    assert seen[0] in ("Paused", "Running") and seen[-1] == "Halted"
    assert "Test result: SUCCESS" in xapi_host.host.console_log("xtf-sdk")

    x.VM.start(vm, True, False)                 # and once more, shut down by us
    x.VM.hard_shutdown(vm)
    assert x.VM.get_power_state(vm) == "Halted"
    with pytest.raises(XenAPI.Failure) as failure:
        x.VM.hard_shutdown(vm)
    assert failure.value.details[0] == "VM_BAD_POWER_STATE"

    x.VM.destroy(vm)
    with pytest.raises(XenAPI.Failure) as failure:
        x.VM.get_record(vm)
    assert failure.value.details == ["HANDLE_INVALID", "VM", vm]
    with pytest.raises(XenAPI.Failure) as failure:
        x.VM.no_such_call(vm)
    assert failure.value.details == ["MESSAGE_METHOD_UNKNOWN", "VM.no_such_call"]
    session.xenapi.session.logout()


def test_async_call_gives_a_task(xapi_host):
    session = xapi_host.session()
    x = session.xenapi
    template = x.VM.get_by_name_label("xtf-example")[0]
    task = x.Async.VM.clone(template, "xtf-async")
    deadline = time.monotonic() + 30
    while x.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert x.task.get_status(task) == "success"
    vm = x.task.get_result(task).removeprefix("<value>").removesuffix("</value>")
    assert x.VM.get_name_label(vm) == "xtf-async"
    x.VM.destroy(vm)
    x.task.destroy(task)
    session.xenapi.session.logout()


def test_event_register_next(xapi_host):
    session = xapi_host.session()
    x = session.xenapi
    x.event.register(["vm"])
    vm = x.VM.clone(x.VM.get_by_name_label("xtf-example")[0], "xtf-next")
    events = x.event.next()
    assert any(e["ref"] == vm and e["operation"] == "add" for e in events)
    assert x.event.inject("VM", vm)
    x.VM.destroy(vm)
    x.event.unregister(["vm"])
    session.xenapi.session.logout()
