# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Call something that may block for good, and give up on it after a deadline.

A libvirt call has no timeout of its own: a daemon whose QEMU monitor or migration job
is stuck keeps the caller waiting forever (keepalive only notices a dead peer, not a busy
one). Reconciliation must still decide within its deadline, so its calls run in a daemon
thread that is abandoned when it does not answer in time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class NoAnswer(Exception):
    """The call did not return within its deadline (it may still finish in the background)."""


def call(fn: Callable[..., T], *args: Any, timeout_s: float, what: str = "call") -> T:
    """fn(*args) if it returns or raises within `timeout_s` seconds, else raise NoAnswer."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # pylint: disable=broad-except
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=f"bounded {what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise NoAnswer(f"{what}: no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # set: run() finished without an error
