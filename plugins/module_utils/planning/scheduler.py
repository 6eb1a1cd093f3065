# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decide which planned migrations may start now, and how much bandwidth each gets.

Too many migrations at once lengthen every switchover pause, so concurrency is capped per source
(outbound), per destination (inbound), in total, and by a bandwidth budget shared equally among
the running migrations. Pure and stateless: the caller says what is running and what finished
(e.g. from the journal), so a resumed drain asks the same question and gets the same answer.

Priority: policy `order` (lower first), then the longest predicted duration first (starting long
migrations early shortens the whole drain), then the plan's own order. A migration that cannot
start (its destination is busy) does not hold back the ones behind it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError


class ScheduleError(HvfleetError):
    """The scheduler was given inconsistent migrations or limits."""


class Migration(NamedTuple):
    """One planned move; `predicted_seconds` is optional (None: unknown, scheduled last in its order)."""

    vm: str
    source: str
    destination: str
    predicted_seconds: Optional[float] = None
    order: int = 0


@dataclass(frozen=True)
class Limits:
    """Concurrency limits; None means no limit of that kind.

    `bandwidth_bps` is the total shared by running migrations (bytes/s). With
    `min_bandwidth_bps`, no more migrations run than the budget can give that much each.
    `per_migration_bps` caps any single share. `waves`: a higher `order` starts only once every
    lower one finished (otherwise order is a priority only).
    """

    max_outbound: Optional[int] = 2
    max_inbound: Optional[int] = 2
    max_total: Optional[int] = None
    bandwidth_bps: Optional[int] = None
    min_bandwidth_bps: int = 0
    per_migration_bps: Optional[int] = None
    waves: bool = False

    def __post_init__(self) -> None:
        for name in ("max_outbound", "max_inbound", "max_total"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ScheduleError(f"{name} must be >= 1 (or unset), got {value}.", hint="nothing could ever start.")
        for name in ("bandwidth_bps", "per_migration_bps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ScheduleError(f"{name} must be > 0 (or unset), got {value}.", hint="unset it for no limit.")
        if self.min_bandwidth_bps < 0:
            raise ScheduleError(f"min_bandwidth_bps must be >= 0, got {self.min_bandwidth_bps}.")
        if self.bandwidth_bps is not None and self.min_bandwidth_bps > self.bandwidth_bps:
            raise ScheduleError(
                f"min_bandwidth_bps ({self.min_bandwidth_bps}) exceeds the budget ({self.bandwidth_bps}).",
                hint="lower min_bandwidth_bps or raise bandwidth_bps.",
            )

    def bandwidth_slots(self) -> int | None:
        """How many migrations the budget can feed at `min_bandwidth_bps` each (None: unlimited)."""
        if self.bandwidth_bps is None or self.min_bandwidth_bps <= 0:
            return None
        return self.bandwidth_bps // self.min_bandwidth_bps


class Scheduler:
    """Answers "which migrations may start now?" for one plan under `Limits`."""

    def __init__(self, migrations: Iterable[Migration], limits: Limits) -> None:
        self.limits = limits
        self._by_vm: dict[str, tuple[int, Migration]] = {}
        for index, mig in enumerate(migrations):
            if mig.vm in self._by_vm:
                raise ScheduleError(f"VM '{mig.vm}' is planned twice.", hint="plan each VM once.")
            if mig.source == mig.destination:
                raise ScheduleError(f"VM '{mig.vm}' would migrate from {mig.source} to itself.")
            self._by_vm[mig.vm] = (index, mig)
        ranked = sorted(self._by_vm.values(), key=lambda item: (item[1].order, _longest_first(item[1]), item[0]))
        self._queue = [item[1] for item in ranked]
        caps = [c for c in (limits.max_total, limits.bandwidth_slots()) if c is not None]
        self._total_cap = min(caps) if caps else None

    @property
    def queue(self) -> list[Migration]:
        """All migrations in priority order."""
        return list(self._queue)

    def _known(self, names: Iterable[str], what: str) -> set[str]:
        known = set(names)
        unknown = sorted(known - self._by_vm.keys())
        if unknown:
            raise ScheduleError(f"{what} VM(s) not in the plan: {', '.join(unknown)}.")
        return known

    def ready(self, running: Iterable[str], finished: Iterable[str] = ()) -> list[Migration]:
        """Migrations that may start now, in priority order, given the VMs `running` and `finished`.

        Starting all of them together keeps every limit; callers start them and ask again
        when one finishes.
        """
        running = self._known(running, "running")
        finished = self._known(finished, "finished")
        outbound: dict[str, int] = {}
        inbound: dict[str, int] = {}
        for vm in running:
            mig = self._by_vm[vm][1]
            outbound[mig.source] = outbound.get(mig.source, 0) + 1
            inbound[mig.destination] = inbound.get(mig.destination, 0) + 1
        total = len(running)
        wave = None
        if self.limits.waves:
            open_orders = [m.order for m in self._queue if m.vm not in finished]
            wave = min(open_orders) if open_orders else None
        out = []
        for mig in self._queue:
            if mig.vm in running or mig.vm in finished:
                continue
            if wave is not None and mig.order > wave:
                break
            if self._total_cap is not None and total >= self._total_cap:
                break
            if self.limits.max_outbound is not None and outbound.get(mig.source, 0) >= self.limits.max_outbound:
                continue
            if self.limits.max_inbound is not None and inbound.get(mig.destination, 0) >= self.limits.max_inbound:
                continue
            out.append(mig)
            total += 1
            outbound[mig.source] = outbound.get(mig.source, 0) + 1
            inbound[mig.destination] = inbound.get(mig.destination, 0) + 1
        return out

    def bandwidth_for(self, vm: str, running: Iterable[str]) -> int | None:
        """Bytes/s for `vm` when it runs alongside `running` (it counts itself); None: no limit.

        The budget is split equally, capped by `per_migration_bps`. Shares shrink as migrations
        start, so re-apply them to the running ones (libvirt migrate-setspeed) each time.
        """
        self._known([vm], "bandwidth asked for")
        running = self._known(running, "running") | {vm}
        share = None
        if self.limits.bandwidth_bps is not None:
            share = self.limits.bandwidth_bps // len(running)
        if self.limits.per_migration_bps is not None:
            share = self.limits.per_migration_bps if share is None else min(share, self.limits.per_migration_bps)
        return share


def _longest_first(mig: Migration) -> tuple[int, float]:
    """Sort key: longer predicted first; unknown durations after known ones."""
    if mig.predicted_seconds is None:
        return (1, 0.0)
    return (0, -mig.predicted_seconds)
