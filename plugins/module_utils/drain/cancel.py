# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cancel the drain or restore running on this host, from another process (host_drain state=cancelled).

The running drain is found through its lock (drain/lock.py): the lock must really be held (a free
lock means nothing runs: nothing to cancel) and the pid the lock file records must be among the
lock's holders in /proc/locks. The request - who, why, what to do with running migrations - is
written atomically to `<state_dir>/cancel.json`, addressed to that holder by its pid and the start
time its lock file records, and the holder is sent SIGTERM. A request addressed to another process
(a run that has ended since, a pid reused later) is never honoured: a stale request cannot cancel a
later drain.

The holder (host_drain's signal handler) reads the request addressed to it: no new migration
starts, running pre-copies are aborted (`abort`) or left to finish (`finish`); a post-copy always
finishes. The request is recorded in the journal's run record (`cancel`) and as a progress note, and
the module's result says who cancelled. The cancelling side waits, within a bound, until the holder
has let go of the lock and ended, then returns the journal's final state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.journal import (
    JOURNAL_NAME,
    atomic_write_json,
    now_iso,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import DrainLock, describe_holder

CANCEL_NAME = "cancel.json"
MODES = ("abort", "finish")


class CancelError(HvfleetError):
    """A cancel request could not be delivered or was not honoured in time."""


@dataclasses.dataclass(frozen=True)
class CancelRequest:
    """A request to stop the run of the process `pid` whose lock records `holder_started`."""

    pid: int
    holder_started: str
    by: str
    mode: str = "abort"
    reason: str = ""
    requested: str = ""
    purpose: str = "drain"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Optional[CancelRequest]:
        """The request in `data`, or None when it is not a well-formed one."""
        if not isinstance(data, Mapping):
            return None
        pid, started, mode = data.get("pid"), data.get("holder_started"), data.get("mode")
        if not isinstance(pid, int) or not isinstance(started, str) or not started or mode not in MODES:
            return None
        return cls(pid=pid, holder_started=started, by=str(data.get("by") or "someone"), mode=mode,
                   reason=str(data.get("reason") or ""), requested=str(data.get("requested") or ""),
                   purpose=str(data.get("purpose") or "drain"))

    def addressed_to(self, holder: Optional[Mapping[str, Any]]) -> bool:
        """Whether this request is for the run that `holder` (a lock file's content) describes."""
        if not holder:
            return False
        return holder.get("pid") == self.pid and holder.get("started") == self.holder_started

    def describe(self) -> str:
        running = ("running pre-copy migrations aborted" if self.mode == "abort"
                   else "running migrations left to finish")
        why = f" ({self.reason})" if self.reason else ""
        when = f" at {self.requested}" if self.requested else ""
        return f"cancelled by {self.by}{why}{when}: no new migration started, {running}, post-copies finish"


# ---- the files -----------------------------------------------------------------------------------


def request_path(state_dir: str) -> str:
    return os.path.join(state_dir, CANCEL_NAME)


def read_request(state_dir: str) -> Optional[CancelRequest]:
    try:
        with open(request_path(state_dir), encoding="utf-8") as handle:
            return CancelRequest.from_dict(json.load(handle))
    except (OSError, ValueError):
        return None


def write_request(state_dir: str, request: CancelRequest) -> str:
    path = request_path(state_dir)
    atomic_write_json(path, request.to_dict())
    return path


def clear_request(state_dir: str, request: CancelRequest) -> None:
    """Remove the request file when it still holds `request` (a newer one is left alone)."""
    if read_request(state_dir) == request:
        with contextlib.suppress(OSError):
            os.unlink(request_path(state_dir))


def request_for(state_dir: str, pid: Optional[int] = None) -> Optional[CancelRequest]:
    """The request addressed to the process `pid` (this one) as the holder of the lock now, if any."""
    pid = os.getpid() if pid is None else pid
    holder = DrainLock(state_dir).holder()
    request = read_request(state_dir)
    if request is None or holder.get("pid") != pid or not request.addressed_to(holder):
        return None
    return request


def journal_view(state_dir: str) -> dict[str, Any]:
    """The journal's state, its last run and where each VM is, as the journal says; {} without a journal."""
    try:
        with open(os.path.join(state_dir, JOURNAL_NAME), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    runs = data.get("runs") or []
    vms = data.get("vms") or {}
    return {"state": data.get("state"), "updated": data.get("updated"), "run": runs[-1] if runs else None,
            "vms": {name: {"state": e.get("state"), "destination": e.get("destination")}
                    for name, e in vms.items() if isinstance(e, dict)}}


# ---- the holder's side ---------------------------------------------------------------------------


def record(journal: Any, request: CancelRequest) -> bool:
    """Put the request into the record of the journal's current run when that run is this process's."""
    if journal is None or not getattr(journal, "persist", False):
        return False
    return bool(journal.annotate_run(os.getpid(), cancel=request.to_dict()))


# ---- the cancelling side -------------------------------------------------------------------------


def process_running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def verified_holder(lock: DrainLock, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], Any] = time.sleep, settle_s: float = 5.0) -> Optional[dict[str, Any]]:
    """The holder of the lock (its file's content) when a process holds it, checked against /proc/locks;
    None when the lock is free. A holder that has just taken the lock gets `settle_s` to write its details."""
    deadline = clock() + settle_s
    while True:
        if lock.is_locked_elsewhere() is None:
            return None
        holder = lock.holder()
        owners = lock.owner_pids()
        pid = holder.get("pid")
        if isinstance(pid, int) and (pid in owners if owners is not None else process_running(pid)):
            return holder
        if clock() >= deadline:
            held_by = ", ".join(str(p) for p in sorted(owners)) if owners else "a process /proc/locks does not name"
            raise CancelError(
                f"The drain lock {lock.path} is held by pid {held_by}, but the lock file names "
                f"{describe_holder(holder)}: the running drain cannot be told apart, nothing was cancelled.",
                f"look at the process holding {lock.path} (lsof {lock.path}) and stop it by hand if it is a drain.")
        sleep(0.2)


def cancel_running(state_dir: str, by: str, mode: str = "abort", reason: str = "", wait_s: float = 600.0,
                   send: Callable[[int, int], Any] = os.kill, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], Any] = time.sleep, check_only: bool = False) -> dict[str, Any]:
    """Cancel the drain or restore holding the lock in `state_dir` and wait until it has ended.

    Returns `changed`, `cancelled`, `message`, `holder`, `request` and `journal` (journal_view after the
    end). Raises CancelError when the holder cannot be identified or does not end within `wait_s`."""
    if mode not in MODES:
        raise CancelError(f"cancel_running {mode!r} is not one of {', '.join(MODES)}.",
                          "give abort (running pre-copies are aborted) or finish (they finish).")
    lock = DrainLock(state_dir)
    holder = verified_holder(lock, clock, sleep)
    if holder is None:
        return {"changed": False, "cancelled": False, "holder": None, "request": None,
                "message": f"No drain or restore is running (the lock {lock.path} is free): nothing to cancel.",
                "journal": journal_view(state_dir)}
    request = CancelRequest(pid=int(holder["pid"]), holder_started=str(holder.get("started") or ""), by=by,
                            mode=mode, reason=reason, requested=now_iso(), purpose=str(holder.get("purpose") or
                                                                                       "drain"))
    if check_only:
        return {"changed": True, "cancelled": False, "holder": holder, "request": request.to_dict(),
                "message": f"Would cancel {describe_holder(holder)}.", "journal": journal_view(state_dir)}
    if not request.holder_started:
        raise CancelError(f"The lock file {lock.path} of {describe_holder(holder)} records no start time; a "
                          "request could not be told from one for a later run, so none was sent.",
                          f"stop pid {request.pid} by hand (kill -TERM {request.pid}) if it is the drain.")
    write_request(state_dir, request)
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile: nothing more to wait for
        send(request.pid, signal.SIGTERM)
    deadline = clock() + max(0.0, wait_s)
    while not stopped(lock, request.pid):
        if clock() >= deadline:
            raise CancelError(
                f"The {request.purpose} run by {describe_holder(holder)} was asked to stop ({request.describe()}) "
                f"but still runs after {wait_s:.0f} s (a post-copy or a migration left to finish completes first).",
                f"wait and run the cancel again (a longer cancel_timeout), or follow it in "
                f"{os.path.join(state_dir, 'drain-progress.jsonl')}; the request stays in {request_path(state_dir)}.")
        sleep(0.5)
    journal = journal_view(state_dir)
    return {"changed": True, "cancelled": True, "holder": holder, "request": request.to_dict(), "journal": journal,
            "message": f"The {request.purpose} run by {describe_holder(holder)} stopped: {request.describe()}; "
                       f"the journal says {journal.get('state') or 'nothing'}."}


def stopped(lock: DrainLock, pid: int) -> bool:
    """The process `pid` no longer holds the lock and has ended."""
    owners = lock.owner_pids()
    holds = pid in owners if owners is not None else lock.is_locked_elsewhere() is not None
    return not holds and not process_running(pid)
