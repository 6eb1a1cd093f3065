# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A dirty rate steady enough for the decision that depends on it: a longer sample only where it matters.

libvirt's dirty-rate calculation (page sampling) hashes a few hundred pages per GiB and counts those
that changed, so a 1-second sample of a guest that rewrites a small share of its RAM counts a
handful of pages: on the lab a guest writing 8 MiB/s of a 256 MiB RAM read 2, 8, 10, 14 and
20 MiB/s in five 1-second samples and 8-10 MiB/s in five 3-second ones (TCG, libvirt 9.0, QEMU 7.2).
The mode chosen for such a guest can flip with that noise, and the drain forecast with it.

So after the first sample (all running guests at once, `seconds` long), a guest is sampled again,
for `LONG_SAMPLE_S`, when its decision depends on the rate: the forecast at half and at twice the
first reading chooses differently (mode, auto-converge, completes or not), or predicts durations
more than `TOLERANCE` apart (the forecast's accuracy goal), at any of the bandwidths it may get.
Its rate is then the one over all the sampled seconds (each sample weighted by its length). The
cost, at drain start only and only when some guest needs it: `LONG_SAMPLE_S` seconds more, all
such guests at once. libvirt's exact `dirty-bitmap` mode is not used: under TCG (QEMU 7.2)
it killed the guest's QEMU on the lab.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import (
    MIB,
    Forecast,
    ForecastError,
    forecast_for_settings,
    guest_memory,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import VmInfo

LONG_SAMPLE_S = 3.0
SAMPLED_PAGES_PER_GIB = 512  # QEMU's calc-dirty-rate default; libvirt does not set another
SCALES = (0.5, 2.0)  # how far off one short sample can be (lab: 2-20 MiB/s for a guest writing 8)
TOLERANCE = 0.2  # the forecast's goal: within 20 % of the actual duration

Decision = tuple[str, bool, bool]


class Reading(NamedTuple):
    """A guest's dirty rate and how many seconds of sampling it rests on (its precision)."""

    rate_bps: float
    seconds: float


Measure = Callable[[list[Any], float], Mapping[str, Any]]  # planning.facts.measure_dirty_rates' shape


def relative_error(reading: Reading) -> float:
    """One standard deviation of a page-sampled reading, as a fraction of it.

    QEMU hashes `SAMPLED_PAGES_PER_GIB` pages and counts those that changed, each standing for 2 MiB:
    a count, good to about its square root whatever the guest's size. So a reading resting on n
    changed pages is known to 1/sqrt(n): a guest writing 8 MiB/s changes ~4 sample pages a second
    (lab: 2-20 MiB/s over 1 s, 5.2-10 MiB/s over 4 s), one writing 800 MiB/s ~400.
    """
    pages = max(0.0, reading.rate_bps) * max(0.0, reading.seconds) * SAMPLED_PAGES_PER_GIB / 1024 ** 3
    return 1.0 / math.sqrt(max(1.0, pages))


def decision(fc: Optional[Forecast]) -> Optional[Decision]:
    """What a forecast decides: (mode, auto-converge, completes); None without a forecast."""
    if fc is None:
        return None
    return (str(fc.mode), bool(fc.auto_converge), bool(fc.completes))


def depends_on_rate(predict: Callable[[float], Optional[Forecast]], rate: float,
                    scales: Sequence[float] = SCALES, tolerance: float = TOLERANCE) -> bool:
    """True when the forecasts at `rate` x each of `scales` do not all decide the same, or their
    predicted durations lie more than `tolerance` apart."""
    forecasts = [predict(rate * s) for s in scales]
    if len({decision(fc) for fc in forecasts}) > 1:
        return True
    durations = [fc.predicted_duration_s for fc in forecasts if fc is not None and fc.predicted_duration_s]
    return bool(durations) and max(durations) > (1 + tolerance) * min(durations)


def vm_depends_on_rate(vm: VmInfo, rate: float, bandwidths: Iterable[float],
                       settings: Optional[Mapping[str, Any]] = None) -> bool:
    """depends_on_rate for one guest under `settings` (default: the built-in policy) at each bandwidth
    it may get (e.g. the whole source link and its share with the drain's default concurrency)."""
    ratio, working_set = guest_memory(vm.memory_mib * MIB, (vm.resident_mib or 0) * MIB, vm.domain_type)
    chosen = dict(settings or {})

    def at(bandwidth: float) -> Callable[[float], Optional[Forecast]]:
        def predict(value: float) -> Optional[Forecast]:
            try:
                return forecast_for_settings(chosen, vm.memory_mib * MIB, value, bandwidth, transferable_ratio=ratio,
                                             dirty_working_set=working_set)
            except ForecastError:
                return None
        return predict

    return any(depends_on_rate(at(bw), rate) for bw in bandwidths if bw > 0)


def combined(samples: Sequence[tuple[float, float]]) -> Optional[float]:
    """The rate over all sampled seconds: [(rate bytes/s, seconds)] weighted by length; None if none."""
    total = sum(seconds for _rate, seconds in samples if seconds > 0)
    if total <= 0:
        return None
    return sum(rate * seconds for rate, seconds in samples if seconds > 0) / total


def to_resample(first: Mapping[str, float], depends: Callable[[str, float], bool]) -> list[str]:
    """The guests (by name, sorted) whose first reading leaves their decision open."""
    return sorted(name for name, rate in first.items() if depends(name, rate))


def steady_rates(doms: Sequence[Any], first: Mapping[str, float], depends: Callable[[str, float], bool],
                 measure: Measure, *, first_s: float = 1.0, long_s: float = LONG_SAMPLE_S,
                 name_of: Callable[[Any], str] = lambda dom: str(dom.name())) -> dict[str, Reading]:
    """`first` (name -> bytes/s, from a `first_s` sample), with each guest whose decision depends on
    the rate sampled again for `long_s` (all at once, through `measure`) and combined. A guest whose
    second sample fails keeps its first reading."""
    readings = {name: Reading(rate, first_s) for name, rate in first.items()}
    again = set(to_resample(first, depends)) if long_s > 0 else set()
    chosen = [dom for dom in doms if name_of(dom) in again]
    if not chosen:
        return readings
    longer = measure(chosen, long_s)
    for name in again:
        value = longer.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            both = combined([(first[name], first_s), (float(value), long_s)])
            if both is not None:
                readings[name] = Reading(both, first_s + long_s)
    return readings
