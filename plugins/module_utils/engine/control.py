# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The handle between one running migration and whoever started it.

A drain's worker thread creates a MigrationControl and passes it to the engine; other threads - the
drain's scheduler, its progress loop, a signal handler in the main thread - use it while the engine
runs. So the caller's side never blocks and never calls libvirt: a request is a plain attribute
write (atomic under the GIL, and safe in a signal handler, where taking a lock the interrupted
code may hold would deadlock). The engine's own loop (engine/migration.py) reads the requests at
every poll and makes the libvirt calls itself, bounded, retrying what libvirt refuses: an abort
that arrives before the migration job exists is not lost, and a bandwidth share that changes
before the job exists is applied once it does.

Abort and post-copy exclude each other: once the migration switched to post-copy the source no
longer holds the VM's current state, so an abort is not applied. The engine marks a switch as
under way before it asks libvirt for it and only then reads the abort flag; abort() sets the flag
and only then reads the switch marks. With both orders fixed, abort() returns True only when the
engine will see the request before it could switch: the migration is then aborted (or never
started), unless it completes first.
"""

from __future__ import annotations

from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import InvalidSpec
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobSample


def progress(sample: JobSample) -> dict[str, Any]:
    """The progress payload of one job sample (what the drain's `vm_progress` events carry)."""
    total = sample.total_bytes  # memory and the copied disks
    remaining = sample.remaining_bytes
    percent = round(100.0 * (total - remaining) / total, 1) if total else None
    eta = round(remaining / sample.bandwidth_bps, 1) if sample.bandwidth_bps else None
    return {"phase": sample.phase, "percent": percent, "eta_s": eta, "iteration": sample.iteration,
            "remaining_bytes": remaining, "bandwidth_bps": sample.bandwidth_bps, "elapsed_s": round(sample.t, 1),
            "disk_total": sample.disk_total, "disk_remaining": sample.disk_remaining}


class MigrationControl:
    """Abort, bandwidth and progress of one migration; the caller's methods never block."""

    def __init__(self) -> None:
        self._abort_requested = False
        self._postcopy = False
        self._switching = False
        self._progress: Optional[dict[str, Any]] = None
        self._bandwidth_mib: Optional[int] = None

    # ---- the caller's side (any thread, a signal handler included) ------------------------------

    def abort(self) -> bool:
        """Ask the engine to abort the migration so the VM stays on its source.

        True: the request stands and the engine will not start the migration or switch it to
        post-copy; it aborts the job at its next poll (retrying while libvirt refuses, e.g. before
        the job exists) - unless the migration completes first. False: the migration is in
        post-copy, or its switch to post-copy is under way; the abort is then not applied (a
        switch that libvirt refuses leaves the request standing, and the VM stays after all).
        """
        self._abort_requested = True  # first the flag, then the switch marks (see the module doc)
        return not (self._switching or self._postcopy)

    @property
    def aborted(self) -> bool:
        """An abort was requested (whether or not it could be applied)."""
        return self._abort_requested

    @property
    def postcopy(self) -> bool:
        """The migration switched to post-copy: it can only complete (or be resumed) now."""
        return self._postcopy

    def sample(self) -> Optional[dict[str, Any]]:
        """The latest progress (see progress()), or None before the first one; never raises."""
        latest = self._progress
        return dict(latest) if latest is not None else None

    def set_bandwidth(self, mib: int) -> None:
        """The bandwidth (MiB/s) the migration should use from now on.

        The engine starts the job with it and applies each later change once QEMU is sending.
        """
        if isinstance(mib, bool) or not isinstance(mib, int) or mib < 1:
            raise InvalidSpec(f"set_bandwidth({mib!r}): the bandwidth must be a whole number of MiB/s >= 1.",
                              "give the bandwidth share in whole MiB/s, at least 1.")
        self._bandwidth_mib = mib

    @property
    def bandwidth_mib(self) -> Optional[int]:
        """The bandwidth last asked for with set_bandwidth(), or None."""
        return self._bandwidth_mib

    # ---- the engine's side (the thread running the migration) -----------------------------------

    def publish(self, sample: JobSample) -> None:
        self._progress = progress(sample)

    def begin_postcopy_switch(self) -> bool:
        """Mark a switch to post-copy as under way; False (and no mark) when an abort was requested."""
        self._switching = True  # first the mark, then the flag (see the module doc)
        if self._abort_requested:
            self._switching = False
            return False
        return True

    def end_postcopy_switch(self, switched: bool) -> None:
        if switched:
            self._postcopy = True
        self._switching = False

    def mark_postcopy(self) -> None:
        """The migration is in post-copy without our switch (a resumed one, or seen in its state)."""
        self._postcopy = True
