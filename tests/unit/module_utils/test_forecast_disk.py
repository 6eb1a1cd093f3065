"""Copied disks in the forecast and the deadline; the post-copy stall the guest sees."""

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import forecast as F
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import precopy

MIB = F.MIB
GIB = F.GIB
P = F.DEFAULT_PARAMS


def test_disk_bytes_go_first_and_count_in_time_and_bytes():
    plain = F.forecast(1 * GIB, 1 * MIB, 100 * MIB, transferable_ratio=0.5)
    disks = F.forecast(1 * GIB, 1 * MIB, 100 * MIB, transferable_ratio=0.5, disk_bytes=10 * GIB)
    assert disks.mode == plain.mode == "precopy"
    assert disks.predicted_duration_s == pytest.approx(plain.predicted_duration_s + 10 * 1024 / 100, rel=0.01)
    assert disks.predicted_bytes - plain.predicted_bytes == pytest.approx(10 * GIB, rel=0.001)
    assert disks.disk_bytes == 10 * GIB and plain.disk_bytes == 0


def test_disk_bytes_count_in_the_deadline():
    assert F.deadline_for(1 * GIB, 150) == 150
    assert F.deadline_for(1 * GIB, 150, disk_bytes=3 * GIB) == 600
    assert F.forecast(1 * GIB, 0, 100 * MIB, disk_bytes=3 * GIB).deadline_s == 600


def test_disks_that_cannot_be_copied_in_time_are_refused_or_fail():
    # 40 GiB at 10 MiB/s takes 4096 s; the deadline for 41 GiB is 6150 s, so it fits ...
    fits = F.forecast(1 * GIB, 0, 10 * MIB, disk_bytes=40 * GIB)
    assert fits.completes
    # ... but with an explicit 600 s deadline it does not
    late = F.forecast(1 * GIB, 0, 10 * MIB, disk_bytes=40 * GIB, deadline_s=600, mode="precopy")
    assert not late.completes and late.predicted_duration_s == 600


def test_forecast_for_settings_passes_disk_bytes():
    base = F.forecast_for_settings({}, 1 * GIB, 0, 100 * MIB)
    disks = F.forecast_for_settings({}, 1 * GIB, 0, 100 * MIB, disk_bytes=1 * GIB)
    assert disks.predicted_duration_s == pytest.approx(base.predicted_duration_s + 1024 / 100, rel=0.01)


def test_negative_disk_bytes_are_refused_with_the_fix():
    with pytest.raises(F.ForecastError) as err:
        F.forecast(1 * GIB, 0, 100 * MIB, disk_bytes=-1)
    assert "disk_bytes" in err.value.message and "shared storage" in err.value.hint


def test_postcopy_stall_is_capped_by_what_is_left():
    assert precopy.postcopy_stall_ms(1 * MIB, 10 * MIB) == pytest.approx(100.0)
    assert precopy.postcopy_stall_ms(10 * GIB, 35e6) == pytest.approx(1000.0)
    assert precopy.postcopy_stall_ms(0, 10 * MIB) == 0


def test_precopy_forecast_has_no_stall():
    result = F.forecast(256 * MIB, 1 * MIB, 100 * MIB)
    assert result.mode == "precopy" and result.predicted_stall_ms is None


def test_the_setup_time_is_the_same_for_small_and_large_idle_guests():
    # an idle guest whose memory in use is the same sends the same: the RAM size alone adds nothing
    small = F.forecast(256 * MIB, 0, 100 * MIB, transferable_ratio=0.5)
    large = F.forecast(512 * MIB, 0, 100 * MIB, transferable_ratio=0.25)
    assert small.predicted_duration_s == pytest.approx(large.predicted_duration_s)
    floor_mib = P.dirty_rate_floor_bps / MIB
    assert small.predicted_duration_s == pytest.approx(P.setup_s + 128 / 100 + floor_mib * 1.28 / 100, rel=0.01)


def test_a_reading_of_zero_is_taken_as_the_sampling_floor():
    # 128 MiB at 1000 MiB/s: the pass fits the limit; what is pending after QEMU's first 100 ms goes in the pause
    zero = F.forecast(256 * MIB, 0, 1000 * MIB, transferable_ratio=0.5)
    floor = F.forecast(256 * MIB, P.dirty_rate_floor_bps, 1000 * MIB, transferable_ratio=0.5)
    assert zero == floor
    assert "a sample cannot tell less from 0" in zero.reason


def test_qemu_switches_as_soon_as_what_is_pending_fits_the_limit():
    # 128 MiB at 100 MiB/s with a 500 ms limit (50 MiB): the switch comes mid-pass with ~50 MiB pending,
    # so the pause is about the limit, not what a whole pass would have left (lab: 260-900 ms at 500 ms)
    idle = F.forecast(256 * MIB, 0, 100 * MIB, transferable_ratio=0.5)
    assert idle.iterations == 1
    assert idle.predicted_downtime_ms == pytest.approx(500 + P.precopy_switchover_ms, abs=1)
    at, pending = precopy.switch_point(128 * MIB, 100 * MIB, 2 * MIB, 128 * MIB, 50 * MIB, 0.1)
    assert pending == pytest.approx(50 * MIB) and at == pytest.approx(78 / 98, rel=1e-6)
    # a pass that fits from the first check on
    at, pending = precopy.switch_point(40 * MIB, 100 * MIB, 0, 128 * MIB, 50 * MIB, 0.1)
    assert (at, pending) == (pytest.approx(0.1), pytest.approx(30 * MIB))
    # the working set caps what the guest adds
    at, pending = precopy.switch_point(100 * MIB, 100 * MIB, 200 * MIB, 10 * MIB, 50 * MIB)
    assert at == pytest.approx(0.6) and pending == pytest.approx(50 * MIB)
