"""XAPI's events: a generation count per object, found by comparing snapshots of the model.

Rules:
* `refresh(snapshot)` compares every object's record with the last one seen; a new,
  changed or vanished object gets the next generation (vanished ones are kept as
  tombstones, at most MAX_TOMBSTONES: a token older than the oldest one still gets
  every live object, as xapi's event.from does for a token it cannot serve).
* event.from's token is "GEN,0" zero-padded as xapi's ("" = from the beginning: every
  object, as an "add"); a token that is not one is EVENT_FROM_TOKEN_PARSE_FAILURE.
* Subscriptions are class names ("vm"), "*" or "class/ref", case-insensitive; anything
  else is EVENT_SUBSCRIPTION_PARSE_FAILURE.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any

from dom0.xapi.errors import EVENT_FROM_TOKEN_PARSE_FAILURE, EVENT_SUBSCRIPTION_PARSE_FAILURE, ApiError
from dom0.xapi.wire import Timestamp

MAX_TOMBSTONES = 10000


def token_of(generation: int) -> str:
    return f"{generation:020d},{0:020d}"


def parse_token(token: object) -> int:
    if token == "":
        return 0
    if not isinstance(token, str) or len(token) > 64:
        raise ApiError(EVENT_FROM_TOKEN_PARSE_FAILURE, str(token)[:64])
    head = token.split(",", 1)[0]
    if not head.isdigit() or not head.isascii():
        raise ApiError(EVENT_FROM_TOKEN_PARSE_FAILURE, token)
    return int(head)


class Subscription:
    """Which objects a list of event.from/register class strings selects."""

    def __init__(self, classes: object, known: set[str]):
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ApiError(EVENT_SUBSCRIPTION_PARSE_FAILURE, str(classes)[:100])
        self.all = False
        self.classes: set[str] = set()
        self.objects: set[tuple[str, str]] = set()
        for text in classes:
            name, _, ref = text.lower().partition("/")
            if name == "*":
                self.all = True
            elif name in known:
                if ref:
                    self.objects.add((name, text.split("/", 1)[1]))
                else:
                    self.classes.add(name)
            else:
                raise ApiError(EVENT_SUBSCRIPTION_PARSE_FAILURE, text[:100])

    def wants(self, cls: str, ref: str) -> bool:
        return self.all or cls in self.classes or (cls, ref) in self.objects


class EventLog:
    def __init__(self) -> None:
        self.generation = 0
        # (class, ref) -> [generation, record, timestamp, operation]
        self.objects: dict[tuple[str, str], list[Any]] = {}
        self.tombstones: deque[tuple[int, str, str, dict, float]] = deque(maxlen=MAX_TOMBSTONES)

    def refresh(self, snapshot: dict[str, dict[str, dict]]) -> None:
        now = time.time()
        current = {(cls.lower(), ref): record for cls, records in snapshot.items() for ref, record in records.items()}
        for key, record in current.items():
            known = self.objects.get(key)
            if known is None:
                self.generation += 1
                self.objects[key] = [self.generation, record, now, "add"]
            elif known[1] != record:
                self.generation += 1
                self.objects[key] = [self.generation, record, now, "mod"]
        for key in [k for k in self.objects if k not in current]:
            gen, record, _, _ = self.objects.pop(key)
            self.generation += 1
            self.tombstones.append((self.generation, key[0], key[1], record, now))

    def inject(self, cls: str, ref: str) -> str:
        key = (cls.lower(), ref)
        self.generation += 1
        if key in self.objects:
            self.objects[key][0] = self.generation
            self.objects[key][3] = "mod"
        return token_of(self.generation)

    def since(self, generation: int, wanted: Subscription) -> list[dict]:
        """Every event after `generation` the subscription wants, oldest first."""
        out = []
        for (cls, ref), (gen, record, stamp, op) in self.objects.items():
            if gen > generation and wanted.wants(cls, ref):
                out.append(_event(gen, cls, "add" if generation == 0 else op, ref, record, stamp))
        for gen, cls, ref, record, stamp in self.tombstones:
            if gen > generation and wanted.wants(cls, ref):
                out.append(_event(gen, cls, "del", ref, record, stamp))
        out.sort(key=lambda e: e["id"])
        return out


def _event(gen: int, cls: str, op: str, ref: str, record: dict, stamp: float) -> dict:
    return {"id": gen, "timestamp": Timestamp(stamp), "class": cls, "operation": op, "ref": ref,
            "obj_uuid": record.get("uuid", ""), "snapshot": record}
