# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One drain (or restore) of a host at a time, and never a lock that outlives its holder.

The lock is `fcntl.flock` on `<state_dir>/drain.lock`, held for the whole drain by the process
that runs it. The kernel releases a flock when the process dies (crash, SIGKILL, lost SSH session),
so a crashed run never leaves the host stuck; there is no stale-lock heuristic to get wrong.

The file also says who holds the lock (pid, what, start time, user@controller, host), written after
the lock is taken, so a refused second run names the holder. The file itself is never removed: removing
a flock'ed file lets a third process lock a new inode while the second still holds the old one.
"""

from __future__ import annotations

import datetime
import errno
import fcntl  # hypervisors are Linux
import json
import os
import socket
from collections.abc import Mapping
from typing import Any, Optional, Union

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError

LOCK_NAME = "drain.lock"


class DrainLocked(HvfleetError):
    """Another drain or restore of this host is running; `holder` says which (dict, may be empty)."""

    def __init__(self, message: str, hint: Optional[str] = None, holder: Optional[dict[str, Any]] = None) -> None:
        super().__init__(message, hint)
        self.holder = holder or {}


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 (Python < 3.11)


def describe_holder(holder: Optional[Mapping[str, Any]]) -> str:
    """'pid 1234 (drain, started 2024-05-01T10:00:00+00:00 by alice@ctl, host hv1)'."""
    if not holder:
        return "a process that has not written its details yet"
    parts = [f"pid {holder.get('pid', '?')}"]
    inner = [str(holder.get("purpose") or "drain")]
    if holder.get("started"):
        inner.append(f"started {holder['started']}")
    if holder.get("by"):
        inner.append(f"by {holder['by']}")
    if holder.get("host"):
        inner.append(f"host {holder['host']}")
    return f"{parts[0]} ({', '.join(inner)})"


class DrainLock:
    """flock-based lock; use as a context manager or acquire()/release()."""

    def __init__(self, state_dir: Union[str, os.PathLike[str]], host: str = "", purpose: str = "drain",
                 by: str = "") -> None:
        self.state_dir = os.fspath(state_dir)
        self.path = os.path.join(self.state_dir, LOCK_NAME)
        self.host = host
        self.purpose = purpose
        self.by = by
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict[str, Any]:
        """Who holds (or last held) the lock, from the file; {} when unknown."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.loads(handle.read() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> DrainLock:
        """Take the lock or raise DrainLocked naming the holder. Never blocks."""
        if self._fd is not None:
            return self
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = self.holder()
            what = f" of {self.host}" if self.host else ""
            raise DrainLocked(
                f"Another drain or restore{what} is running: {describe_holder(holder)}; refusing to start a second "
                "one at the same time.",
                "wait for it to finish (its progress is in the journal next to the lock, "
                f"{self.state_dir}), or stop that process; a crashed run releases the lock by itself.",
                holder=holder) from None
        self._fd = fd
        info = {"pid": os.getpid(), "purpose": self.purpose, "started": now_iso(), "by": self.by,
                "host": self.host or socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info, sort_keys=True) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no holder any more
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def is_locked_elsewhere(self) -> Optional[dict[str, Any]]:
        """The holder's details (dict) when another process holds the lock now, else None.

        A read-only probe for check mode: it creates nothing and writes nothing.
        """
        if self._fd is not None:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return self.holder() or {"pid": "?"}
        finally:
            os.close(fd)  # closing drops the probe's shared lock
        return None

    def owner_pids(self, locks_text: Optional[str] = None) -> Optional[set[int]]:
        """The pids holding a flock on the lock file now, from /proc/locks (or `locks_text`); None when
        that cannot be read (no /proc, no lock file)."""
        try:
            st = os.stat(self.path)
            if locks_text is None:
                with open("/proc/locks", encoding="ascii", errors="replace") as handle:
                    locks_text = handle.read()
        except OSError:
            return None
        return flock_owners(locks_text, os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)

    def __enter__(self) -> DrainLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def flock_owners(locks_text: str, major: int, minor: int, inode: int) -> set[int]:
    """Pids holding (not waiting for) a FLOCK on the file MAJOR:MINOR:INODE, from the text of /proc/locks:
    `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF` (major and minor in hex)."""
    owners = set()
    for line in locks_text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":  # "->" marks a process waiting for the lock
            continue
        parts = fields[5].split(":")
        try:
            dev = (int(parts[0], 16), int(parts[1], 16), int(parts[2]))
            pid = int(fields[4])
        except (IndexError, ValueError):
            continue
        if dev == (major, minor, inode):
            owners.add(pid)
    return owners
