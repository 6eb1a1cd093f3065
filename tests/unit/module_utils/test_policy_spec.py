"""Policy settings + forecast -> MigrationSpec."""

from __future__ import annotations

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import InvalidSpec
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import VIR_MIGRATE_NON_SHARED_DISK
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import forecast_for_settings
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import select_policy
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import effective_mode, spec_for

MIB = 1024 * 1024


def defaults(**changes):
    settings = select_policy([], "vm").settings
    settings.update(changes)
    return settings


def test_defaults_map_to_the_engine_vocabulary():
    spec = spec_for(defaults(), migrate_uri="tcp://10.0.0.2")
    assert spec.mode == "precopy" and spec.compression is None and spec.copy_storage is None
    assert spec.max_downtime_ms == 500 and spec.max_downtime_cap_ms == 2000 and spec.on_timeout == "abort"
    assert spec.migrate_uri == "tcp://10.0.0.2" and spec.persist_dest and spec.undefine_source


def test_auto_takes_the_forecast_choice():
    settings = defaults()
    hot = forecast_for_settings(settings, 2048 * MIB, 140 * MIB, 48 * MIB)
    assert hot.mode == "postcopy"
    spec = spec_for(settings, hot)
    assert spec.mode == "postcopy" and spec.postcopy_armed
    mode, _ac, why = effective_mode(settings, hot)
    assert mode == "postcopy" and "post-copy" in why


def test_auto_converge_from_the_forecast():
    settings = defaults(allow_postcopy=False)
    fc = forecast_for_settings(settings, 512 * MIB, 30 * MIB, 48 * MIB)
    spec = spec_for(settings, fc)
    assert fc.mode == "precopy" and fc.auto_converge == spec.auto_converge


def test_refused_forecast_is_an_error_with_the_reason():
    settings = defaults(allow_postcopy=False, completion_timeout_per_gib_s=1)
    fc = forecast_for_settings(settings, 4096 * MIB, 500 * MIB, 10 * MIB)
    assert fc.mode == "refuse"
    with pytest.raises(InvalidSpec) as info:
        spec_for(settings, fc)
    assert "refuse" in str(info.value)


def test_storage_compression_bandwidth_and_transient_domains():
    spec = spec_for(defaults(storage="copy_all", compression="xbzrle", bandwidth_mib=500, mode="precopy"),
                    bandwidth_mib=200, persistent=False)
    assert spec.copy_storage == "all" and spec.flags() & VIR_MIGRATE_NON_SHARED_DISK
    assert spec.compression == "xbzrle" and spec.bandwidth_mib == 200
    assert not spec.persist_dest and not spec.undefine_source
    assert spec_for(defaults(storage="copy_incremental")).copy_storage == "incremental"
    assert spec_for(defaults(bandwidth_mib=100), bandwidth_mib=300).bandwidth_mib == 100


def test_explicit_mode_wins_over_the_forecast():
    settings = defaults(mode="postcopy_after_precopy")
    fc = forecast_for_settings(defaults(), 512 * MIB, 0, 100 * MIB)
    assert spec_for(settings, fc).mode == "postcopy_after_precopy"


@pytest.mark.parametrize("share, policy_mib, expected", [
    (None, None, None), (0, None, None), (float("inf"), None, None), (1e300, None, None),  # no limit
    (float("inf"), 100, 100), (2**80, 100, 100),  # above what libvirt can express: the policy's limit alone
    (0.4, None, 1), (250.9, 100, 100), (250.9, 1000, 250)])
def test_the_drains_bandwidth_share_caps_the_policy_and_beyond_libvirt_means_no_limit(share, policy_mib, expected):
    assert spec_for(defaults(bandwidth_mib=policy_mib), bandwidth_mib=share).bandwidth_mib == expected


@pytest.mark.parametrize("share", [float("nan"), -5, float("-inf")])
def test_a_nonsense_bandwidth_share_is_an_invalid_spec_not_a_crash_or_a_1_mib_throttle(share):
    with pytest.raises(InvalidSpec, match="bandwidth share") as info:
        spec_for(defaults(), bandwidth_mib=share)
    assert info.value.hint
