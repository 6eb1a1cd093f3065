# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Resume: bring the journal of earlier runs in line with where each VM really is, before planning.

Every entry that is not `home` is looked up on the hosts (drain/whereabouts.py) and changed only as the
state machine (drain/states.py) allows. What is found decides: a VM on the source is planned again; one
on a destination is recorded as moved, and the shut-off definition libvirt left on the source is
removed so it can never become a second copy; an interrupted post-copy is resumed to the same
destination before anything else; a VM running on two hosts gets its extra copy paused; anything a
drain must not touch is reported with where it is and what to do. A check-mode run only looks.

The same sweep finds leftover definitions the journal does not know (a cycle archived before a
post-copy completed by hand).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Kind, Mode, VmState
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.cold import start_shut_off
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import Connections, RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.report import vm_result
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.states import Resume, resume_action
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.whereabouts import (
    Judgement,
    Placement,
    Whereabouts,
    judge,
    locate,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.unmigratable import COLD
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import Blocker, PlanError, PlanItem

ABORT_GRACE_S = 60.0  # after aborting an orphaned job, how long it may take to end


@dataclasses.dataclass
class Resumed:
    """What resuming decided for planning: items to take over as they are, VMs not to plan."""

    pinned: dict = dataclasses.field(default_factory=dict)
    skip: set = dataclasses.field(default_factory=set)


class Resumer:
    """Reconciles one host's journal with reality; `act=False` (check mode) only looks."""

    def __init__(self, ctx: RunContext, conns: Connections, result: DrainResult, act: bool):
        self.ctx = ctx
        self.conns = conns
        self.result = result
        self.act = act
        self.out = Resumed()
        self.journal = ctx.jr

    def run(self) -> Resumed:
        for name, entry in sorted(self.journal.vms().items()):
            action = resume_action(entry["state"])
            if action == Resume.NOTHING:
                continue
            if action == Resume.RESTORE_ONLY:
                self._restore_unfinished(name, entry)
                continue
            self._reconcile(name, entry, action)
        self._sweep_leftovers()
        return self.out

    def _restore_unfinished(self, name: str, entry: dict) -> None:
        """A restore was bringing it back: say where it is now (judged in the direction it was going)."""
        state = VmState(entry["state"])
        where = locate(self.ctx.backend, self.conns, name, self._hosts(entry))
        verdict = judge(where, entry.get("destination") or "", self.ctx.source.name,
                        postcopy_started=state == VmState.RETURN_PAUSED_POSTCOPY)
        self.result.reconciled.append({"vm": name, "journal_state": str(state), "destination": entry.get("destination"),
                                       "found": str(verdict.placement), "where": verdict.host,
                                       "reason": verdict.reason, "changed": False})
        self._recoverable(name, f"a restore bringing it back to {self.ctx.source.name} did not finish: "
                          f"{verdict.reason}", "run the restore again (state: restored) to finish it, then drain.")

    # ---- one entry ----------------------------------------------------------------------

    def _hosts(self, entry: dict) -> list[Host]:
        hosts = [self.ctx.source]
        named = self.ctx.host(entry.get("destination"))
        if named is not None and named not in hosts:
            hosts.append(named)
        hosts.extend(d for d in self.ctx.destinations if d not in hosts)
        return hosts

    def _reconcile(self, name: str, entry: dict, action: Resume) -> None:
        state = VmState(entry["state"])
        journal_dest = entry.get("destination")
        if state in (VmState.MIGRATING, VmState.PAUSED_POSTCOPY) and self.ctx.host(journal_dest) is None:
            self._recoverable(name, f"the journal says it is {state} towards {journal_dest}, a host not given "
                              "to this run", f"add {journal_dest} to the destinations and run again.")
            return
        postcopy = state == VmState.PAUSED_POSTCOPY or (entry.get("result") or {}).get("mode_used") == Mode.POSTCOPY
        if action == Resume.SETTLE:
            verdict, where = self._settle(name, journal_dest, postcopy)
        else:
            where = locate(self.ctx.backend, self.conns, name, self._hosts(entry))
            verdict = judge(where, self.ctx.source.name, journal_dest, postcopy_started=postcopy)
        note = {"vm": name, "journal_state": str(state), "destination": journal_dest, "found": str(verdict.placement),
                "where": verdict.host, "reason": verdict.reason, "changed": False}
        as_planned = verdict.placement == Placement.ON_SOURCE and state in (VmState.PLANNED, VmState.HOME)
        if not as_planned:  # a VM still where the journal left it needs no word
            self.result.reconciled.append(note)
            self.ctx.note(f"resume: {name}: {verdict.reason}")
        note["changed"] = self._apply(name, entry, state, verdict, where)

    def _settle(self, name: str, journal_dest: Optional[str], postcopy: bool) -> tuple[Judgement, Whereabouts]:
        """A migration was running when the last run ended: give an orphaned job time to end (a pre-copy
        is aborted after orphan_wait_s, which leaves the VM on the source); stop waiting on cancel."""
        dest = self.ctx.host(journal_dest)
        hosts = [self.ctx.source] + ([dest] if dest is not None else [])
        deadline = self.ctx.clock() + self.ctx.config.orphan_wait_s
        aborted = False
        while True:
            where = locate(self.ctx.backend, self.conns, name, hosts)
            verdict = judge(where, self.ctx.source.name, journal_dest, postcopy_started=postcopy)
            waiting = verdict.placement in (Placement.IN_FLIGHT, Placement.POSTCOPY_STREAMING)
            if not waiting or not self.act or self.ctx.cancelled:
                break
            if self.ctx.clock() >= deadline:
                if aborted or verdict.placement == Placement.POSTCOPY_STREAMING:
                    break
                self.ctx.note(f"resume: aborting the orphaned pre-copy job of {name} (the VM stays on "
                              f"{self.ctx.source.name})")
                try:
                    self.ctx.backend.abort_job(self.conns.get(self.ctx.source.uri), name)
                except HvfleetError as exc:
                    self.ctx.note(f"resume: abort of {name}'s job refused: {exc.message}")
                aborted = True
                deadline = self.ctx.clock() + ABORT_GRACE_S
            self.ctx.sleep(1.0)
        if verdict.placement in (Placement.ON_SOURCE, Placement.MOVED, Placement.MISSING):
            # look on every host before deciding: it may have gone elsewhere
            where = locate(self.ctx.backend, self.conns, name, self._hosts({"destination": journal_dest}))
            verdict = judge(where, self.ctx.source.name, journal_dest, postcopy_started=postcopy)
        return verdict, where

    def _apply(self, name: str, entry: dict, state: VmState, verdict: Judgement,  # pylint: disable=R0911,R0912
               where: Whereabouts) -> bool:
        placement = verdict.placement
        if placement == Placement.ON_SOURCE:
            for host_name in verdict.drop_leftover_on:
                self._drop_leftover(name, host_name, self.ctx.source)
            if state == VmState.PAUSED_POSTCOPY:
                self._set(name, VmState.STAYED, "running on the source with no copy elsewhere")
            return state not in (VmState.PLANNED, VmState.STAYED, VmState.BLOCKED, VmState.FAILED, VmState.HOME)
        if placement == Placement.MOVED:
            return self._moved(name, entry, state, verdict)
        if placement == Placement.POSTCOPY_INTERRUPTED:
            return self._pin_postcopy(name, entry, state, verdict)
        if placement == Placement.DEFINITION_TWICE:
            if entry.get("kind") in (Kind.DEFINITION, COLD) and entry.get("destination") == verdict.host:
                return self._pin(name, entry, f"finishing the interrupted {entry.get('kind')} move")
            self._recoverable(name, verdict.reason, f"start it on the host that should keep it, then undefine the "
                              f"other definition (virsh undefine {name} on that host, keeping NVRAM).")
            return False
        if placement == Placement.TWO_RUNNING:
            return self._two_running(name, state, verdict)
        if placement == Placement.MISSING and state in (VmState.PLANNED, VmState.BLOCKED, VmState.STAYED):
            if self.act:
                self.journal.drop_vm(name)
            self.ctx.note(f"resume: {name} is defined on no host given and never left {self.ctx.source.name} "
                          "with this drain; dropped from the journal")
            self.out.skip.add(name)
            return True
        if placement in (Placement.IN_FLIGHT, Placement.POSTCOPY_STREAMING):
            if placement == Placement.POSTCOPY_STREAMING and state != VmState.PAUSED_POSTCOPY:
                self._set(name, VmState.PAUSED_POSTCOPY, verdict.reason, destination=verdict.host)
            elif placement == Placement.IN_FLIGHT and state != VmState.MIGRATING and verdict.host:
                self._set(name, VmState.MIGRATING, f"a migration job found running: {verdict.reason}",
                          destination=verdict.host)
            self._recoverable(name, f"a migration to {verdict.host} is still under way ({verdict.reason}); it is "
                              "left to finish", "run the drain again once it has completed.")
            return False
        self._recoverable(name, verdict.reason, "inspect both hosts and fix it by hand, then run again.")
        return False

    def _moved(self, name: str, entry: dict, state: VmState, verdict: Judgement) -> bool:
        dest = self.ctx.host(verdict.host)
        changed = False
        for host_name in verdict.drop_leftover_on:
            changed |= self._drop_leftover(name, host_name, dest)
        if entry.get("kind") == COLD and dest is not None:
            changed |= self._start_cold(name, dest)
        if state == VmState.MOVED and entry.get("destination") == verdict.host:
            return changed
        self._set(name, VmState.MOVED, f"found on {verdict.host} after an interrupted run",
                  destination=verdict.host, destination_uri=dest.target_uri if dest else entry.get("destination_uri"),
                  result=dict(entry.get("result") or {}, outcome="moved", ok=True, message=verdict.reason))
        entry_now = self.journal.vm(name)
        if self.act and entry_now is not None:
            self.result.vms.append(vm_result(entry_now))
        self.out.skip.add(name)
        return True

    def _start_cold(self, name: str, dest: Host) -> bool:
        """A cold move interrupted after its definition moved: the VM is shut off on `dest` alone; start it there
        (it ran before the drain). True when started."""
        view = self.ctx.backend.observe(self.conns.get(dest.uri), name, dest.uri)
        if not view.reachable or view.running or view.paused or not view.present:
            return False
        return start_shut_off(self.ctx, self.conns.get(dest.uri), name, dest.name, "after an interrupted cold move",
                              "finishing the interrupted cold move", self.act, self._recoverable) is True

    def _drop_leftover(self, name: str, host_name: str, runs_on: Optional[Host]) -> bool:
        holder = self.ctx.host(host_name)
        if holder is None or runs_on is None:
            return False
        if not self.act:
            self.ctx.note(f"{name}: the shut-off definition left on {host_name} would be removed (it runs on "
                          f"{runs_on.name})")
            return False
        try:
            self.ctx.backend.drop_leftover_definition(self.conns.get(holder.uri), self.conns.get(runs_on.uri), name)
        except HvfleetError as exc:
            self._recoverable(name, f"runs on {runs_on.name}; a shut-off definition is left on {host_name} "
                              f"({exc.message})", exc.hint or f"undefine '{name}' on {host_name} by hand "
                              "(keeping NVRAM and TPM state).")
            return False
        self.ctx.note(f"{name}: removed the shut-off definition left on {host_name} (it runs on {runs_on.name})")
        return True

    def _pin_postcopy(self, name: str, entry: dict, state: VmState, verdict: Judgement) -> bool:
        if self.ctx.host(verdict.host) is None:
            self._recoverable(name, f"an interrupted post-copy to {verdict.host}, a host not given to this run",
                              f"add {verdict.host} to the destinations and run again.")
            return False
        if state != VmState.PAUSED_POSTCOPY:
            self._set(name, VmState.PAUSED_POSTCOPY, verdict.reason, destination=verdict.host)
        return self._pin(name, dict(entry, destination=verdict.host, mode=str(Mode.POSTCOPY)),
                         "resuming the interrupted post-copy to the same destination")

    def _pin(self, name: str, entry: dict, why: str) -> bool:
        dest = self.ctx.host(entry.get("destination"))
        data = dict(entry, vm=name, source=self.ctx.source.name, destination_uri=dest.target_uri if dest else "",
                    placement_reason=why, resume=True)
        data.setdefault("kind", str(Kind.LIVE))
        data.setdefault("mode", str(Mode.POSTCOPY))
        try:
            self.out.pinned[name] = PlanItem.from_dict({k: v for k, v in data.items() if k != "plan_version"},
                                                       f"the journal entry of '{name}'")
        except PlanError as exc:
            self._recoverable(name, f"its journal entry cannot be resumed ({exc.message})", exc.hint or "")
        return False

    def _two_running(self, name: str, state: VmState, verdict: Judgement) -> bool:
        paused = []
        for host_name in verdict.pause:
            host = self.ctx.host(host_name)
            if host is None or not self.act:
                continue
            try:
                self.ctx.backend.pause(self.conns.get(host.uri), name)
                paused.append(host_name)
            except HvfleetError as exc:
                self.ctx.note(f"{name}: could not pause the copy on {host_name}: {exc.message}")
        what = f"paused the copy on {', '.join(paused)}" if paused else "no copy could be paused"
        if state not in (VmState.PAUSED_POSTCOPY, VmState.MIGRATING):
            self._set(name, VmState.BLOCKED, f"running on two hosts: {what}")
        self._recoverable(name, f"{verdict.reason}; {what}", "decide which copy is current, destroy the other, "
                          "resume the one kept, then run again.")
        return bool(paused)

    # ---- leftovers the journal does not know --------------------------------------------

    def _sweep_leftovers(self) -> None:
        """A shut-off definition on the source of a VM that runs on a destination is a leftover, never a VM
        whose definition should move."""
        src_conn = self.conns.get(self.ctx.source.uri)
        for vm in self.ctx.backend.list_vms(src_conn, self.ctx.source, measure=False):
            if vm.active or vm.name in self.out.skip or vm.name in self.out.pinned:
                continue
            entry = self.journal.vm(vm.name)
            if entry is not None and VmState(entry["state"]) not in (
                    VmState.PLANNED, VmState.HOME, VmState.STAYED, VmState.FAILED, VmState.BLOCKED):
                continue
            where = locate(self.ctx.backend, self.conns, vm.name, [self.ctx.source, *self.ctx.destinations])
            verdict = judge(where, self.ctx.source.name, None)
            if verdict.placement == Placement.MOVED and self.ctx.source.name in verdict.drop_leftover_on:
                self._drop_leftover(vm.name, self.ctx.source.name, self.ctx.host(verdict.host))
                self.out.skip.add(vm.name)
                self.result.reconciled.append({"vm": vm.name, "journal_state": None, "destination": verdict.host,
                                               "found": "leftover_definition", "where": verdict.host,
                                               "reason": verdict.reason, "changed": self.act})

    # ---- recording ----------------------------------------------------------------------

    def _set(self, name: str, state: VmState, note: str, **fields: object) -> None:
        self.journal.update_vm(name, state, note=note, **fields)

    def _block(self, name: str, kind: str, message: str, fix: str) -> None:
        self.result.block(Blocker(name, kind, message, fix))
        self.out.skip.add(name)

    def _recoverable(self, name: str, where: str, fix: str) -> None:
        """The VM is not (provably) in exactly one place: say where it is and how to recover."""
        self.result.recoverable.append({"vm": name, "where": where, "fix": fix})
        self._block(name, "needs_attention", f"'{name}': {where}", fix)


def reconcile_journal(ctx: RunContext, conns: Connections, result: DrainResult, act: bool = True) -> Resumed:
    return Resumer(ctx, conns, result, act).run()
