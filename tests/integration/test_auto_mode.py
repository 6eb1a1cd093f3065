"""The `auto` mode on the lab: dirty rates measured by libvirt choose pre-copy for an idle VM and
post-copy for a VM that dirties memory faster than the shaped link; predicted vs actual is printed."""

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common import connection
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import migration
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import facts, forecast, policy
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import spec_for

pytestmark = pytest.mark.lab

MIB = 2**20
LINK_MBIT = 100
LINK_BPS = LINK_MBIT * 1_000_000 / 8


def test_auto_mode_picks_precopy_for_idle_and_postcopy_for_hot(lab, make_vm):
    vms = {"idle": make_vm("hv1"), "hot": make_vm("hv1", dirty_mb=128, dirty_rate=0)}
    boots = {kind: lab.wait_heartbeat_advances(vm, timeout=90) for kind, vm in vms.items()}
    lab.shape("hv1", LINK_MBIT)
    src = connection.connect(lab.uri("hv1"))
    dst = connection.connect(lab.uri("hv2"))
    call = connection.connect(lab.uri("hv1"))
    try:
        doms = [src.lookupByName(vm) for vm in vms.values()]
        rates = facts.measure_dirty_rates(doms, seconds=1)
        results, forecasts = {}, {}
        for kind, vm in vms.items():
            rate = rates[vm]
            assert not isinstance(rate, Exception), rate
            settings = policy.select_policy([], vm, {}, 256).settings  # the built-in default: mode auto
            assert settings["mode"] == "auto"
            # as the drain's plan does (vm_plan.forecast_vm): what is sent is the memory in use, from QEMU's
            # resident size, not the whole RAM
            rss = src.lookupByName(vm).memoryStats().get("rss", 0) * 1024
            ratio, working_set = forecast.guest_memory(256 * MIB, rss, "qemu")
            fc = forecast.forecast_for_settings(settings, 256 * MIB, rate, LINK_BPS, transferable_ratio=ratio,
                                                dirty_working_set=working_set)
            forecasts[kind] = fc
            spec = spec_for(settings, fc, migrate_uri=f"tcp://{lab.addr('hv2')}")
            try:
                results[kind] = migration.migrate(src, dst, vm, lab.uri("hv2"), spec, source_uri=lab.uri("hv1"),
                                                  call_conn=call)
            except migration.MigrationFailed as exc:
                results[kind] = exc.result
            r = results[kind]
            print(f"\nAUTO {kind}: dirty {rate / MIB:.1f} MiB/s, link {LINK_BPS / MIB:.1f} MiB/s -> {fc.mode} "
                  f"({fc.reason}); predicted {fc.predicted_duration_s:.1f} s / {fc.predicted_downtime_ms:.0f} ms, "
                  f"actual {r.duration_s:.1f} s / {r.downtime_ms} ms, outcome {r.outcome}, mode {r.mode_used}")
    finally:
        lab.unshape("hv1")
        for conn in (call, src, dst):
            connection.close_quietly(conn)

    assert rates[vms["idle"]] < rates[vms["hot"]]
    assert forecasts["idle"].mode == "precopy", forecasts["idle"].reason
    assert forecasts["hot"].mode == "postcopy", forecasts["hot"].reason
    assert "post-copy" in forecasts["hot"].reason
    for kind, vm in vms.items():
        assert results[kind].outcome == "moved", results[kind].message
        assert lab.running_on(vm) == ["hv2"]
        after = lab.wait_heartbeat_advances(vm, beyond=boots[kind].last_n, timeout=60)
        assert after.boot_id == boots[kind].boot_id, f"{vm} restarted"
    assert results["hot"].mode_used == "postcopy"
