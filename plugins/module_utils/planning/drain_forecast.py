# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Forecast a whole drain from the per-VM forecasts (forecast.py).

Separate from the one-VM model because a drain adds what one VM does not have: lanes, a shared
link whose bandwidth is re-split whenever a migration starts or ends, and the scheduler's order.
`forecast_drain` is plain list scheduling; `simulate_drain` plays the schedule forward on a
shared link and `forecast_drain_shared` sums its result.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import (
    GIB,
    MIB,
    REFUSE,
    Forecast,
    ForecastError,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Limits, Migration, Scheduler


@dataclasses.dataclass(frozen=True)
class DrainForecast:
    """A whole drain: wall time on `concurrency` lanes, the serial sum, and the VMs that block it."""

    total_s: float
    serial_s: float
    concurrency: int
    migrations: int
    blocked: tuple[str, ...]
    predicted_bytes: int
    worst_downtime_ms: float
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ScheduledMigration:
    """One VM in the drain simulation: when it starts and ends, and the bandwidth it started with."""

    vm: str
    start_s: float
    end_s: float | None  # None: refused when it came to start (takes no time, blocks the drain)
    start_bandwidth: float
    forecast: Forecast | None

    def as_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "start_s": round(self.start_s, 3),
                "end_s": None if self.end_s is None else round(self.end_s, 3),
                "start_bandwidth_mib": round(self.start_bandwidth / MIB, 1),
                "mode": self.forecast.mode if self.forecast else None}


def _secs(value: float) -> str:
    """Seconds as the plan prints them: tenths below 10 s (a small drain's 2.4 s is not "2 s")."""
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def forecast_drain(forecasts: Mapping[str, Forecast] | Iterable[Forecast],
                   concurrency: int = 1) -> DrainForecast:
    """Wall time of a drain: list scheduling, in the given order, on `concurrency` lanes.

    Each migration starts when a lane frees up (what a worker pool does); a VM predicted to
    abort still occupies its lane until its deadline. Refused VMs take no time but block the
    drain. Each per-VM forecast must already use the bandwidth that VM will get: with one
    shared link, forecast each with link / concurrency. `serial_s` is the plain sum.
    """
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ForecastError(f"concurrency must be a positive integer, got {concurrency!r}.",
                            "use the drain's number of parallel migrations.")
    items = list(forecasts.items()) if isinstance(forecasts, Mapping) else [
        (str(i), f) for i, f in enumerate(forecasts)]
    lanes = [0.0] * concurrency
    serial = 0.0
    sent = 0
    worst = 0.0
    blocked = []
    moved = 0
    for name, item in items:
        if not item.completes:
            blocked.append(name)
        if item.mode == REFUSE or item.predicted_duration_s is None:
            continue
        moved += 1
        start = heapq.heappop(lanes)
        heapq.heappush(lanes, start + item.predicted_duration_s)
        serial += item.predicted_duration_s
        sent += item.predicted_bytes or 0
        worst = max(worst, item.predicted_downtime_ms or 0.0)
    total = max(lanes) if moved else 0.0
    summary = (f"{moved} migration{'s' if moved != 1 else ''} on {concurrency} lane{'s' if concurrency != 1 else ''}: "
               f"{_secs(total)} s (serial {_secs(serial)} s), {sent / GIB:.1f} GiB, worst pause {worst:.0f} ms")
    if blocked:
        summary += f"; blocked: {', '.join(blocked)}"
    return DrainForecast(round(total, 3), round(serial, 3), concurrency, moved, tuple(blocked), sent, worst, summary)


def share_rates(running: Sequence[Migration], link_bps: float, *, destination_bps: Mapping[str, float] | None = None,
                budget_bps: float | None = None) -> dict[str, float]:
    """Bytes/s of each running migration (scheduler.Migration): the source link (and the budget)
    split equally among all of them, each destination's link among the ones going there."""
    if not running:
        return {}
    count = len(running)
    inbound: dict[str, int] = {}
    for mig in running:
        inbound[mig.destination] = inbound.get(mig.destination, 0) + 1
    rates: dict[str, float] = {}
    for mig in running:
        rate = link_bps / count
        if budget_bps:
            rate = min(rate, budget_bps / count)
        dest_bw = (destination_bps or {}).get(mig.destination)
        if dest_bw:
            rate = min(rate, dest_bw / inbound[mig.destination])
        rates[mig.vm] = float(rate)
    return rates


def simulate_drain(moves: Iterable[Migration], limits: Limits, link_bps: float,
                   predict: Callable[[str, float], Forecast | None], *,
                   destination_bps: Mapping[str, float] | None = None,
                   budget_bps: float | None = None) -> list[ScheduledMigration]:
    """Play a drain's schedule forward on predicted durations; returns [ScheduledMigration] in start order.

    `moves` are scheduler.Migration (their `predicted_seconds` only rank them, as in the real
    drain), `limits` the drain's scheduler.Limits: migrations start in scheduler.Scheduler's
    order under its limits, as the drain does. `predict(vm, bandwidth)` is asked once per VM, when
    it starts, with the bandwidth it gets then (the shared link split among everything running
    at that moment, itself included; see share_rates) and returns its Forecast - so its mode is
    decided on that bandwidth - or None (no forecast: it takes no time).

    A started migration must move `predicted_duration_s x start bandwidth` bytes (its predicted
    bytes plus its set-up and pause at that rate); the running ones progress at their share of
    the link, re-shared whenever one starts or ends, so a VM that ends up alone runs at the whole
    link. A migration predicted not to complete (abort at its deadline) holds its lane for its
    predicted time whatever its share. A refused VM takes no time. Deterministic and pure.
    """
    # pylint: disable=too-many-locals,too-many-branches
    moves = list(moves)
    if not moves:
        return []
    if link_bps is None or link_bps <= 0:
        raise ForecastError(f"link bandwidth must be positive, got {link_bps!r}.", "give the source link's rate.")
    by_vm = {m.vm: m for m in moves}
    sched = Scheduler(moves, limits)
    now = 0.0
    left: dict[str, float | None] = {}  # running vm -> bytes left (shared) or None (fixed end)
    fixed_end: dict[str, float] = {}
    finished: set[str] = set()
    out: dict[str, ScheduledMigration] = {}
    order: list[str] = []
    eps = 1e-9
    for _round in range(10 * len(moves) + 10):
        # start what may start now; a refused or unforecast VM is done at once, so ask again
        while True:
            ready = [m for m in sched.ready(set(left), finished) if m.vm not in out]
            if not ready:
                break
            rates = share_rates([by_vm[v] for v in left] + ready, link_bps, destination_bps=destination_bps,
                                budget_bps=budget_bps)
            for mig in ready:
                bw = rates[mig.vm]
                fc = predict(mig.vm, bw)
                order.append(mig.vm)
                if fc is None or fc.mode == REFUSE or fc.predicted_duration_s is None:
                    finished.add(mig.vm)
                    out[mig.vm] = ScheduledMigration(mig.vm, now, None if fc is not None and fc.mode == REFUSE
                                                     else now, bw, fc)
                    continue
                out[mig.vm] = ScheduledMigration(mig.vm, now, None, bw, fc)
                if fc.completes:
                    left[mig.vm] = fc.predicted_duration_s * bw
                else:
                    left[mig.vm] = None
                    fixed_end[mig.vm] = now + fc.predicted_duration_s
        if not left:
            break
        rates = share_rates([by_vm[v] for v in left], link_bps, destination_bps=destination_bps,
                            budget_bps=budget_bps)
        steps = [fixed_end[v] - now if b is None else b / rates[v] for v, b in left.items()]
        step = max(0.0, min(steps))
        now += step
        for vm in sorted(left):
            bytes_left = left[vm]
            if bytes_left is None:
                done = fixed_end[vm] <= now + eps
            else:
                bytes_left -= rates[vm] * step
                left[vm] = bytes_left
                done = bytes_left <= eps * max(1.0, rates[vm])
            if done:
                del left[vm]
                finished.add(vm)
                out[vm] = dataclasses.replace(out[vm], end_s=now)
    return [out[v] for v in order]


def forecast_drain_shared(schedule: Iterable[ScheduledMigration], concurrency: int = 1,
                          total_s: float | None = None) -> DrainForecast:
    """A DrainForecast from simulate_drain's result: the total is when the last migration ends, or `total_s`
    when the caller knows better (drain/forecast_range.py: the total expected over the dirty rates' error)."""
    serial = 0.0
    sent = 0
    worst = 0.0
    blocked = []
    moved = 0
    total = 0.0
    for item in schedule:
        fc = item.forecast
        if fc is None:
            continue
        if not fc.completes:
            blocked.append(item.vm)
        if fc.mode == REFUSE or fc.predicted_duration_s is None or item.end_s is None:
            continue
        moved += 1
        total = max(total, item.end_s)
        serial += fc.predicted_duration_s
        sent += fc.predicted_bytes or 0
        worst = max(worst, fc.predicted_downtime_ms or 0.0)
    total = total if total_s is None else total_s
    summary = (f"{moved} migration{'s' if moved != 1 else ''}, at most {concurrency} at once sharing the link: "
               f"{_secs(total)} s (serial {_secs(serial)} s), {sent / GIB:.1f} GiB, worst pause {worst:.0f} ms")
    if blocked:
        summary += f"; blocked: {', '.join(blocked)}"
    return DrainForecast(round(total, 3), round(serial, 3), concurrency, moved, tuple(blocked), sent, worst, summary)
