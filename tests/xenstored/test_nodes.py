"""READ / WRITE / MKDIR / RM / DIRECTORY / DIRECTORY_PART and path rules."""

import pytest

from abi.io import xs_wire as wire


def test_initial_tree(dom0):
    assert dom0.ls("/") == [b"tool"]
    assert dom0.ls("/tool") == [b"xenstored"]


def test_write_creates_parents_and_reads_back(dom0):
    dom0.write("/a/b/c", b"value\x00with\xffbinary")
    assert dom0.read("/a/b/c") == b"value\x00with\xffbinary"
    assert dom0.read("/a/b") == b""
    assert dom0.ls("/a") == [b"b"]
    dom0.write("/a/b/c", "new")
    assert dom0.read("/a/b/c") == b"new"


def test_children_keep_creation_order(dom0):
    for name in ("z", "a", "m"):
        dom0.write(f"/d/{name}", "")
    assert dom0.ls("/d") == [b"z", b"a", b"m"]


def test_read_missing_is_enoent(dom0):
    assert dom0.error(wire.XS_READ, "/nope") == "ENOENT"
    assert dom0.error(wire.XS_DIRECTORY, "/nope/deeper") == "ENOENT"


def test_mkdir_is_idempotent(dom0):
    dom0.write("/m", "keep")
    assert dom0.ok(wire.XS_MKDIR, "/m") == b"OK\0"
    assert dom0.read("/m") == b"keep"
    dom0.ok(wire.XS_MKDIR, "/m/n/o")
    assert dom0.ls("/m/n") == [b"o"]


def test_rm_removes_subtree(dom0):
    dom0.write("/r/a/b", "1")
    dom0.write("/r/c", "2")
    dom0.ok(wire.XS_RM, "/r/a")
    assert dom0.ls("/r") == [b"c"]
    assert dom0.error(wire.XS_READ, "/r/a/b") == "ENOENT"
    # Removing a missing node is fine when its parent exists, not otherwise.
    assert dom0.ok(wire.XS_RM, "/r/a") == b"OK\0"
    assert dom0.error(wire.XS_RM, "/r/a/b") == "ENOENT"
    assert dom0.error(wire.XS_RM, "/") == "EINVAL"


def test_relative_paths_resolve_against_home(dom0):
    dom0.write("rel", "x")
    assert dom0.read("/local/domain/0/rel") == b"x"
    assert dom0.read("rel") == b"x"


@pytest.mark.parametrize("path", [
    "/trailing/", "/double//slash", "/bad char", "/dot.", "/é", "", "/a\tb",
    "/" + "x" * 2048,
])
def test_invalid_paths_are_einval(dom0, path):
    assert dom0.error(wire.XS_READ, path.encode()) == "EINVAL"
    assert dom0.error(wire.XS_WRITE, path.encode(), value=b"v") == "EINVAL"


def test_path_length_quota_counts_below_domain_home(dom0):
    long_name = "x" * 2040
    dom0.write("/local/domain/7/" + long_name, "ok")
    assert dom0.error(wire.XS_WRITE, "/" + long_name + "/12345678", value=b"") == "EINVAL"
    dom0.write("/" + "y" * 2047, "")  # exactly path_max with the leading '/'


def test_valid_special_characters(dom0):
    dom0.write("/a-b_c@d/E9", "v")
    assert dom0.read("/a-b_c@d/E9") == b"v"


def test_directory_part_pages_through_children(dom0):
    names = [f"child{i:04d}-{'p' * 60}" for i in range(120)]
    for name in names:
        dom0.write(f"/big/{name}", "")
    # The full listing does not fit in one reply.
    assert dom0.error(wire.XS_DIRECTORY, "/big") == "E2BIG"
    collected, offset, generation = [], 0, None
    while True:
        reply = dom0.ok(wire.XS_DIRECTORY_PART, "/big", str(offset))
        gen, rest = reply.split(b"\0", 1)
        assert generation in (None, gen)
        generation = gen
        assert len(reply) <= wire.XENSTORE_PAYLOAD_MAX
        if rest == b"\0" or rest == b"":
            break
        done = rest.endswith(b"\0\0")
        chunk = rest[:-1] if done else rest
        parts = chunk.split(b"\0")[:-1]
        collected += parts
        offset += len(chunk)
        if done:
            break
    assert collected == [n.encode() for n in names]


def test_directory_part_generation_changes_with_children(dom0):
    dom0.write("/g/a", "")
    first = dom0.ok(wire.XS_DIRECTORY_PART, "/g", "0")
    dom0.write("/g/b", "")
    second = dom0.ok(wire.XS_DIRECTORY_PART, "/g", "0")
    assert first.split(b"\0")[0] != second.split(b"\0")[0]
    assert second.split(b"\0", 1)[1] == b"a\0b\0\0"
    assert dom0.ok(wire.XS_DIRECTORY_PART, "/g", "999").split(b"\0", 1)[1] == b"\0"
    assert dom0.error(wire.XS_DIRECTORY_PART, "/g") == "EINVAL"


def test_get_domain_path(dom0):
    assert dom0.ok(wire.XS_GET_DOMAIN_PATH, "5") == b"/local/domain/5\0"
    assert dom0.error(wire.XS_GET_DOMAIN_PATH, b"5\x005") == "EINVAL"


def test_special_names_are_not_nodes(dom0):
    assert dom0.error(wire.XS_GET_PERMS, "@releaseDomain") == "EINVAL"
    assert dom0.error(wire.XS_READ, "@introduceDomain") == "EINVAL"
