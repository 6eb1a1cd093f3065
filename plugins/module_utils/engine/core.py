# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The state of one migration and what every phase of it shares: looking at both hosts, bounded
libvirt calls, the steps, and how the result ends.

A libvirt call has no timeout of its own and a daemon stuck in a job keeps it waiting for good, so
every call here is bounded (common/bounded.py); the engine must report where the VM is within its
deadline whatever libvirt does. The phases build on this class: aftercall.py (reconcile, recover),
watch.py (the running job), migration.py (preflight and the run).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from typing import Any, NoReturn, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded, connection
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import MigrationFailed, UnsafeState
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.control import MigrationControl
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobMonitor
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.result import MigrationResult, Step
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec

SETTLE_TIMEOUT_S = 60.0  # how long libvirt may take to finish/cancel a job after the call returned
REOPEN_INTERVAL_S = 3.0  # a lost connection to a host is reopened at most this often
REOPEN_TIMEOUT_S = 10.0
ACTION_TIMEOUT_S = 15.0  # one libvirt call on a domain (a resume, an abort...); longer: the daemon is stuck
QUERY_TIMEOUT_S = 10.0  # a lookup or a read before the migration starts
CLOSE_TIMEOUT_S = 5.0  # closing a connection (a call stuck in the daemon can hold the close up)


def conn_uri(conn: Any) -> Optional[str]:
    """The URI a libvirt connection was opened with (a local call), or None (fakes, closed)."""
    try:
        return conn.getURI()
    except Exception:  # pylint: disable=broad-except
        return None


class MigrationCore:  # pylint: disable=too-many-instance-attributes
    """One migration of domain `name` from `src_conn` to `dest_uri` (observed through `dst_conn`)."""

    def __init__(self, src_conn: Any, dst_conn: Any, name: str, dest_uri: str, spec: MigrationSpec,
                 source_uri: str = "qemu:///system", clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], Any] = time.sleep, settle_timeout_s: float = SETTLE_TIMEOUT_S,
                 call_conn: Any = None, control: Optional[MigrationControl] = None) -> None:
        self.src_conn = src_conn
        self.call_conn = call_conn  # the blocking migrate call runs on its own connection, see _call_connection
        self.dst_conn = dst_conn
        self.name = name
        self.dest_uri = dest_uri
        self.source_uri = source_uri
        self.spec = spec
        self.clock = clock
        self.wait = wait
        self.settle_timeout_s = settle_timeout_s
        self.control = control if control is not None else MigrationControl()
        self.start: Optional[float] = None
        self.result = MigrationResult(name=name, source=source_uri, destination=dest_uri, spec=spec.to_dict())
        self.postcopy_started = False
        self.was_running = True
        self.call_dom: Any = None
        self.call_abandoned = False  # the migrate call did not return in time; it may still end in libvirt
        self._monitor: Optional[JobMonitor] = None
        # URIs our own connections were opened with, to reopen one that a daemon restart left dead
        self._conn_uris = {"src_conn": conn_uri(src_conn), "dst_conn": conn_uri(dst_conn)}
        self._reopen_after: dict[str, float] = {}
        self._reopened: list[Any] = []

    # ---- observation --------------------------------------------------------------------

    def observe(self) -> tuple[reconcile.SideView, reconcile.SideView]:
        src = reconcile.observe(self.src_conn, self.name, self.source_uri)
        dst = reconcile.observe(self.dst_conn, self.name, self.dest_uri)
        if not dst.reachable and not dst.no_answer and self._reopen("dst_conn"):
            dst = reconcile.observe(self.dst_conn, self.name, self.dest_uri)
        if not src.reachable and not src.no_answer and self._reopen("src_conn"):
            src = reconcile.observe(self.src_conn, self.name, self.source_uri)
        return src, dst

    def _reopen(self, attr: str) -> bool:
        """A libvirt daemon restarted during the migration leaves our connection to it dead (every call
        fails: "client socket is closed"), so that host would look unreachable for good and a finished
        move be reported as stuck. Open a new connection to the same URI (at most every few seconds)."""
        uri = self._conn_uris.get(attr)
        now = self.clock()
        if not uri or now < self._reopen_after.get(attr, float("-inf")):
            return False
        self._reopen_after[attr] = now + REOPEN_INTERVAL_S
        try:
            conn = connection.connect(uri, timeout_s=REOPEN_TIMEOUT_S)
        except Exception:  # pylint: disable=broad-except
            return False
        setattr(self, attr, conn)
        self._reopened.append(conn)
        self.step("reconnect", f"the connection to {uri} was lost (daemon restarted?); opened a new one")
        return True

    def _release(self, call_conn: Any, opened: bool) -> None:
        """Close what this run opened, each close bounded (connection.close_quietly).

        The domain handles go first: libvirt really closes a connection when its last handle goes,
        and that close is a call to the daemon; dropped here, it happens inside the bounded close,
        not later in whichever thread frees the last handle. A call stuck in libvirt keeps its own.
        """
        self.call_dom = None
        if self._monitor is not None:
            self._monitor.domain = None
        if opened:
            connection.close_quietly(call_conn, timeout_s=CLOSE_TIMEOUT_S)
        while self._reopened:
            connection.close_quietly(self._reopened.pop(), timeout_s=CLOSE_TIMEOUT_S)

    def _record_states(self, src: reconcile.SideView, dst: reconcile.SideView) -> None:
        self.result.source_state = src.to_dict()
        self.result.destination_state = dst.to_dict()

    def elapsed(self) -> float:
        """Seconds since run() started (0 before)."""
        return 0.0 if self.start is None else self.clock() - self.start

    def step(self, action: str, reason: str, error: Optional[str] = None) -> None:
        self.result.steps.append(Step(round(self.elapsed(), 3), action, reason, error))

    # ---- bounded libvirt calls ------------------------------------------------------------

    def _ask(self, fn: Callable[[], Any], what: str, timeout_s: float = QUERY_TIMEOUT_S) -> Any:
        """A read before anything changed; a daemon that does not answer stops the run cleanly."""
        try:
            return bounded.call(fn, timeout_s=timeout_s, what=what)
        except bounded.NoAnswer as exc:
            raise UnsafeState(f"No answer from libvirt for {what} of '{self.name}' within {timeout_s:g} s; "
                              "nothing was changed.", "check both libvirt daemons (a stuck job?), then run again.") \
                from exc

    def _act(self, conn: Any, method: str, *args: Any) -> Any:
        """Call one domain method (resume, suspend, abortJob...) on `conn`, bounded: the daemon may be
        stuck in a job, and the engine must still report within its deadline."""
        def act() -> Any:
            return getattr(conn.lookupByName(self.name), method)(*args)
        return bounded.call(act, timeout_s=ACTION_TIMEOUT_S, what=f"{method} '{self.name}'")

    # ---- the end ------------------------------------------------------------------------

    def _finish(self, outcome: str, changed: bool, message: str) -> MigrationResult:
        self.result.outcome = outcome
        self.result.changed = changed
        self.result.message = message
        self.result.duration_s = round(self.clock() - self.start, 3) if self.start is not None else 0.0
        return self.result

    def _fail(self, outcome: str, changed: bool, message: str, recovery: Optional[str]) -> NoReturn:
        self._finish(outcome, changed, message)
        self.result.recovery = recovery
        raise MigrationFailed(self.result)

    def _where_text(self, src: reconcile.SideView, dst: reconcile.SideView) -> str:
        return (f"'{self.name}' is on source {self.source_uri}: {src.label()}; destination {self.dest_uri}: "
                f"{dst.label()}. Nothing more was changed; inspect both hosts before acting.")

    def _postcopy_recovery_text(self, src: reconcile.SideView, dst: reconcile.SideView) -> str:
        # the command is meant to be pasted into a shell: names and URIs are data, quoted as such
        migrate_uri = f" --migrateuri {shlex.quote(self.spec.migrate_uri)}" if self.spec.migrate_uri else ""
        text = (
            f"The current state of '{self.name}' is on the destination {self.dest_uri} ({dst.label()}); the copy on "
            f"the source {self.source_uri} ({src.label()}) is stale and must NOT be resumed, started or destroyed. "
            f"Once the migration network works again, run this task again (it resumes the post-copy), or on the "
            f"source host: virsh -c {shlex.quote(self.source_uri)} migrate --live --p2p --postcopy --postcopy-resume"
            f"{migrate_uri} {shlex.quote(self.name)} {shlex.quote(self.dest_uri)}")
        if self.call_abandoned:
            text += (". The migration call itself never returned (a libvirt daemon still waits, most likely for a "
                     "QEMU that does not answer): a resume is refused while that job is active; look at the "
                     "destination's QEMU and libvirtd log before anything else")
        return text
