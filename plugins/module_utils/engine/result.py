# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What one migration did: its steps and its result, as the domain_migration module returns them.

Outcomes other than those named here are reconcile.py placements (e.g. `postcopy_destination_lost`,
`in_flight`): the engine reports a state it did not resolve under the name of that state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

MOVED = "moved"
ALREADY_THERE = "already_there"
STAYED = "stayed"
POSTCOPY_RECOVERED = "postcopy_recovered"
POSTCOPY_PAUSED = "postcopy_paused"
SPLIT_BRAIN_PAUSED = "split_brain_paused"
SUCCESS_OUTCOMES = (MOVED, ALREADY_THERE, POSTCOPY_RECOVERED)


@dataclasses.dataclass
class Step:
    """One thing the engine did or saw, `t` seconds after it started; `error` when libvirt refused."""

    t: float
    action: str
    reason: str
    error: Optional[str] = None


@dataclasses.dataclass
class MigrationResult:  # pylint: disable=too-many-instance-attributes
    """What happened to one VM; `to_dict()` is what the module returns."""

    name: str
    source: str
    destination: str
    outcome: str = ""
    changed: bool = False
    mode_used: str = "none"
    suspended: bool = False
    steps: list = dataclasses.field(default_factory=list)
    duration_s: float = 0.0
    deadline_s: Optional[float] = None
    downtime_ms: Optional[int] = None
    bytes_sent: Optional[int] = None
    ram_bytes: Optional[int] = None
    iterations: int = 0
    max_dirty_rate_bps: float = 0.0
    stats: list = dataclasses.field(default_factory=list)
    message: str = ""
    error: Optional[str] = None
    recovery: Optional[str] = None
    source_state: Optional[dict] = None
    destination_state: Optional[dict] = None
    spec: Optional[dict] = None

    @property
    def ok(self) -> bool:
        return self.outcome in SUCCESS_OUTCOMES

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        return data
