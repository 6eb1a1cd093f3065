# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A shut-off definition left on the source while the VM runs on the destination is removed - but
only when the destination holds a persistent definition, and never deleting NVRAM, TPM state,
snapshot metadata or a managed-save image. Before, a re-run that found the VM already on the
destination (`already_there`) left the source's definition behind: starting it would run a second
copy on the same disks (repro r2_engine_already_there.py); and the undefine after a recovered
post-copy was a plain one, refused for a domain with NVRAM and silent about why.
"""

from __future__ import annotations

import pytest
import test_migration as tm  # the engine's fakes (same directory; prepend import mode)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import leftover
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile as rc
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import plan
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec

KEEP_NVRAM_AND_TPM = 8 | 64


class TransientDom(tm.Dom):
    def isPersistent(self):  # noqa: N802 - libvirt's name
        return 0


class SnapshotDom(tm.Dom):
    """libvirt refuses to undefine an inactive domain with snapshots unless told to drop their metadata."""

    def snapshotNum(self, flags=0):  # noqa: N802
        return 1

    def hasManagedSaveImage(self, flags=0):  # noqa: N802
        return 0

    def listAllCheckpoints(self, flags=0):  # noqa: N802
        return []

    def undefineFlags(self, flags=0):  # noqa: N802
        self.calls.append(("undefineFlags", flags))
        raise tm.LibvirtFail("Requested operation is not valid: cannot delete inactive domain with 1 snapshots", 55)


@pytest.fixture
def leftover_on_source():
    src_host, dst_host = tm.Host(), tm.Host()

    def make(src_cls=tm.Dom, dst_cls=tm.Dom, dst_state=(rc.RUNNING, rc.RUNNING_MIGRATED)):
        src = src_cls("vm1", src_host, state=(rc.SHUTOFF, rc.SHUTOFF_MIGRATED))
        dst = dst_cls("vm1", dst_host, state=dst_state)
        return src_host, dst_host, src, dst
    return make


def test_already_there_removes_the_leftover_definition_keeping_nvram_and_tpm(leftover_on_source):
    src_host, dst_host, src, dst = leftover_on_source()
    result = tm.run(src_host, dst_host, MigrationSpec(mode="postcopy", **tm.FAST))
    assert result.outcome == "already_there" and result.ok and result.changed
    assert "vm1" not in src_host.domains, "the leftover definition is gone"
    assert src.calls == [("undefineFlags", KEEP_NVRAM_AND_TPM)]
    assert dst.calls == [] and "vm1" in dst_host.domains
    assert f"removed its leftover definition on {tm.SRC_URI}" in result.message
    assert [s.action for s in result.steps] == ["undefine_source"]


def test_a_paused_destination_copy_counts_as_holding_the_vm(leftover_on_source):
    src_host, dst_host, src, _dst = leftover_on_source(dst_state=(rc.PAUSED, rc.PAUSED_USER))
    result = tm.run(src_host, dst_host, MigrationSpec(**tm.FAST))
    assert result.outcome == "already_there" and "vm1" not in src_host.domains


def test_a_transient_destination_copy_keeps_the_only_persistent_definition(leftover_on_source):
    src_host, dst_host, src, _dst = leftover_on_source(dst_cls=TransientDom)
    result = tm.run(src_host, dst_host, MigrationSpec(**tm.FAST))
    assert result.outcome == "already_there" and result.ok and not result.changed
    assert "vm1" in src_host.domains and "undefineFlags" not in src.names()
    assert "transient" in result.message and "only persistent one" in result.message, result.message
    assert f"virsh -c {tm.DST_URI} define vm1.xml" in result.recovery, result.recovery


def test_a_refused_undefine_names_the_host_that_keeps_it_and_the_fix(leftover_on_source):
    src_host, dst_host, src, _dst = leftover_on_source(src_cls=SnapshotDom)
    result = tm.run(src_host, dst_host, MigrationSpec(**tm.FAST))
    assert result.outcome == "already_there" and result.ok
    assert src.calls == [("undefineFlags", KEEP_NVRAM_AND_TPM)], "never with SNAPSHOTS_METADATA or MANAGED_SAVE"
    assert f"still defined on {tm.SRC_URI}" in result.message and "it has 1 snapshot" in result.message
    assert f"virsh -c {tm.SRC_URI} undefine vm1 --keep-nvram --keep-tpm" in result.recovery
    assert "snapshot-list" in result.recovery
    step = [s for s in result.steps if s.action == "undefine_source"][0]
    assert step.error and "1 snapshot" in step.error


def test_a_different_domain_with_the_same_name_is_not_touched(leftover_on_source):
    src_host, dst_host, src, dst = leftover_on_source()
    dst.uuid = "another-uuid"
    result = tm.run(src_host, dst_host, MigrationSpec(**tm.FAST))
    assert result.outcome == "already_there" and "vm1" in src_host.domains
    assert "undefineFlags" not in src.names() and "different domain" in result.message


def test_undefine_source_false_keeps_it(leftover_on_source):
    src_host, dst_host, src, _dst = leftover_on_source()
    result = tm.run(src_host, dst_host, MigrationSpec(persist_dest=True, undefine_source=False, **tm.FAST))
    assert result.outcome == "already_there" and not result.changed and "vm1" in src_host.domains
    assert src.calls == []


def test_check_mode_says_what_would_happen_to_the_leftover(leftover_on_source):
    src_host, dst_host, src, _dst = leftover_on_source()
    would = plan(src_host, dst_host, "vm1", tm.DST_URI, MigrationSpec(**tm.FAST), source_uri=tm.SRC_URI)
    assert would["action"] == "already_there" and would["changed"]
    assert "would remove the leftover shut-off definition" in would["message"]
    assert src.calls == [] and "vm1" in src_host.domains


def test_the_recovered_postcopy_path_uses_the_same_rule():
    """_drop_stale_source after a resumed post-copy: the same flags, the same refusal text."""
    src_host, dst_host = tm.Host(), tm.Host()
    dom = SnapshotDom("vm1", src_host)
    dom.samples = tm.hot_series(3)
    dom.on_end = tm.postcopy_interrupted(src_host, dst_host, dom)

    def resumed():
        dom.st = (rc.SHUTOFF, rc.SHUTOFF_MIGRATED)
        dst_host.domains["vm1"].st = (rc.RUNNING, rc.RUNNING_MIGRATED)
        return 0

    dom.on_resume = [resumed]
    result = tm.run(src_host, dst_host, MigrationSpec(mode="postcopy", **tm.FAST), tm.Clock())
    assert result.outcome == "postcopy_recovered" and result.ok
    assert ("undefineFlags", KEEP_NVRAM_AND_TPM) in dom.calls
    assert f"still defined on {tm.SRC_URI}" in result.message and "1 snapshot" in result.message
    assert "--keep-nvram --keep-tpm" in result.recovery


def test_the_rule_itself():
    running = rc.SideView(uri="dst", present=True, state=rc.RUNNING, reason=1, persistent=True)
    shut_off = rc.SideView(uri="src", present=True, state=rc.SHUTOFF, reason=4, persistent=True)
    assert leftover.leftover_problem(shut_off, running) is None
    paused_src = rc.SideView(uri="src", present=True, state=rc.PAUSED, reason=1)
    assert "not a shut-off leftover" in leftover.leftover_problem(paused_src, running)
    gone = rc.SideView(uri="dst", present=False)
    assert "no running or paused copy" in leftover.leftover_problem(shut_off, gone)
    unknown = rc.SideView(uri="dst", present=True, state=rc.RUNNING, reason=1, persistent=None)
    assert "could not be read" in leftover.leftover_problem(shut_off, unknown)
    unreachable = rc.SideView(uri="dst", reachable=False, error="no route")
    assert "cannot be read" in leftover.leftover_problem(shut_off, unreachable)


def test_snapshot_metadata_goes_only_when_a_definition_move_carried_it_over():
    """A leftover's undefine never drops snapshot metadata; a definition move that redefined the snapshots on
    the destination drops the source's copy of that metadata with the definition (the disks keep the data)."""
    host = tm.Host()
    dom = tm.Dom("vm1", host, state=(rc.SHUTOFF, rc.SHUTOFF_MIGRATED))
    leftover.undefine(host, "vm1", "src", snapshots_carried=True)
    assert dom.calls == [("undefineFlags", KEEP_NVRAM_AND_TPM | 2)] and "vm1" not in host.domains
    kept = SnapshotDom("vm2", host, state=(rc.SHUTOFF, rc.SHUTOFF_MIGRATED))
    with pytest.raises(leftover.DefinitionKept) as failed:
        leftover.undefine(host, "vm2", "src")
    assert kept.calls == [("undefineFlags", KEEP_NVRAM_AND_TPM)] and "it has 1 snapshot" in failed.value.message
