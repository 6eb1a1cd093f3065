# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cordon state of a hypervisor, kept on the hypervisor itself.

A cordoned host is never chosen as a migration destination. The state lives in one small
JSON file on the host (`/var/lib/hvfleet/maintenance.json`) so that every controller sees
the same answer and it survives the controller. It is written atomically (temp file +
fsync + rename) under an exclusive lock: a crash leaves the old or the new state, never a
torn file, and two writers cannot lose each other's update. A missing file means `active`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError

DEFAULT_DIR = "/var/lib/hvfleet"
FILE_NAME = "maintenance.json"
CORDONED = "cordoned"
ACTIVE = "active"
STATES = (CORDONED, ACTIVE)
FORMAT_VERSION = 1


class MaintenanceError(HvfleetError):
    """The maintenance state cannot be read or written; names the file."""


@dataclasses.dataclass(frozen=True)
class MaintenanceState:
    """`state` is cordoned or active; reason / by / since (UTC ISO 8601) say why, who and when."""

    state: str = ACTIVE
    reason: str | None = None
    by: str | None = None
    since: str | None = None

    @property
    def cordoned(self) -> bool:
        return self.state == CORDONED

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def state_path(state_dir: str | os.PathLike[str] = DEFAULT_DIR) -> str:
    return os.path.join(os.fspath(state_dir), FILE_NAME)


def utc_now() -> str:
    """UTC time as ISO 8601 with a Z, to the second."""
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017  (datetime.UTC needs Python 3.11)
    return now.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def read_state(state_dir: str | os.PathLike[str] = DEFAULT_DIR) -> MaintenanceState:
    """The host's MaintenanceState; `active` when no state was ever written."""
    path = state_path(state_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return MaintenanceState()
    except OSError as exc:
        raise MaintenanceError(f"Cannot read the maintenance state {path}: {exc.strerror}.",
                               f"check the permissions of {path} (the module must run as root).") from exc
    return _parse(path, text)


def _parse(path: str, text: str) -> MaintenanceState:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MaintenanceError(f"The maintenance state {path} is not valid JSON ({exc}).",
                               f"fix or remove {path}, then set the state again with "
                               "hvfleet.drain.host_maintenance.") from exc
    if not isinstance(data, dict) or data.get("state") not in STATES:
        got = data.get("state") if isinstance(data, dict) else type(data).__name__
        raise MaintenanceError(f"The maintenance state {path} has state {got!r}; expected one of "
                               f"{', '.join(STATES)}.",
                               f"fix or remove {path}, then set the state again with "
                               "hvfleet.drain.host_maintenance.")
    fields = {k: data.get(k) for k in ("reason", "by", "since")}
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            fields[key] = str(value)
    return MaintenanceState(state=data["state"], **fields)


@contextlib.contextmanager
def _locked(state_dir: str) -> Iterator[None]:
    """Exclusive lock beside the state file for the read-modify-write of set_state."""
    lock = os.path.join(state_dir, f".{FILE_NAME}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(state_dir: str, state: MaintenanceState) -> None:
    path = state_path(state_dir)
    data = dict(state.to_dict(), version=FORMAT_VERSION)
    fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=state_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def plan_state(current: MaintenanceState, state: str, reason: str | None = None, by: str | None = None,
               now: str | None = None) -> tuple[bool, MaintenanceState]:
    """(changed, after) for a request; the same state again changes nothing (keeps who and since)."""
    if state not in STATES:
        raise MaintenanceError(f"Unknown maintenance state {state!r}.", f"use one of {', '.join(STATES)}.")
    if current.state == state:
        return False, current
    return True, MaintenanceState(state=state, reason=reason, by=by, since=now or utc_now())


def set_state(state_dir: str | os.PathLike[str] | None, state: str, reason: str | None = None, by: str | None = None,
              check_mode: bool = False, now: str | None = None) -> tuple[bool, MaintenanceState, MaintenanceState]:
    """Cordon or uncordon; returns (changed, before, after). Idempotent: same state, no write."""
    state_dir = os.fspath(state_dir or DEFAULT_DIR)
    if state not in STATES:
        raise MaintenanceError(f"Unknown maintenance state {state!r}.", f"use one of {', '.join(STATES)}.")
    if check_mode:
        before = read_state(state_dir)
        changed, after = plan_state(before, state, reason, by, now)
        return changed, before, after
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        with _locked(state_dir):
            before = read_state(state_dir)
            changed, after = plan_state(before, state, reason, by, now)
            if changed:
                _write(state_dir, after)
    except OSError as exc:
        raise MaintenanceError(f"Cannot write the maintenance state in {state_dir}: {exc.strerror or exc}.",
                               f"check that {state_dir} is writable (the module must run as root, "
                               "become: true).") from exc
    return changed, before, after
