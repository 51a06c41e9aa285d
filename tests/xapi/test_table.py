"""The table of messages against hostile calls (hypothesis): XAPI errors with XAPI's parameters,
never a Python exception and never an INTERNAL_ERROR that is a bug of ours.

The model here stands on a toolstack with no domains (the class below: the few reads the
model makes of dom0's toolstack); the SDK test runs the same table over the real one.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dom0.toolstack.domains import ToolstackError
from dom0.xapi.errors import ApiError
from dom0.xapi.model import Api, Pending
from dom0.xapi.session import FAILURE_WINDOW, MAX_FAILURES, Sessions
from dom0.xapi.store import VmStore

TEMPLATE = '# xapi: template\nname = "tmpl"\nkernel = "/nonexistent/kernel"\nmemory = 16\n' \
           'disk = [ "format=raw, vdev=xvda, access=rw, target=disk.img" ]\nvif = [ "bridge=xenbr1" ]\n'


class NoDomains:
    """A toolstack that runs nothing: Domain-0 only; starting anything is refused."""

    class channel:
        @staticmethod
        def domain_info():
            return {"domains": [{"domid": 0, "tot_pages": 4096, "online_vcpus": 1, "paused": False}]}

    guests: dict = {}

    class consoles:
        sessions: dict = {}

    def info(self):
        return {"xen_major": 4, "xen_minor": 17, "xen_extra": "-pvhyp", "release": "6.1", "xen_caps": "xen-3.0-x86_64",
                "total_memory": 1024, "free_memory": 512}

    def create_parsed(self, cfg, cwd=None, paused=False):
        raise ToolstackError("this test's toolstack starts nothing")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    vm_dir = tmp_path_factory.mktemp("vms")
    (vm_dir / "tmpl.cfg").write_text(TEMPLATE)
    (vm_dir / "disk.img").write_bytes(b"\0" * 4096)
    creds = tmp_path_factory.mktemp("run") / "xapi-credentials"
    creds.write_text("root:secret\n")
    creds.chmod(0o600)
    return Api(NoDomains(), VmStore(str(vm_dir)), Sessions(str(creds)), lambda: "http://127.0.0.1:1")


def login(api) -> str:
    return api.call("session.login_with_password", ["root", "secret", "1.0", "test"])


def test_every_class_lists_and_reads(api):
    session = login(api)
    for cls in api.classes:
        records = api.call(f"{cls}.get_all_records", [session])
        assert api.call(f"{cls}.get_all", [session]) == list(records)
        for ref, record in records.items():
            assert ref.startswith("OpaqueRef:")
            assert api.call(f"{cls}.get_record", [session, ref]) == record
            assert api.call(f"{cls}.get_by_uuid", [session, record["uuid"]]) == ref
    vms = api.call("VM.get_all_records", [session])
    template = next(ref for ref, r in vms.items() if r["is_a_template"])
    [vbd] = vms[template]["VBDs"]
    assert api.call("VBD.get_VDI", [session, vbd]) in api.call("VDI.get_all", [session])
    [vif] = vms[template]["VIFs"]
    assert api.call("network.get_bridge", [session, api.call("VIF.get_network", [session, vif])]) == "xenbr1"


def test_login_takes_two_to_four_parameters(api):
    for params in (["root", "secret"], ["root", "secret", "1.0"], ["root", "secret", "1.0", "me"]):
        assert api.call("session.login_with_password", params).startswith("OpaqueRef:")
    with pytest.raises(ApiError) as failure:
        api.call("session.login_with_password", ["root"])
    assert failure.value.description == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "4", "1"]


def test_console_contract_with_the_web_app(api):
    session = login(api)
    assert api.pty_path("OpaqueRef:nothing") is None and api.pty_path(None) is None
    assert api.sessions.user_of(session) == "root" and api.sessions.user_of("OpaqueRef:forged") is None


def test_xapi_error_parameters(api):
    session = login(api)
    template = api.call("VM.get_by_name_label", [session, "tmpl"])[0]
    cases = [
        (("VM.frobnicate", [session]), ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]),
        (("VM.get_record", [session]), ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "2", "1"]),
        (("VM.get_record", [session, "OpaqueRef:nope"]), ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]),
        (("VM.get_all", ["OpaqueRef:nope"]), ["SESSION_INVALID", "OpaqueRef:nope"]),
        (("VM.start", [session, template, False, False]), ["VM_IS_TEMPLATE", template]),
        (("VM.start", [session, template, "yes", False]), ["FIELD_TYPE_ERROR", "start_paused"]),
        (("VM.clean_shutdown", [session, template]), ["VM_BAD_POWER_STATE", template, "running", "halted"]),
        (("event.from", [session, ["vm"], "garbage", 0]), ["EVENT_FROM_TOKEN_PARSE_FAILURE", "garbage"]),
        (("event.from", [session, ["vm"], "", float("nan")]), ["FIELD_TYPE_ERROR", "timeout"]),
        (("event.from", [session, ["nothing"], "", 1.0]), ["EVENT_SUBSCRIPTION_PARSE_FAILURE", "nothing"]),
        (("event.next", [session]), ["SESSION_NOT_REGISTERED", session]),
        (("session.login_with_password", ["root", "bad", "1.0", "t"]),
         ["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"]),
    ]
    for (method, params), expected in cases:
        with pytest.raises(ApiError) as failure:
            api.call(method, params)
        assert failure.value.description == expected, method


def test_events_from_token(api):
    session = login(api)
    everything = api.call("event.from", [session, ["*"], "", 0.0])
    first = everything.poll(0)[1]
    assert {e["class"] for e in first["events"]} >= {"vm", "host", "pool", "sr"}
    assert all(e["operation"] == "add" for e in first["events"])
    template = api.call("VM.get_by_name_label", [session, "tmpl"])[0]
    api.call("VM.set_name_description", [session, template, "described"])
    later = api.call("event.from", [session, ["vm"], first["token"], 0.0]).poll(0)[1]
    assert [(e["ref"], e["operation"]) for e in later["events"]] == [(template, "mod")]
    assert later["events"][0]["snapshot"]["name_description"] == "described"
    waiting = api.call("event.from", [session, ["vm"], later["token"], 30.0])
    assert isinstance(waiting, Pending) and waiting.poll(0) == (False, None)


def test_failed_logins_are_rate_limited(tmp_path):
    creds = tmp_path / "creds"
    creds.write_text("root:secret\n")
    creds.chmod(0o600)
    now = [1000.0]
    sessions = Sessions(str(creds), clock=lambda: now[0])
    for _ in range(MAX_FAILURES):
        with pytest.raises(ApiError):
            sessions.login("root", "guess", "")
    with pytest.raises(ApiError) as failure:        # the window is full: even the password is refused
        sessions.login("root", "secret", "")
    assert failure.value.description[0] == "SESSION_AUTHENTICATION_FAILED"
    assert "too many failed logins" in failure.value.description[2]
    now[0] += FAILURE_WINDOW + 1
    assert sessions.user_of(sessions.login("root", "secret", "").ref) == "root"
    creds.chmod(0o644)          # readable by others: not trusted, so nobody logs in with it
    with pytest.raises(ApiError):
        sessions.login("root", "secret", "")


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 1 << 64), st.floats(allow_nan=True),
                   st.text(max_size=30), st.sampled_from(["", "OpaqueRef:NULL", "*", "vm", "1.0"]),
                   st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                                                              max_size=2))


@given(st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_hostile_calls(api, data):
    session = login(api)
    refs = sorted(ref for cls in ("VM", "VDI", "VBD", "VIF", "SR", "network", "console", "host", "pool")
                  for ref in api.call(f"{cls}.get_all", [session]))
    method = data.draw(st.sampled_from(sorted(api.messages) + ["Async.VM.start", "nope", "Async.nope", "VM."]))
    nparams = len(api.messages[method].params) if method in api.messages else 1
    params = data.draw(st.lists(st.one_of(VALUES, st.sampled_from(refs + [session])),
                                min_size=max(0, nparams - 1), max_size=nparams + 1))
    if data.draw(st.booleans()):
        params = [session] + params[1:]
    if method.removeprefix("Async.") in ("session.logout", "VM.destroy", "VDI.destroy", "VM.clone", "VM.copy"):
        return      # would change the objects the next examples draw from (the SDK test clones and destroys)
    try:
        result = api.call(method, params)
    except ApiError as e:
        # a toolstack/store refusal is one line of its own; "TypeError in VM.start" would be our bug
        assert e.code != "INTERNAL_ERROR" or not e.params[0].endswith(f" in {method}"), e.description
        return
    if isinstance(result, Pending):
        result.poll(0)
