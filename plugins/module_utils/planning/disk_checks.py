# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage checks of a VM against a destination: can it reach each disk, or can the disk be copied?

Storage is half of the prerequisite checks, so it lives here: `DiskChecks` holds the checker's
state and its storage checks, and preflight._Checker adds the other checks on top. What the
storage checks can and cannot see is described in preflight.py's module docstring.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Storage
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import volumes
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.check_cache import (
    SOURCE,
    CheckCache,
    destination_scope,
    recall,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import Connection, Disk, DomainFacts
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import (
    SHARED_FS_TYPES,
    SHARED_POOL_TYPES,
    HostFacts,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import Settings
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import STORAGE
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import FAIL, PASS, WARN, Check
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.probe import Probe

SHARED_FIX = ("put the disk on storage every host reaches (NFS/CephFS share, Ceph RBD, iSCSI, NBD), or give the "
              "VM a migration policy with storage: copy_all")


def _pool_type(pool: Any) -> str | None:
    try:
        return ET.fromstring(pool.XMLDesc(0)).get("type")
    except Exception:  # pylint: disable=broad-except
        return None


def disk_sharing(conn: Connection, disk: Disk, on_source: bool, probe: Probe, host_name: str = "the source"
                 ) -> tuple[str, str]:
    """('shared'|'local'|'unknown'|'empty', why): can other hosts reach this disk of `host_name`?

    `on_source`: this code runs on that host, so its mounts count (see preflight's module docstring).
    """
    if disk.empty:
        return "empty", "no medium"
    if disk.type == "network":
        return "shared", f"a {disk.protocol} network disk"
    if disk.type == "volume":
        try:
            ptype = _pool_type(conn.storagePoolLookupByName(disk.pool))
        except Exception:  # pylint: disable=broad-except
            return "unknown", f"the pool '{disk.pool}' is not found on {host_name}"
        if ptype in SHARED_POOL_TYPES:
            return "shared", f"in the shared {ptype} pool '{disk.pool}'"
        return "local", f"in the local {ptype} pool '{disk.pool}' of {host_name}"
    if disk.type not in ("file", "block", "dir") or disk.path is None:  # no path: empty, returned above
        return "unknown", f"a {disk.type} disk"
    path = disk.path
    try:
        pool = conn.storageVolLookupByPath(path).storagePoolLookupByVolume()
        ptype = _pool_type(pool)
        if ptype in SHARED_POOL_TYPES:
            return "shared", f"in the shared {ptype} pool '{pool.name()}' of {host_name}"
        if ptype in ("logical", "disk", "zfs", "scsi"):
            return "local", f"in the local {ptype} pool '{pool.name()}' of {host_name}"
    # no pool knows it: look at the filesystem
    except Exception:  # pylint: disable=broad-except
        pass
    if disk.type == "block":
        return "unknown", "a block device; whether another host sees the same LUN cannot be told from here"
    if not on_source:
        return "unknown", (f"not checked: this runs on another host than {host_name}, and no shared storage pool "
                           "holds it")
    fstype, point = probe.fs_type(path)
    if fstype is None:
        return "unknown", "its filesystem could not be read from /proc/self/mounts"
    if fstype in SHARED_FS_TYPES:
        return "shared", f"on a shared {fstype} filesystem ({point})"
    return "local", f"on a local {fstype} filesystem ({point}) of {host_name}"


class DiskChecks:  # pylint: disable=too-many-instance-attributes
    """The checker's state (the VM, both hosts, the policy settings, the checks so far) and its storage checks.

    `cache` (set by run_prechecks) answers the live calls once per plan; None asks afresh."""

    cache: CheckCache | None = None

    def __init__(self, src_conn: Connection, dst_conn: Connection, domain: DomainFacts, source: HostFacts,
                 destination: HostFacts, settings: Settings | None, migration_address: str | None,
                 mode: str | None, forecast_reason: str | None, headroom: int, on_source: bool, probe: Probe,
                 destination_error: str | None) -> None:
        self.src_conn = src_conn
        self.dst_conn = dst_conn
        self.domain = domain
        self.source = source
        self.destination = destination
        self.settings = settings or {}
        self.migration_address = migration_address
        self.mode = mode
        self.forecast_reason = forecast_reason
        self.headroom = headroom
        self.on_source = on_source
        self.probe = probe
        self.destination_error = destination_error
        self.dest_name = destination.name if destination is not None else "?"
        self.checks: list[Check] = []
        self.copy_storage = STORAGE.get(self.settings.get("storage", Storage.SHARED_ONLY))
        self.copy_disks: list[str] = []
        self.shared_writable: list[str] = []

    def add(self, check_id: str, status: str, message: str, fix: str | None = None, device: str | None = None
            ) -> None:
        self.checks.append(Check(check_id, status, self.domain.name, self.dest_name, message,
                                 fix if status != PASS else None, device))

    # ---- storage ----

    def _source_sharing(self, disk: Disk) -> tuple[str, str]:
        return recall(self.cache, SOURCE, ("sharing", disk, self.on_source, self.source.name),
                      lambda: disk_sharing(self.src_conn, disk, self.on_source, self.probe, self.source.name))

    def _dest_has(self, path: str) -> tuple[str, str, bool]:
        """('present'|'absent'|'unknown', why, pool_at_dir) for the same path on the destination."""
        return recall(self.cache, destination_scope(self.dest_name), ("path", path), lambda: self._dest_has_now(path))

    def _dest_has_now(self, path: str) -> tuple[str, str, bool]:
        def lookup() -> str:
            vol = self.dst_conn.storageVolLookupByPath(path)
            pool = vol.storagePoolLookupByVolume()
            return f"{self.dest_name} has it (volume in its {_pool_type(pool)} pool '{pool.name()}')"
        try:
            return "present", lookup(), True
        except Exception:  # pylint: disable=broad-except
            pass
        directory = os.path.dirname(path)
        try:
            pool = self.dst_conn.storagePoolLookupByTargetPath(directory)
        except Exception:  # pylint: disable=broad-except
            return "unknown", f"{self.dest_name} has no storage pool at {directory}, so libvirt cannot see it", False
        if not pool.isActive():
            return "unknown", f"the storage pool '{pool.name()}' at {directory} on {self.dest_name} is inactive", False
        try:
            pool.refresh(0)  # a dir pool only knows files that existed at its last refresh
            return "present", lookup(), True
        except Exception:  # pylint: disable=broad-except
            return "absent", (f"the storage pool '{pool.name()}' at {directory} on {self.dest_name} has no "
                              f"{os.path.basename(path)}"), True

    def _volume_disk(self, disk: Disk) -> tuple[str, str]:
        return recall(self.cache, destination_scope(self.dest_name), ("volume", disk.pool, disk.name),
                      lambda: self._volume_disk_now(disk))

    def _volume_disk_now(self, disk: Disk) -> tuple[str, str]:
        try:
            pool = self.dst_conn.storagePoolLookupByName(disk.pool)
            pool.storageVolLookupByName(disk.name)
            ptype = _pool_type(pool)
        except Exception:  # pylint: disable=broad-except
            return "absent", f"{self.dest_name} has no volume {disk.name} in a pool named '{disk.pool}'"
        if ptype in SHARED_POOL_TYPES:
            return "shared", f"{self.dest_name} has it in its shared {ptype} pool '{disk.pool}'"
        return "local", f"'{disk.pool}' is a local {ptype} pool; the volume on {self.dest_name} is another one"

    def storage(self) -> None:
        for disk in self.domain.disks:
            if disk.device in ("cdrom", "floppy") or disk.readonly:
                self._readonly_disk(disk)
            else:
                self._writable_disk(disk)
        if self.copy_disks and self.shared_writable:
            self.add("storage.copy", PASS,
                     f"{self.domain.name} will be migrated with copy_storage={self.copy_storage} for "
                     f"{', '.join(self.copy_disks)} only (libvirt's migrate_disks); its shared disk(s) "
                     f"{', '.join(self.shared_writable)} are not copied.")
        if not self.copy_disks:
            self.copy_storage = None

    def _describe(self, disk: Disk) -> str:
        return f"disk {disk.target} ({disk.source})"

    def _writable_disk(self, disk: Disk) -> None:
        vm, dest, what = self.domain.name, self.dest_name, self._describe(disk)
        if disk.type == "network":
            self.add("storage.disk", PASS, f"{vm}: {what} is a {disk.protocol} network disk; {dest} reaches it "
                     "over the network.", device=disk.target)
            self.shared_writable.append(disk.target)
            return
        if disk.shareable:  # used by several VMs at once: never copied, whatever it sits on
            self.add("storage.disk", WARN, f"{vm}: {what} is marked shareable, so it is never copied; {dest} must "
                     "reach the same storage.", "make sure the destination sees the same storage at that path.",
                     device=disk.target)
            self.shared_writable.append(disk.target)
            return
        if disk.empty:
            self.add("storage.disk", PASS, f"{vm}: disk {disk.target} has no medium.", device=disk.target)
            return
        if disk.type == "volume":
            sharing, why = self._volume_disk(disk)
            where, where_why, pool_at_dir = ("present", why, True) if sharing == "shared" else ("unknown", why, False)
        elif disk.type in ("file", "block", "dir") and disk.path:
            sharing, why = self._source_sharing(disk)
            if sharing == "local" and not self.copy_storage:  # it fails whatever the destination has: not asked
                where, where_why, pool_at_dir = "absent", "", False
            else:
                where, where_why, pool_at_dir = self._dest_has(disk.path)
        else:
            self.add("storage.disk", WARN, f"{vm}: {what} is a {disk.type} disk; whether {dest} can reach it is "
                     "not checked.", "make sure the same source exists on the destination.", device=disk.target)
            return
        if sharing == "shared":
            self.shared_writable.append(disk.target)
            if where == "present":
                self.add("storage.disk", PASS, f"{vm}: {what} is shared ({why}); {where_why}.", device=disk.target)
            elif where == "absent":
                self.add("storage.disk", FAIL, f"{vm}: {what} is shared on the source ({why}), but {where_why}.",
                         f"mount the same share at the same path on {dest}.", device=disk.target)
            else:
                self.add("storage.disk", WARN, f"{vm}: {what} is shared on the source ({why}), but {where_why}: "
                         "that the same share is mounted there is assumed, not proven.",
                         f"mount the same share at the same path on {dest}, and define a storage pool for it there "
                         "so this check can see it.", device=disk.target)
            return
        # unknown sharing and the same path on the destination: perhaps the very same file, which a copy would
        # mirror onto itself - never copied (libvirt then migrates it only if it sees it shared)
        if self.copy_storage and disk.type != "volume" and not (sharing == "unknown" and where == "present"):
            self._copied_disk(disk, sharing, why, where, where_why, pool_at_dir)
            return
        if sharing == "unknown" and where == "present":
            not_copied = "; it is not copied, since it may be that very file" if self.copy_storage else ""
            self.add("storage.disk", WARN, f"{vm}: {what}: whether it is shared is unknown ({why}); "
                     f"{where_why}{not_copied}.", "make sure both hosts see the same storage at that path"
                     + (", or run the check on the source host so its filesystem tells" if self.copy_storage else "")
                     + ".", device=disk.target)
            return
        if sharing == "unknown" and where == "unknown":
            self.add("storage.disk", WARN, f"{vm}: {what}: whether {dest} can reach it is unknown ({why}; "
                     f"{where_why}).", "run the check on the source host, or define storage pools for the disk "
                     "directories.", device=disk.target)
            return
        self.add("storage.disk", FAIL,
                 f"{vm}: {what} is not on shared storage ({why}); {dest} cannot reach it and the policy "
                 f"({self.settings.get('storage', Storage.SHARED_ONLY)}) does not copy storage.",
                 SHARED_FIX + ".", device=disk.target)

    def _copied_disk(self, disk: Disk, sharing: str, why: str, where: str, where_why: str, pool_at_dir: bool) -> None:
        vm, dest, what = self.domain.name, self.dest_name, self._describe(disk)
        shared = "is not shared" if sharing == "local" else "may not be shared"
        directory = os.path.dirname(disk.path or "")
        if where == "present" or pool_at_dir:
            self.copy_disks.append(disk.target)
            target = "into the existing file" if where == "present" else f"into a new volume of the pool at {directory}"
            self.add("storage.disk", PASS,
                     f"{vm}: {what} {shared} ({why}); its policy allows copying, so it will be copied to {dest} "
                     f"{target} (the migration must use copy_storage={self.copy_storage}).", device=disk.target)
            return
        message, fix = volumes.no_pool(vm, disk.target, disk.path or "", dest)
        inactive = f" ({where_why})" if "inactive" in where_why else ""  # else it says what the message does
        self.add("storage.disk", FAIL, f"{message}{inactive} The disk {shared} ({why}).", fix, device=disk.target)

    def _readonly_disk(self, disk: Disk) -> None:
        vm, dest = self.domain.name, self.dest_name
        kind = "CD-ROM" if disk.device == "cdrom" else ("floppy" if disk.device == "floppy" else "read-only disk")
        what = f"{kind} {disk.target} ({disk.source})"
        if disk.empty:
            self.add("storage.cdrom", PASS, f"{vm}: {kind} {disk.target} is empty.", device=disk.target)
            return
        if disk.type == "network":
            self.add("storage.cdrom", PASS, f"{vm}: {what} is on the network; {dest} reaches it.", device=disk.target)
            return
        if disk.type == "volume":
            sharing, why = self._volume_disk(disk)
            where = "present" if sharing != "absent" else "absent"
            sharing, where_why = "unknown", why
        elif disk.type in ("file", "block", "dir") and disk.path:
            sharing, why = self._source_sharing(disk)
            where, where_why, _pool = self._dest_has(disk.path)
        else:
            self.add("storage.cdrom", WARN, f"{vm}: {what} is not checked.", "make sure it exists on the destination.",
                     device=disk.target)
            return
        fix = f"copy {disk.source} to the same path on {dest}, or eject the medium from {vm} before the drain"
        if where == "present":
            self.add("storage.cdrom", PASS, f"{vm}: {what}: {where_why}.", device=disk.target)
        elif where == "absent":
            self.add("storage.cdrom", FAIL, f"{vm}: {what} does not exist on {dest}: {where_why}.", fix + ".",
                     device=disk.target)
        elif sharing == "shared":
            self.add("storage.cdrom", WARN, f"{vm}: {what} is on shared storage ({why}), but {where_why}: assumed "
                     "present there, not proven.", f"{fix}; a storage pool for it on {dest} lets this check see it.",
                     device=disk.target)
        else:
            self.add("storage.cdrom", WARN if sharing == "unknown" else FAIL,
                     f"{vm}: {what} is {why}, and {where_why}: {dest} probably lacks it (read-only media are "
                     "never copied).", f"{fix}; a storage pool for it on {dest} lets this check see it.",
                     device=disk.target)
