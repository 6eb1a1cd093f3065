# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find out where a VM really is after a migration call returned or failed.

An exception from the migration API does not say where the VM is (a post-copy link
loss raises while the VM already runs on the destination). So: observe the domain on
both hosts (`observe`), then decide from what is there (`classify`, pure).

Rules, in order:
* Post-copy evidence on either side (source paused "post-copy"/"post-copy failed",
  destination running/paused "post-copy"/"post-copy failed"): the destination holds
  the live state. The source copy is never resumed. Interrupted -> resume post-copy;
  still streaming -> wait; destination seen without a copy (its QEMU died) -> nothing
  can be resumed: stop and report. A *running* source next to post-copy evidence is
  the forbidden state: pause the source.
* Destination running, source not running -> moved (a paused leftover on the source
  stays paused; it is never resumed).
* Both running -> split brain: pause the copy that is not authoritative (the
  destination is authoritative once it runs as "migrated"; a destination that was
  booted separately is not); when it cannot be told, pause both. Always loud.
* Source running, destination not -> stayed (wait while a job is still active).
* Neither running: a paused only copy is resumed if the VM was running before and
  post-copy never started; a paused source is only resumed when the destination was
  seen and has no running copy. Anything else (both paused, neither present,
  destination unreachable) is left alone and reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded

T = TypeVar("T")

VIR_ERR_NO_DOMAIN = 42
OBSERVE_CALL_TIMEOUT_S = 10.0  # a daemon that does not answer a state query in this time is busy or stuck

# virDomainState and reasons (libvirt ABI numbers)
NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)
RUNNING_BOOTED = 1
RUNNING_MIGRATED = 2
RUNNING_UNPAUSED = 5
RUNNING_MIGRATION_CANCELED = 6
RUNNING_POSTCOPY = 10
RUNNING_POSTCOPY_FAILED = 11
PAUSED_USER = 1
PAUSED_MIGRATION = 2
PAUSED_POSTCOPY = 12
PAUSED_POSTCOPY_FAILED = 13
SHUTOFF_MIGRATED = 4
# pauses that migration itself (switch-over, or our suspend on timeout) causes: safe to undo
RESUMABLE_PAUSE_REASONS = (PAUSED_USER, PAUSED_MIGRATION)

STATE_NAMES = {NOSTATE: "nostate", RUNNING: "running", BLOCKED: "blocked", PAUSED: "paused",
               SHUTDOWN: "shutting down", SHUTOFF: "shut off", CRASHED: "crashed", PMSUSPENDED: "pmsuspended"}
RUNNING_REASONS = {0: "unknown", 1: "booted", 2: "migrated", 3: "restored", 4: "from snapshot", 5: "unpaused",
                   6: "migration canceled", 7: "save canceled", 8: "wakeup", 9: "crashed", 10: "post-copy",
                   11: "post-copy failed"}
PAUSED_REASONS = {0: "unknown", 1: "user", 2: "migration", 3: "save", 4: "dump", 5: "I/O error", 6: "watchdog",
                  7: "from snapshot", 8: "shutting down", 9: "snapshot", 10: "crashed", 11: "starting up",
                  12: "post-copy", 13: "post-copy failed"}
SHUTOFF_REASONS = {0: "unknown", 1: "shutdown", 2: "destroyed", 3: "crashed", 4: "migrated", 5: "saved",
                   6: "failed", 7: "from snapshot", 8: "daemon"}

# placements
MOVED = "moved"
STAYED = "stayed"
IN_FLIGHT = "in_flight"
POSTCOPY_ACTIVE = "postcopy_active"
POSTCOPY_INTERRUPTED = "postcopy_interrupted"
POSTCOPY_DEST_LOST = "postcopy_destination_lost"
PAUSED_ON_SOURCE = "paused_on_source"
PAUSED_ON_DESTINATION = "paused_on_destination"
BOTH_RUNNING = "both_running"
BOTH_PAUSED = "both_paused"
NOWHERE = "nowhere"
UNKNOWN = "unknown"

# actions
NONE = "none"
WAIT = "wait"
RESUME_SOURCE = "resume_source"
RESUME_DESTINATION = "resume_destination"
POSTCOPY_RESUME = "postcopy_resume"
PAUSE_SOURCE = "pause_source"
PAUSE_DESTINATION = "pause_destination"
PAUSE_BOTH = "pause_both"


@dataclasses.dataclass(frozen=True)
class SideView:  # pylint: disable=too-many-instance-attributes
    """What one host shows for the domain at one moment."""

    uri: str
    reachable: bool = True
    present: bool = False
    state: int | None = None
    reason: int | None = None
    job_active: bool = False
    persistent: bool | None = None
    error: str | None = None
    no_answer: bool = False  # the daemon is connected but did not answer in time (not a lost connection)

    @property
    def running(self) -> bool:
        return self.present and self.state in (RUNNING, BLOCKED)

    @property
    def paused(self) -> bool:
        return self.present and self.state == PAUSED

    @property
    def postcopy(self) -> bool:
        """This copy takes part in a post-copy migration (active or failed)."""
        if not self.present:
            return False
        if self.state == PAUSED:
            return self.reason in (PAUSED_POSTCOPY, PAUSED_POSTCOPY_FAILED)
        if self.state in (RUNNING, BLOCKED):
            return self.reason in (RUNNING_POSTCOPY, RUNNING_POSTCOPY_FAILED)
        return False

    @property
    def postcopy_failed(self) -> bool:
        return self.present and (
            (self.state == PAUSED and self.reason == PAUSED_POSTCOPY_FAILED)
            or (self.state in (RUNNING, BLOCKED) and self.reason == RUNNING_POSTCOPY_FAILED))

    @property
    def gone(self) -> bool:
        """Seen, and no copy that could run: absent or shut off."""
        return self.reachable and (not self.present or self.state in (SHUTOFF, SHUTDOWN, CRASHED, NOSTATE))

    def label(self) -> str:
        if not self.reachable:
            return f"unreachable ({self.error})" if self.error else "unreachable"
        if not self.present:
            return "absent"
        names: dict[int, str] = {}
        text = str(self.state)
        if self.state is not None:
            names = {RUNNING: RUNNING_REASONS, BLOCKED: RUNNING_REASONS, PAUSED: PAUSED_REASONS,
                     SHUTOFF: SHUTOFF_REASONS}.get(self.state, {})
            text = STATE_NAMES.get(self.state, text)
        if self.reason is not None and names:
            text += f" ({names.get(self.reason, self.reason)})"
        if self.job_active:
            text += ", job active"
        return text

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["label"] = self.label()
        return data


@dataclasses.dataclass(frozen=True)
class Verdict:
    placement: str
    action: str
    reason: str
    loud: bool = False  # a state that should never happen; report it prominently


def no_domain(exc: BaseException) -> bool:
    """libvirt's "domain not found" (VIR_ERR_NO_DOMAIN = 42), told apart from a broken connection."""
    get_code = getattr(exc, "get_error_code", None)
    return get_code is not None and get_code() == VIR_ERR_NO_DOMAIN


def observe(conn: Any, name: str, uri: str, timeout_s: float | None = None) -> SideView:
    """Look at `name` on `conn` without changing anything; never raises, never blocks for long.

    The calls share one deadline: a daemon busy with a stuck job must not stall the decision. A
    state that does not come back makes the side unreachable ("no answer"); a job query that does
    not come back means a job holds the domain, so the job counts as active.
    """
    if conn is None:
        return SideView(uri=uri, reachable=False, error="no connection")
    deadline = time.monotonic() + (OBSERVE_CALL_TIMEOUT_S if timeout_s is None else timeout_s)

    def ask(fn: Callable[[], T], what: str) -> T:
        left = max(0.1, deadline - time.monotonic())
        return bounded.call(fn, timeout_s=left, what=f"{what} of '{name}' on {uri}")

    try:
        dom = ask(lambda: conn.lookupByName(name), "lookup")
        state, reason = ask(dom.state, "state")
    except Exception as exc:  # pylint: disable=broad-except
        if no_domain(exc):
            return SideView(uri=uri, present=False)
        return SideView(uri=uri, reachable=False, error=str(exc), no_answer=isinstance(exc, bounded.NoAnswer))
    job_active = False
    try:
        job_active = ask(dom.jobInfo, "job info")[0] in (1, 2)  # VIR_DOMAIN_JOB_BOUNDED / UNBOUNDED
    except bounded.NoAnswer:
        job_active = True
    except Exception:  # pylint: disable=broad-except
        pass
    persistent = None
    with contextlib.suppress(Exception):
        persistent = bool(ask(dom.isPersistent, "persistence"))
    return SideView(uri=uri, present=True, state=state, reason=reason, job_active=job_active, persistent=persistent)


def classify(src: SideView, dst: SideView, postcopy_started: bool = False,  # pylint: disable=too-many-return-statements
             was_running: bool = True) -> Verdict:
    """Decide placement and the one safe action from two observations (pure)."""
    where = f"source {src.uri}: {src.label()}; destination {dst.uri}: {dst.label()}"

    # Post-copy: the destination has the live state; the source must never run again.
    if src.postcopy or dst.postcopy or (postcopy_started and src.paused and not dst.running and dst.present):
        if src.running:
            return Verdict(BOTH_RUNNING, PAUSE_SOURCE,
                           f"source runs although post-copy started; pausing the source ({where})", loud=True)
        if dst.running and not dst.postcopy:
            return Verdict(MOVED, NONE, f"post-copy completed ({where})")
        if dst.gone:
            # seen on the lab: a post-copy paused while the destination still loaded the device
            # state killed the destination QEMU ("shut off (failed)"); nothing is left to resume into
            return Verdict(POSTCOPY_DEST_LOST, NONE, f"post-copy started but the destination has no copy left to "
                           f"resume into; the paused source copy may lack pages and is not resumed ({where})",
                           loud=True)
        if src.postcopy_failed or dst.postcopy_failed:
            return Verdict(POSTCOPY_INTERRUPTED, POSTCOPY_RESUME, f"post-copy interrupted ({where})")
        if src.job_active or dst.job_active or dst.running:
            return Verdict(POSTCOPY_ACTIVE, WAIT, f"post-copy in progress ({where})")
        return Verdict(POSTCOPY_INTERRUPTED, POSTCOPY_RESUME, f"post-copy stopped without completing ({where})")

    if dst.running and src.running:
        if dst.reason == RUNNING_MIGRATED and src.reason != RUNNING_MIGRATED:
            return Verdict(BOTH_RUNNING, PAUSE_SOURCE, f"running on both hosts; the destination took over by "
                           f"migration, pausing the source ({where})", loud=True)
        if dst.reason == RUNNING_BOOTED and src.reason != RUNNING_BOOTED:
            return Verdict(BOTH_RUNNING, PAUSE_DESTINATION, f"running on both hosts; the destination copy was "
                           f"booted separately, pausing it ({where})", loud=True)
        return Verdict(BOTH_RUNNING, PAUSE_BOTH, f"running on both hosts and it cannot be told which copy is "
                       f"current; pausing both ({where})", loud=True)

    if dst.running:
        if src.job_active:
            return Verdict(IN_FLIGHT, WAIT, f"destination runs, source job still finishing ({where})")
        return Verdict(MOVED, NONE, f"running on the destination ({where})")

    if src.running:
        if src.job_active:
            return Verdict(IN_FLIGHT, WAIT, f"migration job still active on the source ({where})")
        return Verdict(STAYED, NONE, f"running on the source ({where})")

    if src.job_active or dst.job_active:
        return Verdict(IN_FLIGHT, WAIT, f"a job is still active ({where})")

    if dst.paused and src.gone:
        if was_running and dst.reason in RESUMABLE_PAUSE_REASONS:
            return Verdict(PAUSED_ON_DESTINATION, RESUME_DESTINATION,
                           f"only copy is paused on the destination; resuming it ({where})")
        if was_running:
            return Verdict(PAUSED_ON_DESTINATION, NONE, f"moved, but paused for a reason a resume would not fix; "
                           f"left paused ({where})", loud=True)
        return Verdict(PAUSED_ON_DESTINATION, NONE, f"moved; paused as it was before ({where})")

    if src.paused and dst.gone:
        if was_running and not postcopy_started and src.reason in RESUMABLE_PAUSE_REASONS:
            return Verdict(PAUSED_ON_SOURCE, RESUME_SOURCE,
                           f"only copy is paused on the source and post-copy never started; resuming it ({where})")
        if postcopy_started:
            return Verdict(PAUSED_ON_SOURCE, NONE, f"source paused after post-copy started and the destination has "
                           f"no copy; not resuming the source ({where})", loud=True)
        if was_running:
            return Verdict(PAUSED_ON_SOURCE, NONE, f"on the source, paused for a reason a resume would not fix; "
                           f"left paused ({where})", loud=True)
        return Verdict(STAYED, NONE, f"on the source, paused as it was before ({where})")

    if src.paused and dst.paused:
        return Verdict(BOTH_PAUSED, NONE, f"paused on both hosts; not resuming either ({where})", loud=True)

    if src.paused:  # destination unreachable: it may hold a running copy
        return Verdict(UNKNOWN, NONE, f"source paused and destination not visible; not resuming ({where})",
                       loud=True)

    if src.gone and dst.gone:
        return Verdict(NOWHERE, NONE, f"running on neither host ({where})", loud=True)

    return Verdict(UNKNOWN, NONE, f"cannot see both hosts ({where})", loud=True)


@dataclasses.dataclass
class RecoveryReport:
    ok: bool
    attempts: list[dict[str, Any]]
    final: Verdict
    source: SideView
    destination: SideView


def recover_postcopy(observe_pair: Callable[[], tuple[SideView, SideView]], resume: Callable[[], object],
                     deadline_s: float, clock: Callable[[], float] = time.monotonic,
                     wait: Callable[[float], object] = time.sleep,
                     backoff: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 15.0)) -> RecoveryReport:
    """Bring an interrupted post-copy to completion with post-copy resume, retried with back-off.

    `observe_pair()` -> (src SideView, dst SideView); `resume()` runs the resume
    migration and raises on refusal. QEMU refuses a resume while it still thinks the
    stream runs, and the stream may recover by itself, so each round re-observes first.
    Never resumes or restarts the source copy.
    """
    start = clock()
    attempts: list[dict[str, Any]] = []
    round_no = 0
    while True:
        src, dst = observe_pair()
        verdict = classify(src, dst, postcopy_started=True)
        if verdict.placement == MOVED:
            return RecoveryReport(True, attempts, verdict, src, dst)
        if verdict.action in (PAUSE_SOURCE, NONE):  # nothing a resume could fix
            return RecoveryReport(False, attempts, verdict, src, dst)
        resumed = False
        if verdict.action == POSTCOPY_RESUME and src.present and src.reachable:
            try:
                resume()
                resumed = True  # observe again right away: completed, or interrupted again
                attempts.append({"t": round(clock() - start, 3), "result": "resume call returned"})
            except Exception as exc:  # pylint: disable=broad-except
                attempts.append({"t": round(clock() - start, 3), "result": f"refused: {exc}"})
        remaining = deadline_s - (clock() - start)
        if remaining <= 0:
            src, dst = observe_pair()
            final = classify(src, dst, postcopy_started=True)
            return RecoveryReport(final.placement == MOVED, attempts, final, src, dst)
        if not resumed:
            wait(min(backoff[min(round_no, len(backoff) - 1)], remaining))
            round_no += 1
