# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`maintenance_window`: is a maintenance window open now, when does it close, when does it open next.

Windows are parsed by rolling_admission.parse_window (the same parser the hvfleet.drain.rolling
strategy uses), so the GitOps reconcile and the strategy agree on every window specification.
"""

from __future__ import annotations

import datetime

from ansible.errors import AnsibleFilterError
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet.rolling_admission import (
    AbsoluteWindow,
    AnyWindow,
    DailyWindow,
    RollingConfigError,
    parse_instant,
    parse_window,
)

UTC = datetime.timezone.utc  # noqa: UP017 - same style as module_utils
DAY = datetime.timedelta(days=1)


def _midnight(moment):
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _spans(window, now):
    """(start, end) occurrences of `window` that may contain or follow `now` (aware datetimes, UTC)."""
    if isinstance(window, AbsoluteWindow):
        return [(window.start.astimezone(UTC), window.end.astimezone(UTC))]
    if isinstance(window, DailyWindow):
        spans = []
        for offset in (-1, 0, 1):
            day = _midnight(now) + offset * DAY
            start = day + datetime.timedelta(minutes=window.start)
            end = day + datetime.timedelta(minutes=window.end)
            if end <= start:
                end += DAY
            spans.append((start, end))
        return spans
    if isinstance(window, AnyWindow):
        return [span for w in window.windows for span in _spans(w, now)]
    raise AnsibleFilterError(f"unknown window type {type(window).__name__}")


JOINS = 16  # occurrences joined end to end before a window counts as never closing


def closes_at(window, now):
    """When the open window stops being open (overlapping or touching occurrences joined), or None when it is
    closed now or never closes (e.g. 00:00-24:00, every day back to back)."""
    if not window.contains(now):
        return None
    end = now
    for _join in range(JOINS):
        later = [e for s, e in _spans(window, end) if s <= end < e]
        if not later:
            return end
        end = max(later)
    return None


def opens_at(window, now):
    """The next time a closed window opens, or None (open now, or never again)."""
    if window.contains(now):
        return None
    starts = [s for s, _e in _spans(window, now) if s > now]
    return min(starts) if starts else None


def _iso(moment):
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now(value):
    if value is None or value == "":
        return datetime.datetime.now(UTC)
    try:
        return parse_instant(value if isinstance(value, datetime.datetime) else str(value), "now")
    except RollingConfigError:
        raise AnsibleFilterError(f"maintenance_window: now={value!r} is not an ISO 8601 date-time") from None


def maintenance_window(spec, now=None):
    """State of the window `spec` at `now` (default: the current time)."""
    moment = _now(now)
    try:
        window = parse_window(spec)
    except RollingConfigError as exc:
        raise AnsibleFilterError(f"invalid maintenance window: {exc}") from None
    if window is None:
        return {"defined": False, "open": True, "description": "no window (always open)", "closes_at": None,
                "remaining_s": None, "opens_at": None, "now": _iso(moment)}
    end = closes_at(window, moment)
    return {"defined": True, "open": window.contains(moment), "description": str(window), "closes_at": _iso(end),
            "remaining_s": None if end is None else round((end - moment).total_seconds(), 1),
            "opens_at": _iso(opens_at(window, moment)), "now": _iso(moment)}


class FilterModule:
    """hvfleet.drain maintenance filters."""

    def filters(self):
        return {"maintenance_window": maintenance_window}
