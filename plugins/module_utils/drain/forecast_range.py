# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How far a drain forecast can be trusted: the same schedule with every guest's dirty rate at either end
of what its measurement can tell.

A dirty rate is read by page sampling (planning/dirty_rate.py), as precise as the count of changed
sample pages it rests on. For a guest that dirties memory nearly as fast as its share of the link,
the pre-copy time hangs on that precision: on the lab a guest writing 8 MiB/s on a 12 MiB/s lane
read 5-10 MiB/s, forecast 21-57 s, and took 27-30 s. The range says so where one figure cannot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.dirty_rate import Reading, relative_error
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.drain_forecast import (
    ScheduledMigration,
    simulate_drain,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import Forecast
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import VmInfo
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Migration

Predict = Callable[[str, float], Optional[Forecast]]
LOW, MEASURED, HIGH = -1, 0, 1


def rate_error(vm: VmInfo) -> Optional[float]:
    """The relative precision of the VM's measured dirty rate; None when it was not measured (given, or none)."""
    if vm.dirty_rate_bps is None or not vm.dirty_rate_sampled_s:
        return None
    return relative_error(Reading(vm.dirty_rate_bps, vm.dirty_rate_sampled_s))


def at_side(vm: VmInfo, side: int) -> VmInfo:
    """`vm` with its dirty rate one standard deviation below (LOW) or above (HIGH) its reading."""
    error = rate_error(vm)
    if error is None or side == MEASURED or vm.dirty_rate_bps is None:
        return vm
    return dataclasses.replace(vm, dirty_rate_bps=max(0.0, vm.dirty_rate_bps * (1 + side * error)))


def run_schedule(ctx: RunContext, moves: list[Migration], predict: Predict) -> list[ScheduledMigration]:
    """The drain's schedule simulated as the drain will run it (its limits, the source link shared)."""
    if not moves:
        return []
    default = ctx.config.default_link_mbit
    return simulate_drain(moves, ctx.config.limits(), ctx.source.link_bps(default), predict,
                          destination_bps={d.name: d.link_bps(default) for d in ctx.destinations},
                          budget_bps=ctx.config.budget_bps)


def last_end(schedule: Iterable[ScheduledMigration]) -> float:
    """When the last migration that runs ends: the drain's total."""
    return max((s.end_s for s in schedule if s.end_s is not None and s.forecast is not None), default=0.0)


def total_range(ctx: RunContext, moves: list[Migration], predict_at: Callable[[int], Predict],
                measured: Iterable[ScheduledMigration]) -> list[float]:
    """[shortest, longest] drain total over the rates as measured and every measured guest's rate at the low,
    then the high end of its reading. Not simply low-to-high: a higher rate may choose post-copy and finish
    sooner than the long pre-copy the reading chose."""
    totals = [last_end(measured)] + [last_end(run_schedule(ctx, moves, predict_at(side))) for side in (LOW, HIGH)]
    return [round(min(totals), 3), round(max(totals), 3)]


def errors_pct(vms: Mapping[str, VmInfo]) -> dict[str, float]:
    """{vm: one standard deviation of its measured dirty rate, in %} for the VMs whose rate was measured."""
    out: dict[str, float] = {}
    for name, vm in sorted(vms.items()):
        error = rate_error(vm)
        if error is not None and vm.dirty_rate_bps:  # a reading of 0 is "below one page" (precopy's floor)
            out[name] = round(100.0 * error)
    return out


def note(spread: Optional[list]) -> str:
    """What the summary adds when the readings' precision moves the total by more than the forecast's goal
    (20 % or 2 s, whichever is larger); "" otherwise."""
    if not spread or spread[1] - spread[0] <= max(2.0, 0.2 * spread[0]):
        return ""
    shown = f"{spread[0]:.0f}-{spread[1]:.0f}" if spread[1] >= 10 else f"{spread[0]:.1f}-{spread[1]:.1f}"
    return f"; {shown} s with the dirty rates at either end of what their readings can tell"
