"""The lab's use lock: one user of the lab at a time - a test session, a benchmark run, a person's demo.

The lab is one set of namespaces and daemons on the machine; two users at once shape each other's
links, drain each other's guests and time each other's migrations. Every user takes
`/var/tmp/hvfleet-lab-use.lock` (flock) for as long as it uses the lab: the benchmarks per run, the
integration tests for their whole session, by hand `flock /var/tmp/hvfleet-lab-use.lock <command>`.
A session started under such a `flock` already holds it through its ancestor and must not wait for
itself, so the holders are read from /proc/locks and compared with this process's ancestors.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import IO, Optional

USE_LOCK = Path("/var/tmp/hvfleet-lab-use.lock")


def _ancestors(pid: int) -> set[int]:
    """pid and its ancestors, from /proc/<pid>/stat (the parent is the field after the command's ')')."""
    seen = set()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return seen


def holders(path: Path = USE_LOCK) -> set[int]:
    """The pids holding a flock on `path`, from /proc/locks ("1: FLOCK ADVISORY WRITE pid maj:min:inode ...")."""
    try:
        inode = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return set()
    out = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            out.add(int(fields[4]))
    return out


def held_by_ancestor(path: Path = USE_LOCK) -> bool:
    return bool(holders(path) & _ancestors(os.getpid()))


def acquire(path: Path = USE_LOCK) -> Optional[IO[str]]:
    """Take the use lock for as long as the returned file stays open (None: an ancestor holds it already).
    Waits for another user, saying who."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")  # noqa: SIM115 (held open on purpose: closing it releases the lock)
    if held_by_ancestor(path):
        handle.close()
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"hvlab: waiting for {path} (held by pid {sorted(holders(path))})", file=sys.stderr, flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle
