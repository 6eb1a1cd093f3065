# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""This run's side of the fleet-wide ledger (ledger.py): its claims on destinations, and its host's cordon.

A claim is taken under the destination's ledger lock right before a migration starts - the capacity
is read inside the lock, so two drains cannot both see the same free memory - renewed while the
migration runs, and released when it ends. The drained host's cordon goes into its own ledger before
the cordon file, so other drains stop choosing it at once; the drain then waits for the migrations
already on their way to it before it lists what to move.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import threading
import time
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger import (
    CLAIM_TTL_S,
    Claim,
    Cordon,
    Request,
    Verdict,
    decide,
    pending,
    publish_cordon,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import HostCapacity, VmDemand

MIB_PER_MBIT = 1e6 / 8 / (1024 * 1024)
INCOMING_POLL_S = 1.0


def holder_of(ctx: RunContext) -> str:
    """Who holds a claim or a lock, as other operators read it in a refusal."""
    action = ctx.journal.action if ctx.journal is not None and ctx.journal.action else "drain"
    return f"{action} of {ctx.source.name} by {ctx.config.by or 'unknown'} (pid {os.getpid()})"


class Claims:
    """The claims this run holds, by VM; `wall` is the clock claims expire by (shared by the fleet: NTP)."""

    def __init__(self, ctx: RunContext, wall: Any = time.time) -> None:
        self.ctx = ctx
        self.wall = wall
        self.held: dict[str, tuple[Host, Claim]] = {}
        self._lock = threading.Lock()
        self.run = (ctx.journal.run_id if ctx.journal is not None else None) or f"run-{os.getpid()}"

    def take(self, vm: str, src: Host, dst: Host, demand: VmDemand, returning: bool,
             bandwidth_mib: Optional[int]) -> Verdict:
        """Claim `demand` on `dst` if the ledger and the live figures allow it (see ledger.decide)."""
        ctx = self.ctx
        claim = Claim(id=f"{self.run}/{vm}", vm=vm, source=src.name, memory_mib=int(demand.memory_mib),
                      vcpus=int(demand.vcpus), by=holder_of(ctx), expires=self.wall() + CLAIM_TTL_S,
                      bandwidth_mib=bandwidth_mib, owner=ctx.source.name, run=self.run)
        link_mib = dst.link_mbit * MIB_PER_MBIT if dst.link_mbit else None
        request = Request(claim, demand, returning=returning, max_inbound=ctx.config.max_inbound or 0,
                          link_mib=link_mib)
        conn = None
        try:
            conn = ctx.backend.connect(dst.uri)
            store = ctx.backend.ledger(conn, dst, holder_of(ctx))
            with store.locked():
                ledger = store.read().live(self.wall())
                cap = ctx.backend.capacity(conn, dst, ctx.config.anti_affinity_labels)
                cap = dataclasses.replace(cap, name=dst.name, cordoned=(cap.cordoned or dst.cordoned_now))
                present = frozenset(v.name for v in ctx.backend.list_vms(conn, dst, measure=False))
                verdict = decide(ledger, request, cap, ctx.config.placement, present)
                if verdict.granted:
                    store.write(ledger.with_claim(claim))
                    with self._lock:
                        self.held[vm] = (dst, claim)
        except HvfleetError as exc:
            return Verdict(False, f"{dst.name} cannot be checked right before the migration: {exc.message}")
        finally:
            if conn is not None:
                ctx.backend.close(conn)
        return verdict

    def release(self, vm: str) -> None:
        """Give the claim of `vm` back (its migration ended); a claim that cannot be given back expires."""
        with self._lock:
            held = self.held.pop(vm, None)
        if held is not None:
            dst, claim = held
            self._update(dst, lambda ledger: ledger.without(claim.id),
                         f"{vm}: its claim on {dst.name} could not be given back; it expires within "
                         f"{CLAIM_TTL_S:g} s")

    def release_all(self) -> None:
        for vm in list(self.held):
            self.release(vm)

    def renew(self) -> None:
        """Push the expiry of every held claim forward (called while migrations run)."""
        with self._lock:
            held = list(self.held.items())
        for vm, (dst, claim) in held:
            fresh = claim.renewed(self.wall())
            self._update(dst, lambda ledger, c=fresh: ledger.with_claim(c),
                         f"{vm}: its claim on {dst.name} could not be renewed")

    def _update(self, host: Host, change: Any, failure: str) -> None:
        ctx = self.ctx
        conn = None
        try:
            conn = ctx.backend.connect(host.uri)
            store = ctx.backend.ledger(conn, host, holder_of(ctx))
            with store.locked():
                store.write(change(store.read().live(self.wall())))
        except HvfleetError as exc:
            ctx.note(f"{failure}: {exc.message}")
        finally:
            if conn is not None:
                ctx.backend.close(conn)


def as_planned(ctx: RunContext, conn: Any, dest: Host, cap: HostCapacity, wall: Any = time.time) -> HostCapacity:
    """`cap` as the plan should see it: cordoned when the destination's ledger says so (it started draining),
    and with the memory and vCPUs other drains claimed there; `cap` itself when the ledger cannot be read (the
    claim right before each start decides then)."""
    try:
        ledger = ctx.backend.ledger(conn, dest, holder_of(ctx)).read().live(wall())
        present = frozenset(v.name for v in ctx.backend.list_vms(conn, dest, measure=False)) if ledger.claims else \
            frozenset()
    except HvfleetError as exc:
        ctx.note(f"{dest.name}: its capacity ledger could not be read for the plan: {exc.message}")
        return cap
    others = pending([c for c in ledger.claims if c.owner != ctx.source.name], present)
    return dataclasses.replace(cap, cordoned=cap.cordoned or ledger.cordoned,
                               memory_used_mib=cap.memory_used_mib + sum(c.memory_mib for c in others),
                               vcpus_used=cap.vcpus_used + sum(c.vcpus for c in others))


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017


def set_cordon(ctx: RunContext, cordoned: bool, reason: str) -> bool:
    """Cordon or uncordon the source: in its ledger first (what other drains read before each start), then
    in its cordon file. A ledger that cannot be written raises before the file changes. Returns changed."""
    conn = ctx.backend.connect(ctx.source.uri)
    try:
        publish_cordon(ctx.backend.ledger(conn, ctx.source, holder_of(ctx)),
                       Cordon(cordoned, by=holder_of(ctx), reason=reason, since=now_iso()))
    finally:
        ctx.backend.close(conn)
    return ctx.backend.set_cordon(ctx.state_dir, cordoned, reason, ctx.config.by)


def wait_for_incoming(ctx: RunContext, wall: Any = time.time) -> list[str]:
    """After the cordon: wait until no migration is on its way to the source any more (another drain claimed
    it before the cordon), so that what this drain lists is all there is. Returns what is still on its way
    when the wait (orphan_wait_s) or the run ends."""
    deadline = ctx.clock() + max(ctx.config.orphan_wait_s, 60.0)
    said = False
    while True:
        conn = ctx.backend.connect(ctx.source.uri)
        try:
            ledger = ctx.backend.ledger(conn, ctx.source, holder_of(ctx)).read().live(wall())
        finally:
            ctx.backend.close(conn)
        incoming = [c.describe() for c in ledger.claims if c.owner != ctx.source.name]  # its own are stale
        if not incoming or ctx.cancelled or ctx.clock() >= deadline:
            return incoming
        if not said:
            ctx.note(f"waiting for {len(incoming)} migration(s) on their way to {ctx.source.name} before listing "
                     f"its VMs: {'; '.join(incoming)}")
            said = True
        ctx.sleep(INCOMING_POLL_S)
