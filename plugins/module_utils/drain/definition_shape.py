# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a shut-off VM carries besides its XML, and which of it a definition move cannot take along.

read_shape() asks libvirt once (NVRAM, vTPM, managed-save image, autostart, snapshots, checkpoints);
refusals() and snapshot_order() are pure decisions over that. A refusal is made at plan time and
again right before the move, so nothing changes for a VM that cannot be moved whole.
"""

from __future__ import annotations

import dataclasses
import shlex
import xml.etree.ElementTree as ET
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError

VIR_DOMAIN_XML_SECURE = 1
VIR_DOMAIN_XML_INACTIVE = 2
VIR_DOMAIN_XML_MIGRATABLE = 8
VIR_DOMAIN_SNAPSHOT_XML_SECURE = 1
SWTPM_DIR = "/var/lib/libvirt/swtpm"
MANAGED_SAVE_POLICIES = ("refuse", "discard")
READ_TIMEOUT_S = 15.0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One snapshot's metadata (`xml` read with secrets: never logged or returned)."""

    name: str
    parent: Optional[str]
    current: bool
    xml: str = dataclasses.field(repr=False)
    local_state: tuple[str, ...] = ()  # what of it lives in files on this host only


@dataclasses.dataclass(frozen=True)
class Shape:  # pylint: disable=too-many-instance-attributes
    """A shut-off domain as a definition move sees it."""

    name: str
    uuid: str
    active: bool
    xml: str = dataclasses.field(repr=False)  # inactive, secure, migratable: never logged or returned
    autostart: bool = False
    managed_save: bool = False
    nvram: Optional[str] = None  # the NVRAM file's path
    tpm_dir: Optional[str] = None  # where libvirt keeps the emulated TPM's state on this host
    tpm_problem: Optional[str] = None
    snapshots: tuple[Snapshot, ...] = ()
    checkpoints: int = 0


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why the definition cannot move as it is, and the fix."""

    check: str
    message: str
    fix: str


def read_shape(conn: Any, name: str, timeout_s: float = READ_TIMEOUT_S) -> Shape:
    """The domain `name` on `conn`, bounded; HvfleetError naming it when it cannot be read."""
    try:
        return bounded.call(_read, conn, name, timeout_s=timeout_s, what=f"read '{name}'")
    except HvfleetError:
        raise
    except Exception as exc:  # pylint: disable=broad-except
        raise HvfleetError(f"Could not read '{name}' to move its definition: {exc}",
                           "check the source's libvirt daemon, then run again.") from exc


def _read(conn: Any, name: str) -> Shape:
    dom = conn.lookupByName(name)
    xml = dom.XMLDesc(VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE | VIR_DOMAIN_XML_MIGRATABLE)
    root = ET.fromstring(xml)
    uuid = dom.UUIDString()
    tpm_dir, tpm_problem = _tpm(root, uuid)
    disks = _disks(root)
    snapshots = tuple(_snapshot(snap, disks) for snap in dom.listAllSnapshots(0))
    return Shape(name=name, uuid=uuid, active=bool(dom.isActive()), xml=xml, autostart=bool(dom.autostart()),
                 managed_save=bool(dom.hasManagedSaveImage(0)), nvram=(root.findtext("os/nvram") or "").strip()
                 or None, tpm_dir=tpm_dir, tpm_problem=tpm_problem, snapshots=snapshots,
                 checkpoints=_count(lambda: len(dom.listAllCheckpoints(0))))


def _count(ask: Any) -> int:
    try:
        return int(ask())
    except Exception as exc:  # pylint: disable=broad-except
        if "not supported" in str(exc) or "no support" in str(exc):
            return 0  # a driver without checkpoints has none
        raise


def _tpm(root: ET.Element, uuid: str) -> tuple[Optional[str], Optional[str]]:
    """(the emulated TPM's state directory, or None; why it cannot be moved, or None)."""
    backend = root.find("devices/tpm/backend")
    if backend is None or backend.get("type") != "emulator":
        return None, None
    if backend.find("source") is not None or backend.get("persistent_state") == "yes":
        return None, "its TPM state is kept at a path of its own (<backend><source>) or persistent_state"
    version = backend.get("version") or "2.0"
    return f"{SWTPM_DIR}/{uuid}/{'tpm2' if version == '2.0' else 'tpm1.2'}", None


def _disks(root: ET.Element) -> dict[str, tuple[str, str]]:
    """target -> (disk type, where its data is) of a domain's disks."""
    found = {}
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        where = ""
        if source is not None:
            where = source.get("file") or source.get("dev") or source.get("name") or source.get("volume") or ""
        if target is not None and target.get("dev"):
            found[target.get("dev") or ""] = (disk.get("type") or "file", where)
    return found


def _snapshot(snap: Any, disks: dict[str, tuple[str, str]]) -> Snapshot:
    xml = snap.getXMLDesc(VIR_DOMAIN_SNAPSHOT_XML_SECURE)
    root = ET.fromstring(xml)
    name = root.findtext("name") or snap.getName()
    own = root.find("domain")
    if own is not None:
        disks = {**disks, **_disks(own)}  # the disks as they were when it was taken
    return Snapshot(name=name, parent=(root.findtext("parent/name") or "").strip() or None,
                    current=bool(snap.isCurrent(0)), xml=xml, local_state=tuple(local_state(root, disks)))


def local_state(root: ET.Element, disks: dict[str, tuple[str, str]]) -> list[str]:
    """What of a snapshot lives in files only the source host has (pure over its XML)."""
    found = []
    memory = root.find("memory")
    if memory is not None and memory.get("snapshot") == "external":
        found.append(f"its memory state is in the file {memory.get('file') or '(unnamed)'}")
    for disk in root.findall("disks/disk"):
        how, target = disk.get("snapshot") or "internal", disk.get("name") or "?"
        kind, where = disks.get(target, ("file", "?"))
        if how == "internal" and kind != "network":
            found.append(f"its state of disk {target} is inside {where}, which is not network storage")
        if how == "external":
            source = disk.find("source")
            if disk.get("type", "file") != "network" or source is None or source.get("protocol") is None:
                path = source.get("file") or source.get("dev") if source is not None else None
                found.append(f"its overlay of disk {target} is the local file {path or '(unnamed)'}")
    return found


def refusals(shape: Shape, settings: Optional[dict], uri: str, cold: bool = False) -> list[Refusal]:
    """Why `shape` cannot have its definition moved now, each with the fix (pure). `cold`: it runs now
    and is to be shut down first (planned so), so running is no reason."""
    out = []
    vm, host = shlex.quote(shape.name), shlex.quote(uri)
    if shape.active and not cold:
        out.append(Refusal("definition.active", f"'{shape.name}' was started meanwhile",
                           "run the drain again: it is then migrated live."))
    policy = str((settings or {}).get("managed_save", "refuse"))
    if policy not in MANAGED_SAVE_POLICIES:
        out.append(Refusal("definition.managed_save", f"managed_save: '{policy}' is not a known value",
                           "set managed_save to refuse or discard in its migration policy."))
    elif shape.managed_save and policy == "refuse":
        out.append(Refusal("definition.managed_save", f"'{shape.name}' has a managed-save image (its saved memory "
                           "state) on this host; a definition move would lose it (managed_save: refuse)",
                           f"start it where it is (virsh -c {host} start {vm}) so the drain migrates it live, or "
                           "let its migration policy discard the image (managed_save: discard)."))
    if shape.checkpoints:
        out.append(Refusal("definition.checkpoints", f"'{shape.name}' has {shape.checkpoints} checkpoint(s); "
                           "their bitmaps are tied to this host's definition and are not carried over",
                           f"delete them (virsh -c {host} checkpoint-list {vm}; checkpoint-delete --metadata) "
                           "or move the VM by hand."))
    for snap in shape.snapshots:
        if snap.local_state:
            out.append(Refusal("definition.snapshots", f"snapshot '{snap.name}' of '{shape.name}' cannot be "
                               f"carried over: {'; '.join(snap.local_state)}",
                               f"delete the snapshot (virsh -c {host} snapshot-delete {vm} "
                               f"{shlex.quote(snap.name)}) or move the VM and its files by hand."))
    known = {s.name for s in shape.snapshots}
    orphans = [s.name for s in shape.snapshots if s.parent is not None and s.parent not in known]
    if not orphans and len(snapshot_order(shape.snapshots)) != len(shape.snapshots):
        out.append(Refusal("definition.snapshots", f"the snapshots of '{shape.name}' do not form a tree",
                           f"check them with virsh -c {host} snapshot-list {vm} --tree."))
    if orphans:
        out.append(Refusal("definition.snapshots", f"snapshot(s) {', '.join(orphans)} of '{shape.name}' name a "
                           "parent that is not listed", f"check them with virsh -c {host} snapshot-list {vm} --tree."))
    if shape.tpm_problem:
        out.append(Refusal("definition.tpm", f"'{shape.name}': {shape.tpm_problem}",
                           "move the VM and its TPM state by hand."))
    return out


def snapshot_order(snapshots: tuple[Snapshot, ...]) -> list[Snapshot]:
    """Parents before children (libvirt redefines a child only under its parent), stable by name (pure)."""
    by_parent: dict[Optional[str], list[Snapshot]] = {}
    for snap in snapshots:
        by_parent.setdefault(snap.parent, []).append(snap)
    known = {s.name for s in snapshots}
    roots = [s for s in snapshots if s.parent is None or s.parent not in known]
    ordered: list[Snapshot] = []
    todo = sorted(roots, key=lambda s: s.name, reverse=True)
    while todo:
        snap = todo.pop()
        ordered.append(snap)
        todo.extend(sorted(by_parent.get(snap.name, []), key=lambda s: s.name, reverse=True))
    return ordered
