# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's local disks count in its forecast only when its policy copies them (planning/vm_plan.forecast_vm)."""

from __future__ import annotations

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import VmInfo
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import DEFAULT_SETTINGS
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import forecast_vm

MIB = 1024 * 1024
LINK = 100 * MIB  # bytes/s


def vm(disk_mib: int) -> VmInfo:
    return VmInfo(name="db1", memory_mib=1024, vcpus=1, active=True, persistent=True, dirty_rate_bps=0.0,
                  resident_mib=1024, local_disk_bytes=disk_mib * MIB)


@pytest.mark.parametrize("storage", ["copy_all", "copy_incremental"])
def test_a_copying_policy_counts_the_local_disks_in_time_bytes_and_deadline(storage):
    settings = dict(DEFAULT_SETTINGS, storage=storage, mode="precopy")
    without, _note = forecast_vm(vm(0), settings, LINK)
    with_disks, _note = forecast_vm(vm(2048), settings, LINK)
    assert with_disks is not None and without is not None
    assert with_disks.disk_bytes == 2048 * MIB
    assert with_disks.predicted_bytes - without.predicted_bytes == pytest.approx(2048 * MIB, rel=0.05)
    assert with_disks.predicted_duration_s - without.predicted_duration_s == pytest.approx(2048 * MIB / LINK, rel=0.1)
    assert with_disks.deadline_s > without.deadline_s


def test_shared_only_sends_no_disk_bytes():
    settings = dict(DEFAULT_SETTINGS, storage="shared_only", mode="precopy")
    fc, _note = forecast_vm(vm(2048), settings, LINK)
    without, _note = forecast_vm(vm(0), settings, LINK)
    assert fc is not None and without is not None
    assert fc.disk_bytes == 0 and fc.predicted_bytes == without.predicted_bytes
