"""Model-based check: the store, with transactions racing direct writes,
behaves like a plain dict of paths with serialised commits."""

import os

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from abi.io import xs_wire as wire
from dom0.xenstored import LocalClient, XenStore, XsError

# XS_MODEL_EXAMPLES=2000 for a long soak (about two minutes).
EXAMPLES = int(os.environ.get("XS_MODEL_EXAMPLES", "80"))
NAMES = st.sampled_from(["a", "b", "c"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(lambda parts: "/t/" + "/".join(parts))
VALUES = st.binary(max_size=4)


def apply(model: dict, op):
    kind, path, value = op
    if kind == "write":
        parts = path.split("/")
        for depth in range(2, len(parts)):
            model.setdefault("/".join(parts[:depth]), b"")
        model[path] = value
    elif kind == "mkdir":
        parts = path.split("/")
        for depth in range(2, len(parts) + 1):
            model.setdefault("/".join(parts[:depth]), b"")
    elif kind == "rm":
        for key in [k for k in model if k == path or k.startswith(path + "/")]:
            del model[key]


class StoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.engine = XenStore()
        self.direct = LocalClient(self.engine)
        self.txer = LocalClient(self.engine)
        self.direct.mkdir("/t")
        self.model = {"/t": b""}
        self.tx = None  # (tx client, ops, tx id)

    def _do(self, client, op, stale_ok=False):
        """Run one modifying op; returns False if a transaction found its own
        view stale (EINVAL, which dooms the commit)."""
        kind, path, value = op
        if kind == "write":
            client.write(path, value)
        elif kind == "mkdir":
            client.mkdir(path)
        else:
            try:
                client.rm(path)
            except XsError as error:
                if stale_ok and error.name == "EINVAL":
                    return False
                assert error.name == "ENOENT"
        return True

    @rule(kind=st.sampled_from(["write", "mkdir", "rm"]), path=PATHS, value=VALUES)
    def direct_op(self, kind, path, value):
        self._do(self.direct, (kind, path, value))
        apply(self.model, (kind, path, value))

    @precondition(lambda self: self.tx is None)
    @rule()
    def begin(self):
        tx_id = int(self.engine.request(self.txer.conn_id, wire.XS_TRANSACTION_START, b"\0")[1]
                    .rstrip(b"\0"))
        self.tx = (LocalClient(self.engine, tx_id=tx_id, conn_id=self.txer.conn_id), [], tx_id)

    @precondition(lambda self: self.tx is not None)
    @rule(kind=st.sampled_from(["write", "mkdir", "rm", "read"]), path=PATHS, value=VALUES)
    def tx_op(self, kind, path, value):
        client, ops, _ = self.tx
        if kind == "read":
            ops.append(("read", path, client.read(path)))
        else:
            if not self._do(client, (kind, path, value), stale_ok=True):
                ops.append(("doomed", path, value))
            ops.append((kind, path, value))

    @precondition(lambda self: self.tx is not None and len(self.tx[1]) >= 2)
    @rule(commit=st.booleans())
    def end(self, commit):
        _, ops, tx_id = self.tx
        self.tx = None
        _, reply = self.engine.request(self.txer.conn_id, wire.XS_TRANSACTION_END,
                                       b"T\0" if commit else b"F\0", tx_id)
        event(f"commit={commit} reply={reply!r} ops>={min(len(ops), 4)}")
        if not commit or reply == b"EAGAIN\0":
            assert commit or reply == b"OK\0"
            return
        assert reply == b"OK\0" and not any(op[0] == "doomed" for op in ops)
        # Serialisability: a committed transaction behaves as if it ran
        # entirely at its commit point, reads included.
        for kind, path, value in ops:
            if kind == "read":
                assert self.model.get(path) == value, (path, ops)
            else:
                apply(self.model, (kind, path, value))

    @invariant()
    def store_matches_model(self):
        actual = {}
        stack = ["/t"]
        while stack:
            path = stack.pop()
            value = self.direct.read(path)
            if value is None:
                continue
            actual[path] = value
            stack += [f"{path}/{child}" for child in self.direct.directory(path)]
        assert actual == self.model
        assert self.engine.store.inconsistencies() == []


StoreMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=40, deadline=None)
TestStoreModel = StoreMachine.TestCase
