"""The hot guest's worst heartbeat gap in post-copy, per lab generation; not a test (docs/BENCHMARKS.md).

The same hot guest (384 MiB RAM, rewriting a 192 MiB buffer at 100 MiB/s, heartbeat every 50 ms; the
drain benchmark's hot guest) is moved between two hosts of one generation over links shaped to the
same rate, by the engine's code path in mode postcopy (one pre-copy pass, then post-copy), several
times, ping-pong. Generation 1: hv1 <-> hv2 on the machine's Debian 12 stack (libvirt 9.0, QEMU 7.2);
generation 2: hv2 <-> hv3 on the lab's Debian 13 root (libvirt 11.3, QEMU 10.0).

For each run it prints the longest gap between two heartbeat lines reaching the console (the pause the
guest saw), libvirt's downtime, the wall time, and which of QEMU's post-copy capabilities were on in
the source QEMU while the migration ran (`query-migrate-capabilities`: postcopy-ram, postcopy-preempt)
- libvirt decides those itself; this reads what it chose.

Run as root from the repository root, holding the lab lock:
    flock /var/tmp/hvfleet-lab-use.lock .venv/bin/python benchmarks/postcopy_gen_bench.py --gens 1,2 --runs 5
The lab is left in its default shape (hv3 back on the machine's stack) when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / ".collections"), str(REPO / "tests" / "lab"), str(Path(__file__).resolve().parent)]

from heartbeat_gaps import Gaps  # noqa: E402
from hvlab import Lab, VMSpec  # noqa: E402
from hvlab.vm import boot_ids  # noqa: E402
from migration_bench import engine_move  # noqa: E402

PAIRS = {1: ("hv1", "hv2"), 2: ("hv2", "hv3")}
HOT = dict(memory=384, dirty_mb=192, dirty_rate=100, hb_ms=50)
CAPS = ("postcopy-ram", "postcopy-preempt", "multifd")


def qemu_caps(lab, host, vm):
    """The migration capabilities QEMU has on, read over QMP through libvirt (a benchmark may use virsh)."""
    res = lab.exec(host, ["virsh", "qemu-monitor-command", vm, '{"execute":"query-migrate-capabilities"}'],
                   check=False, timeout=20)
    try:
        return {c["capability"]: c["state"] for c in json.loads(res.stdout)["return"] if c["capability"] in CAPS}
    except (ValueError, KeyError):
        return None


def watch_caps(lab, host, vm, out, stop):
    """Poll the source QEMU's capabilities until the migration has set post-copy (or it ends)."""
    while not stop.is_set():
        caps = qemu_caps(lab, host, vm)
        if caps and caps.get("postcopy-ram"):
            out.update(caps)
            return
        stop.wait(0.2)


def run_one(lab, vm, src, dst, mbit):
    lab.wait_heartbeat_advances(vm, beyond=lab.heartbeat(vm).last_n + 20, timeout=60)
    gaps = Gaps(lab.console_path(vm), vm)
    caps, stop = {}, threading.Event()
    watcher = threading.Thread(target=watch_caps, args=(lab, src, vm, caps, stop), daemon=True)
    for host in (src, dst):
        lab.shape(host, mbit)
    try:
        t0 = time.monotonic()
        watcher.start()
        seconds, result = engine_move(lab, vm, src, dst, mode="postcopy", stats_interval_s=0.5)
        t1 = time.monotonic()
    finally:
        stop.set()
        for host in (src, dst):
            lab.unshape(host)
    lab.wait_heartbeat_advances(vm, beyond=lab.heartbeat(vm).last_n + 5, timeout=60)
    gaps.stop()
    return {"src": src, "dst": dst, "outcome": result.outcome, "mode_used": result.mode_used,
            "wall_s": round(seconds, 1), "downtime_ms": result.downtime_ms,
            "worst_gap_ms": gaps.longest_gap_ms(since=t0, until=t1 + 2), "caps": caps or None}


def bench_generation(lab, gen, runs, mbit):
    lab.up(hosts_count=3, gen2=PAIRS[2] if gen == 2 else ())
    a, b = PAIRS[gen]
    vm = f"pcbench-g{gen}-{os.getpid()}"
    lab.vm_start(VMSpec(name=vm, **HOT), host=a)
    rows = []
    try:
        boot = lab.wait_heartbeat_advances(vm, beyond=20, timeout=60).boot_id
        for i in range(runs):
            src, dst = (a, b) if i % 2 == 0 else (b, a)
            row = run_one(lab, vm, src, dst, mbit)
            row["same_boot"] = boot_ids(lab.heartbeat(vm)) == [boot]
            rows.append(row)
            print(f"  gen{gen} run {i + 1}: {json.dumps(row)}", flush=True)
    finally:
        lab.vm_rm(vm)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--gens", default="1,2", help="generations to measure, e.g. 1,2")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mbit", type=float, default=200)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    lab = Lab()
    results = {}
    try:
        for gen in (int(g) for g in args.gens.split(",")):
            results[gen] = bench_generation(lab, gen, args.runs, args.mbit)
    finally:
        lab.up(hosts_count=3)  # the default lab again
    print(f"\nHOT GUEST {HOT}, mode postcopy, both links shaped to {args.mbit:g} Mbit/s")
    for gen, rows in results.items():
        gaps = [r["worst_gap_ms"] for r in rows]
        caps = {json.dumps(r["caps"], sort_keys=True) for r in rows}
        print(f"  gen{gen} {PAIRS[gen]}: worst heartbeat gap median {statistics.median(gaps)} ms, max {max(gaps)} ms "
              f"({gaps}); libvirt downtime {[r['downtime_ms'] for r in rows]}; wall s {[r['wall_s'] for r in rows]}; "
              f"same boot {all(r['same_boot'] for r in rows)}; source QEMU capabilities {sorted(caps)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
