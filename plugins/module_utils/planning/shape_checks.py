# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The prerequisite checks of what a VM's shape asks of one destination: its pins and its huge pages.

Apart from preflight.py because they are pure decisions over the VM's and the destination's facts (no live
call): `cpu.pinning` (the pinned host CPUs and NUMA nodes exist there, or the policy's `pinning: adapt`
re-maps them in a destination XML) and `capacity.hugepages` (enough free huge pages of each size the VM uses,
for this VM alone - placement counts the VMs planned onto the same host). A VM without pins or huge pages gets
neither check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.planning import hugepages as hp
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import DomainFacts
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import HostFacts
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.pinning import (
    ADAPT,
    PINNING_CHOICES,
    REFUSE,
    format_cpuset,
    misfits,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import DEFAULT_SETTINGS
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import FAIL, PASS, WARN

# (check id, status, message, fix or None)
Finding = tuple[str, str, str, Optional[str]]

# A fix only names `pinning: adapt` when the policy schema lets a policy set it (with the drain passing the
# destination XML it makes).
ADAPT_OFFERED = "pinning" in DEFAULT_SETTINGS
PIN_FIX = ("change {vm}'s pins to CPUs and nodes every host has (virsh vcpupin / emulatorpin / numatune with "
           "--live --config)")


def pinning_setting(settings: Mapping[str, Any]) -> str:
    """The policy's `pinning` setting: refuse (the default) or adapt."""
    return str(settings.get("pinning") or REFUSE)


def pinning(domain: DomainFacts, dest: HostFacts, settings: Mapping[str, Any]) -> list[Finding]:
    """`cpu.pinning` for a pinned VM: fits as is, re-mapped (adapt), or refused naming the pins and the fix."""
    if not domain.pins:
        return []
    vm, name, choice = domain.name, dest.name, pinning_setting(settings)
    pins = domain.pins.describe()
    if choice not in PINNING_CHOICES:
        return [("cpu.pinning", FAIL, f"{vm}: its migration policy sets pinning: {choice!r}, which is not one of "
                 f"{', '.join(PINNING_CHOICES)}.", f"set pinning to {' or '.join(PINNING_CHOICES)} in the policy.")]
    topo = dest.topology
    if topo is None:
        return [("cpu.pinning", WARN, f"{vm} is pinned ({pins}) but the CPUs and NUMA nodes of {name} are unknown "
                 "(its capabilities list no topology); libvirt there refuses pins to CPUs it lacks.",
                 f"check that libvirt on {name} answers virConnectGetCapabilities with a <topology>.")]
    lacking = misfits(domain.pins, topo)
    if not lacking:
        return [("cpu.pinning", PASS, f"{vm}'s pins ({pins}) exist on {name} ({topo.describe()}); it moves as is.",
                 None)]
    if choice == ADAPT:
        return [("cpu.pinning", WARN, f"{vm} is pinned to what {name} lacks: {'; '.join(lacking)}; {name} has "
                 f"{topo.describe()}. With pinning: adapt the migration gives libvirt a destination XML with these "
                 f"pins re-mapped onto {name}'s CPUs and nodes (the rest of the VM unchanged).",
                 f"check that the re-mapped pins suit {vm}, or " + PIN_FIX.format(vm=vm) + " before the move.")]
    choose = ", or choose a destination that has them"
    if ADAPT_OFFERED:
        choose = (", choose a destination that has them, or set pinning: adapt in its migration policy to re-map the "
                  f"pins onto {name}'s CPUs in the destination XML")
    return [("cpu.pinning", FAIL, f"{vm} is pinned to what {name} lacks: {'; '.join(lacking)}; {name} has "
             f"{topo.describe()}, so libvirt there would refuse the migration.", PIN_FIX.format(vm=vm) + choose + ".")]


def hugepages(domain: DomainFacts, dest: HostFacts) -> list[Finding]:
    """`capacity.hugepages` for a VM backed by huge pages: the destination has enough free pages of each size."""
    if not domain.hugepages:
        return []
    vm, name = domain.name, dest.name
    need = hp.describe(domain.hugepages)
    free = hp.free_pages(dest.hugepages)
    if free is None:
        return [("capacity.hugepages", WARN, f"{vm} is backed by huge pages ({need}); the free huge pages of {name} "
                 "are unknown (libvirt did not answer virNodeGetFreePages).",
                 f"check libvirt on {name}; hvfleet.drain.hypervisor_info lists its hugepages.")]
    where, nodes, bound = f"on {name}", dest.hugepages_free_nodes or {}, domain.memory_nodes
    if bound and set(bound) <= set(nodes):  # only the nodes its memory is bound to count
        free = {size: sum(nodes[n].get(size, 0) for n in bound) for size in free}
        where = f"on NUMA nodes {format_cpuset(bound)} of {name} (where its numatune binds its memory)"
    elif bound:
        where += f" (over all its nodes: it lacks some of nodes {format_cpuset(bound)} the VM is bound to)"
    short = hp.shortfall(domain.hugepages, free)
    if short:
        sizes = sorted(size for size, count in domain.hugepages.items() if count > free.get(size, 0))
        return [("capacity.hugepages", FAIL, f"{vm} is backed by huge pages and {'; '.join(short)} {where}; QEMU "
                 "there could not allocate its memory.",
                 f"reserve more huge pages on {name} (/sys/kernel/mm/hugepages/hugepages-{sizes[0]}kB/nr_hugepages, "
                 "or hugepages= on its kernel command line), free some there, or choose a destination with free "
                 "huge pages.")]
    return [("capacity.hugepages", PASS, f"{vm} needs huge pages {need}; {hp.describe(free)} free {where}.", None)]


def shape_findings(domain: DomainFacts, dest: HostFacts, settings: Mapping[str, Any]) -> list[Finding]:
    """Every shape check of `domain` towards `dest` (none for a VM without pins or huge pages)."""
    return pinning(domain, dest, settings) + hugepages(domain, dest)
