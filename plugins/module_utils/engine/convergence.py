# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decide from a migration's progress whether it converges and which rung comes next.

Pure logic over the JobSample series: no libvirt, no clock, so the ladder can be
tested on recorded and synthetic series.

How progress is read: in pre-copy, the memory still to send right after each
dirty-bitmap sync is the guest's dirty set for that iteration. A migration
converges when that set shrinks until it fits into max-downtime at the link's
bandwidth. It is *stalled* when, over K complete iterations after the last step,
the set did not shrink by at least 10 %; it is *not converging* when it is stalled
or when the projected finish (remaining / (bandwidth - dirty rate), infinite when
the guest dirties faster than the link sends) lies beyond the deadline.

The ladder, one rung per decision, each needing one fresh iteration after the last:
1. raise max downtime towards the cap: to what the smallest dirty set seen needs
   (+25 %), at least doubling; skipped when even the cap would not suffice;
2. auto-converge (armed at start, see spec.py): while QEMU's throttle is still
   rising, wait for it;
3. switch to post-copy, if the mode allows it (postcopy_after_precopy);
4. the final action `on_timeout` (abort, suspend or post-copy) - early only when
   stalled (K iterations of evidence), otherwise when the deadline passes.
At the deadline the ladder jumps straight to post-copy (if a rung) or the final action.
Mode `postcopy` switches as soon as the first full pass is done (iteration >= 2).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Mode
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobSample
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec

SHRINK_MARGIN = 0.10  # the dirty set must shrink by 10 % over the window to count as progress
MAX_THROTTLE_PCT = 99  # QEMU's default max-cpu-throttle
MIB = 1024 * 1024

CONTINUE = "continue"
RAISE_DOWNTIME = "raise_downtime"
POSTCOPY = "postcopy"
ABORT = "abort"
SUSPEND = "suspend"


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    downtime_ms: int | None = None
    final: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LadderState:
    """What the ladder already did; updated by the caller after applying a decision.

    Only what libvirt accepted is recorded (record). A refused switch to post-copy (refused) is not
    post-copy: the ladder tries it again at its next step, and past the deadline once more before
    the final action - the completion deadline keeps applying. A refused final action is simply
    decided again at the next sample.
    """

    downtime_ms: int
    last_step_iteration: int = 0
    postcopy_requested: bool = False
    final_action: Optional[str] = None
    postcopy_refused_t: Optional[float] = None  # when libvirt last refused the switch (seconds since start)

    def record(self, decision: Decision, iteration: int) -> None:
        """Note an applied decision so the next one waits for fresh evidence."""
        if decision.action == CONTINUE:
            return
        self.last_step_iteration = iteration
        if decision.action == RAISE_DOWNTIME:
            self.downtime_ms = int(decision.downtime_ms or self.downtime_ms)
        elif decision.action == POSTCOPY:
            self.postcopy_requested = True
        if decision.final:
            self.final_action = decision.action

    def refused(self, decision: Decision, iteration: int, t: float) -> None:
        """Note a switch to post-copy that libvirt refused at `t`: tried again after a fresh iteration."""
        if decision.action == POSTCOPY:
            self.last_step_iteration = iteration
            self.postcopy_refused_t = t

    def postcopy_refused_since(self, t: float) -> bool:
        return self.postcopy_refused_t is not None and self.postcopy_refused_t >= t


@dataclasses.dataclass(frozen=True)
class Analysis:  # pylint: disable=too-many-instance-attributes
    """Progress verdict for the current sample."""

    iteration: int
    dirty_sets: tuple  # dirty set (bytes) at the start of each complete iteration since the last step
    bandwidth_bps: float
    dirty_rate_bps: float
    remaining: int
    fits_downtime: bool
    stalled: bool
    projected_finish_s: float | None  # math.inf when the guest outruns the link
    needed_downtime_ms: int | None
    settled: bool  # at least one sync happened since the last step (and the first pass is done)
    throttle_rising: bool
    late: bool  # projected finish beyond the deadline (or never)

    @property
    def converging(self) -> bool:
        """Fits now, or not stalled and not projected late; no figures yet counts as converging."""
        return self.fits_downtime or (not self.stalled and not self.late)

    def describe(self) -> str:
        parts = [f"iteration {self.iteration}", f"remaining {self.remaining / MIB:.0f} MiB"]
        if self.bandwidth_bps:
            parts.append(f"link {self.bandwidth_bps / MIB:.1f} MiB/s")
        if self.dirty_rate_bps:
            parts.append(f"dirtying {self.dirty_rate_bps / MIB:.1f} MiB/s")
        if self.dirty_sets:
            sets = ", ".join(f"{d / MIB:.0f}" for d in self.dirty_sets[-4:])
            parts.append(f"dirty sets [{sets}] MiB")
        if self.projected_finish_s == math.inf:
            parts.append("projected finish: never (dirty rate >= bandwidth)")
        elif self.projected_finish_s is not None:
            parts.append(f"projected finish at {self.projected_finish_s:.0f} s")
        return ", ".join(parts)


def _median_positive(values: Iterable[float]) -> float:
    values = [v for v in values if v and v > 0]
    return statistics.median(values) if values else 0.0


def bandwidth(series: Sequence[JobSample], window: int = 3) -> float:
    """Bytes/s the link moves now: QEMU's figure, or the processed-bytes slope."""
    recent = series[-window:]
    bps = _median_positive(s.bandwidth_bps for s in recent)
    if bps:
        return bps
    if len(series) >= 2:
        first, last = series[max(0, len(series) - window - 1)], series[-1]
        dt = last.t - first.t
        if dt > 0 and last.memory_processed > first.memory_processed:
            return (last.memory_processed - first.memory_processed) / dt
    return 0.0


def dirty_sets(series: Sequence[JobSample], first_iteration: int, current_iteration: int) -> tuple[int, ...]:
    """Largest remaining seen in each complete iteration in [first, current): its dirty set."""
    sets: dict[int, int] = {}
    for sample in series:
        if first_iteration <= sample.iteration < current_iteration and sample.phase == "precopy":
            sets[sample.iteration] = max(sets.get(sample.iteration, 0), sample.memory_remaining)
    return tuple(sets[i] for i in sorted(sets))


def analyse(series: Sequence[JobSample], spec: MigrationSpec, state: LadderState, deadline_s: float) -> Analysis:
    """Read progress from the series (pre-copy only)."""
    last = series[-1]
    current = last.iteration
    bps = bandwidth(series)
    dirty = _median_positive(s.dirty_rate_bps for s in series[-3:])
    remaining = last.memory_remaining
    fits = bool(bps) and current >= 2 and remaining <= bps * state.downtime_ms / 1000.0

    window_start = max(2, state.last_step_iteration + 1)
    sets = dirty_sets(series, window_start, current)
    k = spec.stall_iterations
    stalled = False
    if len(sets) >= k + 1:
        window = sets[-(k + 1):]
        stalled = min(window[1:]) > window[0] * (1 - SHRINK_MARGIN)

    all_sets = dirty_sets(series, 2, current)
    if not all_sets and current >= 2:  # first sync just happened: the current set is the only evidence
        all_sets = (max(s.memory_remaining for s in series if s.iteration == current),)
    needed = None
    if all_sets and bps:
        needed = int(math.ceil(min(all_sets) / bps * 1000.0))

    projected = None
    if current >= 2 and bps:
        projected = math.inf if dirty >= bps else last.t + remaining / (bps - dirty)
    late = projected is not None and projected > deadline_s  # math.inf > anything

    throttle_then = next((s.throttle_pct for s in series if s.iteration >= max(1, current - k)), 0)
    # the dirty sets lag the throttle by an iteration: it counts as working while it changed in the last K
    rising = spec.auto_converge and (
        last.throttle_pct > throttle_then or (last.throttle_pct == 0 and current <= window_start + k))

    return Analysis(
        iteration=current, dirty_sets=sets, bandwidth_bps=bps, dirty_rate_bps=dirty, remaining=remaining,
        fits_downtime=fits, stalled=stalled, projected_finish_s=projected, needed_downtime_ms=needed,
        settled=current >= 2 and current > state.last_step_iteration, throttle_rising=rising, late=late)


def _final(spec: MigrationSpec, reason: str, state: LadderState, deadline_s: float) -> Decision:
    action = spec.on_timeout
    if action == POSTCOPY and state.postcopy_refused_since(deadline_s):
        return Decision(ABORT, f"{reason}; post-copy was refused at the deadline, aborting instead (the VM stays "
                        "on the source)", final=True)
    verb = {ABORT: "aborting (the VM stays on the source)", SUSPEND: "suspending the VM so the copy can finish",
            POSTCOPY: "switching to post-copy"}[action]
    return Decision(action, f"{reason}; {verb}", final=True)


def at_deadline(spec: MigrationSpec, state: LadderState, deadline_s: float, t: float) -> Decision:
    """The completion deadline passed at `t` (also without a fresh sample): post-copy if it is a rung
    and was not refused since the deadline, else the final action."""
    reason = f"completion deadline of {deadline_s:g} s reached at {t:.0f} s"
    if spec.ladder_has_postcopy and not state.postcopy_refused_since(deadline_s):
        return Decision(POSTCOPY, f"{reason}; switching to post-copy")
    if spec.ladder_has_postcopy:
        reason += "; post-copy was refused"
    return _final(spec, reason, state, deadline_s)


def decide(series: Sequence[JobSample], spec: MigrationSpec, state: LadderState, deadline_s: float) -> Decision:
    """Next step for the migration given its samples so far."""
    last = series[-1] if series else None
    if last is None or not last.active:
        return Decision(CONTINUE, "no migration job visible yet")
    if state.final_action:
        return Decision(CONTINUE, f"final action '{state.final_action}' taken; waiting for libvirt to finish")
    if last.phase != "precopy" or state.postcopy_requested:
        return Decision(CONTINUE, "in post-copy: it can only complete (or be recovered), nothing to escalate")
    if spec.mode == Mode.POSTCOPY and spec.ladder_has_postcopy and last.iteration >= 2 \
            and last.iteration > state.last_step_iteration:
        return Decision(POSTCOPY, f"mode postcopy: first pass done (iteration {last.iteration}); switching")
    if last.t >= deadline_s:
        return at_deadline(spec, state, deadline_s, last.t)

    analysis = analyse(series, spec, state, deadline_s)
    if analysis.converging:
        return Decision(CONTINUE, f"converging: {analysis.describe()}")
    if not analysis.settled:
        return Decision(CONTINUE, f"waiting for a fresh iteration after the last step: {analysis.describe()}")

    why = "stalled" if analysis.stalled else "not converging before the deadline"
    notes = [f"{why}: {analysis.describe()}"]
    cap = spec.max_downtime_cap_ms
    if state.downtime_ms < cap:
        needed = analysis.needed_downtime_ms
        if needed is None or needed <= cap:
            target = min(cap, max(state.downtime_ms * 2, int(math.ceil((needed or 0) * 1.25))))
            hint = f" (smallest dirty set needs ~{needed} ms)" if needed is not None else ""
            return Decision(RAISE_DOWNTIME, f"{notes[0]}; raising max downtime {state.downtime_ms} -> {target} ms"
                            f"{hint}", downtime_ms=target)
        notes.append(f"max downtime would need ~{needed} ms, above the cap of {cap} ms")
    if analysis.throttle_rising:
        last_pct = last.throttle_pct
        return Decision(CONTINUE, f"{'; '.join(notes)}; auto-converge throttle at {last_pct}% and rising "
                        f"(max {MAX_THROTTLE_PCT}%), giving it time")
    if spec.ladder_has_postcopy:
        return Decision(POSTCOPY, f"{'; '.join(notes)}; switching to post-copy")
    if analysis.stalled:
        return _final(spec, "; ".join(notes) + "; no rung left", state, deadline_s)
    return Decision(CONTINUE, f"{'; '.join(notes)}; no rung left, final action '{spec.on_timeout}' "
                    f"at the deadline ({deadline_s:g} s) unless it recovers")
