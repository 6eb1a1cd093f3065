# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prerequisite checks: can this VM live-migrate to that destination, and if not, why?

Every check is reported - a failed one never hides the others - with its own id, the VM, the
device, the destination and the fix, so a blocker is named for what it is (a local disk is
never reported as "not enough memory"). A failing check is data; nothing here changes anything.

What each check can and cannot see:

- storage: network disks (nbd, rbd, iscsi, gluster, ...) pass. A file/block disk is shared when
  its source volume is in a shared libvirt pool (netfs, iscsi, rbd, ...) or, when this runs on
  the source host, its path lies on a shared filesystem type (the list libvirt uses: nfs, cifs,
  ceph, gfs2, ocfs2, glusterfs, ...; read from /proc/self/mounts). The destination is asked
  through libvirt whether it has a volume at the same path (`storageVolLookupByPath`, after a
  refresh of the pool whose target is the disk's directory). libvirt can only see files inside
  storage pools: a shared disk the destination has no pool for is a warning (we cannot prove the
  same share is mounted there), not a pass. Not shared and the policy copies storage: it passes
  when the destination has the file or a pool at its directory (libvirt creates the copy only
  inside a pool), and the migration must then use copy_storage. Otherwise it fails.
- reachability of the migration address: name resolution, a route, and a TCP connection to the
  address on the destination's libvirt port (the URI's port, 16509 for qemu+tcp, 16514 for
  qemu+tls, 22 for qemu+ssh). Accepted or refused both prove the host answers there; a timeout
  is a warning (a firewall may drop traffic), no route is a failure. The migration ports
  49152-49215 are not probed on purpose: a probe could hit an incoming migration of another VM,
  which QEMU would take as its data stream. The probe runs where this code runs; when that is
  not the source host, a failure is only a warning and says so.
- CPU: libvirt's compareHypervisorCPU on the destination with the domain's <cpu> (host-passthrough
  domains: the host CPU models must match).
- post-copy: versions and the kernel's userfaultfd (known only from facts read on the host).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import xml.etree.ElementTree as ET
from typing import Any, Protocol
from urllib.parse import urlsplit

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import (
    ForecastVerdict,
    Mode,
    OnTimeout,
    Storage,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import (
    SHARED_FS_TYPES,
    SHARED_POOL_TYPES,
    Connection,
    Disk,
    DomainFacts,
    HostFacts,
    Interface,
    Mount,
    mount_of,
    read_mounts,
    version_text,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import POSTCOPY_MODES
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import Settings
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import STORAGE

PASS = "pass"
WARN = "warn"
FAIL = "fail"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}
DEFAULT_HEADROOM_MIB = 1024
PROBE_TIMEOUT_S = 2.0
URI_PORTS = {"qemu+tcp": 16509, "qemu+tls": 16514, "qemu+ssh": 22, "qemu+libssh": 22, "qemu+libssh2": 22}

# the order blockers are listed in: the cause an operator must fix first comes first
ORDER = ("dest.is_source", "dest.cordoned", "reach.libvirt", "reach.migration_address", "version.libvirt",
         "version.qemu", "device.hostdev", "storage.disk", "storage.cdrom", "storage.copy", "network.bridge",
         "network.mtu", "cpu.compat", "capacity.memory", "postcopy.support", "forecast.mode")

VIR_CPU_COMPARE_INCOMPATIBLE = 0
VIR_CPU_COMPARE_IDENTICAL = 1
VIR_CPU_COMPARE_SUPERSET = 2
VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE = 1

SHARED_FIX = ("put the disk on storage every host reaches (NFS/CephFS share, Ceph RBD, iSCSI, NBD), or give the "
              "VM a migration policy with storage: copy_all")


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


class Probe(Protocol):
    """What the checks ask of the machine they run on (LocalProbe; tests give their own)."""

    def fs_type(self, path: str) -> tuple[str | None, str | None]: ...

    def reach(self, host: str, port: int) -> tuple[str, str]: ...


class LocalProbe:
    """What the machine this code runs on sees: its mounts and its network path to an address."""

    def __init__(self, proc: str = "/proc", timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.proc = proc
        self.timeout_s = timeout_s
        self._mounts: list[Mount] | None = None

    def mounts(self) -> list[Mount]:
        if self._mounts is None:
            self._mounts = read_mounts(self.proc) or []
        return self._mounts

    def fs_type(self, path: str) -> tuple[str | None, str | None]:
        """(fs type, mount point) of the filesystem `path` is on, or (None, None)."""
        found = mount_of(os.path.realpath(path), self.mounts())
        return (found[1], found[0]) if found else (None, None)

    def reach(self, host: str, port: int) -> tuple[str, str]:
        """(status, text): does `host` answer on TCP `port` from here?"""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return FAIL, f"the name {host} does not resolve ({exc.strerror or exc})"
        family, kind, proto, _name, sockaddr = infos[0]
        address = sockaddr[0]
        via = ""
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as udp:  # route lookup only; sends nothing
                udp.connect((address, port))
                via = f" via local address {udp.getsockname()[0]}"
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return FAIL, f"no route to {address} ({exc.strerror})"
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(sockaddr)
                return PASS, f"{address}:{port} accepted a TCP connection{via}"
            except ConnectionRefusedError:
                return PASS, f"{address} answered on port {port} (connection refused: the host is reachable){via}"
            except TimeoutError:
                return WARN, (f"no answer from {address}:{port} within {self.timeout_s:g} s{via}: a firewall may drop "
                              "traffic to it, including the migration ports 49152-49215")
            except OSError as exc:
                if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                    return FAIL, f"no route to {address} ({exc.strerror})"
                return WARN, f"{address}:{port}: {exc.strerror or exc}{via}"


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """('host', port) from 'host', 'host:port', '[v6]:port' or a bare IPv6 address."""
    text = address.strip()
    if text.startswith("["):
        host, _sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port) if port.isdigit() else default_port
    return text, default_port


def probe_port(dest_uri: str | None) -> int:
    """The destination's libvirt port (from its URI) - a port that is never an incoming migration."""
    parts = urlsplit(dest_uri or "")
    try:
        explicit = parts.port
    except ValueError:
        explicit = None
    return explicit or URI_PORTS.get(parts.scheme, 16509)


def _pool_type(pool: Any) -> str | None:
    try:
        return ET.fromstring(pool.XMLDesc(0)).get("type")
    except Exception:  # pylint: disable=broad-except
        return None


def disk_sharing(conn: Connection, disk: Disk, on_source: bool, probe: Probe, host_name: str = "the source"
                 ) -> tuple[str, str]:
    """('shared'|'local'|'unknown'|'empty', why): can other hosts reach this disk of `host_name`?

    `on_source`: this code runs on that host, so its mounts count (see the module docstring).
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


# ---- the checks -------------------------------------------------------------------------------


class _Checker:  # pylint: disable=too-many-instance-attributes
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

    # ---- destination identity, reachability, versions ----

    def identity(self) -> None:
        src, dst = self.source, self.destination
        same_uuid = bool(src.host_uuid and dst.host_uuid and src.host_uuid == dst.host_uuid)
        same_uri = bool(src.uri and dst.uri and src.uri == dst.uri)
        if same_uuid or same_uri:
            why = f"host UUID {dst.host_uuid}" if same_uuid else f"URI {dst.uri}"
            self.add("dest.is_source", FAIL, f"{self.dest_name} is the host {self.domain.name} runs on ({why}).",
                     "choose another hypervisor as destination (and give each libvirtd its own host_uuid).")
        else:
            self.add("dest.is_source", PASS, f"{self.dest_name} is not the source host of {self.domain.name}.")
        cordoned = dst.cordoned
        if cordoned:
            cordon = dst.cordon or {}
            self.add("dest.cordoned", FAIL,
                     f"{self.dest_name} is cordoned (maintenance) since {cordon.get('since') or '?'} by "
                     f"{cordon.get('by') or '?'}: {cordon.get('reason') or 'no reason given'}; {self.domain.name} "
                     "must not be moved there.",
                     f"choose another destination, or uncordon {self.dest_name} (hvfleet.drain.host_maintenance "
                     "state=active) when its maintenance is over.")
        elif cordoned is None:
            self.add("dest.cordoned", WARN,
                     f"the cordon state of {self.dest_name} is unknown (not read on that host), so {self.domain.name} "
                     "might be sent to a host under maintenance.",
                     f"run hvfleet.drain.hypervisor_info on {self.dest_name} and pass its facts, or pass cordoned.")
        else:
            self.add("dest.cordoned", PASS, f"{self.dest_name} is not cordoned.")

    def reachability(self) -> None:
        self.add("reach.libvirt", PASS,
                 f"libvirt on {self.dest_name} ({self.destination.uri}) answers: libvirt "
                 f"{version_text(self.destination.libvirt_version)}.")
        address = self.migration_address
        if not address:
            self.add("reach.migration_address", WARN,
                     f"no migration address for {self.dest_name}: {self.domain.name} would be sent to the "
                     "destination's own host name, which may not resolve on the source or may use the "
                     "management network.",
                     f"set hvfleet_migration_address for {self.dest_name} (its address on the migration network).")
            return
        host, port = split_address(address, probe_port(self.destination.uri))
        status, text = self.probe.reach(host, port)
        where = "from the source" if self.on_source else \
            f"from {socket.gethostname()} (where this runs, not the source host {self.source.name})"
        if status == FAIL and not self.on_source:
            status = WARN
        self.add("reach.migration_address", status,
                 f"migration address {address} of {self.dest_name} for {self.domain.name}, checked {where}: {text}.",
                 f"make {address} reachable from {self.source.name} (routes, firewall: the destination's libvirt "
                 "port and the migration ports 49152-49215), or fix hvfleet_migration_address.")

    def versions(self) -> None:
        for check_id, what, src_v, dst_v in (
            ("version.libvirt", "libvirt", self.source.libvirt_version, self.destination.libvirt_version),
            ("version.qemu", "QEMU", self.source.qemu_version, self.destination.qemu_version),
        ):
            if not src_v or not dst_v:
                self.add(check_id, WARN, f"{what} version of {'the source' if not src_v else self.dest_name} is "
                         f"unknown; cannot tell whether {self.domain.name} can move to {self.dest_name}.",
                         "check that libvirt answers on both hosts.")
            elif dst_v < src_v:
                self.add(check_id, FAIL,
                         f"{what} on {self.dest_name} ({version_text(dst_v)}) is older than on the source "
                         f"{self.source.name} ({version_text(src_v)}); {self.domain.name} may use features "
                         f"{self.dest_name} lacks.",
                         f"upgrade {what} on {self.dest_name} first (upgrade destinations before sources), or "
                         "choose a destination at least as new.")
            else:
                self.add(check_id, PASS, f"{what} {version_text(dst_v)} on {self.dest_name} >= "
                         f"{version_text(src_v)} on {self.source.name}.")

    # ---- devices ----

    def devices(self) -> None:
        if not self.domain.local_devices:
            self.add("device.hostdev", PASS, f"{self.domain.name} has no host-bound devices.")
        for device in self.domain.local_devices:
            self.add("device.hostdev", FAIL,
                     f"{self.domain.name} uses {device.description}, which is bound to {self.source.name} and "
                     f"cannot be live-migrated to {self.dest_name}.",
                     f"detach the {device.kind} from {self.domain.name} before the drain (and re-attach after), "
                     "or shut the VM down for the maintenance.", device=device.description)

    # ---- storage ----

    def _source_sharing(self, disk: Disk) -> tuple[str, str]:
        return disk_sharing(self.src_conn, disk, self.on_source, self.probe, self.source.name)

    def _dest_has(self, path: str) -> tuple[str, str, bool]:
        """('present'|'absent'|'unknown', why, pool_at_dir) for the same path on the destination."""
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
            self.add("storage.copy", WARN,
                     f"{self.domain.name} will be migrated with copy_storage={self.copy_storage} for "
                     f"{', '.join(self.copy_disks)}; libvirt then also copies its shared disk(s) "
                     f"{', '.join(self.shared_writable)} onto themselves on {self.dest_name}.",
                     "keep VMs that need copying on local disks only, or move the shared disks' VMs with a "
                     "shared_only policy.")
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
        if disk.empty:
            self.add("storage.disk", PASS, f"{vm}: disk {disk.target} has no medium.", device=disk.target)
            return
        if disk.type == "volume":
            sharing, why = self._volume_disk(disk)
            where, where_why, pool_at_dir = ("present", why, True) if sharing == "shared" else ("unknown", why, False)
        elif disk.type in ("file", "block", "dir") and disk.path:
            sharing, why = self._source_sharing(disk)
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
        if self.copy_storage and disk.type != "volume":
            self._copied_disk(disk, sharing, why, where, where_why, pool_at_dir)
            return
        if sharing == "unknown" and where == "present":
            self.add("storage.disk", WARN, f"{vm}: {what}: whether it is shared is unknown ({why}); {where_why}.",
                     "make sure both hosts see the same storage at that path.", device=disk.target)
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
        self.add("storage.disk", FAIL,
                 f"{vm}: {what} {shared} ({why}); its policy copies storage, but {where_why}: libvirt creates "
                 "the copy only inside a storage pool (or into a file that already exists there).",
                 f"define and start a dir storage pool with target {directory} on {dest}, or pre-create "
                 f"{disk.path} there with the same size and format.", device=disk.target)

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

    # ---- network ----

    def networks(self) -> None:
        vm, dest = self.domain.name, self.dest_name
        dst_bridges = self.destination.bridges
        for nic in self.domain.interfaces:
            device = f"interface {nic.mac or '?'}"
            bridge = None
            if nic.type == "bridge":
                bridge = nic.source
                if dst_bridges is None:
                    self.add("network.bridge", WARN,
                             f"{vm}: {device} is on bridge {bridge}; the bridges of {dest} are unknown (its libvirt "
                             "has no interface driver and no facts read on that host were given).",
                             f"run hvfleet.drain.hypervisor_info on {dest} and pass its facts.", device=device)
                elif bridge in dst_bridges:
                    self.add("network.bridge", PASS, f"{vm}: {device}: bridge {bridge} exists on {dest}.",
                             device=device)
                else:
                    self.add("network.bridge", FAIL,
                             f"{vm}: {device} is on bridge {bridge}, which does not exist on {dest} (bridges there: "
                             f"{', '.join(sorted(dst_bridges)) or 'none'}).",
                             f"create bridge {bridge} on {dest} (same name, same network), or choose a destination "
                             "that has it.", device=device)
            elif nic.type == "network":
                net = (self.destination.networks or {}).get(nic.source or "")
                if net is None:
                    self.add("network.bridge", FAIL,
                             f"{vm}: {device} uses libvirt network {nic.source}, which is not defined on {dest}.",
                             f"define and start network {nic.source} on {dest}.", device=device)
                elif not net.get("active"):
                    self.add("network.bridge", FAIL,
                             f"{vm}: {device} uses libvirt network {nic.source}, which is defined but not active on "
                             f"{dest}.", f"start network {nic.source} on {dest} and mark it autostart.", device=device)
                else:
                    self.add("network.bridge", PASS, f"{vm}: {device}: network {nic.source} is active on {dest}.",
                             device=device)
                    bridge = net.get("bridge")
            elif nic.type in ("user", "hostdev"):
                continue  # user networking needs nothing; SR-IOV is reported by device.hostdev
            else:
                self.add("network.bridge", WARN, f"{vm}: {device} is a {nic.type} interface"
                         f"{' on ' + nic.source if nic.source else ''}; whether {dest} has it is not checked.",
                         f"make sure {nic.source or 'the same network'} exists on {dest}.", device=device)
            self._mtu(nic, device, bridge)

    def _mtu(self, nic: Interface, device: str, bridge: str | None) -> None:
        src_bridges = self.source.bridges or {}
        dst_bridges = self.destination.bridges or {}
        if nic.type == "network":
            src_net = (self.source.networks or {}).get(nic.source or "") or {}
            src_bridge = src_net.get("bridge")
        else:
            src_bridge = bridge
        src_mtu = src_bridges.get(src_bridge) if src_bridge else None
        dst_mtu = dst_bridges.get(bridge) if bridge else None
        if not src_mtu or not dst_mtu:
            return
        vm, dest = self.domain.name, self.dest_name
        if src_mtu == dst_mtu and (nic.mtu is None or nic.mtu <= dst_mtu):
            self.add("network.mtu", PASS, f"{vm}: {device}: MTU {dst_mtu} on {dest} as on the source.", device=device)
        else:
            self.add("network.mtu", WARN,
                     f"{vm}: {device}: bridge {bridge} has MTU {dst_mtu} on {dest} but {src_bridge} has {src_mtu} on "
                     f"{self.source.name}{f' (the interface asks for {nic.mtu})' if nic.mtu else ''}; large packets "
                     "may be dropped after the move.", "set the same MTU on both bridges.", device=device)

    # ---- CPU, capacity, post-copy ----

    def cpu(self) -> None:
        vm, dest, dom = self.domain.name, self.dest_name, self.domain
        if dom.cpu_mode in ("host-passthrough", "maximum"):
            src_model, dst_model = self.source.cpu_model, self.destination.cpu_model
            if src_model and dst_model and src_model == dst_model and self.source.cpu_vendor == \
                    self.destination.cpu_vendor:
                self.add("cpu.compat", WARN,
                         f"{vm} uses CPU mode {dom.cpu_mode}: host CPU models match ({dst_model}) but libvirt cannot "
                         "verify microcode and feature flags for this mode.",
                         "prefer host-model or a named CPU model for VMs that must move.")
            else:
                self.add("cpu.compat", FAIL,
                         f"{vm} uses CPU mode {dom.cpu_mode}, which needs an identical host CPU; {dest} has "
                         f"{dst_model or 'unknown'}, {self.source.name} has {src_model or 'unknown'}.",
                         f"give {vm} a CPU model both hosts provide (host-model or a named model), or choose a "
                         "destination with the same CPU.")
            return
        if not dom.cpu_xml or not (dom.cpu_model or dom.cpu_mode == "host-model"):
            self.add("cpu.compat", PASS, f"{vm} uses the machine type's default CPU model; {dest} provides it.")
            return
        virttype = dom.domain_type or "kvm"
        try:
            result = self.dst_conn.compareHypervisorCPU(dom.emulator, dom.arch, dom.machine, virttype, dom.cpu_xml, 0)
        except Exception as exc:  # pylint: disable=broad-except
            self.add("cpu.compat", WARN, f"{vm}: libvirt on {dest} could not compare CPU "
                     f"{dom.cpu_model or dom.cpu_mode}: {exc}",
                     f"check that {dest} has the emulator {dom.emulator} and machine type {dom.machine}.")
            return
        if result in (VIR_CPU_COMPARE_IDENTICAL, VIR_CPU_COMPARE_SUPERSET):
            how = "identical to" if result == VIR_CPU_COMPARE_IDENTICAL else "a subset of"
            self.add("cpu.compat", PASS, f"{vm}: CPU {dom.cpu_model or dom.cpu_mode} ({virttype}) is {how} what "
                     f"{dest} provides.")
            return
        detail = ""
        try:
            self.dst_conn.compareHypervisorCPU(dom.emulator, dom.arch, dom.machine, virttype, dom.cpu_xml,
                                               VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
        # libvirt names the missing features
        except Exception as exc:  # pylint: disable=broad-except
            detail = f": {exc}"
        self.add("cpu.compat", FAIL, f"{vm}: CPU {dom.cpu_model or dom.cpu_mode} is incompatible with {dest}{detail}.",
                 f"give {vm} a CPU model every destination provides (a cluster-wide baseline), or choose another "
                 "destination.")

    def capacity(self) -> None:
        vm, dest = self.domain.name, self.dest_name
        need = self.domain.memory_mib + self.headroom
        have = self.destination.memory_available_mib
        text = (f"{vm} needs {self.domain.memory_mib} MiB + {self.headroom} MiB headroom = {need} MiB; {dest} has "
                f"{have} MiB available (free {self.destination.memory_free_mib} MiB of "
                f"{self.destination.memory_total_mib} MiB; {self.destination.memory_allocated_mib} MiB allocated to "
                f"{self.destination.domains_running} running domains)")
        if have >= need:
            self.add("capacity.memory", PASS, text + ".")
        else:
            self.add("capacity.memory", FAIL, text + f": {need - have} MiB short.",
                     f"choose a destination with more free memory, free memory on {dest}, or lower the headroom "
                     "(memory_headroom_mib) if it is too cautious.")

    def postcopy(self) -> None:
        vm, dest = self.domain.name, self.dest_name
        settings = self.settings
        reasons = []
        if self.mode in POSTCOPY_MODES:
            reasons.append(f"mode {self.mode}")
        elif self.mode == Mode.AUTO and settings.get("allow_postcopy", True):
            reasons.append("mode auto without a forecast, which may choose post-copy")
        if settings.get("allow_postcopy", True) and settings.get("on_timeout") == OnTimeout.POSTCOPY:
            reasons.append("on_timeout postcopy")
        if not reasons:
            self.add("postcopy.support", PASS, f"{vm} will not use post-copy (mode {self.mode or Mode.PRECOPY}).")
            return
        why = " and ".join(reasons)
        support = self.destination.postcopy
        if support["supported"] is False:
            self.add("postcopy.support", FAIL, f"{vm} may use post-copy ({why}) but {dest} cannot: "
                     f"{support['reason']}.", f"use a policy without post-copy for {vm} (allow_postcopy: false), or "
                     f"upgrade {dest}.")
        elif not support["resume"] or not self.source.postcopy["resume"]:
            self.add("postcopy.support", FAIL, f"{vm} may use post-copy ({why}) but libvirt on "
                     f"{dest if not support['resume'] else self.source.name} cannot resume an interrupted post-copy "
                     "(needs >= 8.5.0): a network failure would lose the VM.",
                     "upgrade libvirt on both hosts, or set allow_postcopy: false in the policy.")
        elif support["supported"] is None:
            self.add("postcopy.support", WARN, f"{vm} may use post-copy ({why}); {dest}: {support['reason']}.",
                     f"run hvfleet.drain.hypervisor_info on {dest} and pass its facts.")
        else:
            self.add("postcopy.support", PASS, f"{vm} may use post-copy ({why}); {dest} supports it: "
                     f"{support['reason']}.")

    def forecast(self) -> None:
        if self.mode == ForecastVerdict.REFUSE:
            self.add("forecast.mode", FAIL, f"{self.domain.name}: the forecast refuses to migrate it: "
                     f"{self.forecast_reason or 'no mode converges in time'}.",
                     "raise the bandwidth or max_downtime_cap_ms, allow post-copy or auto-converge in its policy, "
                     "or migrate it in a quiet moment.")

    def run(self) -> None:
        self.identity()
        if self.dst_conn is None:
            self.add("reach.libvirt", FAIL,
                     f"libvirt on {self.dest_name} ({self.destination.uri}) does not answer, so {self.domain.name} "
                     f"cannot go there: {self.destination_error or 'no connection'}.",
                     f"start libvirtd on {self.dest_name} and check the URI, network and credentials.")
            self.devices()
            return
        self.reachability()
        self.versions()
        self.devices()
        self.storage()
        self.networks()
        self.cpu()
        self.capacity()
        self.postcopy()
        self.forecast()


def unreachable_host(name: str, uri: str | None) -> HostFacts:
    """Placeholder facts for a destination whose libvirt did not answer."""
    return HostFacts(name=name, uri=uri, cordon=None)


def run_prechecks(src_conn: Connection, dst_conn: Connection, domain: DomainFacts, source: HostFacts,
                  destination: HostFacts, settings: Settings | None = None, *, migration_address: str | None = None,
                  mode: str | None = None, forecast_reason: str | None = None,
                  memory_headroom_mib: int = DEFAULT_HEADROOM_MIB, on_source: bool | None = None,
                  probe: Probe | None = None, destination_error: str | None = None) -> PrecheckResult:
    """Every prerequisite check of `domain` (DomainFacts) moving from `source` to `destination` (HostFacts).

    `dst_conn` None means the destination's libvirt did not answer (`destination_error` says why):
    only what needs no destination is checked then. `settings` are the VM's policy settings
    (policy.select_policy(...).settings); `mode` the mode the forecast chose. `on_source`
    (default: source.local) says this runs on the source host, so its mounts and routes count.
    Returns a PrecheckResult; raises nothing for a failing check.
    """
    checker = _Checker(src_conn, dst_conn, domain, source, destination, settings, migration_address, mode,
                       forecast_reason, memory_headroom_mib,
                       source.local if on_source is None else on_source, probe or LocalProbe(), destination_error)
    checker.run()
    return PrecheckResult(domain.name, checker.dest_name, checker.checks,
                          checker.copy_storage if checker.copy_disks else None, tuple(checker.copy_disks))
