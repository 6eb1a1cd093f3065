# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts about hypervisors, read through libvirt and, on the host itself, from the host.

Host facts combine what libvirt says about a host with what only the host itself can say (Linux
bridges in /sys/class/net, the filesystem a disk lives on in /proc/self/mounts, userfaultfd, the
cordon state). Those local parts are read only when the code runs on the host the libvirt URI
points to; read from elsewhere they are None (unknown), never guessed. Apart from the domain
facts (facts.py) because a host is read differently: libvirt's host calls plus local files.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import maintenance
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import hugepages as hp
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import (
    Connection,
    FactsError,
    mtu_size,
    version_text,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.pinning import Topology, topology

# (mount point, filesystem type, device), as in /proc/self/mounts
Mount = tuple[str, str, str]

VIR_CONNECT_LIST_DOMAINS_ACTIVE = 1
VIR_NODE_MEMORY_STATS_ALL_CELLS = -1

# Filesystems libvirt itself treats as shared when it decides whether a migration is safe
# (virFileIsSharedFS): a disk there is reachable from every host that mounts the same share.
SHARED_FS_TYPES = frozenset({
    "nfs", "nfs4", "gfs2", "gfs2meta", "ocfs2", "afs", "smb3", "smbfs", "cifs", "ceph", "fuse.ceph",
    "fuse.ceph-fuse", "glusterfs", "fuse.glusterfs", "gpfs", "quobyte", "fuse.quobyte", "beegfs", "lustre",
})
# Storage pool types whose volumes every host of the cluster can open at the same path.
SHARED_POOL_TYPES = frozenset({"netfs", "iscsi", "iscsi-direct", "mpath", "rbd", "gluster", "sheepdog", "vstorage"})

# libvirt >= 1.3.3 and QEMU >= 2.5 migrate in post-copy; libvirt >= 8.5 can resume a broken one.
LIBVIRT_POSTCOPY_MIN = 1003003
QEMU_POSTCOPY_MIN = 2005000
LIBVIRT_POSTCOPY_RESUME_MIN = 8005000


# ---- local views: mounts, bridges -------------------------------------------------------------


def _unescape(field: str) -> str:
    """/proc/mounts escapes space, tab, newline and backslash as octal."""
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def parse_mounts(text: str) -> list[Mount]:
    """[(mount point, fs type, device)] from /proc/self/mounts text."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts.append((_unescape(fields[1]), fields[2], _unescape(fields[0])))
    return mounts


def mount_of(path: str, mounts: Iterable[Mount]) -> Mount | None:
    """(mount point, fs type, device) of the filesystem `path` lies on: the longest matching mount,
    the last one mounted when several share a mount point (what the kernel shows)."""
    best: Mount | None = None
    for point, fstype, device in mounts:
        prefix = point.rstrip("/") + "/"
        inside = path == point or path.startswith(prefix) or point == "/"
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype, device)
    return best


def read_mounts(proc: str = "/proc") -> list[Mount] | None:
    try:
        with open(os.path.join(proc, "self", "mounts"), encoding="utf-8") as handle:
            return parse_mounts(handle.read())
    except OSError:
        return None


def local_bridges(sysfs: str = "/sys") -> dict[str, int | None] | None:
    """{bridge name: mtu} from /sys/class/net/*/bridge (Linux); None when sysfs cannot be read."""
    base = os.path.join(sysfs, "class", "net")
    try:
        names = os.listdir(base)
    except OSError:
        return None
    bridges: dict[str, int | None] = {}
    for name in sorted(names):
        if os.path.isdir(os.path.join(base, name, "bridge")):
            bridges[name] = _read_int(os.path.join(base, name, "mtu"))
    return bridges


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def local_userfaultfd(proc: str = "/proc", dev: str = "/dev") -> bool:
    """Whether the kernel offers userfaultfd (post-copy's destination side needs it)."""
    return (os.path.exists(os.path.join(dev, "userfaultfd"))
            or os.path.exists(os.path.join(proc, "sys", "vm", "unprivileged_userfaultfd")))


def is_local_uri(uri: str | None) -> bool:
    """The libvirt daemon behind `uri` runs on the machine this code runs on."""
    if not uri:
        return True
    parts = urlsplit(uri)
    return parts.scheme in ("qemu", "qemu+unix") and not parts.hostname


# ---- host facts -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostFacts:  # pylint: disable=too-many-instance-attributes
    """A hypervisor as the checks and placement see it. None means unknown (not read from here)."""

    name: str
    hostname: str | None = None
    uri: str | None = None
    host_uuid: str | None = None
    arch: str | None = None
    cpu_model: str | None = None
    cpu_vendor: str | None = None
    cpus: int = 0
    memory_total_mib: int = 0
    memory_free_mib: int = 0
    memory_available_mib: int = 0  # free + buffers + cached: what a new guest can get without swapping
    memory_allocated_mib: int = 0  # sum of the running domains' maximum memory
    vcpus_allocated: int = 0
    domains_running: int = 0
    libvirt_version: int = 0
    qemu_version: int = 0
    migration_live: bool | None = None
    migration_transports: tuple[str, ...] = ()
    # {domain type (qemu, kvm): machine types QEMU offers for the host's arch}, aliases (pc, q35) included;
    # None when libvirt's capabilities list none
    machine_types: dict[str, tuple[str, ...]] | None = None
    machine_aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # {alias: canonical}, e.g. pc
    userfaultfd: bool | None = None
    # {name: mtu}: Linux bridges (local sysfs, else libvirt's interface driver)
    bridges: dict[str, int | None] | None = None
    bridges_source: str | None = None  # sysfs, libvirt, or None when unknown
    networks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # {name: {active, bridge}}
    cordon: dict[str, Any] | None = None  # maintenance.MaintenanceState.to_dict(); None when not readable from here
    local: bool = False  # the local parts were read on this host itself
    numa_cells: dict[int, tuple[int, ...]] | None = None  # {NUMA node: its CPU ids}; None when libvirt lists none
    hugepages: dict[int, dict[str, int]] | None = None  # {page size KiB: {total, free}}; None when unknown
    hugepages_free_nodes: dict[int, dict[int, int]] | None = None  # {NUMA node: {page size KiB: free}}

    @property
    def topology(self) -> Topology | None:
        """The NUMA nodes and CPUs pins are checked against; None when unknown."""
        return None if self.numa_cells is None else Topology(tuple(sorted(self.numa_cells.items())))

    @property
    def cordoned(self) -> bool | None:
        """True / False, or None when the cordon state is unknown."""
        if self.cordon is None:
            return None
        return self.cordon.get("state") == maintenance.CORDONED

    @property
    def stack(self) -> tuple[int, int]:
        """(QEMU, libvirt) versions: the generation placement compares; (0, 0) when unknown."""
        return (self.qemu_version, self.libvirt_version)

    def has_machine(self, machine: str | None, domain_type: str | None) -> bool | None:
        """Whether QEMU on this host offers `machine` for `domain_type` (None: unknown here)."""
        if not machine or self.machine_types is None:
            return None
        offered = self.machine_types.get(domain_type or "", ())
        if not offered and not domain_type:
            offered = tuple(m for names in self.machine_types.values() for m in names)
        return machine in offered

    @property
    def postcopy(self) -> dict[str, Any]:
        """{'supported': True/False/None, 'resume': bool, 'reason': str}."""
        reasons = []
        supported: bool | None = True
        if self.libvirt_version and self.libvirt_version < LIBVIRT_POSTCOPY_MIN:
            supported = False
            reasons.append(f"libvirt {version_text(self.libvirt_version)} < {version_text(LIBVIRT_POSTCOPY_MIN)}")
        if self.qemu_version and self.qemu_version < QEMU_POSTCOPY_MIN:
            supported = False
            reasons.append(f"QEMU {version_text(self.qemu_version)} < {version_text(QEMU_POSTCOPY_MIN)}")
        if self.userfaultfd is False:
            supported = False
            reasons.append("the kernel has no userfaultfd")
        if supported and self.userfaultfd is None:
            supported = None
            reasons.append("userfaultfd of the kernel not checked (facts not read on the host itself)")
        if supported:
            reasons.append(f"libvirt {version_text(self.libvirt_version)}, QEMU {version_text(self.qemu_version)}, "
                           "kernel userfaultfd")
        return {"supported": supported, "resume": bool(self.libvirt_version >= LIBVIRT_POSTCOPY_RESUME_MIN),
                "reason": "; ".join(reasons)}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["migration_transports"] = list(self.migration_transports)
        if self.machine_types is not None:
            data["machine_types"] = {dtype: list(names) for dtype, names in self.machine_types.items()}
        data["libvirt_version_text"] = version_text(self.libvirt_version)
        data["qemu_version_text"] = version_text(self.qemu_version)
        data["postcopy"] = self.postcopy
        data["cordoned"] = self.cordoned
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, **overrides: Any) -> HostFacts:
        """HostFacts from to_dict() output (e.g. hypervisor_info's registered result)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in (data or {}).items() if k in known}
        values.update(overrides)
        if "migration_transports" in values:
            values["migration_transports"] = tuple(values["migration_transports"] or ())
        if values.get("machine_types") is not None:
            values["machine_types"] = {str(k): tuple(v or ()) for k, v in dict(values["machine_types"]).items()}
        shapes: dict[str, Callable[[Any], Any]] = {  # JSON turned the ids into text
            "numa_cells": tuple, "hugepages": dict,
            "hugepages_free_nodes": lambda v: {int(size): int(n) for size, n in dict(v).items()}}
        for key, shape in shapes.items():
            if values.get(key) is not None:
                values[key] = {int(k): shape(v) for k, v in values[key].items()}
        if "machine_aliases" in values:
            values["machine_aliases"] = dict(values["machine_aliases"] or {})
        if not values.get("name"):
            values["name"] = values.get("hostname") or "?"
        return cls(**values)

    def merged_with(self, supplied: HostFacts | Mapping[str, Any] | None) -> HostFacts:
        """These (live, libvirt) facts, completed by facts read on the host itself (hypervisor_info).

        Only what could not be read from here is taken over: cordon state, userfaultfd, and the
        bridges when libvirt could not list them.
        """
        if not supplied:
            return self
        other = supplied if isinstance(supplied, HostFacts) else HostFacts.from_dict(supplied, name=self.name)
        changes: dict[str, Any] = {}
        if self.cordon is None and other.cordon is not None:
            changes["cordon"] = other.cordon
        if self.userfaultfd is None and other.userfaultfd is not None:
            changes["userfaultfd"] = other.userfaultfd
        if other.bridges is not None and (self.bridges is None or other.bridges_source == "sysfs"):
            changes["bridges"] = other.bridges
            changes["bridges_source"] = other.bridges_source
        return dataclasses.replace(self, **changes) if changes else self


def _libvirt_bridges(conn: Connection) -> dict[str, int | None] | None:
    """{name: mtu} of bridge interfaces via libvirt's interface driver; None if it has none."""
    try:
        ifaces = conn.listAllInterfaces(0)
    except Exception:  # pylint: disable=broad-except
        return None
    bridges: dict[str, int | None] = {}
    for iface in ifaces:
        try:
            root = ET.fromstring(iface.XMLDesc(0))
        except Exception:  # pylint: disable=broad-except
            continue
        if root.get("type") == "bridge":
            bridges[root.get("name") or iface.name()] = mtu_size(root.find("mtu"))
    return bridges


def _libvirt_networks(conn: Connection) -> dict[str, dict[str, Any]]:
    networks: dict[str, dict[str, Any]] = {}
    try:
        nets = conn.listAllNetworks(0)
    except Exception:  # pylint: disable=broad-except
        return networks
    for net in nets:
        try:
            bridge = None
            try:
                bridge = net.bridgeName()
            # networks without a bridge, e.g. macvtap
            except Exception:  # pylint: disable=broad-except
                bridge = None
            networks[net.name()] = {"active": bool(net.isActive()), "bridge": bridge}
        except Exception:  # pylint: disable=broad-except
            continue
    return networks


def machine_types(root: ET.Element, arch: str | None) -> tuple[dict[str, tuple[str, ...]] | None, dict[str, str]]:
    """({domain type: machine types}, {alias: canonical}) of the hvm guests for `arch` in libvirt's
    capabilities XML. Machines listed under <arch> serve every domain type; those under
    <domain type=...> only that one."""
    common: list[str] = []
    per_type: dict[str, list[str]] = {}
    aliases: dict[str, str] = {}
    found = False
    for guest in root.findall("guest"):
        arch_el = guest.find("arch")
        if guest.findtext("os_type") != "hvm" or arch_el is None or (arch and arch_el.get("name") != arch):
            continue
        found = True
        for machine in arch_el.findall("machine"):
            if machine.text:
                common.append(machine.text)
                if machine.get("canonical"):
                    aliases[machine.text] = machine.get("canonical") or ""
        for dom in arch_el.findall("domain"):
            dtype = dom.get("type") or "?"
            per_type.setdefault(dtype, [])
            for machine in dom.findall("machine"):
                if machine.text:
                    per_type[dtype].append(machine.text)
                    if machine.get("canonical"):
                        aliases.setdefault(machine.text, machine.get("canonical") or "")
    if not found:
        return None, aliases
    return {dtype: tuple(sorted(set(common + extra))) for dtype, extra in sorted(per_type.items())}, aliases


def _capabilities(conn: Connection) -> dict[str, Any]:
    root = ET.fromstring(conn.getCapabilities())
    host = root.find("host")
    cpu = host.find("cpu") if host is not None else None
    migration = host.find("migration_features") if host is not None else None
    transports: tuple[str, ...] = ()
    if migration is not None:
        transports = tuple(t.text for t in migration.findall("uri_transports/uri_transport") if t.text)
    arch = cpu.findtext("arch") if cpu is not None else None
    machines, aliases = machine_types(root, arch)
    topo = topology(root)
    pages = hp.host_pages(conn, root)
    return {
        "numa_cells": dict(topo.cells) if topo is not None else None,
        "hugepages": pages[0] if pages else None,
        "hugepages_free_nodes": pages[1] if pages else None,
        "machine_types": machines,
        "machine_aliases": aliases,
        "host_uuid": host.findtext("uuid") if host is not None else None,
        "arch": cpu.findtext("arch") if cpu is not None else None,
        "cpu_model": cpu.findtext("model") if cpu is not None else None,
        "cpu_vendor": cpu.findtext("vendor") if cpu is not None else None,
        "migration_live": migration is not None and migration.find("live") is not None,
        "migration_transports": transports,
    }


def _memory_stats(conn: Connection, info: list[Any]) -> dict[str, int]:
    """Node memory in KiB (total, free, buffers, cached); drivers without the call give free only."""
    try:
        return conn.getMemoryStats(VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    # e.g. the test driver
    except Exception:  # pylint: disable=broad-except
        return {"total": int(info[1]) * 1024, "free": int(conn.getFreeMemory()) // 1024}


def host_facts(conn: Connection, name: str | None = None, uri: str | None = None, local: bool | None = None,
               state_dir: str = maintenance.DEFAULT_DIR, sysfs: str = "/sys", proc: str = "/proc",
               dev: str = "/dev") -> HostFacts:
    """HostFacts of the hypervisor behind `conn`.

    `local` (default: the URI is local) says this code runs on that hypervisor, so its sysfs,
    /proc, /dev and maintenance state are read too; otherwise those parts stay None.
    """
    if local is None:
        local = is_local_uri(uri)
    try:
        info = conn.getInfo()  # [arch, memory MiB, cpus, MHz, nodes, sockets, cores, threads]
        hostname = conn.getHostname()
        caps = _capabilities(conn)
        libvirt_version = int(conn.getLibVersion())
        qemu_version = int(conn.getVersion())
        stats = _memory_stats(conn, info)
        running = conn.listAllDomains(VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    except Exception as exc:  # pylint: disable=broad-except
        raise FactsError(f"Cannot read the facts of {uri or name or 'the hypervisor'}: {exc}",
                         "check that libvirt answers on that URI.") from exc
    allocated_kib = 0
    vcpus = 0
    for dom in running:
        try:
            dinfo = dom.info()  # [state, maxMem KiB, memory KiB, vcpus, cpuTime]
        # a domain that just went away
        except Exception:  # pylint: disable=broad-except
            continue
        allocated_kib += int(dinfo[1])
        vcpus += int(dinfo[3])
    free_kib = int(stats.get("free", 0))
    available_kib = free_kib + int(stats.get("buffers", 0)) + int(stats.get("cached", 0))
    bridges, bridges_source = None, None
    userfaultfd, cordon = None, None
    if local:
        bridges = local_bridges(sysfs)
        bridges_source = "sysfs" if bridges is not None else None
        userfaultfd = local_userfaultfd(proc, dev)
        cordon = maintenance.read_state(state_dir).to_dict()
    if bridges is None:
        bridges = _libvirt_bridges(conn)
        bridges_source = "libvirt" if bridges is not None else None
    return HostFacts(
        name=name or hostname,
        hostname=hostname,
        uri=uri,
        cpus=int(info[2]),
        memory_total_mib=int(stats.get("total", int(info[1]) * 1024)) // 1024,
        memory_free_mib=free_kib // 1024,
        memory_available_mib=available_kib // 1024,
        memory_allocated_mib=allocated_kib // 1024,
        vcpus_allocated=vcpus,
        domains_running=len(running),
        libvirt_version=libvirt_version,
        qemu_version=qemu_version,
        userfaultfd=userfaultfd,
        bridges=bridges,
        bridges_source=bridges_source,
        networks=_libvirt_networks(conn),
        cordon=cordon,
        local=bool(local),
        **caps,
    )
