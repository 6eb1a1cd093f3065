# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Another destination for a VM whose planned one refused it right before the start.

Between the plan and a VM's start, the planned destination may have started draining itself or filled
up with another drain's VMs (its ledger refuses the claim). Rather than leave the VM for the next run,
the run's other destinations are tried in turn: the VM's prerequisite checks must pass there, its
pins hold, and the destination's ledger must grant the claim. Returning VMs have one destination:
their home.
"""

from __future__ import annotations

from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.claims import Claims
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import VmDemand


def candidates(ctx: RunContext, planned: Host, settings: dict) -> list[Host]:
    """The run's destinations but the planned one, the source and those known cordoned; pins hold."""
    pins = tuple((settings.get("destinations") or {}).get("pin") or ())
    return [d for d in ctx.destinations if d.name not in (planned.name, ctx.source.name)
            and not d.cordoned_now and (not pins or d.name in pins)]


def _checks_pass(ctx: RunContext, src: Host, dest: Host, vm: str, settings: dict) -> bool:
    src_conn = dst_conn = None
    try:
        src_conn = ctx.backend.connect(src.uri)
        dst_conn = ctx.backend.connect(dest.uri)
        info = next((v for v in ctx.backend.list_vms(src_conn, src, measure=False) if v.name == vm), None)
        if info is None:
            return False
        return not any(c.failed for c in ctx.backend.prechecks(src_conn, dst_conn, info, src, dest, settings))
    except HvfleetError:
        return False
    finally:
        ctx.backend.close(src_conn)
        ctx.backend.close(dst_conn)


def elsewhere(ctx: RunContext, claims: Claims, vm: str, src: Host, planned: Host, settings: dict,
              demand: VmDemand, share_mib: Optional[int]) -> tuple[Optional[Host], list[str]]:
    """The first other destination that passes the checks and grants the claim (it is then held), with the
    reasons of those that did not."""
    refusals: list[str] = []
    for dest in candidates(ctx, planned, settings):
        if not _checks_pass(ctx, src, dest, vm, settings):
            refusals.append(f"{dest.name}: prerequisite checks fail or cannot run")
            continue
        verdict = claims.take(vm, src, dest, demand, False, share_mib)
        if verdict.granted:
            return dest, refusals
        refusals.append(verdict.why)
    return None, refusals


def journal_new_destination(ctx: RunContext, vm: str, dest: Host, why: str) -> Any:
    """The journal names where the VM goes before it starts (recovery looks there)."""
    ctx.note(f"{vm}: re-placed on {dest.name} ({why})")
    return ctx.jr.update_vm(vm, destination=dest.name, destination_uri=dest.target_uri,
                            migrate_uri=dest.migrate_uri, note=f"re-placed on {dest.name}")
