# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Follow the progress events of a drain (journal.py's `drain-progress.jsonl`) from a cursor.

A poller (the `drain_progress` module, called again and again by an `until` loop) keeps a cursor:
the run it follows, the byte offset it read up to and the last `seq` it delivered. The events file
is emptied when a new run starts, so an offset alone can point into the middle of another run's
lines; the cursor is therefore checked against what it finds there and the whole file is re-read
(filtered by run and seq) whenever it does not match. Events older than `since` (a timestamp taken
on the same host before the drain was launched) belong to an earlier run and are skipped.

`wait` makes one call a long poll: it returns as soon as something other than a `vm_progress`
sample arrives (a VM started or finished, a note, the run ended) or the job ended, and otherwise
after `wait` seconds with whatever samples came meanwhile.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Optional, TypedDict, Union

from ansible_collections.hvfleet.drain.plugins.module_utils.drain.journal import PROGRESS_NAME, now_iso, read_events

# events that end a long poll at once; vm_progress samples are batched until `wait` runs out
PROMPT_EVENTS = ("run_started", "run_finished", "vm_started", "vm_finished", "vm_cold_step", "note")

JobState = Literal["running", "finished", "missing"]


class Cursor(TypedDict):
    """Where a poller stands: the byte offset it read up to, the run it follows and the last seq it got."""

    offset: int
    run: Optional[str]
    seq: int


def job_state(async_dir: str, job_id: str) -> JobState:
    """State of an Ansible async job from its results file: 'running', 'finished' or 'missing'.

    async_wrapper writes {"started": true, "finished": false, ...} when the job starts and replaces
    it (atomically) with the module's result when it ends; that is what async_status reads too.
    """
    path = os.path.join(os.path.expanduser(async_dir), job_id)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "running"
    try:
        data = json.loads(text)
    except ValueError:
        return "running"  # being written
    if isinstance(data, dict) and data.get("started") and not data.get("finished"):
        return "running"
    return "finished"


def _select(events: list[dict[str, Any]], cursor: Mapping[str, Any],
            since: Optional[str]) -> tuple[list[dict[str, Any]], Optional[str]]:
    """The events of the followed run after the cursor's seq; picks the run when none is followed yet."""
    run = cursor.get("run")
    last = cursor.get("seq") or 0
    if run is None:
        fresh = [e for e in events if since is None or str(e.get("at", "")) > since]
        if not fresh:
            return [], None
        run = fresh[0].get("run")
        last = 0
    return [e for e in events if e.get("run") == run and (e.get("seq") or 0) > last], run


def read_new(state_dir: Union[str, os.PathLike[str]], cursor: Mapping[str, Any],
             since: Optional[str] = None) -> tuple[list[dict[str, Any]], Cursor]:
    """(new events, new cursor). `cursor` is {"offset", "run", "seq"}; an empty one starts afresh."""
    offset = int(cursor.get("offset") or 0)
    run = cursor.get("run")
    last = int(cursor.get("seq") or 0)
    events, new_offset = read_events(state_dir, offset)
    if offset and events and (run is None or events[0].get("run") != run or events[0].get("seq") != last + 1):
        # the file was emptied and refilled since: the offset means nothing any more
        events, new_offset = read_events(state_dir, 0)
    selected, run = _select(events, {"run": run, "seq": last}, since)
    if selected:
        last = selected[-1].get("seq") or last
    return selected, {"offset": new_offset, "run": run, "seq": last}


def mark(state_dir: Union[str, os.PathLike[str]]) -> dict[str, Any]:
    """No events: the host's time now (a `since` for the calls that follow a drain started after this)."""
    return {"events": [], "offset": 0, "run": None, "seq": 0, "finished": False, "job": None, "now": now_iso(),
            "progress_path": os.path.join(os.fspath(state_dir), PROGRESS_NAME)}


def follow(state_dir: Union[str, os.PathLike[str]], cursor: Optional[Mapping[str, Any]] = None,
           since: Optional[str] = None, wait: Optional[float] = 0.0, job: Optional[Callable[[], str]] = None,
           interval: float = 0.5, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], object] = time.sleep) -> dict[str, Any]:
    """One poll: new events, the next cursor and whether the run is over.

    `job` is a callable returning the async job's state ('running', 'finished', 'missing') or None
    when the drain is not followed through a job; the run is then over when its `run_finished`
    event was read. Returns a dict with `events`, `offset`, `run`, `seq`, `finished`, `job`,
    `now` (host time, ISO, usable as a later `since`) and `progress_path`.
    """
    cursor = dict(cursor or {})
    deadline = clock() + max(0.0, float(wait or 0))
    collected = []
    job_now = None
    while True:
        job_now = job() if job is not None else None
        if job_now in ("finished", "missing"):
            # the job is over: everything it wrote is in the file now, read it to the end
            events, cursor = read_new(state_dir, cursor, since)
            collected.extend(events)
            break
        events, cursor = read_new(state_dir, cursor, since)
        collected.extend(events)
        if job is None and any(e.get("event") == "run_finished" for e in collected):
            break
        if any(e.get("event") in PROMPT_EVENTS for e in collected) or clock() >= deadline:
            break
        sleep(min(interval, max(0.0, deadline - clock())))
    if job is None:
        finished = any(e.get("event") == "run_finished" for e in collected)
    else:
        finished = job_now in ("finished", "missing")
    return {"events": collected, "offset": cursor["offset"], "run": cursor["run"], "seq": cursor["seq"],
            "finished": finished, "job": job_now, "now": now_iso(),
            "progress_path": os.path.join(os.fspath(state_dir), PROGRESS_NAME)}
