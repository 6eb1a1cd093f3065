# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a prerequisite check reports: pass / warn / fail, one Check, and a VM's PrecheckResult.

Apart from the checks (preflight.py, disk_checks.py) because the probes and every caller that
reads a result need these words, not the checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PASS = "pass"
WARN = "warn"
FAIL = "fail"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}

# the order blockers are listed in: the cause an operator must fix first comes first
ORDER = ("dest.is_source", "dest.cordoned", "reach.libvirt", "reach.migration_address", "version.libvirt",
         "version.qemu", "machine.type", "device.models", "device.hostdev", "storage.disk", "storage.cdrom",
         "storage.copy", "network.bridge", "network.mtu", "cpu.compat", "capacity.memory", "postcopy.support",
         "forecast.mode")


@dataclasses.dataclass(frozen=True)
class Check:  # pylint: disable=too-many-instance-attributes
    """One prerequisite: pass, warn (it may work; read the message) or fail (it will not)."""

    id: str
    status: str
    vm: str
    destination: str
    message: str
    fix: str | None = None
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PrecheckResult:
    """All checks of one VM against one destination, and how its storage must move."""

    vm: str
    destination: str
    checks: list[Check]
    copy_storage: str | None = None  # None, "all" or "incremental": what the migration must use
    copy_disks: tuple[str, ...] = ()  # targets of the disks that need copying

    @property
    def status(self) -> str:
        return max((c.status for c in self.checks), key=_RANK.__getitem__, default=PASS)

    @property
    def ok(self) -> bool:
        return self.status != FAIL

    @property
    def blockers(self) -> list[Check]:
        fails = [c for c in self.checks if c.status == FAIL]
        return sorted(fails, key=lambda c: ORDER.index(c.id) if c.id in ORDER else len(ORDER))

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    def summary(self) -> str:
        if self.ok:
            extra = f", {len(self.warnings)} warning(s)" if self.warnings else ""
            copy = f", storage copied ({self.copy_storage})" if self.copy_storage else ""
            return f"{self.vm} -> {self.destination}: can migrate{copy}{extra}"
        return f"{self.vm} -> {self.destination}: blocked: " + "; ".join(
            f"[{c.id}] {c.message}" for c in self.blockers)

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "destination": self.destination, "status": self.status, "ok": self.ok,
                "copy_storage": self.copy_storage, "copy_disks": list(self.copy_disks),
                "checks": [c.to_dict() for c in self.checks], "blockers": [c.to_dict() for c in self.blockers],
                "summary": self.summary()}
