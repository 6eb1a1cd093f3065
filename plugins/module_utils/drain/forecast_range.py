# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drain forecast over what the dirty-rate readings can tell: its expected total and its range.

A dirty rate is read by page sampling (planning/dirty_rate.py), as precise as the count of changed
sample pages it rests on. For a guest that dirties memory nearly as fast as its share of the link,
the drain's time hangs on that precision, and not evenly: a reading a little high makes pre-copy
look much longer, one higher still chooses post-copy and is short again. The total at the rates as
read is then a poor guess of the total; its expectation over the reading's error is the better one.

So the schedule is simulated three times: at the rates as read and with every measured rate at
reading x (1 -/+ sqrt(3) x its relative error) - the three-point Gauss-Hermite rule for a normal
error, weights 2/3, 1/6, 1/6. The forecast total is the weighted sum; the range is the shortest to
the longest of the three (about a 90 % interval of the rates). Lab, 200 Mbit/s, a guest writing
8 MiB/s on a 12 MiB/s lane: read at 5.0-11.0 MiB/s over six runs, it took 20-31 s every time
(docs/BENCHMARKS.md, "Forecast against actual").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.report import within_goal
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.dirty_rate import Reading, relative_error
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.drain_forecast import (
    ScheduledMigration,
    simulate_drain,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import REFUSE, Forecast
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import VmInfo
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Migration

Predict = Callable[[str, float], Optional[Forecast]]
LOW, MEASURED, HIGH = -1, 0, 1
NODE = math.sqrt(3.0)  # the three-point Gauss-Hermite rule's nodes, in standard deviations
WEIGHTS = {LOW: 1 / 6, MEASURED: 2 / 3, HIGH: 1 / 6}


def rate_error(vm: VmInfo) -> Optional[float]:
    """The relative precision of the VM's measured dirty rate; None when it was not measured (given, or none)."""
    if vm.dirty_rate_bps is None or not vm.dirty_rate_sampled_s:
        return None
    return relative_error(Reading(vm.dirty_rate_bps, vm.dirty_rate_sampled_s))


def at_side(vm: VmInfo, side: int) -> VmInfo:
    """`vm` with its dirty rate at the rule's node below (LOW) or above (HIGH) its reading (never below 0)."""
    error = rate_error(vm)
    if error is None or side == MEASURED or vm.dirty_rate_bps is None:
        return vm
    return dataclasses.replace(vm, dirty_rate_bps=max(0.0, vm.dirty_rate_bps * (1 + side * NODE * error)))


def run_schedule(ctx: RunContext, moves: list[Migration], predict: Predict) -> list[ScheduledMigration]:
    """The drain's schedule simulated as the drain will run it (its limits, the source link shared)."""
    if not moves:
        return []
    default = ctx.config.default_link_mbit
    return simulate_drain(moves, ctx.config.limits(), ctx.source.link_bps(default), predict,
                          destination_bps={d.name: d.link_bps(default) for d in ctx.destinations},
                          budget_bps=ctx.config.budget_bps)


def _running(schedule: Iterable[ScheduledMigration]) -> dict[str, float]:
    """{vm: end} of the migrations that run (as drain_forecast.forecast_drain_shared counts them)."""
    return {s.vm: s.end_s for s in schedule if s.end_s is not None and s.forecast is not None
            and s.forecast.mode != REFUSE and s.forecast.predicted_duration_s is not None}


def last_end(schedule: Iterable[ScheduledMigration]) -> float:
    """When the last migration that runs ends: the drain's total."""
    return max(_running(schedule).values(), default=0.0)


def totals(ctx: RunContext, moves: list[Migration], predict_at: Callable[[int], Predict],
           measured: Iterable[ScheduledMigration], varies: bool = True) -> dict[int, float]:
    """{side: drain total} at the rates as read (`measured`, already simulated) and at either node. A node where
    another set of VMs would run (one refused there, or only there) is no drain to compare: it counts as read.
    `varies` False (no rate measured above 0): the nodes are the rates as read, not simulated again."""
    ran = _running(measured)
    out = {MEASURED: max(ran.values(), default=0.0)}
    if not varies:
        return {LOW: out[MEASURED], **out, HIGH: out[MEASURED]}
    for side in (LOW, HIGH):
        there = _running(run_schedule(ctx, moves, predict_at(side)))
        out[side] = max(there.values(), default=0.0) if set(there) == set(ran) else out[MEASURED]
    return out


def expected(by_side: Mapping[int, float]) -> float:
    """The drain total expected over the readings' error: the rule's weighted sum."""
    middle = by_side[MEASURED]  # written as the middle plus the sides' pulls, so equal totals give it exactly
    return round(middle + sum(WEIGHTS[side] * (by_side[side] - middle) for side in (LOW, HIGH)), 3)


def spread(by_side: Mapping[int, float]) -> list[float]:
    """[shortest, longest] of the three totals. Not simply low-to-high: a higher rate may choose post-copy and
    finish sooner than the long pre-copy the reading chose."""
    return [round(min(by_side.values()), 3), round(max(by_side.values()), 3)]


def errors_pct(vms: Mapping[str, VmInfo]) -> dict[str, float]:
    """{vm: one standard deviation of its measured dirty rate, in %} for the VMs whose rate was measured."""
    out: dict[str, float] = {}
    for name, vm in sorted(vms.items()):
        error = rate_error(vm)
        if error is not None and vm.dirty_rate_bps:  # a reading of 0 is "below one page" (precopy's floor)
            out[name] = round(100.0 * error)
    return out


def note(by_side: Optional[Mapping[int, float]]) -> str:
    """What the summary adds when the readings' precision moves the total: the total at the rates as read and the
    range, when they differ from the forecast by more than its goal (20 % or 2 s); "" otherwise."""
    if not by_side:
        return ""
    low, high = spread(by_side)
    if within_goal(high, low):
        return ""
    return (f"; the expected total over the dirty-rate readings' precision (as read: {by_side[MEASURED]:.0f} s; "
            f"{low:.0f}-{high:.0f} s)")
