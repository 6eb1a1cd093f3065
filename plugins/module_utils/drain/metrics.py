# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A drain's figures for Prometheus, in node_exporter's textfile-collector format.

`render(result, now=...)` turns what `host_drain` returns (DrainResult.to_dict(), possibly with the
module's `state: cancelled`) into the text of one `.prom` file; `write_textfile(path, text)` puts it
in node_exporter's textfile directory atomically (a temporary file in the same directory, not ending
in `.prom`, then a rename), so the collector never reads half a file. No server of our own: the
host's node_exporter serves the file (docs/METRICS.md).

Every metric is named `hvfleet_drain_...` and is a gauge describing the **last run** of one action
on one host: the file of an action is rewritten by each run, so the per-migration series of an
earlier run disappear with it and the number of series stays bounded by the VMs of one host (at
most `max_migrations` per-migration rows are written; the rest are counted in
`hvfleet_drain_last_run_migrations_omitted`). Label values are escaped as the exposition format
requires (backslash, double quote, newline). Units are Prometheus' base units: seconds and bytes.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import CycleState, Kind

PREFIX = "hvfleet_drain_"
# what the `state` of host_drain's result can be after a run: the cycle states a run ends in, plus the module's own.
# Each gets a sample (0 or 1) in every file, so an alert on one of them never sees the series vanish; not_empty
# (VMs left by on_unmigratable: leave) is its own state: not a failure, yet the host must not be rebooted.
RUN_STATES: tuple[str, ...] = (str(CycleState.DRAINED), str(CycleState.NOT_EMPTY), str(CycleState.FAILED),
                               str(CycleState.INTERRUPTED), str(CycleState.RESTORED), "cancelled", "planned")
# the counts of the result's `summary` written as last_run_vms{outcome}; `left`: still on the host by policy
VM_COUNTS: tuple[str, ...] = ("moved", "failed", "blocked", "not_started", "left")
DEFAULT_MAX_MIGRATIONS = 500
TEXTFILE_MODE = 0o644  # node_exporter runs as its own user and must read the file

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Number = Union[int, float]
Sample = tuple[dict[str, str], Number]

# name (without the prefix) -> help text; the order is the order in the file
FAMILIES: dict[str, str] = {
    "last_run_timestamp_seconds": "When the last run of this action on this host ended (Unix time).",
    "last_run_state": "1 for the state the last run ended in, 0 for the others (label outcome; not_empty: "
                      "drained but for VMs left on the host by policy, which must not be rebooted).",
    "last_run_failed": "1 when the last run failed (a VM that was to move did not, or not every VM is back), "
                       "else 0; a not_empty drain is not a failure.",
    "last_run_duration_seconds": "Wall time of the last run's migrations.",
    "last_run_forecast_seconds": "The drain forecast's wall time for the last run.",
    "last_run_forecast_error_ratio": "(actual - forecast) / forecast of the last run's wall time.",
    "last_run_sent_bytes": "Data sent by all migrations of the last run.",
    "last_run_worst_downtime_seconds": "The longest switch-over pause libvirt reported in the last run.",
    "last_run_vms": "VMs of the last run by outcome: moved, failed, blocked, not_started, left (running on the "
                    "host by policy, on_unmigratable: leave).",
    "last_run_verified_empty": "1 when the drained host had no domain left at the end, else 0 (also when VMs "
                               "were left on it by policy).",
    "last_run_migrations_omitted": "Per-migration rows of the last run left out of this file (max_migrations).",
    "migration_ok": "1 when the VM moved in the last run, else 0 (label mode: precopy, postcopy, "
                    "postcopy_after_precopy, definition, cold, none).",
    "migration_duration_seconds": "How long the VM's move took in the last run.",
    "migration_downtime_seconds": "The VM's switch-over pause as libvirt reported it (absent after post-copy); "
                                  "mode cold: its outage, from the power button to its start on the destination, "
                                  "without the guest's boot.",
    "migration_sent_bytes": "Data sent for the VM in the last run.",
    "migration_forecast_error_ratio": "(actual - predicted) / predicted duration of the VM's move (predicted: the "
                                      "drain schedule's span for it).",
    "migration_predicted_pause_seconds": "The pause the forecast predicted for the VM (post-copy: the switch plus "
                                         "the page-fault stall after it).",
    "migration_attempts": "How many times the VM's migration was started in this maintenance cycle.",
}


def escape_label_value(value: str) -> str:
    """A label value as the text format writes it between double quotes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text: backslash and newline escaped (double quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: Number) -> str:
    """A sample value: integers as integers, floats as Python's shortest exact repr, +Inf/-Inf/NaN spelled out."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _number(value: Any) -> Optional[Number]:
    """A finite number from a result field, or None (missing, null, text, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ratio(actual: Any, predicted: Any) -> Optional[float]:
    a, p = _number(actual), _number(predicted)
    if a is None or p is None or p <= 0:
        return None
    return round((float(a) - float(p)) / float(p), 6)


def _seconds_from_ms(value: Any) -> Optional[float]:
    ms = _number(value)
    return None if ms is None else float(ms) / 1000.0


def _label_text(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    for name in labels:
        if not _LABEL.match(name) or name.startswith("__"):
            raise ValueError(f"{name!r} is not a usable label name")
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items()) + "}"


def format_family(name: str, help_text: str, samples: Iterable[Sample]) -> str:
    """One gauge family: HELP, TYPE and its samples (none: an empty string, the family is left out)."""
    full = PREFIX + name
    if not _NAME.match(full):
        raise ValueError(f"{full!r} is not a metric name")
    lines = [f"{full}{_label_text(labels)} {format_value(value)}" for labels, value in samples]
    if not lines:
        return ""
    head = [f"# HELP {full} {escape_help(help_text)}", f"# TYPE {full} gauge"]
    return "\n".join(head + lines) + "\n"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any, default: str = "") -> str:
    return default if value is None else str(value)


def _run_samples(result: Mapping[str, Any], base: dict[str, str], now: float) -> dict[str, list[Sample]]:
    """The per-run families: state, duration, forecast and its error, bytes, worst pause, VM counts."""
    out: dict[str, list[Sample]] = {name: [] for name in FAMILIES}
    out["last_run_timestamp_seconds"].append((base, float(now)))
    state = _text(result.get("state"))
    states = list(RUN_STATES) + ([state] if state and state not in RUN_STATES else [])
    out["last_run_state"] = [(dict(base, outcome=s), 1 if s == state else 0) for s in states]
    out["last_run_failed"].append((base, 1 if result.get("failed") else 0))
    actual = _mapping(result.get("actual"))
    forecast = _mapping(result.get("forecast"))
    total = _number(actual.get("total_s"))
    predicted = _number(actual.get("forecast_total_s"))
    if predicted is None:
        predicted = _number(forecast.get("total_s"))
    for name, value in (("last_run_duration_seconds", total), ("last_run_forecast_seconds", predicted),
                        ("last_run_forecast_error_ratio", _ratio(total, predicted)),
                        ("last_run_sent_bytes", _number(actual.get("bytes_sent"))),
                        ("last_run_worst_downtime_seconds", _seconds_from_ms(actual.get("worst_downtime_ms")))):
        if value is not None:
            out[name].append((base, value))
    summary = _mapping(result.get("summary"))
    for outcome in VM_COUNTS:
        count = _number(summary.get(outcome))
        if count is not None:
            out["last_run_vms"].append((dict(base, outcome=outcome), count))
    if isinstance(result.get("verified_empty"), bool):
        out["last_run_verified_empty"].append((base, 1 if result["verified_empty"] else 0))
    return out


def _migration_samples(out: dict[str, list[Sample]], rows: list[Mapping[str, Any]], base: dict[str, str]) -> None:
    for row in rows:
        labels = dict(base, vm=_text(row.get("vm")), destination=_text(row.get("destination")),
                      mode=_text(row.get("mode_used") or row.get("mode"), "none"),
                      outcome=_text(row.get("outcome"), "unknown"))
        out["migration_ok"].append((labels, 1 if row.get("ok") else 0))
        for name, value in (("migration_duration_seconds", _number(row.get("duration_s"))),
                            ("migration_downtime_seconds", _seconds_from_ms(row.get("downtime_ms"))),
                            ("migration_sent_bytes", _number(row.get("bytes_sent"))),
                            ("migration_forecast_error_ratio",  # a cold move's figure bounds its outage: no forecast
                             None if row.get("kind") == Kind.COLD
                             else _ratio(row.get("duration_s"), row.get("predicted_duration_s"))),
                            ("migration_predicted_pause_seconds", _seconds_from_ms(row.get("predicted_downtime_ms"))),
                            ("migration_attempts", _number(row.get("attempts")))):
            if value is not None:
                out[name].append((labels, value))


def render(result: Mapping[str, Any], *, now: float, max_migrations: int = DEFAULT_MAX_MIGRATIONS) -> str:
    """The textfile text for one run's result (what host_drain returns); `now` is the run's end (Unix time).

    Pure: the same result and `now` give the same text. Rows of `vms` are written in the order given,
    the first `max_migrations` of them; VMs with the same name (a restore and a drain are separate
    files, so this only happens in a hand-made result) keep their first row."""
    if max_migrations < 0:
        raise ValueError(f"max_migrations must be >= 0, got {max_migrations}")
    base = {"host": _text(result.get("host"), "unknown"), "action": _text(result.get("action"), "drain")}
    out = _run_samples(result, base, now)
    rows: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    for row in result.get("vms") or []:
        if isinstance(row, Mapping) and row.get("vm") is not None and str(row["vm"]) not in seen:
            seen.add(str(row["vm"]))
            rows.append(row)
    out["last_run_migrations_omitted"].append((base, max(0, len(rows) - max_migrations)))
    _migration_samples(out, rows[:max_migrations], base)
    return "".join(format_family(name, FAMILIES[name], out[name]) for name in FAMILIES)


def textfile_name(action: str) -> str:
    """The file of one action's last run in the textfile directory, e.g. `hvfleet_drain_restore.prom`."""
    if not _LABEL.match(action):
        raise ValueError(f"{action!r} is not an action name")
    return f"hvfleet_drain_{action}.prom"


def write_textfile(path: Union[str, os.PathLike[str]], text: str) -> None:
    """Replace `path` with `text` atomically: the collector sees the old file or the new one, never a part.

    The temporary file is in the same directory (a rename within one file system is atomic) and its name
    does not end in `.prom`, so the collector never picks it up; it is removed when anything fails."""
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, TEXTFILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
