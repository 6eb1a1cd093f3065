# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CPU pinning and NUMA tuning of a VM against a destination's topology, and the re-mapping of those pins.

A VM whose vCPUs, emulator or I/O threads are pinned to host CPUs (`<vcpu cpuset>`, `<cputune>`), or whose
memory is bound to host NUMA nodes (`<numatune>`), can only start on a host that has those CPUs and nodes:
libvirt on the destination refuses the migration otherwise, after the source has already started sending.
So the pins are read from the domain XML and compared with the destination's capabilities topology before
anything changes. Pins that do not fit are either refused (the default) or, with the setting
`pinning: adapt`, re-mapped onto the destination's CPUs and nodes in a destination XML that libvirt takes as
VIR_MIGRATE_PARAM_DEST_XML (and VIR_MIGRATE_PARAM_PERSIST_XML for the definition kept there). Everything
here is pure (XML text and typed data in, typed data or XML text out) but `adapted_xmls`, which reads the
XML through libvirt for the migration.
"""

from __future__ import annotations

import dataclasses
import io
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError

REFUSE = "refuse"
ADAPT = "adapt"
PINNING_CHOICES = (REFUSE, ADAPT)

CPUSET_HINT = "write ids and ranges as libvirt does: 0-3,^2,8."
TOPOLOGY_HINT = ("check that libvirt on the destination answers virConnectGetCapabilities with a <topology>, or use "
                 "pinning: refuse for this VM.")

# A pin: (where in the XML, in words; the host CPUs or NUMA nodes it names).
Pin = tuple[str, tuple[int, ...]]


class CpusetError(HvfleetError):
    """A cpuset/nodeset libvirt would not accept, or a topology the pins cannot be re-mapped onto."""


def parse_cpuset(text: str) -> tuple[int, ...]:
    """libvirt's cpuset syntax ("0-3,^2,8") as sorted ids; raises CpusetError on anything else."""
    chosen: set[int] = set()
    excluded: set[int] = set()
    for raw in text.replace(" ", "").split(","):
        if not raw:
            continue
        target = excluded if raw.startswith("^") else chosen
        part = raw.lstrip("^")
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise CpusetError(f"'{text}' is not a cpuset", CPUSET_HINT)
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise CpusetError(f"'{text}' has a descending range {part}", CPUSET_HINT)
        target.update(range(first, last + 1))
    ids = tuple(sorted(chosen - excluded))
    if not ids:
        raise CpusetError(f"'{text}' names no CPU", CPUSET_HINT)
    return ids


def format_cpuset(ids: Iterable[int]) -> str:
    """Sorted ids in libvirt's cpuset syntax, runs as ranges ("0-2,5")."""
    out: list[str] = []
    run: list[int] = []
    for cpu in sorted(set(ids)):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [cpu]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


@dataclasses.dataclass(frozen=True)
class Pins:
    """A domain's pins: `cpus` are pins to host CPUs, `nodes` to host NUMA nodes, each with its place in words."""

    cpus: tuple[Pin, ...] = ()
    nodes: tuple[Pin, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.cpus or self.nodes)

    def describe(self) -> str:
        """"vcpupin vcpu 0 -> CPUs 5, numatune memory -> nodes 1" (empty when nothing is pinned)."""
        parts = [f"{where} -> CPUs {format_cpuset(ids)}" for where, ids in self.cpus]
        parts += [f"{where} -> nodes {format_cpuset(ids)}" for where, ids in self.nodes]
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class Topology:
    """A host's NUMA cells and the CPUs in each, from its capabilities (`<host><topology>`)."""

    cells: tuple[tuple[int, tuple[int, ...]], ...] = ()

    @property
    def cpus(self) -> tuple[int, ...]:
        return tuple(sorted({cpu for _cell, ids in self.cells for cpu in ids}))

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(sorted(cell for cell, _ids in self.cells))

    def describe(self) -> str:
        return f"CPUs {format_cpuset(self.cpus) or 'none'} in NUMA nodes {format_cpuset(self.nodes) or 'none'}"

    def as_dict(self) -> dict[str, list[int]]:
        """{cell id as text: CPU ids}: the JSON form (hypervisor_info)."""
        return {str(cell): list(ids) for cell, ids in self.cells}

    @classmethod
    def from_dict(cls, data: Mapping[str, Iterable[int]] | None) -> Topology:
        return cls(tuple(sorted((int(cell), tuple(sorted(int(c) for c in ids))) for cell, ids in (data or {}).items())))


def topology(capabilities: ET.Element) -> Topology | None:
    """The host's topology from libvirt's capabilities XML; None when the capabilities have none."""
    cells = capabilities.findall("host/topology/cells/cell")
    if not cells:
        return None
    found = []
    for cell in cells:
        ids = tuple(sorted(int(cpu.get("id") or "0") for cpu in cell.findall("cpus/cpu")))
        found.append((int(cell.get("id") or "0"), ids))
    return Topology(tuple(sorted(found)))


# (element path below <domain>, attribute naming what is pinned, attribute with the set, pins nodes)
_PIN_PLACES: tuple[tuple[str, str | None, str, bool], ...] = (
    ("vcpu", None, "cpuset", False),
    ("cputune/vcpupin", "vcpu", "cpuset", False),
    ("cputune/emulatorpin", None, "cpuset", False),
    ("cputune/iothreadpin", "iothread", "cpuset", False),
    ("numatune/memory", None, "nodeset", True),
    ("numatune/memnode", "cellid", "nodeset", True),
)


def _places(domain: ET.Element) -> Iterable[tuple[ET.Element, str, str, bool]]:
    """(element, its place in words, the attribute holding the set, whether it names nodes) of every pin."""
    for path, which, attribute, nodes in _PIN_PLACES:
        for element in domain.findall(path):
            if element.get(attribute) is None:
                continue
            where = path.rpartition("/")[2]
            if which:
                where += f" {which} {element.get(which)}"
            yield element, where, attribute, nodes


def domain_pins(domain: ET.Element) -> Pins:
    """The pins of a parsed domain XML; a set libvirt would not accept raises CpusetError."""
    cpus: list[Pin] = []
    nodes: list[Pin] = []
    for element, where, attribute, is_nodes in _places(domain):
        (nodes if is_nodes else cpus).append((where, parse_cpuset(element.get(attribute) or "")))
    return Pins(tuple(cpus), tuple(nodes))


def misfits(pins: Pins, dest: Topology) -> list[str]:
    """The pins naming CPUs or nodes `dest` lacks, in words ("vcpupin vcpu 0 -> CPUs 5 (lacks 5)")."""
    out = []
    for kind, have, found in (("CPUs", set(dest.cpus), pins.cpus), ("nodes", set(dest.nodes), pins.nodes)):
        for where, ids in found:
            lacking = [i for i in ids if i not in have]
            if lacking:
                out.append(f"{where} -> {kind} {format_cpuset(ids)} (lacks {format_cpuset(lacking)})")
    return out


def _mapping(used: Iterable[int], offered: tuple[int, ...]) -> dict[int, int]:
    """Each id in `used` to an id of `offered`: itself when offered, else the offered ids not used yet in
    order, then all offered ids round-robin (so missing CPUs spread over the destination's)."""
    used = sorted(set(used))
    free = [i for i in offered if i not in used]
    spare = free or list(offered)
    out: dict[int, int] = {}
    missing = 0
    for ident in used:
        if ident in offered:
            out[ident] = ident
        else:
            out[ident] = spare[missing % len(spare)]
            missing += 1
    return out


def _keep_prefixes(xml: str) -> None:
    """Serialise the document's namespaces (metadata) with their own prefixes, not ns0: only pins change."""
    for _event, (prefix, uri) in ET.iterparse(io.StringIO(xml), events=("start-ns",)):
        if prefix and not prefix.startswith("ns"):  # ns0, ns1...: ElementTree's own, it refuses them
            ET.register_namespace(prefix, uri)


def adapt_xml(domain_xml: str, dest: Topology) -> str | None:
    """The domain XML with only its pins (<vcpu cpuset>, <cputune>, <numatune> sets) re-mapped onto `dest`'s
    CPUs and nodes; None when every pin already fits (nothing to adapt). A pin that fits keeps its set; a
    CPU or node the destination lacks is replaced (see _mapping) - the same id everywhere it appears."""
    if not dest.cpus or not dest.nodes:
        raise CpusetError("The destination's topology lists no CPUs or NUMA nodes to re-map the pins onto.",
                          TOPOLOGY_HINT)
    _keep_prefixes(domain_xml)
    root = ET.fromstring(domain_xml)
    pins = domain_pins(root)
    if not misfits(pins, dest):
        return None
    cpu_map = _mapping((i for _w, ids in pins.cpus for i in ids), dest.cpus)
    node_map = _mapping((i for _w, ids in pins.nodes for i in ids), dest.nodes)
    for element, _where, attribute, is_nodes in list(_places(root)):
        mapping = node_map if is_nodes else cpu_map
        element.set(attribute, format_cpuset(mapping[i] for i in parse_cpuset(element.get(attribute) or "")))
    return ET.tostring(root, encoding="unicode")


VIR_DOMAIN_XML_INACTIVE = 2
VIR_DOMAIN_XML_MIGRATABLE = 8
XML_TIMEOUT_S = 10.0


def adapted_xmls(dom: Any, dst_conn: Any) -> tuple[str | None, str | None]:
    """(destination XML, persistent XML) for MigrationSpec.dest_xml / persist_xml with `dom`'s pins re-mapped
    onto the destination's topology (adapt_xml); None for one whose pins already fit there. Asks libvirt
    (bounded): the destination's capabilities, the domain's migratable live and inactive XML."""
    caps = bounded.call(dst_conn.getCapabilities, timeout_s=XML_TIMEOUT_S, what="getCapabilities")
    topo = topology(ET.fromstring(caps))
    if topo is None:
        raise CpusetError("The destination's capabilities list no NUMA topology to re-map the pins onto.",
                          TOPOLOGY_HINT)
    live = bounded.call(dom.XMLDesc, VIR_DOMAIN_XML_MIGRATABLE, timeout_s=XML_TIMEOUT_S, what="XMLDesc")
    persistent = bounded.call(dom.isPersistent, timeout_s=XML_TIMEOUT_S, what="isPersistent")
    kept = None
    if persistent:
        kept = bounded.call(dom.XMLDesc, VIR_DOMAIN_XML_MIGRATABLE | VIR_DOMAIN_XML_INACTIVE,
                            timeout_s=XML_TIMEOUT_S, what="XMLDesc")
    return adapt_xml(live, topo), adapt_xml(kept, topo) if kept else None
