"""The lab's use lock: taken once per user, never waited for by a process its own ancestor holds it for."""

import subprocess
import sys
from pathlib import Path

from hvlab import use_lock

HVLAB = str(Path(use_lock.__file__).resolve().parents[1])
CHILD = (f"import sys, pathlib; sys.path.insert(0, {HVLAB!r}); from hvlab import use_lock; "
         "print(use_lock.held_by_ancestor(pathlib.Path(sys.argv[1])))")


def test_a_command_under_flock_sees_its_ancestor_holding_it(tmp_path):
    lock = tmp_path / "use.lock"
    lock.touch()
    under = subprocess.run(["flock", str(lock), sys.executable, "-c", CHILD, str(lock)], capture_output=True,
                           text=True, check=True, timeout=30)
    alone = subprocess.run([sys.executable, "-c", CHILD, str(lock)], capture_output=True, text=True, check=True,
                           timeout=30)
    assert under.stdout.strip() == "True"
    assert alone.stdout.strip() == "False"


def test_acquire_holds_it_until_the_file_is_closed(tmp_path):
    lock = tmp_path / "use.lock"
    handle = use_lock.acquire(lock)
    try:
        busy = subprocess.run(["flock", "-n", str(lock), "true"], timeout=30, check=False)
        assert busy.returncode != 0
    finally:
        handle.close()
    assert subprocess.run(["flock", "-n", str(lock), "true"], timeout=30, check=False).returncode == 0
