# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The small run context that planning, execution, resume and restore share.

It holds what one run needs everywhere (the backend, the hosts, the configuration, the journal, the
clock) and the run's cancel state: `cancel()` may come from a signal handler at any moment, so it
only sets a flag and asks each running migration's control to abort - nothing in it blocks.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.drain.backend import Backend
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.journal import EVENTS_VERSION, Journal
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig, DrainError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host


class RunContext:  # pylint: disable=too-many-instance-attributes
    """One drain or restore run: its hosts, settings, journal, clock and cancel state."""

    def __init__(self, backend: Backend, source: Host, destinations: list[Host], config: DrainConfig,
                 policies: list, state_dir: str, progress: Optional[Callable[[dict], Any]] = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] = time.sleep):
        self.backend = backend
        self.source = source
        self.destinations = destinations
        self.config = config
        self.policies = policies
        self.state_dir = state_dir
        self.progress = progress
        self.clock = clock
        self.sleep = sleep
        self.journal: Optional[Journal] = None
        self._cancel = threading.Event()
        self._controls: dict[str, Any] = {}
        self._controls_lock = threading.Lock()

    @property
    def jr(self) -> Journal:
        """The run's journal (loaded when the run starts, under its lock)."""
        if self.journal is None:
            raise DrainError("The drain's journal is not loaded.", "this is a bug; report it.")
        return self.journal

    # ---- hosts ------------------------------------------------------------------------------

    def host(self, name: Optional[str]) -> Optional[Host]:
        """The source or a destination by name; None when it is not given to this run."""
        if name == self.source.name:
            return self.source
        return next((d for d in self.destinations if d.name == name), None)

    def known_host(self, name: Optional[str]) -> Host:
        """The source or a destination a plan names (planning only names hosts it was given)."""
        host = self.host(name)
        if host is None:
            raise DrainError(f"The plan names {name}, which is not among the hosts given.", "this is a bug; report it.")
        return host

    # ---- cancel -----------------------------------------------------------------------------

    def cancel(self, abort_running: bool = True) -> None:
        """No new migration starts; running pre-copies are asked to abort (with `abort_running=False` they
        finish). Never blocks."""
        self._cancel.set()
        if not abort_running:
            return
        with self._controls_lock:
            controls = list(self._controls.values())
        for control in controls:
            with contextlib.suppress(Exception):
                control.abort()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def register(self, name: str, control: Any) -> bool:
        """Make a migration cancellable; False (and not registered) when the run is already cancelled."""
        with self._controls_lock:
            if self._cancel.is_set():
                return False
            self._controls[name] = control
            return True

    def unregister(self, name: str) -> None:
        with self._controls_lock:
            self._controls.pop(name, None)

    def window_closed(self) -> bool:
        """True once the start deadline (the end of the maintenance window) has passed."""
        deadline = self.config.start_deadline
        return deadline is not None and self.clock() >= deadline

    # ---- events -----------------------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> dict:
        item = self.journal.event(kind, **fields) if self.journal is not None else \
            dict(fields, event=kind, v=EVENTS_VERSION)
        if self.progress is not None:
            with contextlib.suppress(Exception):
                self.progress(item)
        return item

    def note(self, message: str) -> None:
        self.event("note", message=message)


class Connections:
    """One connection per URI for the planning phase (migrations open their own)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.conns: dict[str, Any] = {}

    def get(self, uri: str) -> Any:
        if uri not in self.conns:
            self.conns[uri] = self.backend.connect(uri)
        return self.conns[uri]

    def close_all(self) -> None:
        for conn in self.conns.values():
            with contextlib.suppress(Exception):
                self.backend.close(conn)
        self.conns.clear()

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close_all()
