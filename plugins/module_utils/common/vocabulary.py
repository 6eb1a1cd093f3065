# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The words the collection speaks in: migration modes, kinds of move, outcomes, journal states.

Defined once here and used everywhere (the policy schema, the forecast, the engine, the drain, the
journal, the report), so that a mode or a state is never a string literal that can drift. Each is a
`str` enum: it compares equal to its value, serialises to it in JSON, and prints as it (`f"{Mode.PRECOPY}"`
is `precopy` on every Python version), so journals and results written before stay readable.
"""

from __future__ import annotations

import enum


class Word(str, enum.Enum):  # noqa: UP042 - enum.StrEnum needs Python 3.11; hypervisors may run older
    """A str enum that prints as its value on every Python version."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> list[str]:
        return [str(member.value) for member in cls]


class Mode(Word):
    """How a running VM is migrated (a policy's `mode`)."""

    PRECOPY = "precopy"
    POSTCOPY = "postcopy"
    POSTCOPY_AFTER_PRECOPY = "postcopy_after_precopy"
    AUTO = "auto"  # policy only: the forecast chooses one of the three above


class ForecastVerdict(Word):
    """What the forecast says beyond a mode: the VM cannot move within its limits."""

    REFUSE = "refuse"


class Kind(Word):
    """What a drain moves for a VM."""

    LIVE = "live"  # running or paused: a live migration
    DEFINITION = "definition"  # shut off and persistent: its definition moves
    # cannot live-migrate and its policy says on_unmigratable: shutdown: shut down, its definition moved, started
    # there. Also the plan's `mode` and the result's `mode_used` of such a move: no migration mode applies to it.
    COLD = "cold"


class OnTimeout(Word):
    """What the engine does when a pre-copy misses its completion deadline."""

    ABORT = "abort"
    SUSPEND = "suspend"
    POSTCOPY = "postcopy"


class Storage(Word):
    """Which disks a migration may copy."""

    SHARED_ONLY = "shared_only"
    COPY_ALL = "copy_all"
    COPY_INCREMENTAL = "copy_incremental"


class Compression(Word):
    NONE = "none"
    XBZRLE = "xbzrle"
    ZSTD = "zstd"


class Outcome(Word):
    """How one move ended, as the engine or the drain reports it."""

    MOVED = "moved"
    ALREADY_THERE = "already_there"
    POSTCOPY_RECOVERED = "postcopy_recovered"
    STAYED = "stayed"
    POSTCOPY_PAUSED = "postcopy_paused"
    SPLIT_BRAIN_PAUSED = "split_brain_paused"
    FAILED = "failed"
    ERROR = "error"


SUCCESS_OUTCOMES = (Outcome.MOVED, Outcome.ALREADY_THERE, Outcome.POSTCOPY_RECOVERED)


class VmState(Word):
    """Where one VM of a drain journal stands (drain/states.py holds the transitions)."""

    PLANNED = "planned"
    MIGRATING = "migrating"
    MOVED = "moved"
    STAYED = "stayed"
    FAILED = "failed"
    PAUSED_POSTCOPY = "paused_postcopy"
    BLOCKED = "blocked"
    RETURNING = "returning"
    RETURN_PAUSED_POSTCOPY = "return_paused_postcopy"  # a post-copy back home was interrupted
    HOME = "home"


class CycleState(Word):
    """Where a host's maintenance cycle stands (the journal's top-level `state`)."""

    DRAINING = "draining"
    DRAINED = "drained"
    # everything that could move moved; VMs whose policy says on_unmigratable: leave still run on the host.
    # Not a failure, but the host must not be rebooted: a state of its own so no reader takes it for `drained`.
    NOT_EMPTY = "not_empty"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    RESTORING = "restoring"
    RESTORED = "restored"


class Action(Word):
    """What a run of the drain core does."""

    DRAIN = "drain"
    RESTORE = "restore"
