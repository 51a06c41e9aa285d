"""xl vdev names as Xen virtual-device numbers (libxl__device_disk_dev_number)."""
from __future__ import annotations

import pytest

from dom0.block.vdev import vdev_name, vdev_number

NUMBERS = [("xvda", 51712), ("xvdb", 51728), ("xvda1", 51713), ("xvdp", 51952),
           ("xvdq", (1 << 28) | (16 << 8)), ("xvdaa", (1 << 28) | (26 << 8)), ("hda", 768), ("hdb", 832),
           ("hdc", 5632), ("sda", 2048), ("sdb3", 2067), ("d0p1", (1 << 28) | 1), ("51712", 51712)]


@pytest.mark.parametrize("name,number", NUMBERS)
def test_vdev_numbers(name, number):
    assert vdev_number(name) == number


@pytest.mark.parametrize("name", ["xvda", "xvdb2", "xvdq", "xvdaa", "hdc", "sdb"])
def test_names_round_trip(name):
    assert vdev_name(vdev_number(name)) == name


@pytest.mark.parametrize("bad", ["xvd", "vda", "hde", "sdq", "xvda300", "0", "d0p256", "hda64"])
def test_bad_vdevs_are_refused(bad):
    with pytest.raises(ValueError):
        vdev_number(bad)
