# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Huge pages: how many a VM needs of each size, and how many a host has free.

A VM backed by huge pages (`<memoryBacking><hugepages>`) cannot start on a host without enough free pages of
its size: QEMU on the destination fails to allocate them and libvirt aborts the migration after the source
has started sending. Free memory does not tell it (huge pages are reserved apart from it), so the pages are
counted on their own: the VM's need from its XML, the host's free and total pages per size from libvirt
(virNodeGetFreePages and the capabilities' `<pages>`). Pure, except `host_pages`, which asks libvirt.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.pinning import parse_cpuset

DEFAULT_PAGE_KIB = 2048  # the kernel's default huge page size on x86_64 (what <hugepages/> alone uses)
PAGES_TIMEOUT_S = 10.0

_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024, "m": 1024, "mib": 1024,
        "mb": 1000 ** 2 / 1024, "g": 1024 ** 2, "gib": 1024 ** 2, "gb": 1000 ** 3 / 1024}

# {page size in KiB: pages}
Pages = dict[int, int]


def _kib(text: str | None, unit: str | None) -> int:
    return int(round(int((text or "0").strip() or 0) * _KIB.get((unit or "KiB").lower(), 1)))


def _cells(domain: ET.Element) -> dict[int, int]:
    """{guest NUMA cell id: memory KiB} from <cpu><numa>."""
    return {int(cell.get("id") or "0"): _kib(cell.get("memory"), cell.get("unit"))
            for cell in domain.findall("cpu/numa/cell")}


def domain_hugepages(domain: ET.Element) -> Pages:
    """{page size KiB: pages} the domain needs; {} when it is not backed by huge pages.

    A <page> with a nodeset covers those guest NUMA cells' memory; one without covers the rest. Counts are
    rounded up per cell (QEMU allocates each cell's memory in whole pages)."""
    backing = domain.find("memoryBacking/hugepages")
    if backing is None:
        return {}
    element = domain.find("memory")
    memory = _kib(element.text, element.get("unit")) if element is not None else 0
    cells = _cells(domain) or {-1: memory}
    pages = backing.findall("page")
    default = DEFAULT_PAGE_KIB
    size_of: dict[int, int] = {}
    for page in pages:
        size = _kib(page.get("size"), page.get("unit"))
        nodeset = page.get("nodeset")
        if nodeset is None:
            default = size
            continue
        for cell in parse_cpuset(nodeset):
            size_of[cell] = size
    need: Pages = {}
    for cell, kib in cells.items():
        size = size_of.get(cell, default)
        need[size] = need.get(size, 0) + math.ceil(kib / size)
    return need


def capabilities_pages(capabilities: ET.Element) -> Pages:
    """{huge page size KiB: pages reserved} over all NUMA cells of the host's capabilities. Each cell lists its
    base page size first (4 KiB on x86_64, 64 KiB on some arm64/ppc64 kernels): that one is not a huge page."""
    total: Pages = {}
    for cell in capabilities.findall("host/topology/cells/cell"):
        for page in cell.findall("pages")[1:]:
            size = _kib(page.get("size"), page.get("unit"))
            total[size] = total.get(size, 0) + int((page.text or "0").strip() or 0)
    return total


def host_pages(conn: Any, capabilities: ET.Element) -> tuple[dict[int, dict[str, int]], dict[int, Pages]] | None:
    """({size KiB: {"total": reserved, "free": free}}, {NUMA node: {size KiB: free}}) of every huge page size the
    host offers; None when libvirt cannot say (no topology, or virNodeGetFreePages refused)."""
    total = capabilities_pages(capabilities)
    cells = sorted(int(cell.get("id") or "0") for cell in capabilities.findall("host/topology/cells/cell"))
    if not cells:
        return None
    sizes = sorted(total) or [DEFAULT_PAGE_KIB]
    try:
        free = bounded.call(conn.getFreePages, sizes, cells[0], cells[-1] - cells[0] + 1, 0,
                            timeout_s=PAGES_TIMEOUT_S, what="getFreePages")
    except Exception:  # pylint: disable=broad-except
        return None
    out: dict[int, dict[str, int]] = {size: {"total": total.get(size, 0), "free": 0} for size in sizes}
    nodes: dict[int, Pages] = {}
    for cell, per_cell in (free or {}).items():
        for size, count in per_cell.items():
            if int(size) in out:
                out[int(size)]["free"] += int(count)
                nodes.setdefault(int(cell), {})[int(size)] = int(count)
    return out, nodes


def bound_nodes(domain: ET.Element) -> tuple[int, ...]:
    """The host NUMA nodes the domain's memory is bound to (<numatune> memory and memnode sets in a mode that
    restricts: strict, the default, interleave, restrictive; not preferred); () when it is not bound."""
    nodes: set[int] = set()
    for element in domain.findall("numatune/memory") + domain.findall("numatune/memnode"):
        nodeset = element.get("nodeset")
        if nodeset and element.get("mode", "strict") != "preferred":
            nodes.update(parse_cpuset(nodeset))
    return tuple(sorted(nodes))


def free_pages(hugepages: Mapping[Any, Mapping[str, int]] | None) -> Pages | None:
    """{size KiB: free pages} of a host's facts (keys may be text after JSON); None when unknown."""
    if hugepages is None:
        return None
    return {int(size): int(counts.get("free", 0)) for size, counts in hugepages.items()}


def shortfall(need: Mapping[int, int], free: Mapping[int, int]) -> list[str]:
    """What is missing, in words ("needs 512 pages of 2048 KiB, 100 free"); [] when `free` covers `need`."""
    return [f"needs {count} huge pages of {size} KiB, {free.get(size, 0)} free"
            for size, count in sorted(need.items()) if count > free.get(size, 0)]


def pool_split(need: Mapping[int, int], memory_mib: int) -> tuple[int, int]:
    """(MiB from the host's ordinary memory, MiB from its huge page pool) of a VM of `memory_mib` needing `need`:
    memory in huge pages is reserved apart, so it is not counted twice."""
    pooled = min(memory_mib, sum(size * count for size, count in need.items()) // 1024)
    return memory_mib - pooled, pooled


def describe(pages: Mapping[int, int]) -> str:
    return ", ".join(f"{count} x {size} KiB" for size, count in sorted(pages.items())) or "none"
