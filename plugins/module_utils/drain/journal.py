# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The durable per-host drain journal, and the live progress events next to it.

Both live on the host being drained, in the state directory (default /var/lib/hvfleet):

`drain-journal.json` - the current maintenance cycle of this host, rewritten atomically (temporary
file, fsync, rename, fsync of the directory) after every change, so a killed controller, a lost SSH
session or Ctrl-C leaves a journal that the next run resumes from exactly:

    {
      "version": 1, "host": "hv1", "source_uri": "qemu:///system",
      "state": "draining" | "drained" | "failed" | "interrupted" | "restoring" | "restored",
      "cycle_started": ISO, "updated": ISO, "reason": "...", "by": "user@controller",
      "runs": [{"id", "action": "drain"|"restore", "pid", "started", "finished", "state", "summary"}],
      "forecast": {...forecast.DrainForecast.as_dict() of the last plan...},
      "blockers": [{"vm", "kind", "message", "fix"}],
      "vms": {
        NAME: {
          "name", "kind": "live" | "definition",
          "origin": "hv1", "origin_uri": "...",            # where it came from (for state: restored)
          "destination": "hv2", "destination_uri": "...", "migrate_uri": "tcp://...",
          "policy", "policy_reason", "mode", "mode_reason", "auto_converge",
          "forecast": {...forecast.Forecast.as_dict()...},
          "state": "planned" | "migrating" | "moved" | "stayed" | "failed" | "paused_postcopy" | "blocked"
                   | "returning" | "home",
          "history": [{"at": ISO, "state", "note"}],
          "started", "finished", "attempts",
          "result": {outcome, ok, mode_used, duration_s, downtime_ms, bytes_sent, message, recovery, steps},
          "error", "recovery"
        }
      }
    }

`drain-progress.jsonl` - one JSON object per line, appended (and flushed) as things happen, emptied
when a run starts, for an `async` task poller or a callback plugin to render live. Every event has:

    {"seq": 1, "at": ISO, "t": seconds since the run started, "run": run id, "host": "hv1",
     "action": "drain" | "restore", "event": KIND, ...}

and, by KIND:

* `run_started`: `vms` (to move), `blocked`, `forecast_total_s`, `max_parallel`, `resumed` (bool)
* `note`: `message` (cordoned, waiting for an orphaned job, re-placed a VM, stopping after failures...)
* `vm_started`: `vm`, `destination`, `mode`, `auto_converge`, `policy`, `predicted_duration_s`,
  `predicted_downtime_ms`, `bandwidth_mib` (share of the budget or null)
* `vm_progress` (every few seconds while a migration runs): `vm`, `destination`, `phase`, `percent`
  (0-100, of the current pass), `eta_s` (or null), `iteration`, `remaining_bytes`, `bandwidth_bps`,
  `elapsed_s`
* `vm_finished`: `vm`, `destination`, `ok`, `state` (journal state), `outcome`, `mode`, `duration_s`,
  `downtime_ms`, `bytes_sent`, `message`, `recovery` (or null)
* `run_finished`: `state`, `moved`, `failed`, `blocked`, `not_started`, `duration_s`, `forecast_total_s`,
  `message`
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import threading
import time

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.redact import scrub

JOURNAL_NAME = "drain-journal.json"
PROGRESS_NAME = "drain-progress.jsonl"
VERSION = 1

# VM states
PLANNED = "planned"
MIGRATING = "migrating"
MOVED = "moved"
STAYED = "stayed"
FAILED = "failed"
PAUSED_POSTCOPY = "paused_postcopy"
BLOCKED = "blocked"
RETURNING = "returning"
HOME = "home"
VM_STATES = (PLANNED, MIGRATING, MOVED, STAYED, FAILED, PAUSED_POSTCOPY, BLOCKED, RETURNING, HOME)

# journal (cycle) states
DRAINING = "draining"
DRAINED = "drained"
DRAIN_FAILED = "failed"
INTERRUPTED = "interrupted"
RESTORING = "restoring"
RESTORED = "restored"
UNFINISHED = (DRAINING, RESTORING)  # a run was in progress: if nobody holds the lock, it was interrupted


class JournalError(HvfleetError):
    """The journal cannot be read or written."""


UTC = datetime.timezone.utc  # noqa: UP017 - module_utils also run on Python < 3.11


def now_iso():
    return datetime.datetime.now(UTC).isoformat(timespec="milliseconds")


def atomic_write_json(path, data):
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


class Journal:  # pylint: disable=too-many-instance-attributes
    """The journal of one host; thread-safe (migrations run in threads and all write here)."""

    def __init__(self, state_dir, host, data=None, clock=time.monotonic, persist=True):
        self.state_dir = os.fspath(state_dir)
        self.host = host
        self.path = os.path.join(self.state_dir, JOURNAL_NAME)
        self.progress_path = os.path.join(self.state_dir, PROGRESS_NAME)
        self.persist = persist  # False: an in-memory journal (check mode): nothing is written
        self.clock = clock
        self._lock = threading.RLock()
        self._seq = 0
        self._run_start = clock()
        self.run_id = None
        self.action = "drain"
        self.data = data if data is not None else self.empty(host)

    @staticmethod
    def empty(host):
        return {"version": VERSION, "host": host, "source_uri": None, "state": None, "cycle_started": None,
                "updated": None, "reason": None, "by": None, "runs": [], "forecast": None, "blockers": [],
                "vms": {}}

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir, host, persist=True):
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
        return cls(state_dir, host, data=data, persist=persist)

    @property
    def exists(self):
        return self.data.get("state") is not None

    @property
    def state(self):
        return self.data.get("state")

    # ---- writing -------------------------------------------------------------------------

    def save(self):
        with self._lock:
            self.data["updated"] = now_iso()
            if not self.persist:
                return
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            atomic_write_json(self.path, self.data)

    def begin_run(self, action, reason=None, by=None, source_uri=None, options=None):
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

    def end_run(self, state, summary=None):
        with self._lock:
            self.data["state"] = state
            if self.data["runs"]:
                self.data["runs"][-1].update(finished=now_iso(), state=state, summary=summary)
            self.save()

    def set_plan(self, forecast=None, blockers=None):
        with self._lock:
            self.data["forecast"] = forecast
            self.data["blockers"] = list(blockers or [])
            self.save()

    def vm(self, name):
        """A copy of one VM's entry (None when not in the journal)."""
        with self._lock:
            entry = self.data["vms"].get(name)
            return copy.deepcopy(entry) if entry is not None else None

    def vms(self):
        with self._lock:
            return copy.deepcopy(self.data["vms"])

    def put_vm(self, name, entry, note=None, save=True):
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
            state = new.get("state") or PLANNED
            new["state"] = state
            new["history"].append({"at": now_iso(), "state": state, "note": note or "planned"})
            self.data["vms"][name] = new
            if save:
                self.save()

    def update_vm(self, name, state=None, note=None, **fields):
        """Change one VM's entry (state change recorded in its history) and save."""
        with self._lock:
            entry = self.data["vms"][name]
            entry.update(fields)
            if state is not None:
                if state not in VM_STATES:
                    raise JournalError(f"unknown VM state {state!r}")
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

    def drop_vm(self, name):
        with self._lock:
            self.data["vms"].pop(name, None)
            self.save()

    # ---- progress events -----------------------------------------------------------------

    def event(self, kind, **fields):
        """Append one progress event (see the module docstring); returns it. Never raises on I/O."""
        with self._lock:
            self._seq += 1
            item = {"seq": self._seq, "at": now_iso(), "t": round(self.clock() - self._run_start, 3),
                    "run": self.run_id, "host": self.host, "action": self.action, "event": kind}
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

    def archive(self):
        """Move the finished cycle aside (drain-journal.<cycle start>.json); returns the new path."""
        with self._lock:
            if not self.persist or not os.path.exists(self.path):
                return None
            stamp = (self.data.get("cycle_started") or now_iso()).replace(":", "").replace("+0000", "Z")
            target = os.path.join(self.state_dir, f"drain-journal.{stamp}.json")
            os.replace(self.path, target)
            return target


def read_events(state_dir, offset=0):
    """Progress events from byte `offset` on; returns (events, new_offset). For pollers and tests."""
    path = os.path.join(os.fspath(state_dir), PROGRESS_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            if os.fstat(handle.fileno()).st_size < offset:
                offset = 0  # a new run emptied the file
            handle.seek(offset)
            text = handle.read()
    except OSError:
        return [], offset
    end = text.rfind("\n") + 1  # a line still being written is read next time
    events = []
    for line in text[:end].splitlines():
        if line.strip():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events, offset + len(text[:end].encode("utf-8"))
