"""The toy device of lab 6 at its trust boundaries: the config key, and a backend facing a lying page.

The honest path and a lying frontend end to end are lab 6 itself (test_labs.py).
"""
from __future__ import annotations

import pytest

from abi.io.toyif import TOY_LENGTH_OFFSET, TOY_MAX_LENGTH, TOY_REQ_PROD_OFFSET, TOY_TEXT_OFFSET
from abi.shared_memory import SharedWords
from dom0.toolstack.config import ConfigError, parse_config
from dom0.toy import ToyConnection

BASE = 'name = "t"\nkernel = "python:pvguest.examples.toy"\n'


def test_config_names_toys_by_devid():
    assert parse_config(BASE + 'toy = ["0", "3"]\n').toys == [0, 3]
    assert parse_config(BASE).toys == []


@pytest.mark.parametrize("value", ['["x"]', '["0", "0"]', '["8"]', '["-1"]', '[0]'])
def test_config_refuses_a_bad_toy_in_one_line(value):
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + f"toy = {value}\n", "t.cfg")
    assert "\n" not in str(e.value) and "toy" in str(e.value)


class FakeDevice:
    """What a connection asks of dom0/xenbus: a name, a kick, a fault (no mock of the page itself)."""
    name = "toy d1/0"

    def __init__(self):
        self.kicks, self.faults = 0, []

    def notify(self):
        self.kicks += 1

    def fault(self, reason):
        self.faults.append(reason)


def _request(page: memoryview, number: int, length: int, text: bytes = b"") -> None:
    page[TOY_TEXT_OFFSET:TOY_TEXT_OFFSET + len(text)] = text
    SharedWords(page).store_u32(TOY_LENGTH_OFFSET, length)
    SharedWords(page).store_u32(TOY_REQ_PROD_OFFSET, number)


def test_backend_answers_once_and_drops_a_length_beyond_the_page():
    page = memoryview(bytearray(4096))
    device = FakeDevice()
    conn = ToyConnection(device, page)  # type: ignore[arg-type]
    _request(page, 1, 5, b"hello")
    conn.on_event()
    conn.on_event()                     # the periodic pass: nothing new, no second answer
    assert bytes(page[TOY_TEXT_OFFSET:TOY_TEXT_OFFSET + 5]) == b"HELLO" and device.kicks == 1
    for length in (TOY_MAX_LENGTH + 1, 0xFFFFFFFF):
        _request(page, 2, length)
        conn.on_event()
        assert device.faults and device.kicks == 1
