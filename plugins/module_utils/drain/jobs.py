# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The moves a run executes, and what came of them (the executor's data, kept apart from its threads)."""

from __future__ import annotations

import dataclasses

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Action
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import PlanItem


@dataclasses.dataclass(frozen=True)
class Job:
    """One planned move in a direction: away from the drained host, or back home."""

    item: PlanItem
    src: Host
    dst: Host
    action: Action

    @property
    def vm(self) -> str:
        return self.item.vm

    @property
    def returning(self) -> bool:
        return self.action == Action.RESTORE


@dataclasses.dataclass
class Outcomes:
    """How the run's moves went: what the summary counts and the stop rules look at."""

    attempted: int = 0
    failures: int = 0
    stopped: bool = False
    window_closed: bool = False
    not_started: list = dataclasses.field(default_factory=list)
