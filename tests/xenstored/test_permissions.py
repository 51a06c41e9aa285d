"""Node permissions: owner, n/r/w/b ACL entries, inheritance, dom0 and
SET_TARGET privileges, and the ENOENT-vs-EACCES information rule."""

from abi.io import xs_wire as wire


def test_guest_owns_what_it_creates_and_inherits_acl(dom0, guest_factory):
    guest = guest_factory(3)
    guest.write("data/x", "1")  # relative to /local/domain/3
    assert dom0.ok(wire.XS_GET_PERMS, "/local/domain/3/data/x") == b"n3\0r0\0"
    assert dom0.read("/local/domain/3/data/x") == b"1"


def test_dom0_created_nodes_inherit_parent_perms(dom0, guest_factory):
    guest_factory(3)
    dom0.write("/local/domain/3/device/vif/0", "")
    assert dom0.ok(wire.XS_GET_PERMS, "/local/domain/3/device/vif/0") == b"n3\0r0\0"


def test_guest_cannot_see_or_touch_others(dom0, guest_factory):
    guest = guest_factory(3)
    dom0.write("/secret/key", "s")
    assert guest.error(wire.XS_READ, "/secret/key") == "EACCES"
    assert guest.error(wire.XS_WRITE, "/secret/key", value=b"x") == "EACCES"
    # A missing node below an unreadable parent does not reveal ENOENT.
    assert guest.error(wire.XS_READ, "/secret/none") == "EACCES"
    assert guest.error(wire.XS_READ, "/local/domain/3/none") == "ENOENT"
    assert guest.error(wire.XS_WRITE, "/newtop", value=b"x") == "EACCES"


def test_acl_entries(dom0, guest_factory):
    g3, g4, g5 = guest_factory(3), guest_factory(4), guest_factory(5)
    dom0.write("/shared", "v")
    dom0.ok(wire.XS_SET_PERMS, "/shared", "n0", "r3", "b4", "w5")
    assert g3.read("/shared") == b"v"
    assert g3.error(wire.XS_WRITE, "/shared", value=b"x") == "EACCES"
    g4.write("/shared", "by4")
    assert g4.read("/shared") == b"by4"
    g5.write("/shared", "by5")
    assert g5.error(wire.XS_READ, "/shared") == "EACCES"
    # The first matching entry wins; perms[0] is the default for others.
    dom0.ok(wire.XS_SET_PERMS, "/shared", "r0", "n3")
    assert g3.error(wire.XS_READ, "/shared") == "EACCES"
    assert g4.read("/shared") == b"by5"


def test_only_owner_may_set_perms_and_not_give_away(dom0, guest_factory):
    g3, g4 = guest_factory(3), guest_factory(4)
    g3.write("mine", "x")
    path = "/local/domain/3/mine"
    g3.ok(wire.XS_SET_PERMS, path, "n3", "b4")
    assert g4.error(wire.XS_SET_PERMS, path, "n4") == "EACCES"
    assert g3.error(wire.XS_SET_PERMS, path, "n4") == "EPERM"
    dom0.ok(wire.XS_SET_PERMS, path, "n4")  # dom0 may change the owner
    assert g3.error(wire.XS_READ, path) == "EACCES"


def test_set_perms_parsing(dom0):
    dom0.write("/p", "")
    assert dom0.error(wire.XS_SET_PERMS, "/p") == "EINVAL"
    assert dom0.error(wire.XS_SET_PERMS, "/p", "x1") == "EINVAL"
    assert dom0.error(wire.XS_SET_PERMS, "/p", "r") == "EINVAL"
    assert dom0.error(wire.XS_SET_PERMS, "/p", "r1z") == "EINVAL"
    dom0.ok(wire.XS_SET_PERMS, "/p", "b0x10", "r010", "n-1")  # strtol base 0
    assert dom0.ok(wire.XS_GET_PERMS, "/p") == b"b16\0r8\0n-1\0"


def test_set_target_grants_target_privileges(dom0, guest_factory):
    stubdom, target = guest_factory(8), guest_factory(9)
    target.write("data", "t")
    assert stubdom.error(wire.XS_READ, "/local/domain/9/data") == "EACCES"
    dom0.ok(wire.XS_SET_TARGET, "8", "9")
    assert stubdom.read("/local/domain/9/data") == b"t"
    stubdom.write("/local/domain/9/data", "from-stubdom")
    assert target.read("data") == b"from-stubdom"
    assert dom0.error(wire.XS_SET_TARGET, "8", "77") == "ENOENT"
    assert stubdom.error(wire.XS_SET_TARGET, "8", "9") == "EACCES"


def test_priv_domid_is_privileged(engine):
    from dom0.xenstored import XenStore

    from .xenstored_kit import Client
    store = XenStore(priv_domid=6)
    driver = Client(store, conn_id=store.introduce_domain(6, port=1))
    driver.write("/anywhere", "ok")
    assert driver.read("/anywhere") == b"ok"


def test_grants_to_a_dead_domain_do_not_pass_to_its_domid_successor(dom0, guest_factory, engine):
    guest_factory(3)
    dom0.write("/backend/vbd/3", "b")
    dom0.ok(wire.XS_SET_PERMS, "/backend/vbd/3", "n0", "r3")
    dom0.ok(wire.XS_SET_PERMS, "@releaseDomain", "n0", "r3")
    engine.release_domain(3)
    dom0.ok(wire.XS_RM, "/local/domain/3")
    reborn = guest_factory(3)
    assert reborn.error(wire.XS_READ, "/backend/vbd/3") == "EACCES"
    dom0.write("/backend/vbd/3", "rewritten")  # a new generation must not revive it
    assert reborn.error(wire.XS_READ, "/backend/vbd/3") == "EACCES"
    assert engine.special_perms[b"@releaseDomain"] == engine.special_perms[b"@releaseDomain"][:1]
    dom0.ok(wire.XS_SET_PERMS, "/backend/vbd/3", "n0", "r3")  # the toolstack grants again
    assert reborn.read("/backend/vbd/3") == b"rewritten"
