# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving a shut-off VM's definition with what it carries (drain/definition_move.py), over fake libvirt
hosts (definition_fakes.py): each shape moves whole, each thing that cannot be carried is refused before
anything changes, and each failure point leaves the VM defined on exactly one host with the destination
as it was. The snapshot shapes also run against libvirt's own test driver.
"""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import definition_move, state_files
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.libvirt_backend import LibvirtBackend
from definition_fakes import (
    UNDEFINE_KEEP_NVRAM,
    UNDEFINE_KEEP_TPM,
    UNDEFINE_SNAPSHOTS_METADATA,
    File,
    Host,
    domain_xml,
    parents,
    snapshot_xml,
)

SRC, DST = "qemu+tcp://hv1/system", "qemu+tcp://hv2/system"
UUID = "6990a74b-fe3c-4549-861b-2076fcd3ceea"
NVRAM = "/var/lib/libvirt/qemu/nvram/vm1_VARS.fd"
TPM_DIR = f"/var/lib/libvirt/swtpm/{UUID}/tpm2"
TPM_FILE = f"{TPM_DIR}/tpm2-00.permall"
MARKER = b"HVFLEET-NVRAM-MARKER" + bytes(range(256)) * 20


def hosts(tpm=False, nvram=True, disks=(), fs=None):
    """hv1 holds the shut-off vm1 (NVRAM written, TPM state when `tpm`); hv2 is empty."""
    src, dst = Host(SRC, fs=fs), Host(DST, fs=fs)
    src.defineXML(domain_xml(tpm=tpm, nvram=nvram, disks=disks))
    if nvram:
        src.fs[NVRAM] = File(MARKER)
    if tpm:
        src.mkdirs(TPM_DIR)
        src.fs[TPM_FILE] = File(b"tpm-state" * 100, owner="103", group="110")
        src.fs[f"{TPM_DIR}/.lock"] = File(b"", mode="0640")
    src.log.clear()
    return src, dst


def move(src, dst, settings=None):
    return definition_move.move(src, dst, "vm1", settings, SRC, DST)


def defined_on(*hosts_):
    return [h.uri for h in hosts_ if "vm1" in h.domains]


def no_pools_left(*hosts_):
    return all(not [p for p in h.pools.values() if p.transient] for h in hosts_)


# ---- each shape moves whole --------------------------------------------------------------------


def test_a_plain_definition_moves_and_nothing_else_is_claimed():
    src, dst = hosts(nvram=False)
    moved = move(src, dst)
    assert defined_on(src, dst) == [DST]
    assert not dst.domains["vm1"].auto and moved.notes == [] and not moved.autostart


def test_autostart_follows_the_vm_and_the_result_says_so():
    src, dst = hosts(nvram=False)
    src.domains["vm1"].auto = True
    moved = move(src, dst)
    assert dst.domains["vm1"].auto and moved.autostart
    assert any("autostart set on " + DST in n for n in moved.notes), moved.notes


def test_the_nvram_content_goes_to_the_destination_and_the_stale_source_copy_goes():
    src, dst = hosts()
    moved = move(src, dst)
    assert defined_on(src, dst) == [DST]
    assert dst.fs[NVRAM].data == MARKER and dst.fs[NVRAM].mode == "0600"
    assert NVRAM not in src.fs, "the source's copy is stale once the destination holds the VM"
    assert moved.nvram == NVRAM and any(f"({len(MARKER)} bytes, verified)" in n for n in moved.notes)
    assert no_pools_left(src, dst), "the transient pools are destroyed"


def test_the_nvram_is_copied_before_the_definition_exists_on_the_destination():
    src, dst = hosts()
    move(src, dst)
    assert dst.log.index("uploadFinish") < dst.log.index("defineXML")


def test_a_vm_never_started_has_no_nvram_file_yet_and_still_moves():
    src, dst = hosts()
    del src.fs[NVRAM]
    moved = move(src, dst)
    assert defined_on(src, dst) == [DST] and NVRAM not in dst.fs and moved.nvram is None


def test_the_tpm_state_moves_with_its_owner_and_the_source_keeps_none():
    src, dst = hosts(tpm=True)
    moved = move(src, dst)
    assert dst.fs[TPM_FILE].data == b"tpm-state" * 100 and dst.fs[TPM_FILE].owner == "103"
    assert f"{TPM_DIR}/.lock" not in dst.fs, "swtpm's lock file is its own"
    assert any(f"mkdir {TPM_DIR} 0700" == line for line in dst.log), "the state directory made private"
    assert not [p for p in src.fs if "swtpm" in p], "the stale state and swtpm's lock file are gone"
    assert TPM_DIR not in src.dirs and f"/var/lib/libvirt/swtpm/{UUID}" not in src.dirs
    assert "/var/lib/libvirt/swtpm" in src.dirs and no_pools_left(src, dst) and src.pools == {}
    assert src.domains == {} and moved.tpm_files == 1
    assert any("TPM state (1 file(s)" in n for n in moved.notes)


def test_the_source_is_undefined_keeping_nvram_and_tpm_until_the_copies_exist():
    src, dst = hosts(tpm=True)
    dom = src.domains["vm1"]
    move(src, dst)
    assert dom.undefine_flags == [UNDEFINE_KEEP_NVRAM | UNDEFINE_KEEP_TPM]


def test_a_shared_state_directory_is_neither_copied_nor_removed():
    shared: dict = {}
    src, dst = hosts(fs=shared)
    moved = move(src, dst)
    assert shared[NVRAM].data == MARKER, "one file, shared: it must stay"
    assert "upload" not in dst.log and moved.nvram is None
    assert any("shared by both hosts, nothing to copy" in n for n in moved.notes)
    assert not [p for p in shared if ".hvfleet-probe" in p], "the probe file is removed"


def test_an_existing_pool_over_the_directory_is_used_and_left_as_it_was():
    src, dst = hosts()
    active = src.add_pool("nvram", "/var/lib/libvirt/qemu/nvram", active=True)
    inactive = dst.add_pool("nvram", "/var/lib/libvirt/qemu/nvram", active=False)
    move(src, dst)
    assert dst.fs[NVRAM].data == MARKER
    assert active.active and not inactive.active
    assert set(src.pools) == {"nvram"} and set(dst.pools) == {"nvram"}


def test_a_mounted_pool_over_the_directory_counts_as_the_hosts_own():
    src, dst = hosts()
    mounted = dst.add_pool("nvram-share", "/var/lib/libvirt/qemu/nvram", active=True, kind="netfs")
    move(src, dst)
    assert dst.fs[NVRAM].data == MARKER and mounted.active and set(dst.pools) == {"nvram-share"}


def test_snapshots_are_redefined_parent_before_child_and_the_current_one_stays_current():
    src, dst = hosts(nvram=False)
    dom = src.domains["vm1"]
    for name in ("base", "left", "left2"):
        dom.snapshotCreateXML(snapshot_xml(name), 0)  # a chain: base <- left <- left2
    dom.current = "base"
    dom.snapshotCreateXML(snapshot_xml("right"), 0)  # base <- right, now current
    dom.snapshots = dict(reversed(list(dom.snapshots.items())))  # listed children first
    moved = move(src, dst)
    new = dst.domains["vm1"]
    assert parents(new) == {"base": None, "left": "base", "left2": "left", "right": "base"}
    order = list(new.snapshots)
    assert order.index("base") < order.index("left") < order.index("left2")
    assert new.current == "right" and moved.snapshots == 4
    carried = UNDEFINE_KEEP_NVRAM | UNDEFINE_KEEP_TPM | UNDEFINE_SNAPSHOTS_METADATA
    assert src.domains == {} and dom.undefine_flags == [carried]
    assert any("4 snapshot(s) carried over as metadata (current: right)" in n for n in moved.notes)


def test_internal_snapshots_of_network_disks_are_carried():
    src, dst = hosts(nvram=False, disks=[("vda", "network", "export1")])
    src.domains["vm1"].snapshotCreateXML(snapshot_xml("s1", disks="<disks><disk name='vda' snapshot='internal'/>"
                                                      "</disks>"), 0)
    move(src, dst)
    assert list(dst.domains["vm1"].snapshots) == ["s1"]


def test_managed_save_discard_removes_the_image_right_before_the_undefine_and_says_so():
    src, dst = hosts(nvram=False)
    src.domains["vm1"].managed_save = True
    moved = move(src, dst, {"managed_save": "discard"})
    assert defined_on(src, dst) == [DST] and moved.managed_save_discarded
    assert src.log.index("managedSaveRemove") == src.log.index("undefineFlags") - 2  # then a look, then undefine
    assert any("managed-save image on " + SRC + " was discarded" in n for n in moved.notes)


# ---- refused before anything changes -----------------------------------------------------------


def refused(src, dst, settings=None):
    before = (dict(src.fs), {n: list(d.snapshots) for n, d in src.domains.items()})
    with pytest.raises(HvfleetError) as failed:
        move(src, dst, settings)
    assert defined_on(src, dst) == [SRC] and dst.fs == {} and dst.log.count("defineXML") == 0
    assert "managedSaveRemove" not in src.log and "undefineFlags" not in src.log
    assert (dict(src.fs), {n: list(d.snapshots) for n, d in src.domains.items()}) == before
    assert "nothing changed" in failed.value.message
    return failed.value


def test_a_managed_save_image_is_refused_by_default_naming_the_fix():
    src, dst = hosts()
    src.domains["vm1"].managed_save = True
    err = refused(src, dst)
    assert "managed-save image" in err.message and "managed_save: refuse" in err.message
    assert "managed_save: discard" in err.hint and f"virsh -c {SRC} start vm1" in err.hint


def test_an_unknown_managed_save_value_is_refused():
    src, dst = hosts()
    err = refused(src, dst, {"managed_save": "keep"})
    assert "managed_save: 'keep' is not a known value" in err.message


def test_checkpoints_are_refused():
    src, dst = hosts()
    src.domains["vm1"].checkpoints = 2
    err = refused(src, dst)
    assert "2 checkpoint(s)" in err.message and "checkpoint-delete --metadata" in err.hint


@pytest.mark.parametrize("disks,snapshot_disks,why", [
    ([("vda", "file", "/var/lib/libvirt/images/vm1.qcow2")], "<disks><disk name='vda' snapshot='internal'/></disks>",
     "its state of disk vda is inside /var/lib/libvirt/images/vm1.qcow2, which is not network storage"),
    ([("vda", "network", "export1")], "<disks><disk name='vda' snapshot='external' type='file'><source "
     "file='/var/lib/libvirt/images/vm1.s1'/></disk></disks>", "the local file /var/lib/libvirt/images/vm1.s1"),
    ([], "<memory snapshot='external' file='/var/lib/libvirt/qemu/save/vm1.mem'/>",
     "its memory state is in the file /var/lib/libvirt/qemu/save/vm1.mem"),
])
def test_snapshot_state_in_local_files_is_refused(disks, snapshot_disks, why):
    src, dst = hosts(disks=disks)
    src.domains["vm1"].snapshotCreateXML(snapshot_xml("s1", disks=snapshot_disks), 0)
    err = refused(src, dst)
    assert "snapshot 's1' of 'vm1' cannot be carried over" in err.message and why in err.message, err.message
    assert "snapshot-delete vm1 s1" in err.hint


def test_a_vm_started_before_the_move_is_refused():
    src, dst = hosts()
    src.domains["vm1"].active = True
    err = refused(src, dst)
    assert "started meanwhile" in err.message


def test_snapshot_order_and_tree_refusals_are_pure_decisions():
    from ansible_collections.hvfleet.drain.plugins.module_utils.drain.definition_shape import (
        Shape,
        Snapshot,
        refusals,
        snapshot_order,
    )

    def snap(name, parent=None):
        return Snapshot(name=name, parent=parent, current=False, xml="")

    tree = (snap("c", "b"), snap("b", "a"), snap("z"), snap("a"), snap("b2", "a"))
    assert [s.name for s in snapshot_order(tree)] == ["a", "b", "c", "b2", "z"]
    shape = Shape(name="vm1", uuid=UUID, active=False, xml="", snapshots=tree)
    assert refusals(shape, {}, SRC) == []
    orphan = Shape(name="vm1", uuid=UUID, active=False, xml="", snapshots=(snap("x", "gone"),))
    [why] = refusals(orphan, {}, SRC)
    assert "name a parent that is not listed" in why.message and "snapshot-list vm1 --tree" in why.fix
    loop = Shape(name="vm1", uuid=UUID, active=False, xml="", snapshots=(snap("p", "q"), snap("q", "p")))
    [why] = refusals(loop, {}, SRC)
    assert "do not form a tree" in why.message


# ---- each failure point rolls back to one host -------------------------------------------------


def rolled_back(src, dst, settings=None, stale=None):
    with pytest.raises(HvfleetError) as failed:
        move(src, dst, settings)
    assert defined_on(src, dst) == [SRC], "defined on exactly one host"
    assert src.fs.get(NVRAM).data == MARKER, "the source keeps its NVRAM"
    assert (dst.fs.get(NVRAM).data if NVRAM in dst.fs else None) == stale, "the destination's files as they were"
    assert no_pools_left(src, dst)
    assert f"defined on {SRC} only, as before" in failed.value.message, failed.value.message
    return failed.value


@pytest.mark.parametrize("host,op,after", [
    ("dst", "defineXML", 0), ("dst", "snapshotCreateXML", 1), ("dst", "setAutostart", 0),
    ("src", "managedSaveRemove", 0), ("src", "undefineFlags", 0), ("dst", "upload", 0),
])
def test_a_failure_after_changes_leaves_the_vm_on_the_source_only(host, op, after):
    src, dst = hosts(tpm=True)
    dom = src.domains["vm1"]
    dom.auto, dom.managed_save = True, True
    for name in ("s1", "s2"):
        dom.snapshotCreateXML(snapshot_xml(name), 0)
    (src if host == "src" else dst).fail[op] = (after, f"injected failure of {op}")
    err = rolled_back(src, dst, {"managed_save": "discard"})
    assert f"injected failure of {op}" in err.message
    assert list(src.domains["vm1"].snapshots) == ["s1", "s2"] and src.domains["vm1"].auto
    assert src.fs[TPM_FILE].data == b"tpm-state" * 100 and not [p for p in dst.fs if "swtpm" in p]
    assert TPM_DIR not in dst.dirs and f"/var/lib/libvirt/swtpm/{UUID}" not in dst.dirs, "no empty state dir left"
    assert dst.pools == {}
    if op == "undefineFlags":
        assert "Its managed-save image was already discarded." in err.message, "said, since it cannot be undone"


def test_a_copy_that_does_not_read_back_the_same_is_rolled_back():
    src, dst = hosts()
    dst.fail["truncate"] = (0, "")
    err = rolled_back(src, dst)
    assert f"{NVRAM} was written with" in err.message


def test_a_stale_destination_nvram_is_overwritten_and_put_back_on_rollback():
    src, dst = hosts()
    dst.fs[NVRAM] = File(b"stale copy from an earlier move")
    src.fail["undefineFlags"] = (0, "refused")
    rolled_back(src, dst, stale=b"stale copy from an earlier move")
    src.fail.clear()
    move(src, dst)
    assert dst.fs[NVRAM].data == MARKER


def test_a_snapshot_made_meanwhile_stops_the_move_before_the_undefine():
    src, dst = hosts()
    real = src.domains["vm1"].snapshotNum
    src.domains["vm1"].snapshotNum = lambda flags=0: real(flags) + 1
    err = rolled_back(src, dst)
    assert "has 1 snapshot(s)" in err.message


def test_when_the_undo_fails_too_both_hosts_and_the_fix_are_named():
    src, dst = hosts()
    src.fail["undefineFlags"] = (0, "refused")
    dst.fail["undefineFlags"] = (0, "daemon trouble")
    with pytest.raises(HvfleetError) as failed:
        move(src, dst)
    assert defined_on(src, dst) == [SRC, DST]
    text, hint = failed.value.message, failed.value.hint
    assert SRC in text and DST in text and "undoing the move" in text and "daemon trouble" in text, text
    assert f"virsh -c {DST} undefine vm1 --snapshots-metadata --keep-nvram --keep-tpm" in hint, hint


def test_a_definition_already_on_the_destination_is_not_removed_on_failure():
    src, dst = hosts(nvram=False)
    dst.defineXML(domain_xml(nvram=False))
    src.fail["undefineFlags"] = (0, "refused")
    with pytest.raises(HvfleetError) as failed:
        move(src, dst)
    assert defined_on(src, dst) == [SRC, DST] and "already defined there" in failed.value.message


def test_a_different_domain_of_the_same_name_on_the_destination_stops_it():
    src, dst = hosts()
    dst.defineXML(domain_xml(uuid="00000000-0000-0000-0000-000000000001"))
    with pytest.raises(HvfleetError) as failed:
        move(src, dst)
    assert "different domain named 'vm1'" in failed.value.message and dst.fs == {}


# ---- the backend: plan-time refusal and the settings it was planned with ---------------------


def test_the_backend_refuses_at_plan_time_and_moves_with_the_planned_policy():
    from ansible_collections.hvfleet.drain.plugins.module_utils.drain import definition_shape

    src, dst = hosts()
    src.domains["vm1"].managed_save = True
    shape = definition_shape.read_shape(src, "vm1")
    [refusal] = definition_shape.refusals(shape, {}, SRC)
    assert refusal.check == "definition.managed_save" and "managed_save: discard" in refusal.fix
    assert definition_shape.refusals(shape, {"managed_save": "discard"}, SRC) == []
    backend = LibvirtBackend()
    backend._definition_settings["vm1"] = {"managed_save": "discard"}  # what prechecks recorded
    moved = backend.move_definition(src, dst, "vm1")
    assert moved.managed_save_discarded and defined_on(src, dst) == [DST]


def test_the_plan_time_check_is_a_failed_check_naming_the_vm_and_the_fix():
    from ansible_collections.hvfleet.drain.plugins.module_utils.drain import libvirt_backend
    from ansible_collections.hvfleet.drain.plugins.module_utils.planning.check_cache import CheckCache
    from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host as PlanHost
    from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import VmInfo

    src, _dst = hosts()
    src.domains["vm1"].managed_save = True
    vm = VmInfo(name="vm1", memory_mib=128, vcpus=1, active=False, persistent=True, state="shut off")
    hv1, hv2 = PlanHost("hv1", SRC), PlanHost("hv2", DST)
    [check] = libvirt_backend._refusals(src, vm, hv1, hv2, {})
    assert (check.id, check.status, check.vm, check.destination) == ("definition.managed_save", "fail", "vm1", "hv2")
    assert "managed_save: discard" in check.fix and src.domains["vm1"].managed_save, "nothing changed"
    assert libvirt_backend._refusals(src, vm, hv1, hv2, {"managed_save": "discard"}) == []
    cache = CheckCache()
    backend = LibvirtBackend()
    for dest in (hv2, PlanHost("hv3", "qemu+tcp://hv3/system")):
        [check] = backend.definition_refusals(src, vm, hv1, dest, {}, cache)
        assert check.destination == dest.name and check.id == "definition.managed_save"
    assert src.calls["lookupByName"] == 3, "the source is read once per plan, not once per destination"
    running = VmInfo(name="vm1", memory_mib=128, vcpus=1, active=True, persistent=True)
    src.domains["vm1"].active, src.domains["vm1"].managed_save = True, False
    src.domains["vm1"].checkpoints = 1
    [cold] = backend.definition_refusals(src, running, hv1, hv2, {})  # to be shut down and moved cold
    assert cold.id == "definition.checkpoints", "running is no reason for a cold move; what it carries is"
    del src.domains["vm1"]
    [unread] = libvirt_backend._refusals(src, vm, hv1, hv2, {})
    assert unread.id == "definition.read" and unread.failed and "Could not read 'vm1'" in unread.message


# ---- libvirt's test driver: real snapshot redefinition -----------------------------------------

DATA = Path(__file__).parent / "data"
libvirt.registerErrorHandler(lambda ctx, err: None, None)


def test_the_test_driver_carries_a_snapshot_tree_over():
    src = libvirt.open(f"test://{DATA / 'testdriver_src.xml'}")
    dst = libvirt.open(f"test://{DATA / 'testdriver_dst.xml'}")
    try:
        dom = src.lookupByName("db1")
        dom.destroy()
        dom.snapshotCreateXML("<domainsnapshot><name>a</name></domainsnapshot>", 0)
        dom.snapshotCreateXML("<domainsnapshot><name>b</name></domainsnapshot>", 0)
        moved = LibvirtBackend().move_definition(src, dst, "db1")
        assert [d.name() for d in src.listAllDomains(0)] == [] and moved.snapshots == 2
        new = dst.lookupByName("db1")
        assert sorted(s.getName() for s in new.listAllSnapshots(0)) == ["a", "b"]
        assert new.snapshotLookupByName("b", 0).getParent(0).getName() == "a"
        assert new.snapshotCurrent(0).getName() == "b"
    finally:
        src.close()
        dst.close()


def test_state_files_pool_names_are_per_directory():
    assert state_files.pool_name("/a") != state_files.pool_name("/b")
    assert state_files.pool_name("/a").startswith("hvfleet-state-")


class _Refusing:
    """A test-driver connection whose domains refuse every undefine."""

    def __init__(self, conn, why):
        self._conn, self._why = conn, why

    def __getattr__(self, attr):
        return getattr(self._conn, attr)

    def lookupByName(self, name):  # noqa: N802 - libvirt's name
        dom, why = self._conn.lookupByName(name), self._why

        class Dom:
            def __getattr__(self, attr):
                return getattr(dom, attr)

            def undefineFlags(self, flags=0):  # noqa: N802
                raise libvirt.libvirtError(why)

        return Dom()


@pytest.fixture
def test_driver():
    src = libvirt.open(f"test://{DATA / 'testdriver_src.xml'}")
    dst = libvirt.open(f"test://{DATA / 'testdriver_dst.xml'}")
    src.lookupByName("db1").destroy()
    src.lookupByName("db1").snapshotCreateXML("<domainsnapshot><name>a</name></domainsnapshot>", 0)
    yield src, dst
    src.close()
    dst.close()


def names(conn):
    return sorted(d.name() for d in conn.listAllDomains(0))


def test_the_test_driver_source_refusing_its_undefine_leaves_it_there_with_its_snapshot(test_driver):
    src, dst = test_driver
    with pytest.raises(HvfleetError) as failed:
        LibvirtBackend().move_definition(_Refusing(src, "cannot undefine: injected"), dst, "db1")
    assert names(src) == ["db1"] and names(dst) == [], "defined on exactly one host"
    assert [s.getName() for s in src.lookupByName("db1").listAllSnapshots(0)] == ["a"]
    text = failed.value.message
    assert "only, as before" in text and "injected" in text and "snapshot" not in text, "the snapshots were no obstacle"
    assert "run the drain again" in failed.value.hint and " undefine " not in failed.value.hint


def test_the_test_driver_earlier_destination_definition_is_kept(test_driver):
    src, dst = test_driver
    src.lookupByName("db1").snapshotLookupByName("a", 0).delete(0)  # the test driver cannot drop metadata only
    dst.defineXML(src.lookupByName("db1").XMLDesc(0))
    with pytest.raises(HvfleetError) as failed:
        LibvirtBackend().move_definition(_Refusing(src, "cannot undefine: injected"), dst, "db1")
    assert names(src) == ["db1"] and names(dst) == ["db1"] and "already defined there" in failed.value.message


def test_the_test_driver_both_hosts_named_when_the_destination_refuses_too(test_driver):
    src, dst = test_driver
    with pytest.raises(HvfleetError) as failed:
        LibvirtBackend().move_definition(_Refusing(src, "refused"), _Refusing(dst, "refused too"), "db1")
    assert names(src) == ["db1"] and names(dst) == ["db1"]
    text = failed.value.message
    assert "undoing the move" in text and "refused too" in text and dst.getURI() in text and src.getURI() in text
    assert "undefine db1 --snapshots-metadata --keep-nvram --keep-tpm" in failed.value.hint
