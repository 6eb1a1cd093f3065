# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The journal's state machine for one VM: which states follow which, and what a resumed run does.

One table answers both questions for every state, so "what does resume do with state X" has exactly
one answer, and a change the table does not allow is refused by the journal (a bug found at once,
never a silently rewritten record). The rules that matter most:

* an interrupted post-copy (`paused_postcopy`) is never re-planned: only resuming it
  (`migrating`), finding it completed (`moved`), finding its destination copy lost (`failed`) or
  finding it running on the source with no copy elsewhere (`stayed`) may replace it - the journal
  is the only record of which host holds the live guest;
* a VM recorded anywhere else than `home` is looked up on the hosts before anything is decided
  about it (`Resume.LOCATE`, `Resume.SETTLE`): a `failed` VM may have moved since, one found on its
  home host is `home`, and one whose migration job is found still running in libvirt is `migrating`.
"""

from __future__ import annotations

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import VmState, Word


class JournalError(HvfleetError):
    """The journal cannot be read, written or changed as asked."""


class TransitionError(JournalError):
    """A journal change the state machine does not allow."""


class Resume(Word):
    """What a run does first with a journal entry left by an earlier run."""

    LOCATE = "locate"  # look for the VM on every host given; plan it if it is on the source
    SETTLE = "settle"  # a migration was running: observe both ends, let an orphaned job end, then locate
    RESUME_POSTCOPY = "resume_postcopy"  # the live guest is on the destination: resume the post-copy, first
    RESTORE_ONLY = "restore_only"  # an interrupted restore: only a restore run continues it
    NOTHING = "nothing"  # back home: nothing to reconcile


S = VmState
# state -> (states it may change to, what a resumed run does with it)
MACHINE: dict[VmState, tuple[frozenset[VmState], Resume]] = {
    S.PLANNED: (frozenset({S.PLANNED, S.MIGRATING, S.BLOCKED, S.MOVED, S.PAUSED_POSTCOPY, S.FAILED, S.HOME}),
                Resume.LOCATE),
    S.MIGRATING: (frozenset({S.MIGRATING, S.MOVED, S.STAYED, S.FAILED, S.PAUSED_POSTCOPY, S.PLANNED, S.BLOCKED,
                             S.HOME}),
                  Resume.SETTLE),
    S.MOVED: (frozenset({S.MOVED, S.RETURNING, S.HOME, S.PLANNED, S.BLOCKED}), Resume.LOCATE),
    S.STAYED: (frozenset({S.STAYED, S.PLANNED, S.BLOCKED, S.MOVED, S.PAUSED_POSTCOPY, S.FAILED, S.MIGRATING,
                          S.HOME}), Resume.LOCATE),
    S.FAILED: (frozenset({S.FAILED, S.PLANNED, S.BLOCKED, S.MOVED, S.PAUSED_POSTCOPY, S.MIGRATING, S.HOME}),
               Resume.LOCATE),
    S.BLOCKED: (frozenset({S.BLOCKED, S.PLANNED, S.MOVED, S.PAUSED_POSTCOPY, S.FAILED, S.MIGRATING, S.HOME}),
                Resume.LOCATE),
    S.PAUSED_POSTCOPY: (frozenset({S.PAUSED_POSTCOPY, S.MIGRATING, S.MOVED, S.FAILED, S.STAYED, S.HOME}),
                        Resume.RESUME_POSTCOPY),
    S.RETURNING: (frozenset({S.RETURNING, S.HOME, S.MOVED, S.RETURN_PAUSED_POSTCOPY, S.FAILED}),
                  Resume.RESTORE_ONLY),
    S.RETURN_PAUSED_POSTCOPY: (frozenset({S.RETURN_PAUSED_POSTCOPY, S.RETURNING, S.HOME, S.MOVED, S.FAILED}),
                               Resume.RESTORE_ONLY),
    S.HOME: (frozenset({S.HOME, S.PLANNED, S.BLOCKED, S.MOVED}), Resume.NOTHING),
}

# states in which a migration of the VM may be under way in libvirt (a killed run left it)
IN_FLIGHT = frozenset({S.MIGRATING, S.RETURNING})
# states whose VM is (or may be) away from its origin host: a restore has something to do
AWAY = frozenset({S.MOVED, S.RETURNING, S.RETURN_PAUSED_POSTCOPY, S.PAUSED_POSTCOPY, S.FAILED, S.STAYED,
                  S.BLOCKED, S.MIGRATING, S.PLANNED})
# states that need a destination recorded with them
NEEDS_DESTINATION = frozenset({S.MIGRATING, S.MOVED, S.PAUSED_POSTCOPY, S.RETURNING, S.RETURN_PAUSED_POSTCOPY})


def check_transition(vm: str, old: VmState | str | None, new: VmState | str) -> VmState:
    """The new state if the table allows `old` -> `new`; TransitionError otherwise."""
    try:
        target = VmState(new)
    except ValueError:
        raise TransitionError(f"'{vm}': unknown journal state {new!r}.", "this is a bug; report it.") from None
    if old is None:
        return target
    allowed, _resume = MACHINE[VmState(old)]
    if target not in allowed:
        raise TransitionError(f"'{vm}': the journal state {old} cannot change to {target}.",
                              "this is a bug in the drain; the journal was left as it was. Report it.")
    return target


def resume_action(state: VmState | str) -> Resume:
    return MACHINE[VmState(state)][1]
