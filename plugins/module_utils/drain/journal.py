# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The durable per-host drain journal, and the live progress events next to it.

Both live on the host being drained, in the state directory (default /var/lib/hvfleet):

`drain-journal.json` - the current maintenance cycle of this host, rewritten atomically (temporary
file, fsync, rename, fsync of the directory) after every change, so a killed controller, a lost SSH
session or Ctrl-C leaves a journal that the next run resumes from exactly:

    {
      "version": 1, "host": "hv1", "source_uri": "qemu:///system",
      "state": "draining" | "drained" | "not_empty" | "failed" | "interrupted" | "restoring" | "restored",
      "cycle_started": ISO, "updated": ISO, "reason": "...", "by": "user@controller",
      "runs": [{"id", "action": "drain"|"restore", "pid", "started", "finished", "state", "summary"}],
      "forecast": {...drain_forecast.DrainForecast.as_dict() of the last plan...},
      "blockers": [{"vm", "kind", "message", "fix"}],
      "vms": {
        NAME: {
          "name", "kind": "live" | "definition" | "cold",
          "origin": "hv1", "origin_uri": "...",            # where it came from (for state: restored)
          "destination": "hv2", "destination_uri": "...", "migrate_uri": "tcp://...",
          "policy", "policy_reason", "mode", "mode_reason", "auto_converge",
          "forecast": {...forecast.Forecast.as_dict()...},
          "state": "planned" | "migrating" | "moved" | "stayed" | "failed" | "paused_postcopy" | "blocked"
                   | "returning" | "home",
          "history": [{"at": ISO, "state", "note"}],
          "started", "finished", "attempts",
          "result": {outcome, ok, mode_used, duration_s, downtime_ms, bytes_sent, message, recovery, steps},
          "error", "recovery",
          "left": {"why", "fix"}                           # left running here (on_unmigratable: leave)
        }
      }
    }

`drain-progress.jsonl` - one JSON object per line, appended (and flushed) as things happen, emptied
when a run starts, for an `async` task poller or a callback plugin to render live. Every event has:

    {"v": 1, "seq": 1, "at": ISO, "t": seconds since the run started, "run": run id, "host": "hv1",
     "action": "drain" | "restore", "event": KIND, ...}

`v` is the version of this interface (EVENTS_VERSION; docs/EVENTS.md has every kind and field and the
compatibility rules: added fields keep the version, removed or renamed ones bump it).

and, by KIND:

* `run_started`: `vms` (to move), `blocked`, `forecast_total_s`, `max_parallel`, `resumed` (bool)
* `note`: `message` (cordoned, waiting for an orphaned job, re-placed a VM, stopping after failures...)
* `vm_started`: `vm`, `destination`, `mode`, `auto_converge`, `policy`, `predicted_duration_s`,
  `predicted_downtime_ms`, `bandwidth_mib` (share of the budget or null)
* `vm_progress` (every few seconds while a migration runs): `vm`, `destination`, `phase`, `percent`
  (0-100, of the current pass), `eta_s` (or null), `iteration`, `remaining_bytes`, `bandwidth_bps`,
  `elapsed_s`, `disk_total`, `disk_remaining` (the copied disks' bytes, 0 without)
* `vm_finished`: `vm`, `destination`, `ok`, `state` (journal state), `outcome`, `mode`, `duration_s`,
  `downtime_ms`, `bytes_sent`, `message`, `recovery` (or null)
* `vm_cold_step` (a cold move, planning/unmigratable.py): `vm`, `step_host` (where the step ran), `step`
  (`shutdown_requested`, `shut_off`, `shutdown_timed_out`, `disks_copied`, `defined`, `started`,
  `restarted_at_source`, `failed`), `elapsed_s` (since the move began), `message`
* `run_finished`: `state`, `moved`, `failed`, `blocked`, `not_started`, `duration_s`, `forecast_total_s`,
  `message` (and `left`, how many VMs were left on the host, when there are any)
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, Optional, Union

from ansible_collections.hvfleet.drain.plugins.module_utils.common.redact import scrub
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import CycleState, Kind, VmState
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.states import (
    NEEDS_DESTINATION,
    JournalError,
    check_transition,
)

JOURNAL_NAME = "drain-journal.json"
PROGRESS_NAME = "drain-progress.jsonl"
VERSION = 1
EVENTS_VERSION = 1  # the progress events' interface (docs/EVENTS.md)

# VM and cycle states (common/vocabulary.py; transitions in drain/states.py)
PLANNED = VmState.PLANNED
MIGRATING = VmState.MIGRATING
MOVED = VmState.MOVED
STAYED = VmState.STAYED
FAILED = VmState.FAILED
PAUSED_POSTCOPY = VmState.PAUSED_POSTCOPY
BLOCKED = VmState.BLOCKED
RETURNING = VmState.RETURNING
RETURN_PAUSED_POSTCOPY = VmState.RETURN_PAUSED_POSTCOPY
HOME = VmState.HOME

DRAINING = CycleState.DRAINING
DRAINED = CycleState.DRAINED
DRAIN_FAILED = CycleState.FAILED
INTERRUPTED = CycleState.INTERRUPTED
RESTORING = CycleState.RESTORING
RESTORED = CycleState.RESTORED
# the drain moved everything it could, and left on the host the VMs whose policy says on_unmigratable: leave
NOT_EMPTY = CycleState.NOT_EMPTY
CYCLE_STATES = tuple(CycleState.values())
# a plan item's kind: a live migration, a definition move, or a cold move (planning/unmigratable.py)
KINDS = tuple(Kind.values())


UTC = datetime.timezone.utc  # noqa: UP017 - module_utils also run on Python < 3.11


def now_iso() -> str:
    """UTC, to the microsecond: progress pollers compare event times with a mark taken just before a run
    started, and at millisecond resolution the two could not be told apart."""
    return datetime.datetime.now(UTC).isoformat(timespec="microseconds")


def atomic_write_json(path: Union[str, os.PathLike[str]], data: object) -> None:
    """Write JSON to `path` so that a crash leaves either the old or the new file, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    text = json.dumps(scrub(data), indent=1, sort_keys=True, default=str) + "\n"  # no URI passwords on disk
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def validate(data: dict[str, Any], path: str) -> None:
    """Refuse a journal whose entries a run could not act on safely, before anything changes."""
    hint = (f"inspect {path}: fix or remove the entry named (its VM is then found by looking at the hosts), "
            "or move the file aside to start a new maintenance cycle.")
    state = data.get("state")
    if state is not None and state not in CYCLE_STATES:
        raise JournalError(f"{path}: state {state!r} is not one of {', '.join(CYCLE_STATES)}.", hint)
    for name, entry in data["vms"].items():
        where = f"{path}: the entry of '{name}'"
        if not isinstance(entry, dict):
            raise JournalError(f"{where} is not a mapping.", hint)
        vm_state = entry.get("state")
        if vm_state not in VmState.values():
            raise JournalError(f"{where} has state {vm_state!r}, not one of {', '.join(VmState.values())}.", hint)
        if entry.get("kind") is not None and entry.get("kind") not in KINDS:
            raise JournalError(f"{where} has kind {entry.get('kind')!r}, not one of {', '.join(KINDS)}.", hint)
        for key in ("origin", "origin_uri"):
            if entry.get(key) is not None and not isinstance(entry.get(key), str):
                raise JournalError(f"{where}: {key} {entry.get(key)!r} is not a string.", hint)
        if vm_state in NEEDS_DESTINATION and (not isinstance(entry.get("destination"), str)
                                              or not entry.get("destination")):
            raise JournalError(f"{where} is {vm_state} but names no destination.", hint)
        if not isinstance(entry.get("history", []), list) or not isinstance(entry.get("attempts", 0), int):
            raise JournalError(f"{where}: history or attempts is malformed.", hint)


class Journal:  # pylint: disable=too-many-instance-attributes
    """The journal of one host; thread-safe (migrations run in threads and all write here)."""

    def __init__(self, state_dir: Union[str, os.PathLike[str]], host: str, data: Optional[dict[str, Any]] = None,
                 clock: Callable[[], float] = time.monotonic, persist: bool = True) -> None:
        self.state_dir = os.fspath(state_dir)
        self.host = host
        self.path = os.path.join(self.state_dir, JOURNAL_NAME)
        self.progress_path = os.path.join(self.state_dir, PROGRESS_NAME)
        self.persist = persist  # False: an in-memory journal (check mode): nothing is written
        self.clock = clock
        self._lock = threading.RLock()
        self._seq = 0
        self._run_start = clock()
        self.run_id: Optional[str] = None
        self.action = "drain"
        self.data = data if data is not None else self.empty(host)

    @staticmethod
    def empty(host: str) -> dict[str, Any]:
        return {"version": VERSION, "host": host, "source_uri": None, "state": None, "cycle_started": None,
                "updated": None, "reason": None, "by": None, "runs": [], "forecast": None, "blockers": [],
                "vms": {}}

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: Union[str, os.PathLike[str]], host: str, persist: bool = True) -> Journal:
        """The host's journal from disk, or a new empty one."""
        path = os.path.join(os.fspath(state_dir), JOURNAL_NAME)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return cls(state_dir, host, persist=persist)
        except (OSError, ValueError) as exc:
            raise JournalError(f"Cannot read the drain journal {path}: {exc}",
                               "inspect the file; move it aside to start a new maintenance cycle (the record of "
                               "where VMs came from is then lost).") from exc
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("vms"), dict):
            raise JournalError(f"{path} is not a drain journal of version {VERSION}.",
                               "move it aside to start a new maintenance cycle.")
        validate(data, path)
        return cls(state_dir, host, data=data, persist=persist)

    @property
    def exists(self) -> bool:
        return self.data.get("state") is not None

    @property
    def state(self) -> Optional[str]:
        return self.data.get("state")

    # ---- writing -------------------------------------------------------------------------

    def save(self) -> None:
        with self._lock:
            self.data["updated"] = now_iso()
            if not self.persist:
                return
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            atomic_write_json(self.path, self.data)

    def begin_run(self, action: str, reason: Optional[str] = None, by: Optional[str] = None,
                  source_uri: Optional[str] = None, options: Optional[dict[str, Any]] = None) -> None:
        """A drain or restore run starts: new run record, progress file emptied."""
        with self._lock:
            self.action = action
            self._run_start = self.clock()
            self._seq = 0
            self.run_id = f"{datetime.datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}"
            if not self.data.get("cycle_started"):
                self.data["cycle_started"] = now_iso()
            if reason:
                self.data["reason"] = reason
            if by:
                self.data["by"] = by
            if source_uri:
                self.data["source_uri"] = source_uri
            self.data["state"] = DRAINING if action == "drain" else RESTORING
            self.data["runs"].append({"id": self.run_id, "action": action, "pid": os.getpid(), "started": now_iso(),
                                      "finished": None, "state": None, "summary": None,
                                      "options": copy.deepcopy(options or {})})
            del self.data["runs"][:-20]  # keep the last 20 runs
            if self.persist:
                os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
                with open(self.progress_path, "w", encoding="utf-8"):
                    pass
            self.save()

    def annotate_run(self, pid: int, **fields: Any) -> bool:
        """Add `fields` to the record of the current run when that run is process `pid`'s; saved. False when not."""
        with self._lock:
            runs = self.data.get("runs") or []
            if not runs or runs[-1].get("pid") != pid:
                return False
            runs[-1].update(fields)
            self.save()
            return True

    def end_run(self, state: str, summary: Optional[dict[str, Any]] = None) -> None:
        with self._lock:
            self.data["state"] = state
            if self.data["runs"]:
                self.data["runs"][-1].update(finished=now_iso(), state=state, summary=summary)
            self.save()

    def set_plan(self, forecast: Optional[dict[str, Any]] = None,
                 blockers: Optional[Iterable[dict[str, Any]]] = None) -> None:
        with self._lock:
            self.data["forecast"] = forecast
            self.data["blockers"] = list(blockers or [])
            self.save()

    def vm(self, name: str) -> Optional[dict[str, Any]]:
        """A copy of one VM's entry (None when not in the journal)."""
        with self._lock:
            entry = self.data["vms"].get(name)
            return copy.deepcopy(entry) if entry is not None else None

    def vms(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self.data["vms"])

    def put_vm(self, name: str, entry: Mapping[str, Any], note: Optional[str] = None, save: bool = True) -> None:
        """Add or replace the plan of a VM, keeping what the journal already knows about its origin."""
        with self._lock:
            old = self.data["vms"].get(name) or {}
            new = dict(entry)
            new["name"] = name
            for key in ("origin", "origin_uri"):
                if old.get(key):
                    new[key] = old[key]
            new.setdefault("origin", self.host)
            new["history"] = list(old.get("history", []))
            new["attempts"] = old.get("attempts", 0)
            state = check_transition(name, old.get("state"), new.get("state") or PLANNED)
            new["state"] = state
            new["history"].append({"at": now_iso(), "state": state, "note": note or "planned"})
            self.data["vms"][name] = new
            if save:
                self.save()

    def update_vm(self, name: str, state: Optional[str] = None, note: Optional[str] = None,
                  **fields: Any) -> dict[str, Any]:
        """Change one VM's entry (state change recorded in its history) and save."""
        with self._lock:
            entry = self.data["vms"][name]
            if state is not None:
                check_transition(name, entry.get("state"), state)  # refused before anything is changed
            entry.update(fields)
            if state is not None:
                state = check_transition(name, entry.get("state"), state)
                if state in (MIGRATING, RETURNING):
                    entry["attempts"] = entry.get("attempts", 0) + 1
                    entry["started"] = now_iso()
                    entry["finished"] = None
                elif state in (MOVED, STAYED, FAILED, PAUSED_POSTCOPY, HOME):
                    entry["finished"] = now_iso()
                entry["state"] = state
                entry.setdefault("history", []).append({"at": now_iso(), "state": state, "note": note})
                del entry["history"][:-50]
            self.save()
            return copy.deepcopy(entry)

    def drop_vm(self, name: str) -> None:
        with self._lock:
            self.data["vms"].pop(name, None)
            self.save()

    # ---- progress events -----------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append one progress event (see the module docstring); returns it. Never raises on I/O."""
        with self._lock:
            self._seq += 1
            item = {"v": EVENTS_VERSION, "seq": self._seq, "at": now_iso(),
                    "t": round(self.clock() - self._run_start, 3), "run": self.run_id, "host": self.host,
                    "action": self.action, "event": kind}
            item.update(fields)
            if self.persist:
                try:
                    with open(self.progress_path, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(scrub(item), sort_keys=True, default=str) + "\n")
                        handle.flush()
                except OSError:
                    pass
            return item

    # ---- end of a cycle ------------------------------------------------------------------

    def archive(self) -> Optional[str]:
        """Move the finished cycle aside (drain-journal.<cycle start>.json); returns the new path."""
        with self._lock:
            if not self.persist or not os.path.exists(self.path):
                return None
            stamp = (self.data.get("cycle_started") or now_iso()).replace(":", "").replace("+0000", "Z")
            target = os.path.join(self.state_dir, f"drain-journal.{stamp}.json")
            os.replace(self.path, target)
            return target


def read_events(state_dir: Union[str, os.PathLike[str]], offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Progress events from byte `offset` on; returns (events, new_offset). For pollers and tests.

    A new run empties the file and may have written more than `offset` bytes by the next poll: an
    offset that no longer falls on the start of a line, or a line there that is not an event, means
    the file was rewritten, and it is read again from the start."""
    path = os.path.join(os.fspath(state_dir), PROGRESS_NAME)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if offset > size or (offset and not _line_starts_at(handle, offset)):
                offset = 0
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line still being written is read next time
    events = []
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line.decode("utf-8"))
        except ValueError:
            event = None
        if not isinstance(event, dict):
            if offset:  # not an event boundary of this file: it was rewritten
                return read_events(state_dir, 0)
            continue  # not an event: never handed to a poller
        events.append(event)
    return events, offset + end


def _line_starts_at(handle: IO[bytes], offset: int) -> bool:
    handle.seek(offset - 1)
    return handle.read(1) == b"\n"
