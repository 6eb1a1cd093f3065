# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A libvirt call the engine repeats at every poll, bounded, with at most one of it in flight.

The engine's loop samples job stats, retries an abort and applies bandwidth changes every poll.
Each call is bounded (common/bounded.py): a daemon stuck in a job must not stop the loop from
reaching its deadline. But a call that did not answer is still waiting in the daemon, holding one
of its worker threads; sending the same request again at every poll would pile up waiting calls
until the daemon has no worker left for anything. So a Flight sends a new request only once the
previous one has ended; until then each poll just waits (bounded) for that one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.bounded import NoAnswer


class Flight:
    """Calls of one kind (`what`), one at a time, each bounded by the caller's timeout."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._previous: Optional[threading.Event] = None

    @property
    def busy(self) -> bool:
        """The last call has not answered yet."""
        return self._previous is not None and not self._previous.is_set()

    def call(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        """fn() if it answers within `timeout_s`, else raise NoAnswer.

        While the previous call is still in flight, wait for it (its late answer is stale and
        dropped) and only then send fn() with what is left of `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        previous = self._previous
        if previous is not None and not previous.wait(timeout_s):
            raise NoAnswer(f"{self.what}: the previous call has had no answer yet")
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # pylint: disable=broad-except
                box["error"] = exc
            finally:
                done.set()

        self._previous = done
        threading.Thread(target=run, name=f"engine {self.what}", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise NoAnswer(f"{self.what}: no answer within {timeout_s:g} s")
        if "error" in box:
            raise box["error"]
        return box.get("value")
