"""Time placement planning on a synthetic fleet of 2,000 hypervisors with ~40 VMs each.

The goal is planning under 2 s for such a fleet. This prints figures; it asserts nothing, because
timing depends on the machine it runs on. Run: .venv/bin/python benchmarks/placement_bench.py
"""

import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".collections"))

from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (  # noqa: E402
    HostCapacity,
    PlacementConfig,
    VmDemand,
    plan_placement,
)

HOSTS = 2000
VMS_PER_HOST = 40
RACK = 40  # hosts per rack
TARGET_S = 2.0
REPEAT = 5
SIZES_MIB = [1024, 2048, 4096, 4096, 8192, 8192, 16384, 32768]
APPS = [f"app{i}" for i in range(300)]


def fleet(seed):
    """Hosts of 1 TiB / 128 CPUs, each holding VMS_PER_HOST VMs (some in anti-affinity groups)."""
    rng = random.Random(seed)
    hosts, vms_by_host = [], {}
    for h in range(HOSTS):
        name = f"r{h // RACK:02d}-hv{h % RACK:02d}"
        vms = []
        for v in range(VMS_PER_HOST):
            labels = {"app": rng.choice(APPS)} if rng.random() < 0.3 else {}
            pin = (f"r{h // RACK:02d}-*", f"r{(h // RACK + 1) % (HOSTS // RACK):02d}-*") if rng.random() < 0.05 else ()
            avoid = ("r0*-hv0*",) if rng.random() < 0.05 else ()
            vms.append(
                VmDemand(
                    f"{name}-vm{v:02d}",
                    rng.choice(SIZES_MIB),
                    rng.choice([1, 2, 2, 4, 8]),
                    dirty_rate_bps=rng.choice([0.0, 1e6, 5e7, 3e8]),
                    anti_affinity=labels,
                    pin=pin,
                    avoid=avoid,
                    order=rng.choice([0, 0, 0, 1]),
                )
            )
        vms_by_host[name] = vms
        present = {}
        for vm in vms:
            for key, value in vm.anti_affinity.items():
                present.setdefault(key, set()).add(value)
        hosts.append(
            HostCapacity(
                name,
                1024 * 1024,
                sum(vm.memory_mib for vm in vms),
                128,
                sum(vm.vcpus for vm in vms),
                failure_domain=f"r{h // RACK:02d}",
                anti_affinity={k: frozenset(s) for k, s in present.items()},
            )
        )
    return hosts, vms_by_host


def with_prechecks(vms, names, rng, share):
    """Each VM passed prechecks on `share` of the fleet (a big eligible set: the heap path)."""
    out = []
    for vm in vms:
        eligible = frozenset(n for n in names if rng.random() < share)
        out.append(VmDemand(**{**vm.__dict__, "eligible": eligible}))
    return out


def timed(label, source, vms, hosts, config):
    runs = []
    plan = None
    for _run in range(REPEAT):
        start = time.perf_counter()
        plan = plan_placement(source, vms, hosts, config)
        runs.append(time.perf_counter() - start)
    best, median = min(runs), statistics.median(runs)
    used = len({a.destination for a in plan.assignments})
    verdict = "ok" if median < TARGET_S else "OVER TARGET"
    print(
        f"{label:<52} {len(vms):>5} VMs  {len(hosts) - (1 if isinstance(source, str) else len(source)):>5} candidates"
        f"  median {median * 1000:8.1f} ms  best {best * 1000:8.1f} ms  placed {len(plan.assignments):>5}"
        f"  unplaced {len(plan.unplaced):>4}  destinations {used:>4}  [{verdict}]"
    )
    return plan


def main():
    start = time.perf_counter()
    hosts, vms_by_host = fleet(seed=1)
    print(
        f"fleet: {HOSTS} hosts x {VMS_PER_HOST} VMs built in {time.perf_counter() - start:.2f} s; target < {TARGET_S} s"
    )
    config = PlacementConfig(memory_headroom_mib=4096, memory_headroom_fraction=0.05, vcpu_overcommit=4.0)
    names = [h.name for h in hosts]

    one = "r07-hv13"
    timed("one host (40 VMs over 1,999 hosts)", one, vms_by_host[one], hosts, config)

    rack = [n for n in names if n.startswith("r07-")]
    rack_vms = [vm for n in rack for vm in vms_by_host[n]]
    timed("whole rack (40 hosts, 1,600 VMs over 1,960 hosts)", set(rack), rack_vms, hosts, config)

    rng = random.Random(2)
    checked = with_prechecks(rack_vms, names, rng, share=0.9)
    timed("whole rack, each VM eligible on ~90% of hosts", set(rack), checked, hosts, config)
    narrow = with_prechecks(rack_vms, names, rng, share=0.02)
    timed("whole rack, each VM eligible on ~2% of hosts", set(rack), narrow, hosts, config)

    # A tight fleet: every other host nearly full, so the heap meets many hosts that do not fit.
    tight = [
        HostCapacity(**{**h.__dict__, "memory_used_mib": h.memory_total_mib - 2048}) if i % 2 else h
        for i, h in enumerate(hosts)
    ]
    timed("whole rack, half the fleet nearly full", set(rack), rack_vms, tight, config)

    # Worst case for explanations: nothing fits, so every VM gets a reason for all 2,000 hosts.
    full = [HostCapacity(**{**h.__dict__, "memory_used_mib": h.memory_total_mib}) for h in hosts]
    timed("one host, nothing fits (reasons for 2,000 hosts)", one, vms_by_host[one], full, config)


if __name__ == "__main__":
    main()
