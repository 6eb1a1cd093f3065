# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts about domains, read through libvirt (never virsh).

Domain facts come from the domain XML by a pure parser (`parse_domain_xml`), so everything a
prerequisite check looks at can be unit-tested from XML text. The hypervisor's own facts are in
host_facts.py.
"""

from __future__ import annotations

import dataclasses
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.hugepages import bound_nodes, domain_hugepages
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.pinning import CpusetError, Pins, domain_pins
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import LABEL_NAMESPACE

MIB = 1024 * 1024

# libvirt objects (virConnect, virDomain): the binding has no type information.
Connection = Any
Domain = Any

DOMAIN_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff",
                 6: "crashed", 7: "pmsuspended"}
VIR_DOMAIN_STATS_DIRTYRATE = 1 << 9


class FactsError(HvfleetError):
    """Facts could not be read (libvirt refused, or the XML is not a domain)."""


def version_text(number: int | None) -> str:
    """libvirt encodes versions as major*1e6 + minor*1e3 + micro."""
    if not number:
        return "unknown"
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


# ---- domain facts -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Disk:  # pylint: disable=too-many-instance-attributes
    """One `<disk>`: where its data is (a path, or protocol + name + hosts) and how it is attached."""

    target: str
    device: str = "disk"  # disk, cdrom, floppy, lun
    type: str = "file"  # file, block, network, volume, dir, nvme, vhostuser
    path: str | None = None  # file / block / dir source
    protocol: str | None = None  # network: nbd, rbd, iscsi, gluster, ...
    name: str | None = None  # network: export / image / IQN; volume: the volume
    hosts: tuple[str, ...] = ()  # network: ("host:port", ...)
    pool: str | None = None  # volume disks
    format: str | None = None  # driver type: raw, qcow2
    readonly: bool = False
    shareable: bool = False

    @property
    def empty(self) -> bool:
        """No medium (an empty CD-ROM tray)."""
        return not (self.path or self.name or self.protocol)

    @property
    def source(self) -> str:
        """One human string for the source: a path, nbd://host:port/name, or pool/volume."""
        if self.type == "network":
            host = self.hosts[0] if self.hosts else ""
            return f"{self.protocol or 'network'}://{host}/{self.name or ''}"
        if self.type == "volume":
            return f"pool {self.pool} volume {self.name}"
        return self.path or "(empty)"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hosts"] = list(self.hosts)
        data["source"] = self.source
        return data


@dataclasses.dataclass(frozen=True)
class Interface:
    """One `<interface>`: type network / bridge / direct / user / hostdev ..., its source and MAC."""

    type: str
    source: str | None = None  # network name, bridge name, or host device
    mac: str | None = None
    model: str | None = None
    mtu: int | None = None  # <mtu size=...> when set on the interface
    target: str | None = None  # the tap device on the host (running domains)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LocalDevice:
    """A device tied to the host it runs on: it blocks live migration."""

    kind: str  # hostdev, interface-hostdev, serial, parallel, channel, smartcard, filesystem, shmem, nvme-disk
    description: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DomainFacts:  # pylint: disable=too-many-instance-attributes
    """What the checks and the policy selector need to know about one domain."""

    name: str
    uuid: str | None = None
    state: str = "unknown"
    persistent: bool | None = None
    memory_mib: int = 0
    current_memory_mib: int = 0
    vcpus: int = 1
    domain_type: str | None = None  # qemu (TCG) or kvm
    arch: str | None = None
    machine: str | None = None
    emulator: str | None = None
    cpu_mode: str | None = None
    cpu_model: str | None = None
    cpu_xml: str | None = None  # the <cpu> element, for libvirt's CPU comparison
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    local_devices: tuple[LocalDevice, ...] = ()
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    pins: Pins = Pins()  # vCPU/emulator/iothread pins to host CPUs, numatune pins to host NUMA nodes
    hugepages: dict[int, int] = dataclasses.field(default_factory=dict)  # {page size KiB: pages}; {} without
    memory_nodes: tuple[int, ...] = ()  # host NUMA nodes <numatune> binds its memory to; () not bound

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused", "blocked")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["disks"] = [d.to_dict() for d in self.disks]
        data["interfaces"] = [i.to_dict() for i in self.interfaces]
        data["local_devices"] = [d.to_dict() for d in self.local_devices]
        return data


_UNITS = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000 ** 2, "m": MIB, "mib": MIB,
          "gb": 1000 ** 3, "g": 1024 ** 3, "gib": 1024 ** 3, "tb": 1000 ** 4, "t": 1024 ** 4, "tib": 1024 ** 4}


def _mib(element: ET.Element | None, default: int = 0) -> int:
    """A libvirt size element (<memory unit='KiB'>N</memory>) in MiB."""
    text = (element.text or "").strip() if element is not None else ""
    if element is None or not text:
        return default
    unit = (element.get("unit") or "KiB").lower()
    return int(int(text) * _UNITS.get(unit, 1024) // MIB)


def _disk(element: ET.Element) -> Disk:
    source = element.find("source")
    src = source.attrib if source is not None else {}
    kind = element.get("type", "file")
    path = None
    if kind in ("file", "block", "dir"):
        path = src.get({"file": "file", "block": "dev", "dir": "dir"}[kind])
    hosts: tuple[str, ...] = ()
    if source is not None and kind == "network":
        hosts = tuple(_endpoint(h) for h in source.findall("host"))
    driver = element.find("driver")
    target = element.find("target")
    return Disk(
        target=(target.get("dev") if target is not None else None) or "?",
        device=element.get("device", "disk"),
        type=kind,
        path=path,
        protocol=src.get("protocol") if kind == "network" else None,
        name=src.get("name") if kind == "network" else (src.get("volume") if kind == "volume" else None),
        hosts=hosts,
        pool=src.get("pool") if kind == "volume" else None,
        format=driver.get("type") if driver is not None else None,
        readonly=element.find("readonly") is not None,
        shareable=element.find("shareable") is not None,
    )


def _endpoint(host: ET.Element) -> str:
    """'name:port' (or the socket path) of a network disk's <host>."""
    port = host.get("port")
    return f"{host.get('name') or host.get('socket') or ''}{':' + port if port else ''}"


def mtu_size(element: ET.Element | None) -> int | None:
    """An <mtu size='N'/> element's size, or None."""
    size = element.get("size") if element is not None else None
    return int(size) if size and size.isdigit() else None


def _interface(element: ET.Element) -> Interface:
    kind = element.get("type", "")
    source = element.find("source")
    src = source.attrib if source is not None else {}
    origin = {"network": src.get("network"), "bridge": src.get("bridge"), "direct": src.get("dev")}.get(kind)
    if kind == "hostdev" and source is not None:
        origin = _hostdev_address(source, "pci")
    mac = element.find("mac")
    model = element.find("model")
    mtu = element.find("mtu")
    target = element.find("target")
    return Interface(type=kind, source=origin, mac=mac.get("address") if mac is not None else None,
                     model=model.get("type") if model is not None else None,
                     mtu=mtu_size(mtu),
                     target=target.get("dev") if target is not None else None)


def _hostdev_address(source: ET.Element, kind: str) -> str:
    address = source.find("address")
    if address is None:
        vendor, product = source.find("vendor"), source.find("product")
        if vendor is not None and product is not None:
            return f"{vendor.get('id')}:{product.get('id')}"
        return "?"
    a = address.attrib
    if kind == "usb":
        return f"bus {a.get('bus')} device {a.get('device')}"
    if kind == "scsi":
        adapter = source.find("adapter")
        return f"{adapter.get('name') if adapter is not None else '?'} {a.get('bus')}:{a.get('target')}:{a.get('unit')}"

    def hexpart(key: str, width: int) -> str:
        value = a.get(key, "0")
        try:
            return f"{int(value, 0):0{width}x}"
        except ValueError:
            return value
    return f"{hexpart('domain', 4)}:{hexpart('bus', 2)}:{hexpart('slot', 2)}.{hexpart('function', 1)}"


def _local_devices(devices: ET.Element, disks: Iterable[Disk], interfaces: Iterable[Interface]
                   ) -> tuple[LocalDevice, ...]:
    found = []
    for hostdev in devices.findall("hostdev"):
        kind = hostdev.get("type", "?")
        source = hostdev.find("source")
        where = _hostdev_address(source, kind) if source is not None else "?"
        if kind == "mdev" and source is not None:
            address = source.find("address")
            where = address.get("uuid", "?") if address is not None else "?"
        found.append(LocalDevice("hostdev", f"host {kind.upper()} device {where}"))
    for nic in interfaces:
        if nic.type == "hostdev":
            found.append(LocalDevice("interface-hostdev", f"SR-IOV interface (host PCI {nic.source}), MAC {nic.mac}"))
    for tag in ("serial", "parallel", "channel", "console"):
        for element in devices.findall(tag):
            source = element.find("source")
            if element.get("type") == "dev" and source is not None:
                found.append(LocalDevice(tag, f"{tag} passthrough of host device {source.get('path')}"))
    for card in devices.findall("smartcard"):
        if card.get("mode") in ("host", "passthrough"):
            found.append(LocalDevice("smartcard", f"smartcard in {card.get('mode')} mode"))
    for fs in devices.findall("filesystem"):
        driver = fs.find("driver")
        source, target = fs.find("source"), fs.find("target")
        share = (driver.get("type") if driver is not None else None) or "9p"
        found.append(LocalDevice("filesystem", f"{share} filesystem share "
                                 f"{source.get('dir') if source is not None else '?'} -> "
                                 f"{target.get('dir') if target is not None else '?'}"))
    for shmem in devices.findall("shmem"):  # QEMU refuses to migrate ivshmem ("peer mode")
        model = shmem.find("model")
        found.append(LocalDevice("shmem", f"shared-memory device '{shmem.get('name') or '?'}' "
                                 f"({model.get('type') if model is not None else 'ivshmem'})"))
    for disk in disks:
        if disk.type == "nvme":
            found.append(LocalDevice("nvme-disk", f"disk {disk.target} is a host NVMe device"))
    return tuple(found)


def parse_domain_xml(xml: str, state: str = "unknown", persistent: bool | None = None) -> DomainFacts:
    """DomainFacts from domain XML text (pure); state/persistent come from libvirt, not the XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise FactsError(f"Cannot parse domain XML: {exc}.", "pass the output of virDomainGetXMLDesc.") from exc
    if root.tag != "domain":
        raise FactsError(f"Expected a <domain> document, got <{root.tag}>.", "pass domain XML.")
    devices = root.find("devices")
    if devices is None:
        devices = ET.Element("devices")
    disks = tuple(_disk(d) for d in devices.findall("disk"))
    interfaces = tuple(_interface(i) for i in devices.findall("interface"))
    vcpu = root.find("vcpu")
    vcpus = 1
    if vcpu is not None:
        vcpus = int(vcpu.get("current") or (vcpu.text or "1").strip() or 1)
    ostype = root.find("os/type")
    cpu = root.find("cpu")
    model = cpu.find("model") if cpu is not None else None
    emulator = devices.find("emulator")
    labels = {}
    metadata = root.find("metadata")
    if metadata is not None:
        for label in metadata.iter(f"{{{LABEL_NAMESPACE}}}label"):
            name = label.get("name")
            if name:
                labels[name] = (label.text or "").strip()
    cpu_xml = None
    if cpu is not None:
        cpu_xml = ET.tostring(cpu, encoding="unicode").strip()
    try:
        pins = domain_pins(root)
    except CpusetError as exc:
        raise FactsError(f"Domain '{root.findtext('name')}' has a pin libvirt would not accept: {exc.message}.",
                         "pass the output of virDomainGetXMLDesc.") from exc
    return DomainFacts(
        name=(root.findtext("name") or "").strip(),
        uuid=(root.findtext("uuid") or "").strip() or None,
        state=state,
        persistent=persistent,
        memory_mib=_mib(root.find("memory")),
        current_memory_mib=_mib(root.find("currentMemory"), default=_mib(root.find("memory"))),
        vcpus=vcpus,
        domain_type=root.get("type"),
        arch=ostype.get("arch") if ostype is not None else None,
        machine=ostype.get("machine") if ostype is not None else None,
        emulator=(emulator.text or "").strip() if emulator is not None else None,
        cpu_mode=(cpu.get("mode") or ("custom" if model is not None else None)) if cpu is not None else None,
        cpu_model=(model.text or "").strip() if model is not None and model.text else None,
        cpu_xml=cpu_xml,
        disks=disks,
        interfaces=interfaces,
        local_devices=_local_devices(devices, disks, interfaces),
        labels=labels,
        pins=pins,
        hugepages=domain_hugepages(root),
        memory_nodes=bound_nodes(root),
    )


def domain_facts(dom: Domain) -> DomainFacts:
    """DomainFacts of a libvirt domain (its live XML when running)."""
    try:
        state_code = dom.state()[0]
        persistent = bool(dom.isPersistent())
        xml = dom.XMLDesc(0)
    # libvirtError; the binding may be absent in tests
    except Exception as exc:  # pylint: disable=broad-except
        raise FactsError(f"Cannot read domain '{_safe_name(dom)}': {exc}",
                         "check that the domain still exists and libvirt answers.") from exc
    return parse_domain_xml(xml, state=DOMAIN_STATES.get(state_code, "unknown"), persistent=persistent)


def _safe_name(dom: Domain) -> str:
    try:
        return dom.name()
    except Exception:  # pylint: disable=broad-except
        return "?"


def measure_dirty_rates(doms: Iterable[Domain], seconds: float = 1, timeout_s: float | None = None,
                        clock: Callable[[], float] = time.monotonic,
                        wait: Callable[[float], object] = time.sleep) -> dict[str, float | FactsError]:
    """{domain name: bytes/s or FactsError} measured by libvirt (virDomainStartDirtyRateCalc).

    All measurements run at once, so N domains take `seconds` (plus a little), not N x seconds.
    Needs running domains, libvirt >= 7.2 and QEMU >= 5.2.
    """
    timeout_s = timeout_s if timeout_s is not None else seconds + 10
    results: dict[str, float | FactsError] = {}
    started: list[Domain] = []
    for dom in doms:
        try:
            dom.startDirtyRateCalc(int(seconds), 0)
            started.append(dom)
        except Exception as exc:  # pylint: disable=broad-except
            results[_safe_name(dom)] = FactsError(
                f"Cannot measure the dirty rate of '{_safe_name(dom)}': {exc}",
                "the domain must be running, with libvirt >= 7.2 and QEMU >= 5.2; or give its dirty rate.")
    deadline = clock() + timeout_s
    if started:
        wait(seconds)
    while started:
        pending = []
        for dom in started:
            try:
                stats = dom.connect().domainListGetStats([dom], VIR_DOMAIN_STATS_DIRTYRATE)
                record = stats[0][1] if stats else {}
            except Exception as exc:  # pylint: disable=broad-except
                results[_safe_name(dom)] = FactsError(f"Cannot read the dirty rate of '{_safe_name(dom)}': {exc}",
                                                      "check that the domain still runs.")
                continue
            if record.get("dirtyrate.calc_status") == 2:  # VIR_DOMAIN_DIRTYRATE_MEASURED
                results[_safe_name(dom)] = float(record.get("dirtyrate.megabytes_per_second", 0)) * MIB
            else:
                pending.append(dom)
        started = pending
        if started and clock() > deadline:
            for dom in started:
                results[_safe_name(dom)] = FactsError(
                    f"The dirty-rate measurement of '{_safe_name(dom)}' did not finish within {timeout_s:g} s.",
                    "retry, or give its dirty rate explicitly.")
            break
        if started:
            wait(0.2)
    return results


RESIDENT_TIMEOUT_S = 5.0


def resident_mib(dom: Domain) -> int | None:
    """The QEMU process's resident size in MiB (libvirt reads it on the host, no guest agent needed), or
    None. It is how much guest memory was touched - what a forecast must send. Bounded: the call queues
    behind a domain's job, and a busy domain must not hold up the plan."""
    try:
        stats = bounded.call(dom.memoryStats, timeout_s=RESIDENT_TIMEOUT_S, what="memory stats")
        return int(stats["rss"]) // 1024 if stats.get("rss") else None
    except Exception:  # pylint: disable=broad-except
        return None


def measure_dirty_rate(dom: Domain, seconds: float = 1, timeout_s: float | None = None,
                       clock: Callable[[], float] = time.monotonic, wait: Callable[[float], object] = time.sleep
                       ) -> float:
    """One domain's dirty-page rate in bytes/s (see measure_dirty_rates); raises FactsError."""
    rate = measure_dirty_rates([dom], seconds, timeout_s, clock, wait)[_safe_name(dom)]
    if isinstance(rate, FactsError):
        raise rate
    return rate
