"""Heartbeat gaps as a guest sees them: when each heartbeat line reaches its console file.

Shared by the benchmarks (not a test): the longest gap between two arrivals is the pause the guest
saw, contender-neutral, with no help from libvirt.
"""

import contextlib
import threading
import time
from pathlib import Path

from hvlab.vm import HB_RE


class Gaps(threading.Thread):
    """Timestamps a guest's heartbeat lines as they reach its console file; keeps the gaps."""

    def __init__(self, path, name):
        super().__init__(daemon=True, name=f"gaps {name}")
        self.path, self.name = Path(path), name
        self.arrivals = []
        self.stop_evt = threading.Event()
        self.offset = self.path.stat().st_size
        self.lock = threading.Lock()
        self.start()

    def run(self):
        buf = b""
        while not self.stop_evt.is_set():
            with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
                if data:
                    self.offset += len(data)
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    now = time.monotonic()
                    with self.lock:
                        self.arrivals += [now for ln in lines if self._mine(ln)]
            self.stop_evt.wait(0.01)

    def _mine(self, line):
        m = HB_RE.search(line.decode(errors="replace"))
        return bool(m and m.group("name") == self.name)

    def longest_gap_ms(self, since=None, until=None):
        """Longest gap between heartbeat lines in [since, until]; the window's ends count as lines,
        so a guest that stopped beating (hung, or paused until after `until`) shows the full gap."""
        with self.lock:
            times = [t for t in self.arrivals if (since is None or t >= since) and (until is None or t <= until)]
        if since is not None:
            times.insert(0, since)
        if until is not None:
            times.append(until)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        return round(max(gaps) * 1000) if gaps else None

    def stop(self):
        self.stop_evt.set()
        self.join(5)
