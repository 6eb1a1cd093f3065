"""The maintenance_window filter: open or not, when it closes, how long is left, when it opens next."""

from __future__ import annotations

import datetime

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.hvfleet.drain.plugins.filter.maintenance import FilterModule, maintenance_window


def test_no_window_is_always_open():
    for spec in (None, "", [], {}):
        state = maintenance_window(spec, now="2025-06-01T12:00:00Z")
        assert state["open"] and not state["defined"] and state["closes_at"] is None and state["remaining_s"] is None


def test_daily_window_that_wraps_midnight():
    inside = maintenance_window("22:00-04:00", now="2025-06-01T23:00:00Z")
    assert inside["open"] and inside["closes_at"] == "2025-06-02T04:00:00Z" and inside["remaining_s"] == 18000.0
    after_midnight = maintenance_window("22:00-04:00", now="2025-06-02T01:30:00Z")
    assert after_midnight["open"] and after_midnight["closes_at"] == "2025-06-02T04:00:00Z"
    outside = maintenance_window("22:00-04:00", now="2025-06-02T12:00:00Z")
    assert not outside["open"] and outside["closes_at"] is None and outside["remaining_s"] is None
    assert outside["opens_at"] == "2025-06-02T22:00:00Z" and "22:00-04:00" in outside["description"]


def test_end_is_exclusive_and_24_00_is_midnight():
    assert not maintenance_window("08:00-09:00", now="2025-06-01T09:00:00Z")["open"]
    whole = maintenance_window("00:00-24:00", now="2025-06-01T10:00:00Z")  # open every day: it never closes
    assert whole["open"] and whole["defined"] and whole["closes_at"] is None and whole["remaining_s"] is None
    evening = maintenance_window("18:00-24:00", now="2025-06-01T23:00:00Z")
    assert evening["open"] and evening["closes_at"] == "2025-06-02T00:00:00Z" and evening["remaining_s"] == 3600.0


def test_absolute_window_and_naive_times_are_utc():
    spec = {"start": "2025-06-01T22:00:00", "end": "2025-06-02T02:00:00+02:00"}
    state = maintenance_window(spec, now="2025-06-01T23:00:00Z")
    assert state["open"] and state["closes_at"] == "2025-06-02T00:00:00Z" and state["remaining_s"] == 3600.0
    before = maintenance_window(spec, now="2025-06-01T21:00:00Z")
    assert not before["open"] and before["opens_at"] == "2025-06-01T22:00:00Z"
    long = maintenance_window({"start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z"},
                              now="2025-06-01T00:00:00Z")
    assert long["open"] and long["closes_at"] == "2099-01-01T00:00:00Z"
    gone = maintenance_window(spec, now="2025-06-03T00:00:00Z")
    assert not gone["open"] and gone["opens_at"] is None


def test_overlapping_windows_of_a_list_are_joined():
    spec = ["20:00-22:00", {"start": "2025-06-01T21:30:00Z", "end": "2025-06-01T23:00:00Z"}, "22:30-23:30"]
    state = maintenance_window(spec, now="2025-06-01T20:30:00Z")
    assert state["open"] and state["closes_at"] == "2025-06-01T23:30:00Z"
    # the next day the absolute window is gone: the daily ones do not touch
    assert maintenance_window(spec, now="2025-06-02T20:30:00Z")["closes_at"] == "2025-06-02T22:00:00Z"


def test_invalid_windows_fail_with_the_parser_message():
    with pytest.raises(AnsibleFilterError, match="not HH:MM-HH:MM"):
        maintenance_window("late evening")
    with pytest.raises(AnsibleFilterError, match="ends .* before it starts"):
        maintenance_window({"start": "2025-06-02T00:00:00Z", "end": "2025-06-01T00:00:00Z"})
    with pytest.raises(AnsibleFilterError, match="not an ISO 8601"):
        maintenance_window("10:00-11:00", now="yesterday")


def test_default_now_is_the_current_time_and_the_filter_is_registered():
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017
    hour = datetime.timedelta(hours=1)
    state = maintenance_window({"start": (now - hour).isoformat(), "end": (now + hour).isoformat()})
    assert state["open"] and 3500 < state["remaining_s"] <= 3600
    assert FilterModule().filters()["maintenance_window"] is maintenance_window
