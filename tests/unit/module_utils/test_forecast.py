"""The `auto` mode model: pre-copy iterations, post-copy, the decision rule, and drain totals."""

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import drain_forecast as D
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import forecast as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

MIB = F.MIB
GIB = F.GIB
P = F.DEFAULT_PARAMS


# ---- the decision rule ---------------------------------------------------------------------------


def test_idle_vm_gets_precopy_in_one_pass():
    result = F.forecast(256 * MIB, 1 * MIB, 600 * MIB)
    assert result.mode == "precopy" and not result.auto_converge and result.completes
    assert result.iterations == 1
    # one pass of RAM plus setup, and a pause of a few ms plus the switchover
    assert result.predicted_duration_s == pytest.approx(P.setup_s + 256 / 600, rel=0.02)
    # the whole pass fits the 500 ms limit: QEMU switches after its first 100 ms, with the rest pending
    pending = 256 - 600 * P.first_check_s + P.dirty_rate_floor_bps / MIB * P.first_check_s
    assert result.predicted_downtime_ms == pytest.approx(P.precopy_switchover_ms + pending / 600 * 1000, abs=0.5)
    assert result.reason.endswith("-> pre-copy")


def test_zero_pages_shorten_the_first_pass():
    full = F.forecast(256 * MIB, 0, 600 * MIB)
    sparse = F.forecast(256 * MIB, 0, 600 * MIB, transferable_ratio=0.1)
    assert sparse.predicted_bytes == pytest.approx(full.predicted_bytes * 0.1, rel=0.01)
    assert sparse.predicted_duration_s < full.predicted_duration_s


def test_guest_memory_from_the_resident_size():
    # unknown: all of RAM may have to go, as before
    assert F.guest_memory(256 * MIB, None) == (1.0, None)
    # lab, TCG: an idle 256 MiB guest's QEMU held 222 MiB and sent 92 MiB
    ratio, working_set = F.guest_memory(256 * MIB, 222 * MIB, "qemu")
    assert ratio * 256 == pytest.approx(222 - P.qemu_overhead_mib_tcg) and working_set == ratio * 256 * MIB
    assert 0.3 < ratio < 0.45
    # KVM: a smaller overhead is taken off (over-predicting is the safe side); never above RAM
    assert F.guest_memory(256 * MIB, 222 * MIB, "kvm")[0] > ratio
    assert F.guest_memory(256 * MIB, 900 * MIB, "kvm") == (1.0, 256 * MIB)
    # a guest that touched almost nothing still sends something
    assert F.guest_memory(256 * MIB, 100 * MIB, "qemu")[0] == P.min_transferable_ratio


def test_a_small_working_set_makes_postcopy_resend_only_that():
    """Lab hot guest (384 MiB, rewrites 192 MiB, ~262 MiB in use): by post-copy it sent 455 MiB, where
    the model without a working set predicted all of RAM twice (768 MiB)."""
    ratio, working_set = F.guest_memory(384 * MIB, 392 * MIB, "qemu")
    blind = F.forecast(384 * MIB, 60 * MIB, 18 * MIB)
    seen = F.forecast(384 * MIB, 60 * MIB, 18 * MIB, transferable_ratio=ratio, dirty_working_set=working_set)
    assert blind.mode == seen.mode == "postcopy"
    assert blind.predicted_bytes == 768 * MIB
    assert seen.predicted_bytes == pytest.approx(2 * working_set, rel=0.01)
    assert abs(seen.predicted_bytes / (455 * MIB) - 1) < 0.2
    assert "~264 of 384 MiB in use" in seen.reason


def test_hot_vm_gets_postcopy_when_allowed():
    result = F.forecast(2 * GIB, 140 * MIB, 48 * MIB)
    assert result.mode == "postcopy"
    # the pause the guest sees: the switch, then its first writes fault on pages still on the source
    stall = P.postcopy_stall_bytes / (48 * MIB) * 1000
    assert result.predicted_stall_ms == pytest.approx(stall, abs=0.1)
    assert result.predicted_downtime_ms == pytest.approx(P.postcopy_switchover_ms + stall, abs=0.1)
    assert "guest paused ~895 ms" in result.reason
    assert result.reason.startswith("dirty 140 MiB/s = 2.92 x link 48 MiB/s: pre-copy cannot converge")
    assert "post-copy allowed -> post-copy" in result.reason
    # one pass of RAM, then all RAM dirtied during it, at the link
    assert result.predicted_bytes == 4 * GIB
    assert result.predicted_duration_s == pytest.approx(
        P.setup_s + 2048 / 48 + P.postcopy_switchover_ms / 1000 + 2048 / 48, rel=0.01)


def test_hot_vm_gets_autoconverge_when_postcopy_is_not_allowed():
    result = F.forecast(1 * GIB, 140 * MIB, 100 * MIB, allow_postcopy=False, dirty_working_set=256 * MIB)
    assert (result.mode, result.auto_converge, result.completes) == ("precopy", True, True)
    assert result.throttle_pct >= 30  # 140 MiB/s must be cut below the link to converge
    assert result.predicted_duration_s <= result.deadline_s
    assert "post-copy not allowed -> pre-copy with auto-converge" in result.reason


def test_refuses_when_nothing_meets_the_deadline():
    result = F.forecast(512 * MIB, 140 * MIB, 48 * MIB, allow_postcopy=False, deadline_s=20)
    assert (result.mode, result.completes) == ("refuse", False)
    assert result.predicted_duration_s is None and result.predicted_bytes is None
    assert "post-copy not allowed -> refuse" in result.reason
    assert "auto-converge" in result.reason


def test_refuses_when_even_postcopy_is_too_slow_for_the_deadline():
    # a 4 GiB hot guest on a 10 MiB/s link: one pass alone takes 400 s, deadline 60 s
    result = F.forecast(4 * GIB, 50 * MIB, 10 * MIB, deadline_s=60)
    assert result.mode == "refuse"
    assert "post-copy would take" in result.reason


def test_precopy_converging_only_at_the_cap_is_still_precopy():
    # dirty 300 MiB/s > link 200 MiB/s, but the working set is 150 MiB: once the pass only resends
    # that set it needs a 750 ms pause - more than max downtime 500, under the cap 2000
    result = F.forecast(1 * GIB, 300 * MIB, 200 * MIB, dirty_working_set=150 * MIB, deadline_s=600,
                        max_downtime_ms=500, max_downtime_cap_ms=2000)
    assert result.mode == "precopy"
    assert 500 < result.predicted_downtime_ms <= 2000 + P.precopy_switchover_ms
    assert "raised to the cap" in result.reason


def test_explicit_auto_converge_is_used_in_auto_mode_precopy():
    result = F.forecast(1 * GIB, 140 * MIB, 100 * MIB, auto_converge=True, dirty_working_set=256 * MIB)
    assert result.mode == "precopy" and result.auto_converge and result.throttle_pct > 0


# ---- explicit modes -------------------------------------------------------------------------------


def test_lab_hot_guest_with_timeout_suspend_matches_the_measured_run():
    # lab-facts.md: 512 MiB guest dirtying 256 MiB in a loop (~140 MB/s), bandwidth 50 MiB/s,
    # --timeout 15 with suspend: 21.6 s, 1.05 GiB sent, downtime 6.2 s.
    result = F.forecast(512 * MIB, 140e6, 50 * MIB, mode="precopy", deadline_s=15, on_timeout="suspend",
                        dirty_working_set=256 * MIB)
    assert result.completes
    assert result.predicted_duration_s == pytest.approx(21.6, rel=0.15)
    assert result.predicted_bytes == pytest.approx(1.05 * GIB, rel=0.10)
    assert result.predicted_downtime_ms == pytest.approx(6200, rel=0.15)


def test_explicit_precopy_that_times_out_with_abort_is_predicted_to_fail():
    result = F.forecast(512 * MIB, 140 * MIB, 50 * MIB, mode="precopy", deadline_s=30)
    assert (result.mode, result.completes) == ("precopy", False)
    assert result.predicted_duration_s == 30
    assert result.predicted_downtime_ms == 0
    assert "on_timeout abort" in result.reason


def test_explicit_precopy_with_on_timeout_postcopy_switches_at_the_deadline():
    result = F.forecast(512 * MIB, 140 * MIB, 50 * MIB, mode="precopy", deadline_s=30, on_timeout="postcopy")
    assert result.completes
    assert result.predicted_downtime_ms == pytest.approx(
        P.postcopy_switchover_ms + P.postcopy_stall_bytes / (50 * MIB) * 1000, abs=0.1)
    assert result.predicted_duration_s > 30


def test_explicit_postcopy_switches_after_the_first_pass():
    result = F.forecast(1 * GIB, 10 * MIB, 100 * MIB, mode="postcopy", postcopy_bandwidth=50 * MIB)
    assert result.mode == "postcopy" and result.iterations == 1
    dirtied = 10 * 1024 / 100  # MiB dirtied during the 10.24 s pass
    assert result.predicted_bytes == pytest.approx((1024 + dirtied) * MIB, rel=0.001)
    assert result.predicted_duration_s == pytest.approx(
        P.setup_s + 1024 / 100 + P.postcopy_switchover_ms / 1000 + dirtied / 50, rel=0.001)


def test_postcopy_after_precopy_on_an_idle_vm_never_switches():
    result = F.forecast(256 * MIB, 0.5 * MIB, 500 * MIB, mode="postcopy_after_precopy")
    assert result.mode == "postcopy_after_precopy"
    assert result.predicted_downtime_ms <= 500 + P.precopy_switchover_ms
    assert "no switch to post-copy expected" in result.reason


def test_postcopy_after_precopy_on_a_hot_vm_switches():
    result = F.forecast(512 * MIB, 140 * MIB, 50 * MIB, mode="postcopy_after_precopy")
    assert result.iterations == P.postcopy_after_passes
    assert result.predicted_downtime_ms == pytest.approx(
        P.postcopy_switchover_ms + P.postcopy_stall_bytes / (50 * MIB) * 1000, abs=0.1)


def test_forecast_for_settings_uses_the_policy_limits():
    settings_ = {"mode": "precopy", "bandwidth_mib": 50, "max_downtime_ms": 500, "max_downtime_cap_ms": 500,
                 "completion_timeout_per_gib_s": 150, "on_timeout": "abort", "allow_postcopy": True}
    capped = F.forecast_for_settings(settings_, 1 * GIB, 0, 1000 * MIB)
    floor_mib = P.dirty_rate_floor_bps / MIB  # what a reading of 0 may hide, dirtied during the one pass
    assert capped.predicted_duration_s == pytest.approx(P.setup_s + 1024 / 50 + floor_mib * 1024 / 50 / 50, rel=0.01)
    assert capped.deadline_s == 150


def test_deadline_is_per_gib_with_the_engines_floor():
    assert F.deadline_for(4 * GIB, 150) == 600
    assert F.deadline_for(256 * MIB, 150) == 60  # 37.5 s raised to the 60 s floor
    assert F.forecast(4 * GIB, 0, 1000 * MIB).deadline_s == 600


@pytest.mark.parametrize("kwargs", [
    {"bandwidth": 0}, {"dirty_rate": -1}, {"ram_bytes": 0}, {"mode": "fast"}, {"on_timeout": "pray"},
    {"mode": "postcopy", "allow_postcopy": False}, {"transferable_ratio": 0}, {"transferable_ratio": 1.5},
])
def test_impossible_inputs_raise(kwargs):
    args = {"ram_bytes": GIB, "dirty_rate": MIB, "bandwidth": 100 * MIB}
    args.update(kwargs)
    with pytest.raises(F.ForecastError) as info:
        F.forecast(**args)
    assert isinstance(info.value, HvfleetError) and info.value.hint


# ---- properties -------------------------------------------------------------------------------

RAM = st.sampled_from([128 * MIB, 512 * MIB, 2 * GIB, 16 * GIB])
BW = st.floats(min_value=5 * MIB, max_value=2000 * MIB)
RATE = st.floats(min_value=0, max_value=3000 * MIB)


@settings(max_examples=300, deadline=None)
@given(ram=RAM, bw=BW, r1=RATE, r2=RATE, wss=st.one_of(st.none(), st.sampled_from([64 * MIB, 256 * MIB])),
       downtime=st.sampled_from([50, 500]), escalate=st.one_of(st.none(), st.just(2000)),
       deadline=st.sampled_from([10.0, 60.0, 600.0]), ratio=st.sampled_from([0.1, 1.0]))
def test_more_dirty_rate_never_predicts_a_shorter_precopy(ram, bw, r1, r2, wss, downtime, escalate, deadline, ratio):
    low, high = sorted((r1, r2))
    kw = {"escalate_to_ms": escalate, "dirty_working_set": wss, "transferable_ratio": ratio}
    slow = F.simulate_precopy(ram, low, bw, deadline, downtime, **kw)
    fast = F.simulate_precopy(ram, high, bw, deadline, downtime, **kw)
    assert fast.elapsed_s >= slow.elapsed_s - 1e-9
    assert fast.iterations >= slow.iterations or not fast.converged
    assert not (fast.converged and not slow.converged)
    # the same holds for the forecast of an explicit pre-copy (no downtime escalation)
    one = F.forecast(ram_bytes=ram, dirty_rate=low, bandwidth=bw,
                     mode="precopy", max_downtime_ms=downtime, max_downtime_cap_ms=downtime,
                     deadline_s=deadline, dirty_working_set=wss, transferable_ratio=ratio)
    two = F.forecast(ram_bytes=ram, dirty_rate=high, bandwidth=bw,
                     mode="precopy", max_downtime_ms=downtime, max_downtime_cap_ms=downtime,
                     deadline_s=deadline, dirty_working_set=wss, transferable_ratio=ratio)
    assert two.predicted_duration_s >= one.predicted_duration_s - 1e-6


@settings(max_examples=300, deadline=None)
@given(ram=RAM, bw=BW, rate=RATE, allow=st.booleans(), cap=st.sampled_from([500, 2000, 10000]),
       per_gib=st.sampled_from([10.0, 150.0, 800.0]), wss=st.one_of(st.none(), st.just(256 * MIB)))
def test_auto_choices_keep_their_promises(ram, bw, rate, allow, cap, per_gib, wss):
    result = F.forecast(ram, rate, bw, allow_postcopy=allow, max_downtime_cap_ms=cap,
                        completion_timeout_per_gib_s=per_gib, dirty_working_set=wss)
    assert result.mode in ("precopy", "postcopy", "refuse")
    assert result.reason
    if result.mode == "refuse":
        assert not result.completes and result.predicted_duration_s is None
        return
    assert result.completes
    assert result.predicted_duration_s <= result.deadline_s + 1e-6
    if result.mode == "postcopy":
        assert allow
    else:
        assert result.predicted_downtime_ms <= cap + P.precopy_switchover_ms + 1e-6


@settings(max_examples=100, deadline=None)
@given(ram=RAM, bw=BW, rate=RATE)
def test_precopy_sends_at_least_what_is_transferable(ram, bw, rate):
    result = F.simulate_precopy(ram, rate, bw, 600.0, 500)
    assume(result.converged)
    assert result.bytes_sent >= ram * (1 - 1e-12)  # float sums
    assert result.pause_ms <= 500 + P.precopy_switchover_ms + 1e-6


# ---- drain totals ------------------------------------------------------------------------------


def fc(duration, mode="precopy", completes=True, downtime=20.0, sent=GIB):
    return F.Forecast(mode, False, "test", duration, downtime, sent, 1, completes)


def test_drain_is_list_scheduled_on_lanes():
    result = D.forecast_drain({"a": fc(10), "b": fc(10), "c": fc(10), "d": fc(30)}, concurrency=2)
    assert result.total_s == 40  # a,b in parallel; c after a; d after b
    assert result.serial_s == 60
    assert result.migrations == 4
    assert result.predicted_bytes == 4 * GIB


def test_one_lane_is_the_plain_sum_and_lanes_never_make_it_slower():
    items = [fc(d) for d in (5, 7, 11, 13)]
    serial = D.forecast_drain(items, concurrency=1)
    assert serial.total_s == serial.serial_s == 36
    assert D.forecast_drain(items, concurrency=4).total_s == 13
    assert D.forecast_drain(items, concurrency=2).total_s >= 36 / 2


def test_refused_and_aborting_vms_block_the_drain():
    refused = F.Forecast("refuse", False, "no", None, None, None, 0, False)
    result = D.forecast_drain({"ok": fc(10, downtime=300), "hot": refused, "late": fc(60, completes=False)})
    assert result.blocked == ("hot", "late")
    assert result.total_s == 70  # the aborting one still occupies its lane until its deadline
    assert result.worst_downtime_ms == 300
    assert "blocked: hot, late" in result.summary


def test_drain_rejects_zero_lanes():
    with pytest.raises(F.ForecastError):
        D.forecast_drain([fc(1)], concurrency=0)
