"""Per-domain quotas, with cxenstored's defaults and XS_CONTROL's names for them."""

from __future__ import annotations

from dataclasses import dataclass, fields

from abi.io.xs_wire import XENSTORE_REL_PATH_MAX

from .errors import XsError


@dataclass
class Quotas:
    """Per-domain limits, with cxenstored's defaults.  Privileged
    connections are exempt from all of them."""

    nodes: int = 1000  # nodes owned by a domain -> ENOSPC
    watches: int = 128  # watches registered by a domain -> E2BIG
    transactions: int = 10  # open transactions per connection -> ENOSPC
    outstanding: int = 20  # unsent replies before we stop reading requests
    transaction_nodes: int = 1024  # nodes touched by one transaction -> ENOSPC
    node_size: int = 2048  # stored record size of one node -> ENOSPC
    path_max: int = XENSTORE_REL_PATH_MAX  # path length below the domain's home -> EINVAL
    permissions: int = 5  # entries in one SET_PERMS -> ENOSPC
    memory: int = 2 * 1024 * 1024 + 512 * 1024  # queued output bytes; events beyond are dropped

    DESCRIPTIONS = {
        "nodes": "Nodes per domain",
        "watches": "Watches per domain",
        "transactions": "Transactions per domain",
        "outstanding": "Outstanding requests per domain",
        "transaction_nodes": "Max. number of accessed nodes per transaction",
        "node_size": "Max. size of a node",
        "path_max": "Max. length of a node path",
        "permissions": "Max. number of permissions per node",
        "memory": "Max. bytes of output queued for a domain",
    }

    @staticmethod
    def wire_name(field_name: str) -> str:
        return field_name.replace("_", "-")

    def show(self) -> str:
        lines = ["Quota settings:"]
        for field in fields(self):
            lines.append(f"{self.wire_name(field.name):<17}: {getattr(self, field.name):8d} "
                         f"{self.DESCRIPTIONS[field.name]}")
        return "\n".join(lines) + "\n"

    def set(self, wire_name: str, value: int) -> None:
        for field in fields(self):
            if self.wire_name(field.name) == wire_name:
                if field.name == "path_max":
                    value = min(value, XENSTORE_REL_PATH_MAX)
                setattr(self, field.name, value)
                return
        raise XsError("EINVAL")
