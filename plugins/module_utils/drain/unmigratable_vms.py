# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drain's running VMs that cannot live-migrate (planning/unmigratable.py), sorted by their policy's
on_unmigratable before placement: blocked, left on the host, or marked for a cold move.

Apart from the planner so that it stays about placement; the candidates are the planner's (vm, settings,
policy, policy_reason, cold).
"""

from __future__ import annotations

from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import VmState
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.unmigratable import (
    COLD,
    OnUnmigratable,
    block_fix,
    leave_fix,
    leave_reason,
    on_unmigratable,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import Blocker


def sort_unmigratable(ctx: RunContext, src_conn: Any, candidates: dict[str, Any], result: DrainResult) -> None:
    """The running VMs that cannot live-migrate get what their policy's on_unmigratable says: blocked, left on
    the host (both out of the plan), or marked for a cold move."""
    for name, cand in sorted(candidates.items()):
        if not cand.vm.active:
            entry = ctx.journal.vm(name) if ctx.journal is not None else None
            if entry is not None and entry.get("kind") == COLD and entry.get("state") != VmState.HOME:
                cand.cold = tuple(entry.get("live_blockers") or ())  # shut down by a cold move that was interrupted:
            continue  # it moves cold again (and is started); any other shut-off VM's definition moves
        try:
            devices = tuple(ctx.backend.live_blockers(src_conn, cand.vm))
        except HvfleetError as exc:
            del candidates[name]
            result.block(Blocker(name, "unreadable", f"'{name}': {exc.message}", exc.hint))
            continue
        if not devices:
            continue
        choice = on_unmigratable(cand.settings)
        if choice == OnUnmigratable.SHUTDOWN and not cand.vm.persistent:
            del candidates[name]  # shut down, a transient domain is gone: nothing would be left to move
            result.block(Blocker(name, "unmigratable", f"'{name}' cannot live-migrate (it uses {'; '.join(devices)}) "
                                 "and cannot be moved cold either: it is transient, and a transient domain that shuts "
                                 "down is gone.", f"define '{name}' persistently on its host (virsh dumpxml, then "
                                 "virsh define), or shut it down for the maintenance yourself.",
                                 {"live_blockers": list(devices)}))
            continue
        if choice == OnUnmigratable.SHUTDOWN:
            cand.cold = devices
            continue
        del candidates[name]
        if choice == OnUnmigratable.LEAVE:
            leave(ctx, cand, devices, result)
        else:
            result.block(Blocker(name, "unmigratable", f"'{name}' cannot live-migrate: it uses "
                                 f"{'; '.join(devices)} (policy '{cand.policy}': on_unmigratable: block).",
                                 block_fix(name), {"live_blockers": list(devices)}))


def leave(ctx: RunContext, cand: Any, devices: tuple, result: DrainResult) -> None:
    name = cand.vm.name
    result.left.append({"vm": name, "policy": cand.policy, "live_blockers": list(devices),
                        "why": leave_reason(devices, ctx.source.name), "fix": leave_fix(name, ctx.source.name)})
