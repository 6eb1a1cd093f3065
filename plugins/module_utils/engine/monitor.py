# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sample a running migration's job statistics into a time series.

The escalation ladder decides from progress (remaining memory per iteration, dirty
rate, bandwidth), so every sample keeps exactly the numbers it needs, in bytes,
bytes per second and seconds, whatever units libvirt used. A migration that copies
disks also reports them (libvirt's disk_total/disk_processed/disk_remaining); its
progress counts memory and disks together (`moved_bytes`, `total_bytes`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

# virDomainJobType
JOB_NONE = 0
JOB_BOUNDED = 1
JOB_UNBOUNDED = 2
JOB_COMPLETED = 3
JOB_FAILED = 4
JOB_CANCELLED = 5

# virDomainState / paused reasons that mean "this source is in post-copy"
_PAUSED = 3
_PAUSED_POSTCOPY = 12
_PAUSED_POSTCOPY_FAILED = 13


class Summary(TypedDict):
    """JobMonitor.summary(): the aggregates of a migration's series."""

    iterations: int
    max_dirty_rate_bps: float
    max_throttle_pct: int


@dataclasses.dataclass(frozen=True)
class JobSample:  # pylint: disable=too-many-instance-attributes
    """One look at the migration job; `t` is seconds since the migration started."""

    t: float
    phase: str  # none | precopy | postcopy | postcopy_failed | completed | failed | cancelled
    time_elapsed_s: float = 0.0
    data_total: int = 0
    data_processed: int = 0
    data_remaining: int = 0
    memory_total: int = 0
    memory_processed: int = 0
    memory_remaining: int = 0
    dirty_rate_bps: float = 0.0
    iteration: int = 0
    bandwidth_bps: float = 0.0
    downtime_ms: int | None = None
    throttle_pct: int = 0
    postcopy_requests: int = 0
    disk_remaining: int = 0
    disk_total: int = 0
    disk_processed: int = 0

    @property
    def active(self) -> bool:
        return self.phase in ("precopy", "postcopy", "postcopy_failed")

    @property
    def started(self) -> bool:
        """QEMU itself is migrating (not libvirt still preparing the destination).

        While libvirt still prepares the destination the job shows as active at iteration 0 with
        nothing sent: no figures to judge, and nothing for migrateSetMaxDowntime to act on yet.
        """
        return (self.iteration >= 1 or self.data_processed > 0 or self.memory_processed > 0
                or self.disk_processed > 0)

    @property
    def total_bytes(self) -> int:
        """What the job has to move, memory and copied disks: libvirt's data_total when it gives one
        (it includes the disks), else memory plus disks."""
        return self.data_total or (self.memory_total + self.disk_total)

    @property
    def moved_bytes(self) -> int:
        """What the job moved so far, memory and copied disks (see total_bytes)."""
        return self.data_processed or (self.memory_processed + self.disk_processed)

    @property
    def remaining_bytes(self) -> int:
        """What is left to move, memory and copied disks (see total_bytes)."""
        return self.data_remaining if self.data_total else self.memory_remaining + self.disk_remaining

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def phase_of(job_type: int, state: tuple[int, ...] | None = None) -> str:
    """Name the migration phase from the job type and the source domain's (state, reason)."""
    if job_type in (JOB_BOUNDED, JOB_UNBOUNDED):
        if state is not None and state[0] == _PAUSED and state[1] == _PAUSED_POSTCOPY_FAILED:
            return "postcopy_failed"
        if state is not None and state[0] == _PAUSED and state[1] == _PAUSED_POSTCOPY:
            return "postcopy"
        return "precopy"
    return {JOB_COMPLETED: "completed", JOB_FAILED: "failed", JOB_CANCELLED: "cancelled"}.get(job_type, "none")


def sample_from_stats(stats: Mapping[str, Any], t: float, state: tuple[int, ...] | None = None) -> JobSample:
    """Turn a virDomainGetJobStats() dict into a JobSample (pure; unit-testable)."""
    page = int(stats.get("memory_page_size") or 4096)
    downtime = stats.get("downtime")
    return JobSample(
        t=round(float(t), 3),
        phase=phase_of(int(stats.get("type", JOB_NONE)), state),
        time_elapsed_s=int(stats.get("time_elapsed", 0)) / 1000.0,
        data_total=int(stats.get("data_total", 0)),
        data_processed=int(stats.get("data_processed", 0)),
        data_remaining=int(stats.get("data_remaining", 0)),
        memory_total=int(stats.get("memory_total", 0)),
        memory_processed=int(stats.get("memory_processed", 0)),
        memory_remaining=int(stats.get("memory_remaining", 0)),
        dirty_rate_bps=float(stats.get("memory_dirty_rate", 0)) * page,
        iteration=int(stats.get("memory_iteration", 0)),
        bandwidth_bps=float(stats.get("memory_bps", 0)),
        downtime_ms=int(downtime) if downtime is not None else None,
        throttle_pct=int(stats.get("auto_converge_throttle", 0)),
        postcopy_requests=int(stats.get("memory_postcopy_requests", 0)),
        disk_remaining=int(stats.get("disk_remaining", 0)),
        disk_total=int(stats.get("disk_total", 0)),
        disk_processed=int(stats.get("disk_processed", 0)),
    )


class JobMonitor:
    """Keeps the series of samples of one domain's migration job."""

    def __init__(self, domain: Any, clock: Callable[[], float] = time.monotonic, start: float | None = None) -> None:
        self.domain = domain
        self.clock = clock
        self.start = clock() if start is None else start
        self.series: list[JobSample] = []
        self.errors = 0

    def sample(self) -> JobSample | None:
        """Take one sample; returns None (and counts) when libvirt cannot answer right now."""
        try:
            stats = self.domain.jobStats()
            state = tuple(self.domain.state())
        except Exception:  # pylint: disable=broad-except
            self.errors += 1  # the job ended or the connection is busy; the caller reconciles
            return None
        sample = sample_from_stats(stats, self.clock() - self.start, state)
        if sample.active:
            self.series.append(sample)
        return sample

    def last(self) -> JobSample | None:
        return self.series[-1] if self.series else None

    def summary(self) -> Summary:
        """Aggregates over the series for the result."""
        if not self.series:
            return {"iterations": 0, "max_dirty_rate_bps": 0.0, "max_throttle_pct": 0}
        return {
            "iterations": max(s.iteration for s in self.series),
            "max_dirty_rate_bps": max(s.dirty_rate_bps for s in self.series),
            "max_throttle_pct": max(s.throttle_pct for s in self.series),
        }

    def to_list(self, max_points: int = 600) -> list[dict[str, Any]]:
        """The series as dicts, thinned evenly (first and last kept) so results stay small."""
        series = self.series
        if len(series) > max_points > 1:
            step = (len(series) - 1) / (max_points - 1)
            series = [series[round(i * step)] for i in range(max_points)]
        return [s.to_dict() for s in series]
