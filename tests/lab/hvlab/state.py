"""The lab's memory: one JSON state file that says what the lab made, so `down` can undo exactly that.

Every creation step first records its intent (a name, a path) and then its result (a pid and
that process's start time), so a run killed half-way still leaves a record that says what may
exist. A pid alone is not an identity (pids are reused), so a process is "ours" only if its start
time in /proc/PID/stat still matches the recorded one; nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

DEFAULT_ROOT = "/var/tmp/hvfleet-lab"
STATE_VERSION = 1


def lab_root() -> Path:
    """LAB_ROOT: everything the lab creates lives below it (env HVLAB_ROOT overrides)."""
    return Path(os.environ.get("HVLAB_ROOT") or DEFAULT_ROOT)


# ---------------------------------------------------------------------------------------------
# Processes identified by (pid, start time)


def parse_stat(text: str) -> tuple[str, int]:
    """(state letter, start time in clock ticks) from the text of /proc/PID/stat.

    The command name (field 2) may contain spaces and parentheses, so split after the last ')'.
    Field 3 is the state, field 22 the start time.
    """
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def proc_start_time(pid: int) -> int | None:
    """Start time of a live process, or None if there is none (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, start = parse_stat(f.read())
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None if state in ("Z", "X") else start


def proc_record(pid: int) -> dict[str, int]:
    """What the state file keeps about a process we started."""
    start = proc_start_time(pid)
    if start is None:
        raise RuntimeError(f"process {pid} exited right after it was started")
    return {"pid": pid, "start": start}


def alive(rec: dict | None) -> bool:
    """True if the recorded process still exists and is the very one we recorded."""
    if not rec or not rec.get("pid"):
        return False
    return proc_start_time(rec["pid"]) == rec.get("start")


def kill_record(rec: dict | None, timeout: float = 10.0) -> bool:
    """Stop the recorded process (SIGTERM, then SIGKILL at the deadline). True if one was stopped.

    Does nothing if the pid now belongs to another process (start time differs).
    """
    if not alive(rec):
        return False
    assert rec is not None
    pid = rec["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(rec):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while alive(rec) and time.monotonic() < deadline:
                time.sleep(0.02)
            break
        time.sleep(0.02)
    # If the process is our own child, reap it so it does not stay a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    return True


# ---------------------------------------------------------------------------------------------
# The state file


def empty_state() -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "bridge": None,  # {"name": "hvlab0"} once we decided to create it
        "run_netns_created": False,  # /run/netns did not exist before the lab (ip netns add makes it)
        "created_dirs": [],  # mountpoints the lab had to create outside LAB_ROOT (removed by `down`)
        "hosts": {},  # name -> host record (see hosts.py)
        "storage": None,  # storage record (see storage.py)
        "vms": {},  # name -> VM spec as a dict (see vm.py)
        "inventory": None,  # the first inventory file the lab wrote
        "inventories": [],  # every inventory file it wrote (one per checkout that ran up)
    }


class State:
    """The state file, loaded into `.data`; `save()` writes it atomically (tmp file + rename)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else lab_root()
        self.path = self.root / "state.json"
        self.data: dict[str, Any] = empty_state()
        self._seen: tuple | None = None  # identity of the file version self.data reflects

    def _stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> State:
        """Read the file, unless self.data already reflects it (so dicts callers hold stay live)."""
        stamp = self._stamp()
        if stamp is not None and stamp == self._seen:
            return self
        if stamp is None:
            self.data, self._seen = empty_state(), None
            return self
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise RuntimeError(f"lab state file {self.path} is unreadable ({exc}); inspect or remove it") from exc
            merged = empty_state()
            merged.update(data)
            self.data = merged
            self._seen = stamp
        return self

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
        self._seen = self._stamp()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.data, self._seen = empty_state(), None

    # small helpers so callers record intent in one line
    def host(self, name: str) -> dict[str, Any]:
        return self.data["hosts"].setdefault(name, {"name": name})

    def note_dir(self, path: str) -> None:
        if path not in self.data["created_dirs"]:
            self.data["created_dirs"].append(path)
