# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Choose a destination hypervisor for every VM of a host being drained.

Pure logic: facts in, plan out. It exists because "migrate everything to one node" causes
out-of-memory cascades, and because an evacuation that names the wrong blocker wastes the
operator's night. So every destination is checked for memory (with headroom), vCPUs (with the
declared overcommit ratio), free huge pages of each size a hugepage-backed VM uses, cordon, prechecks,
pinning/avoidance and anti-affinity, counting the VMs already planned onto it; and every VM left unplaced
carries the real blocker for each host.

Scoring rule: among the hosts where a VM fits, take the one with the most memory left after the
VM is placed (total - used - planned - headroom - VM); ties go to the smaller host name. This
spreads load instead of filling one host, and it is a total order, so the plan does not depend on
the order of the input lists. Generations come first: when the hosts' stacks (QEMU, libvirt
versions) are known, a VM goes to a host of the same or a newer generation than its source if one
fits, and to an older one only when none does (an older QEMU may lack the VM's machine type; the
prechecks say for sure); each assignment's reason says which. VMs are placed in the order: policy
`order` (lower first), then hottest (dirty rate) first, then largest memory, then most vCPUs, then name.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import NamedTuple, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.generations import generation as generation_of
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.generations import known, older
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.hugepages import shortfall

# Above this share of the fleet, a VM's candidate list (eligible/pinned hosts) is not worth a
# linear scan: the shared max-heap finds the best host faster. Both paths pick the same host.
_SCAN_FRACTION = 0.25


class PlacementError(HvfleetError):
    """The placement input is inconsistent (nothing was planned)."""


@dataclass(frozen=True)
class HostCapacity:
    """What a candidate hypervisor has now (facts gathered before planning or re-checking).

    `anti_affinity` maps an anti-affinity key to the values already held by VMs on the host,
    so a VM is not sent next to a sibling that is already there.
    """

    name: str
    memory_total_mib: int
    memory_used_mib: int
    vcpus_total: int
    vcpus_used: int
    cordoned: bool = False
    failure_domain: Optional[str] = None
    labels: Mapping[str, str] = field(default_factory=dict)
    anti_affinity: Mapping[str, frozenset[str]] = field(default_factory=dict)
    stack: tuple[int, int] = (0, 0)  # (QEMU, libvirt) versions as libvirt's integers; (0, 0) unknown
    hugepages_free: Optional[Mapping[int, int]] = None  # {page size KiB: free pages}; None unknown (not counted)


@dataclass(frozen=True)
class VmDemand:
    """What one VM of the source needs from its destination, and the policy's constraints.

    `eligible` is the set of hosts that passed this VM's prechecks (None: all hosts);
    `precheck_failures` may name why a host failed them, so the plan can say so.
    """

    name: str
    memory_mib: int
    vcpus: int
    dirty_rate_bps: float = 0.0
    anti_affinity: Mapping[str, str] = field(default_factory=dict)
    pin: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    eligible: Optional[frozenset[str]] = None
    precheck_failures: Mapping[str, str] = field(default_factory=dict)
    order: int = 0
    source_stack: tuple[int, int] = (0, 0)  # (QEMU, libvirt) of the host the VM runs on; (0, 0) unknown
    hugepages: Mapping[int, int] = field(default_factory=dict)  # {page size KiB: pages}; {} not backed by them


@dataclass(frozen=True)
class PlacementConfig:
    """Safety margins: memory kept free on each destination, and how far vCPUs may overcommit.

    The headroom reserved on a host is the larger of `memory_headroom_mib` and
    `memory_headroom_fraction` of its total memory.
    """

    memory_headroom_mib: int = 0
    memory_headroom_fraction: float = 0.0
    vcpu_overcommit: float = 1.0

    def __post_init__(self) -> None:
        if self.memory_headroom_mib < 0:
            raise PlacementError(
                f"memory_headroom_mib must be >= 0, got {self.memory_headroom_mib}.",
                hint="use 0 for no fixed headroom.",
            )
        if not 0.0 <= self.memory_headroom_fraction < 1.0:
            raise PlacementError(
                f"memory_headroom_fraction must be in [0, 1), got {self.memory_headroom_fraction}.",
                hint="e.g. 0.1 keeps 10% of each destination's memory free.",
            )
        if not self.vcpu_overcommit > 0:
            raise PlacementError(
                f"vcpu_overcommit must be > 0, got {self.vcpu_overcommit}.",
                hint="1.0 means one vCPU per host CPU; 4.0 allows four.",
            )

    def headroom_mib(self, host: HostCapacity) -> int:
        """Memory to keep free on `host`, in MiB."""
        return max(self.memory_headroom_mib, math.ceil(host.memory_total_mib * self.memory_headroom_fraction))

    def vcpu_capacity(self, host: HostCapacity) -> int:
        """How many vCPUs `host` may carry under the overcommit ratio."""
        # The epsilon absorbs float error (0.29 * 100 = 28.999...), never a real vCPU.
        return math.floor(host.vcpus_total * self.vcpu_overcommit + 1e-9)


class Assignment(NamedTuple):
    """One VM's destination and why that host was chosen."""

    vm: str
    destination: str
    reason: str


class Unplaced(NamedTuple):
    """A VM with no destination; `reasons` maps each host (by name) to what blocked it."""

    vm: str
    reasons: dict[str, str]

    def messages(self) -> list[str]:
        """The blockers as "host: reason" lines, one per host."""
        return [f"{host}: {why}" for host, why in self.reasons.items()]


class PlacementPlan(NamedTuple):
    """The outcome: VMs in placement order with their destination, and those with none."""

    assignments: list[Assignment]
    unplaced: list[Unplaced]

    def destinations(self) -> dict[str, str]:
        """VM name -> destination host name."""
        return {a.vm: a.destination for a in self.assignments}


def _matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Return a cached predicate `host name -> matches any glob`."""
    globs = tuple(patterns)
    cache: dict[str, bool] = {}

    def matches(name: str) -> bool:
        hit = cache.get(name)
        if hit is None:
            hit = cache[name] = any(fnmatchcase(name, p) for p in globs)
        return hit

    return matches


class _Dest:
    """Mutable view of a candidate host: its facts plus what this plan has put on it."""

    __slots__ = ("host", "headroom", "vcpu_cap", "mem_used", "vcpus_used", "planned", "aa", "pages_used")

    def __init__(self, host: HostCapacity, config: PlacementConfig) -> None:
        self.host = host
        self.headroom = config.headroom_mib(host)
        self.vcpu_cap = config.vcpu_capacity(host)
        self.mem_used = host.memory_used_mib
        self.vcpus_used = host.vcpus_used
        self.planned = 0
        self.aa: dict[str, set[str]] = {key: set(values) for key, values in host.anti_affinity.items()}
        self.pages_used: dict[int, int] = {}  # huge pages of the VMs this plan put here, by size

    @property
    def mem_avail(self) -> int:
        """Memory a VM may still take: free memory minus the headroom."""
        return self.host.memory_total_mib - self.mem_used - self.headroom

    def place(self, vm: VmDemand) -> None:
        self.mem_used += vm.memory_mib
        self.vcpus_used += vm.vcpus
        self.planned += 1
        for key, value in vm.anti_affinity.items():
            self.aa.setdefault(key, set()).add(value)
        for size, count in vm.hugepages.items():
            self.pages_used[size] = self.pages_used.get(size, 0) + count

    def pages_free(self) -> Optional[dict[int, int]]:
        """Free huge pages by size after the VMs planned here; None when the host's are unknown."""
        free = self.host.hugepages_free
        if free is None:
            return None
        return {size: count - self.pages_used.get(size, 0) for size, count in free.items()}


class _Rules:
    """The per-VM static rules (source, cordon, prechecks, pin, avoid) with cached glob matching."""

    def __init__(self, sources: Iterable[str]) -> None:
        self.sources = frozenset(sources)
        self._matchers: dict[tuple[str, ...], Callable[[str], bool]] = {}
        self._pinned: dict[tuple[str, ...], frozenset[str]] = {}

    def matcher(self, patterns: Iterable[str]) -> Callable[[str], bool]:
        key = tuple(patterns)
        found = self._matchers.get(key)
        if found is None:
            found = self._matchers[key] = _matcher(key)
        return found

    def pinned(self, patterns: Iterable[str], names: Iterable[str]) -> frozenset[str]:
        """The names matching any of `patterns`, computed once per pattern list."""
        key = tuple(patterns)
        found = self._pinned.get(key)
        if found is None:
            match = self.matcher(key)
            found = self._pinned[key] = frozenset(n for n in names if match(n))
        return found

    def static_blockers(self, vm: VmDemand, host: HostCapacity) -> list[str]:
        """Reasons that do not depend on capacity, in a fixed order."""
        name = host.name
        if name in self.sources:
            return ["the source being drained"]
        out = []
        if host.cordoned:
            out.append("cordoned")
        if name in vm.precheck_failures:
            out.append(f"failed prechecks: {vm.precheck_failures[name]}")
        elif vm.eligible is not None and name not in vm.eligible:
            out.append("did not pass prechecks for this VM")
        if vm.pin and not self.matcher(vm.pin)(name):
            out.append(f"not in pin list ({', '.join(vm.pin)})")
        if vm.avoid and self.matcher(vm.avoid)(name):
            out.append(f"avoided by policy ({', '.join(vm.avoid)})")
        return out


def _dynamic_blockers(vm: VmDemand, dest: _Dest, vcpu_ratio: float) -> list[str]:
    """Reasons tied to capacity and neighbours, counting VMs already planned onto `dest`."""
    out = []
    for key in sorted(vm.anti_affinity):
        value = vm.anti_affinity[key]
        if value in dest.aa.get(key, ()):
            out.append(f"anti-affinity {key}={value} already there")
    planned = f" (after {dest.planned} VM(s) planned there)" if dest.planned else ""
    if vm.memory_mib > dest.mem_avail:
        free = dest.host.memory_total_mib - dest.mem_used
        out.append(f"needs {vm.memory_mib} MiB + {dest.headroom} MiB headroom, {free} MiB free{planned}")
    if dest.vcpus_used + vm.vcpus > dest.vcpu_cap:
        left = dest.vcpu_cap - dest.vcpus_used
        out.append(
            f"needs {vm.vcpus} vCPUs, {left} of {dest.vcpu_cap} left "
            f"({dest.host.vcpus_total} CPUs x {vcpu_ratio:g} overcommit){planned}"
        )
    pages = dest.pages_free() if vm.hugepages else None
    short = shortfall(vm.hugepages, pages) if pages is not None else []
    if pages is not None and short:
        size = min(s for s, n in vm.hugepages.items() if n > pages.get(s, 0))
        out.append(f"{'; '.join(short)}{planned} (reserve more in "
                   f"/sys/kernel/mm/hugepages/hugepages-{size}kB/nr_hugepages there, or free some)")
    return out


def _check_unique(items: Iterable[VmDemand | HostCapacity], what: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise PlacementError(f"{what} '{item.name}' is listed twice.", hint=f"give each {what} once.")
        seen.add(item.name)


def placement_order(vms: Iterable[VmDemand]) -> list[VmDemand]:
    """VMs sorted as they are placed: policy order, hottest, largest memory, most vCPUs, name."""
    return sorted(vms, key=lambda v: (v.order, -v.dirty_rate_bps, -v.memory_mib, -v.vcpus, v.name))


def plan_placement(source: str | Collection[str], vms: Iterable[VmDemand], hosts: Iterable[HostCapacity],
                   config: PlacementConfig) -> PlacementPlan:
    """Choose a destination for each VM of `source`; see the module docstring for the rules.

    `source` is a host name, or a collection of names when several hosts (a rack) drain at once.
    Returns a PlacementPlan: `assignments` in placement order, `unplaced` with a reason per host.
    Raises PlacementError on duplicate VM or host names, or a negative demand.
    """
    vms = list(vms)
    hosts = list(hosts)
    _check_unique(vms, "VM")
    _check_unique(hosts, "host")
    for vm in vms:
        if vm.memory_mib < 0 or vm.vcpus < 0:
            raise PlacementError(
                f"VM '{vm.name}' asks for {vm.memory_mib} MiB and {vm.vcpus} vCPUs.",
                hint="memory and vCPU demands must not be negative (check the gathered facts).",
            )
    rules = _Rules([source] if isinstance(source, str) else source)
    dests = {h.name: _Dest(h, config) for h in hosts}
    open_hosts = [d for d in dests.values() if d.host.name not in rules.sources and not d.host.cordoned]
    open_names = frozenset(d.host.name for d in open_hosts)
    # Max-heap on (memory available, then smaller name): entries are (-avail, name).
    heap = [(-d.mem_avail, d.host.name) for d in open_hosts]
    heapq.heapify(heap)
    assignments = []
    unplaced = []
    known_stacks = [d.host.stack for d in open_hosts if known(d.host.stack)]
    oldest = min(known_stacks) if known_stacks else None
    for vm in placement_order(vms):
        best = None
        if oldest is not None and known(vm.source_stack) and oldest < vm.source_stack:
            # older hosts exist: look among the same or newer generation first
            newer = [d for d in open_hosts if not older(d.host.stack, vm.source_stack)]
            best = _best_by_scan(vm, newer, rules, config)
        if best is None:
            candidates = _restricted(vm, open_names, rules)
            if candidates is not None:
                best = _best_by_scan(vm, [dests[name] for name in candidates], rules, config)
            else:
                best = _best_by_heap(vm, heap, dests, rules, config)
        if best is None:
            unplaced.append(Unplaced(vm.name, _explain(vm, hosts, dests, rules, config)))
            continue
        after = best.mem_avail - vm.memory_mib
        best.place(vm)
        _reheap(heap, best)
        assignments.append(Assignment(vm.name, best.host.name, _why(vm, best, after)))
    return PlacementPlan(assignments, unplaced)


def _restricted(vm: VmDemand, open_names: frozenset[str], rules: _Rules) -> list[str] | None:
    """A short list of the hosts a VM may go to when prechecks or pins narrow the field, else None.

    None sends the VM to the heap, which checks every rule anyway; this only saves work.
    """
    limit = _SCAN_FRACTION * len(open_names)
    narrowest = None
    if vm.eligible is not None and len(vm.eligible) <= limit:
        narrowest = vm.eligible
    if vm.pin:
        pinned = rules.pinned(vm.pin, open_names)
        if len(pinned) <= limit and (narrowest is None or len(pinned) < len(narrowest)):
            narrowest = pinned
    if narrowest is None:
        return None
    return [name for name in narrowest if name in open_names]


def _fits(vm: VmDemand, dest: _Dest, rules: _Rules, config: PlacementConfig) -> bool:
    return not rules.static_blockers(vm, dest.host) and not _dynamic_blockers(vm, dest, config.vcpu_overcommit)


def _best_by_scan(vm: VmDemand, candidates: Iterable[_Dest], rules: _Rules, config: PlacementConfig) -> _Dest | None:
    """Linear pass over a short candidate list, same order as the heap: most memory, then name."""
    best = best_key = None
    for dest in candidates:
        key = (-dest.mem_avail, dest.host.name)
        if (best_key is None or key < best_key) and _fits(vm, dest, rules, config):
            best, best_key = dest, key
    return best


def _best_by_heap(vm: VmDemand, heap: list[tuple[int, str]], dests: dict[str, _Dest], rules: _Rules,
                  config: PlacementConfig) -> _Dest | None:
    """Pop hosts by most memory available until one fits; stop once memory alone rules out the rest."""
    rejected = []
    best = None
    while heap:
        neg_avail, name = heap[0]
        dest = dests[name]
        if -neg_avail != dest.mem_avail:  # stale entry: the host took a VM since it was pushed
            heapq.heappop(heap)
            continue
        if vm.memory_mib > dest.mem_avail:
            break  # every host left has less memory available
        heapq.heappop(heap)
        rejected.append((neg_avail, name))
        if _fits(vm, dest, rules, config):
            best = dest
            break
    for entry in rejected:
        if best is None or entry[1] != best.host.name:
            heapq.heappush(heap, entry)
    return best


def _reheap(heap: list[tuple[int, str]], dest: _Dest) -> None:
    heapq.heappush(heap, (-dest.mem_avail, dest.host.name))


def _why(vm: VmDemand, dest: _Dest, after: int) -> str:
    parts = [f"most memory left after placement among fitting hosts: {after} MiB beyond headroom"]
    parts.append(f"vCPUs {dest.vcpus_used}/{dest.vcpu_cap}")
    generation = generation_of(vm.source_stack, dest.host.stack)
    if generation:
        parts.insert(0, generation)
    if vm.pin:
        parts.append(f"pinned to {', '.join(vm.pin)}")
    return "; ".join(parts)


def _explain(vm: VmDemand, hosts: Iterable[HostCapacity], dests: dict[str, _Dest], rules: _Rules,
             config: PlacementConfig) -> dict[str, str]:
    """Every host's blockers for `vm`, by host name; the first ones listed are the static ones."""
    reasons = {}
    for host in sorted(hosts, key=lambda h: h.name):
        found = rules.static_blockers(vm, host)
        if host.name not in rules.sources:
            found += _dynamic_blockers(vm, dests[host.name], config.vcpu_overcommit)
        reasons[host.name] = "; ".join(found) if found else "fits, but was not chosen (internal error)"
    if not reasons:
        reasons["(none)"] = "no candidate hosts were given"
    return reasons


def recheck(vm: VmDemand, host_now: HostCapacity, config: PlacementConfig) -> tuple[bool, str]:
    """Re-check one destination with fresh facts just before migrating (facts go stale).

    Returns (ok, reason): ok is False when the host is cordoned, now lacks memory or vCPUs, or
    already holds an anti-affinity sibling; the reason names every blocker, or how much is left.
    """
    rules = _Rules(())
    dest = _Dest(host_now, config)
    found = rules.static_blockers(vm, host_now) + _dynamic_blockers(vm, dest, config.vcpu_overcommit)
    if found:
        return False, f"{host_now.name}: " + "; ".join(found)
    return True, (
        f"{host_now.name}: fits, {dest.mem_avail - vm.memory_mib} MiB left beyond "
        f"{dest.headroom} MiB headroom, {dest.vcpu_cap - dest.vcpus_used - vm.vcpus} vCPUs left"
    )
