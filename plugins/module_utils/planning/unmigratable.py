# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VMs that cannot live-migrate: what stops them, and what a policy's `on_unmigratable` makes of them.

Pure. A running VM with a device bound to its host (a PCI/USB/mdev host device, an SR-IOV interface, a
host serial or parallel device, a shared filesystem such as virtiofs, a host smartcard, an NVMe disk) or
with a shared-memory device (`<shmem>`: QEMU refuses "Migration is disabled when using feature 'peer mode'
in device 'ivshmem'") cannot be live-migrated by libvirt at all, to any destination. Its policy decides:

* `block` (the default): the drain is blocked, with the advice to shut it down for the maintenance;
* `shutdown`: a cold move - ACPI shutdown within `shutdown_timeout_s`, the definition moved, started on the
  destination. The expected outage is modelled as the shutdown bound + the define and start allowance + the
  guest's boot (unknown to the collection; the plan says so);
* `leave`: it stays, and the drain reports its host as not empty.

A VM with disks on local storage under `storage: shared_only` cannot live-migrate either; that is found by
the storage checks per destination. A cold move copies local disks only under a copying storage policy
(drain/offline_disks.py), so under shared_only it is refused for such a VM.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Kind, Word
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import FactsError, parse_domain_xml


class OnUnmigratable(Word):
    """A policy's `on_unmigratable`."""

    BLOCK = "block"
    SHUTDOWN = "shutdown"
    LEAVE = "leave"


COLD = Kind.COLD  # the kind and the mode of a plan item whose VM is shut down, moved and started again
DEFAULT_SHUTDOWN_TIMEOUT_S = 120
MOVE_ALLOWANCE_S = 10.0  # define on the destination, undefine on the source, start: libvirt calls, seconds
# checks that only a live migration needs: a cold move sends no memory and keeps no device state
LIVE_ONLY_CHECKS = frozenset({"device.hostdev", "reach.migration_address", "postcopy.support", "forecast.mode"})
STORAGE_CHECKS = frozenset({"storage.disk", "storage.copy"})


def live_blockers(xml: str) -> tuple[str, ...]:
    """What in a domain's XML stops libvirt from live-migrating it (empty: nothing known to). Raises FactsError
    for text that is not domain XML."""
    facts = parse_domain_xml(xml)
    found = [device.description for device in facts.local_devices]
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:  # parse_domain_xml has refused it already; kept for the type checker
        raise FactsError(f"Cannot parse domain XML: {exc}.", "pass the output of virDomainGetXMLDesc.") from exc
    for shmem in root.iterfind("devices/shmem"):
        model = shmem.find("model")
        kind = model.get("type") if model is not None else "ivshmem"
        found.append(f"shared-memory device '{shmem.get('name') or '?'}' ({kind})")
    return tuple(dict.fromkeys(found))  # once each, should the facts come to name a shmem device too


def on_unmigratable(settings: dict) -> OnUnmigratable:
    """The policy's choice; `block` when the settings do not say (policies written before the key)."""
    try:
        return OnUnmigratable(settings.get("on_unmigratable") or OnUnmigratable.BLOCK)
    except ValueError:
        return OnUnmigratable.BLOCK


def shutdown_timeout(settings: dict) -> int:
    value = settings.get("shutdown_timeout_s")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else DEFAULT_SHUTDOWN_TIMEOUT_S


@dataclasses.dataclass(frozen=True)
class Outage:
    """The expected outage of a cold move: an upper bound for what the collection controls, plus the boot."""

    shutdown_s: float
    move_s: float

    @property
    def bound_s(self) -> float:
        return self.shutdown_s + self.move_s

    def describe(self) -> str:
        return (f"outage up to {self.bound_s:g} s + the guest's boot (ACPI shutdown <= {self.shutdown_s:g} s, "
                f"define and start <= {self.move_s:g} s)")


def expected_outage(settings: dict) -> Outage:
    return Outage(float(shutdown_timeout(settings)), MOVE_ALLOWANCE_S)


def cold_reason(devices: tuple[str, ...], destination: str, settings: dict) -> str:
    """The plan's words for a cold move: why, how, and the expected outage."""
    copies = settings.get("storage") in ("copy_all", "copy_incremental")
    return (f"cannot live-migrate ({'; '.join(devices) or 'local disks'}); on_unmigratable: shutdown: shut down by "
            f"ACPI, {'its local disks copied, ' if copies else ''}definition moved, started on {destination}; "
            f"{expected_outage(settings).describe()}{' + the disk copy' if copies else ''}")


def leave_reason(devices: tuple[str, ...], host: str) -> str:
    return (f"cannot live-migrate ({'; '.join(devices) or 'local disks under storage: shared_only'}); "
            f"on_unmigratable: leave: it keeps running on {host}, which is therefore not empty")


def leave_fix(name: str, host: str) -> str:
    return (f"{host} must not be rebooted while '{name}' runs on it: shut '{name}' down for the maintenance, or give "
            "it a policy with on_unmigratable: shutdown (a cold move with an outage), then drain again.")


def block_fix(name: str) -> str:
    return (f"shut '{name}' down for the maintenance (its definition then moves), detach the device, or give it a "
            "policy with on_unmigratable: shutdown (cold move, with an outage) or leave (it stays; the host is "
            "then not empty).")
