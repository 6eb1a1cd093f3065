# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One VM's plan: where it goes, how (mode) and why, with the forecast - decided in one place.

`plan_vm` is the only function that turns a VM, its policy and a destination into a plan item; the
drain, the restore and `migration_preflight` all call it, so a check-mode drain and a preflight can
never choose different modes for the same VM. It is pure: facts in, a `VmDecision` out.

`PlanItem` is typed; its serialised form (`to_dict`, with `plan_version`) is what the journal, the
plan file and the module result hold, and `PlanItem.from_dict` refuses a malformed one with a
message that names the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Kind, Mode, Storage
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import (
    MIB,
    REFUSE,
    Forecast,
    ForecastError,
    forecast_for_settings,
    guest_memory,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host, VmInfo
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import (
    STORAGE,
    effective_mode,
    spec_for,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.unmigratable import (
    COLD,
    cold_reason,
    expected_outage,
)

PLAN_VERSION = 1
DEFINITION_MODE = str(Kind.DEFINITION)  # the `mode` of a shut-off VM whose definition moves


class PlanError(HvfleetError):
    """A serialised plan item (journal, plan file) that cannot be read back."""


@dataclasses.dataclass(frozen=True)
class Blocker:
    """Why a VM cannot move (or a destination cannot be used), with the fix."""

    vm: Optional[str]
    kind: str
    message: str
    fix: Optional[str] = None
    reasons: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"vm": self.vm, "kind": self.kind, "message": self.message, "fix": self.fix,
                "reasons": dict(self.reasons)}


@dataclasses.dataclass(frozen=True)
class PlanItem:  # pylint: disable=too-many-instance-attributes
    """One VM's move, as planned (and, with `resume`, as taken over from the journal)."""

    vm: str
    kind: str
    source: str
    destination: str
    destination_uri: str
    mode: str
    mode_reason: str = ""
    migrate_uri: Optional[str] = None
    policy: Optional[str] = None
    policy_reason: Optional[str] = None
    placement_reason: Optional[str] = None
    settings: dict = dataclasses.field(default_factory=dict)
    state: str = "running"
    memory_mib: int = 0
    vcpus: int = 0
    dirty_rate_bps: Optional[float] = None
    persistent: bool = True
    labels: dict = dataclasses.field(default_factory=dict)
    order: int = 0
    auto_converge: bool = False
    spec: Optional[str] = None  # the MigrationSpec in one line (MigrationSpec.describe)
    link_share_mib: Optional[float] = None
    forecast: Optional[dict] = None
    predicted_duration_s: Optional[float] = None
    predicted_downtime_ms: Optional[float] = None
    predicted_bytes: Optional[int] = None
    rank_s: Optional[float] = None  # the scheduler ranks by this: the lane-share forecast
    predicted_start_s: Optional[float] = None
    predicted_end_s: Optional[float] = None
    resume: bool = False  # taken over from the journal (an interrupted post-copy): first in line
    live_blockers: list = dataclasses.field(default_factory=list)  # what stops a live migration (cold moves)

    @property
    def live(self) -> bool:
        return self.kind == Kind.LIVE

    @property
    def cold(self) -> bool:
        """Shut down, moved and started again: the VM cannot live-migrate (planning/unmigratable.py)."""
        return self.kind == COLD

    def replace(self, **changes: Any) -> PlanItem:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["kind"] = str(self.kind)
        data["mode"] = str(self.mode)
        data["plan_version"] = PLAN_VERSION
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "a plan item") -> PlanItem:
        """Read a serialised item back; a missing or mistyped field is a PlanError naming it."""
        hint = "the record was edited or written by another version; move it aside and plan again."
        if not isinstance(data, dict):
            raise PlanError(f"{where} is not a mapping.", hint)
        version = data.get("plan_version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise PlanError(f"{where} has plan_version {version!r}; this version reads {PLAN_VERSION}.", hint)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in ("vm", "kind", "source", "destination", "destination_uri", "mode"):
            if not isinstance(data.get(name), str) or not data.get(name):
                raise PlanError(f"{where}: '{name}' is missing or not a string ({data.get(name)!r}).", hint)
        kinds = Kind.values()
        if data["kind"] not in kinds:
            raise PlanError(f"{where}: kind {data['kind']!r} is not one of {', '.join(kinds)}.", hint)
        modes = [*Mode.values(), DEFINITION_MODE, COLD]
        if data["mode"] not in modes:
            raise PlanError(f"{where}: mode {data['mode']!r} is not one of {', '.join(modes)}.", hint)
        for name in ("settings", "labels"):
            if data.get(name) is not None and not isinstance(data[name], dict):
                raise PlanError(f"{where}: '{name}' is not a mapping.", hint)
        if data.get("live_blockers") is not None and not isinstance(data["live_blockers"], list):
            raise PlanError(f"{where}: 'live_blockers' is not a list.", hint)
        for name in ("memory_mib", "vcpus", "order"):
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise PlanError(f"{where}: '{name}' is not an integer ({value!r}).", hint)
        kwargs = {k: v for k, v in data.items() if k in fields and v is not None}
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class VmDecision:
    """What planning one VM towards one destination gave: an item, or a blocker (never both)."""

    item: Optional[PlanItem]
    blocker: Optional[Blocker] = None
    forecast: Optional[Forecast] = None
    refused_by_forecast: bool = False  # the forecast refused it at this bandwidth; more may let it go
    destination: str = ""
    order: int = 0


def lane_bandwidth(source: Host, dest: Host, lanes: int, *, default_link_mbit: float, max_inbound: Optional[int],
                   budget_bps: Optional[float]) -> float:
    """Bytes/s one migration gets when `lanes` run at once: the source link, the destination's inbound
    share and the budget are split among them."""
    lanes = max(1, lanes)
    inbound = max(1, min(lanes, max_inbound or lanes))
    shares = [source.link_bps(default_link_mbit) / lanes, dest.link_bps(default_link_mbit) / inbound]
    if budget_bps:
        shares.append(budget_bps / lanes)
    return min(shares)


def forecast_vm(vm: VmInfo, settings: dict, bandwidth_bps: float) -> tuple[Optional[Forecast], str]:
    """The forecast of moving `vm` at `bandwidth_bps` under its policy `settings`, from the memory it
    has in use (only that can be dirtied again); (None, why) when there is nothing to forecast from."""
    note = " (dirty rate not measured: assumed 0)" if vm.dirty_rate_bps is None else ""
    ratio, working_set = guest_memory(vm.memory_mib * MIB, (vm.resident_mib or 0) * MIB, vm.domain_type)
    try:
        copies = STORAGE.get(settings.get("storage") or Storage.SHARED_ONLY)
        return forecast_for_settings(settings, vm.memory_mib * MIB, vm.dirty_rate_bps or 0.0, bandwidth_bps,
                                     transferable_ratio=ratio, dirty_working_set=working_set,
                                     disk_bytes=vm.local_disk_bytes if copies else 0), note
    except ForecastError as exc:
        return None, f" (no forecast: {exc.message})"


def plan_cold(vm: VmInfo, settings: dict, policy: str, policy_reason: str, source: Host, dest: Host, *,
              placement_reason: str, live_blockers: tuple[str, ...]) -> VmDecision:
    """Plan a cold move of `vm` (it cannot live-migrate; its policy says on_unmigratable: shutdown): shut down,
    definition moved, started on `dest`. Its predicted downtime is the outage bound (the boot comes on top)."""
    base = _base(vm, settings, policy, policy_reason, source, dest, placement_reason)
    base["kind"] = COLD
    outage = expected_outage(settings)
    item = PlanItem(mode=COLD, mode_reason=cold_reason(live_blockers, dest.name, settings),
                    predicted_duration_s=outage.bound_s, predicted_downtime_ms=outage.bound_s * 1000,
                    live_blockers=list(live_blockers), **base)
    return VmDecision(item, None, None, destination=dest.name, order=base["order"])


def _base(vm: VmInfo, settings: dict, policy: str, policy_reason: str, source: Host, dest: Host,
          placement_reason: str) -> dict[str, Any]:
    return dict(
        vm=vm.name, kind=str(vm.kind), source=source.name, destination=dest.name, destination_uri=dest.target_uri,
        migrate_uri=dest.migrate_uri, policy=policy, policy_reason=policy_reason, placement_reason=placement_reason,
        settings=dict(settings), state=vm.state, memory_mib=vm.memory_mib, vcpus=vm.vcpus,
        dirty_rate_bps=vm.dirty_rate_bps, persistent=vm.persistent, labels=dict(vm.labels),
        order=int(settings.get("drain_order", 0) or 0))


def plan_vm(vm: VmInfo, settings: dict, policy: str, policy_reason: str, source: Host, dest: Host, *,
            placement_reason: str, bandwidth_bps: float) -> VmDecision:
    """Plan moving `vm` from `source` to `dest` with the bandwidth it gets there."""
    base = _base(vm, settings, policy, policy_reason, source, dest, placement_reason)
    if vm.kind == Kind.DEFINITION:
        return VmDecision(PlanItem(mode=DEFINITION_MODE, mode_reason="shut off and persistent: its definition "
                                   "moves (defined on the destination, undefined here)", **base),
                          destination=dest.name, order=base["order"])
    fc, note = forecast_vm(vm, settings, bandwidth_bps)
    try:
        mode, auto_converge, why = effective_mode(settings, fc)
        spec = spec_for(settings, fc, migrate_uri=dest.migrate_uri, persistent=vm.persistent)
    except HvfleetError as exc:
        blocker = Blocker(vm.name, "refused", f"'{vm.name}' to {dest.name}: {exc.message}", exc.hint)
        return VmDecision(None, blocker, fc, refused_by_forecast=fc is not None and fc.mode == REFUSE,
                          destination=dest.name, order=base["order"])
    item = PlanItem(mode=str(mode), mode_reason=why + note, auto_converge=bool(auto_converge), spec=spec.describe(),
                    link_share_mib=round(bandwidth_bps / MIB, 1), forecast=fc.as_dict() if fc else None,
                    predicted_duration_s=fc.predicted_duration_s if fc else None,
                    predicted_downtime_ms=fc.predicted_downtime_ms if fc else None,
                    predicted_bytes=fc.predicted_bytes if fc else None,
                    rank_s=fc.predicted_duration_s if fc else None, **base)
    return VmDecision(item, None, fc, destination=dest.name, order=base["order"])
