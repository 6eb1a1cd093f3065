# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drain's inputs and result: how to drain (`DrainConfig`) and what a run did (`DrainResult`).

Every input is checked here before a run touches anything (no lock, cordon or journal): a bad value
is a DrainError naming it and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import MIB
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import DEFAULT_LINK_MBIT
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import PlacementConfig
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Limits
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import Blocker

DEFAULT_STATE_DIR = "/var/lib/hvfleet"


class DrainError(HvfleetError):
    """The drain cannot start or cannot go on (bad input, a plan that no longer matches reality)."""


@dataclasses.dataclass
class DrainConfig:  # pylint: disable=too-many-instance-attributes
    """How to drain: policies, placement margins, concurrency, failure tolerance, identity."""

    policies: list = dataclasses.field(default_factory=list)
    placement: PlacementConfig = dataclasses.field(default_factory=PlacementConfig)
    max_parallel: Optional[int] = 2
    max_outbound: Optional[int] = 2
    max_inbound: Optional[int] = 1
    bandwidth_mib: Optional[int] = None  # shared budget, MiB/s
    max_failures: int = 0
    anti_affinity_labels: tuple = ("anti_affinity",)
    default_link_mbit: float = DEFAULT_LINK_MBIT
    reason: Optional[str] = None
    by: Optional[str] = None
    orphan_wait_s: float = 30.0
    # how long a migration waits for a destination's inbound slot or link share held by other drains
    claim_wait_s: float = 600.0
    progress_interval_s: float = 5.0
    measure_dirty_rate: bool = True
    # no migration starts at or after this time (the Drainer's clock, e.g. the end of a maintenance window);
    # running ones finish, the rest is reported as not started. None: no limit.
    start_deadline: Optional[float] = None

    @property
    def budget_bps(self) -> Optional[float]:
        return self.bandwidth_mib * MIB if self.bandwidth_mib else None

    def limits(self) -> Limits:
        budget = int(self.bandwidth_mib * MIB) if self.bandwidth_mib else None
        return Limits(max_outbound=self.max_outbound, max_inbound=self.max_inbound, max_total=self.max_parallel,
                      bandwidth_bps=budget)

    def lanes(self, count: int, destinations: Optional[int] = None) -> int:
        """How many migrations will run at once at most (for the forecast)."""
        caps = [c for c in (self.max_parallel, self.max_outbound) if c]
        if destinations and self.max_inbound:
            caps.append(destinations * self.max_inbound)
        return max(1, min([count, *caps])) if count else 1

    def validate(self) -> None:
        """Refuse settings that cannot work before anything is touched."""
        self.limits()  # scheduler.Limits refuses limits under which nothing could start
        for name, low, high in (("progress_interval_s", 0.0, 3600), ("default_link_mbit", 0.0, 1e7),
                                ("orphan_wait_s", None, 86400), ("claim_wait_s", None, 86400)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                    low is not None and value <= low) or value < 0 or value > high:
                raise DrainError(f"{name}={value!r} is not usable.", f"give {name} a positive number up to {high:g}.")
        if isinstance(self.max_failures, bool) or not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise DrainError(f"max_failures={self.max_failures!r} must be 0 or more.",
                             "0 stops new starts at the first failure; N tolerates N failures.")
        if self.bandwidth_mib is not None and (isinstance(self.bandwidth_mib, bool)
                                               or not isinstance(self.bandwidth_mib, int)
                                               or not 1 <= self.bandwidth_mib <= 1_000_000):
            raise DrainError(f"bandwidth_mib={self.bandwidth_mib!r} is not a bandwidth.",
                             "give the shared budget in MiB/s (1 to 1000000), or leave it unset.")


@dataclasses.dataclass
class DrainResult:  # pylint: disable=too-many-instance-attributes
    """What a drain or restore did (or, with plan_only, would do); `to_dict()` is the module's result."""

    action: str
    host: str
    changed: bool = False
    failed: bool = False
    state: str = ""
    message: str = ""
    plan: list = dataclasses.field(default_factory=list)
    vms: list = dataclasses.field(default_factory=list)
    blockers: list = dataclasses.field(default_factory=list)
    moves: list = dataclasses.field(default_factory=list)
    forecast: Optional[dict] = None
    actual: Optional[dict] = None
    summary: dict = dataclasses.field(default_factory=dict)
    verified_empty: Optional[bool] = None
    leftovers: list = dataclasses.field(default_factory=list)
    resumed: bool = False
    reconciled: list = dataclasses.field(default_factory=list)
    cordon: Optional[dict] = None
    journal_path: Optional[str] = None
    progress_path: Optional[str] = None
    lock_holder: Optional[dict] = None
    plan_differences: list = dataclasses.field(default_factory=list)
    not_started: list = dataclasses.field(default_factory=list)
    recoverable: list = dataclasses.field(default_factory=list)  # VMs not in exactly one place: where, and the fix
    left: list = dataclasses.field(default_factory=list)  # VMs left running on the host (on_unmigratable: leave)

    def block(self, blocker: Blocker) -> None:
        self.blockers.append(blocker.to_dict())

    def blocked(self, vm: str) -> bool:
        return any(b.get("vm") == vm for b in self.blockers)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_reviewed_plan(reviewed_plan: Any, host: str, destinations: list[str]) -> dict[str, dict]:
    """The shape of a reviewed plan (plan_from), checked before the drain touches anything; VM -> item."""
    hint = "give the file written by a check-mode run with plan_file (review a new one if it was edited)."
    if not isinstance(reviewed_plan, dict) or not isinstance(reviewed_plan.get("plan"), list):
        raise DrainError("The reviewed plan is not a plan (expected a mapping with a 'plan' list, as written by "
                         "plan_file).", hint)
    if reviewed_plan.get("host") not in (None, host):
        raise DrainError(f"The reviewed plan is for {reviewed_plan.get('host')!r}, not {host}.", hint)
    seen: dict[str, dict] = {}
    for index, item in enumerate(reviewed_plan["plan"]):
        where = f"item {index} of the reviewed plan"
        if not isinstance(item, dict):
            raise DrainError(f"{where} is not a mapping.", hint)
        name, dest = item.get("vm"), item.get("destination")
        if not isinstance(name, str) or not name:
            raise DrainError(f"{where} names no VM (vm: {name!r}).", hint)
        if name in seen:
            raise DrainError(f"The reviewed plan lists '{name}' twice.", hint)
        if not isinstance(dest, str) or dest not in destinations:
            raise DrainError(f"The reviewed plan sends '{name}' to {dest!r}, which is not among the destinations "
                             f"given ({', '.join(destinations) or 'none'}).", hint)
        seen[name] = item
    return seen
