"""Figures for the migration engine on the lab; not a test (docs/BENCHMARKS.md, docs/MIGRATION.md).

1. Idle VM: wall time of the engine's migration - run the way the domain_migration module runs
   it (open source, destination and call connections, preflight, migrate while sampling job
   stats, reconcile, close) but from the controller, without Ansible's SSH round trip - against
   `virsh migrate --live --p2p --persistent --undefinesource` of the same VM over the same link.
   Runs alternate and ping-pong between hv1 and hv2 (each tool goes both ways equally often).
2. Hot VM (256 MiB, rewriting a 128 MiB buffer flat out) on a shaped source link: downtime and
   bytes sent / RAM for pre-copy (auto-converge, then suspend at the deadline) vs post-copy.
   libvirt reports no downtime after a post-copy, so the pause the guest itself saw is measured
   for both: the longest gap between two heartbeat lines arriving on its console (hb every 50 ms).

Run as root from the repository root:
    .venv/bin/python benchmarks/migration_bench.py [--runs 5] [--hot-mbit 100] [--hot-runs 1]
    .venv/bin/python benchmarks/migration_bench.py --record-series tests/unit/module_utils/data
The lab is brought up if needed and left up (other lab users may need it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / ".collections"), str(REPO / "tests" / "lab"), str(Path(__file__).resolve().parent)]

from ansible_collections.hvfleet.drain.plugins.module_utils.common import connection  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import MigrationFailed  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import migration  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec  # noqa: E402
from heartbeat_gaps import Gaps  # noqa: E402
from hvlab import Lab, VMSpec  # noqa: E402
from hvlab.vm import boot_ids  # noqa: E402

MIB = 2**20


def engine_move(lab, vm, src, dst, **spec_kw):
    """The module's code path from the controller; returns (wall seconds, MigrationResult)."""
    t0 = time.monotonic()
    src_conn, dst_conn, call_conn = connection.connect_all([lab.uri(src), lab.uri(dst), lab.uri(src)])
    try:
        spec = MigrationSpec(migrate_uri=f"tcp://{lab.addr(dst)}", **spec_kw)
        try:
            result = migration.migrate(src_conn, dst_conn, vm, lab.uri(dst), spec, source_uri=lab.uri(src),
                                       call_conn=call_conn)
        except MigrationFailed as exc:
            result = exc.result
    finally:
        for conn in (call_conn, src_conn, dst_conn):
            connection.close_quietly(conn)
    return time.monotonic() - t0, result


def virsh_move(lab, vm, src, dst):
    t0 = time.monotonic()
    subprocess.run(["virsh", "-c", lab.uri(src), "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
                    vm, lab.uri(dst), f"tcp://{lab.addr(dst)}"], check=True, capture_output=True, text=True)
    return time.monotonic() - t0


def idle_comparison(lab, runs):
    vm = f"bench-idle-{os.getpid()}"
    lab.vm_start(VMSpec(name=vm), host="hv1")
    try:
        boot = lab.wait_heartbeat_advances(vm, beyond=2).boot_id
        times = {"engine": [], "virsh": []}
        downtimes = []
        here = "hv1"
        for i in range(runs * 2):
            there = "hv2" if here == "hv1" else "hv1"
            tool = ("engine", "virsh")[(i + i // 2) % 2]  # e, v, v, e, e, v, ...: each tool both ways
            if tool == "engine":
                seconds, result = engine_move(lab, vm, here, there)
                assert result.outcome == "moved", result.message
                downtimes.append(result.downtime_ms)
            else:
                seconds = virsh_move(lab, vm, here, there)
            assert lab.running_on(vm) == [there], lab.locate(vm)
            times[tool].append(seconds)
            print(f"  run {i + 1:2d}: {tool:6s} {here} -> {there}: {seconds:.3f} s", flush=True)
            here = there
        hb = lab.wait_heartbeat_advances(vm, beyond=lab.heartbeat(vm).last_n + 1)
        assert boot_ids(hb) == [boot], "the guest restarted during the benchmark"
    finally:
        lab.vm_rm(vm)
    med_e, med_v = statistics.median(times["engine"]), statistics.median(times["virsh"])
    print(f"\nIDLE VM (256 MiB), unshaped link, {runs} runs each, alternating, ping-pong hv1 <-> hv2")
    print(f"  engine (module code path, from the controller): median {med_e:.3f} s  "
          f"(min {min(times['engine']):.3f}, max {max(times['engine']):.3f})")
    print(f"  virsh migrate --live --p2p:                      median {med_v:.3f} s  "
          f"(min {min(times['virsh']):.3f}, max {max(times['virsh']):.3f})")
    print(f"  overhead of the engine: {(med_e / med_v - 1) * 100:+.1f} %")
    print(f"  engine-reported downtime: median {statistics.median(downtimes)} ms ({downtimes})")


def hot_comparison(lab, mbit, hot_runs, series_out=None):
    rows = []
    precopy = dict(mode="precopy", allow_postcopy=False, auto_converge=True, completion_timeout_s=40,
                   on_timeout="suspend")
    for label, spec_kw in (
        ("pre-copy, auto-converge, suspend at 40 s", precopy),
        ("post-copy after the first pass (mode postcopy)", dict(mode="postcopy")),
    ):
        for _run in range(hot_runs):
            vm = f"bench-hot-{os.getpid()}-{len(rows)}"
            lab.vm_start(VMSpec(name=vm, memory=256, dirty_mb=128, hb_ms=50), host="hv1")
            try:
                boot = lab.wait_heartbeat_advances(vm, beyond=20).boot_id
                gaps = Gaps(lab.console_path(vm), vm)
                lab.shape("hv1", mbit)
                try:
                    seconds, result = engine_move(lab, vm, "hv1", "hv2", stats_interval_s=0.5, **spec_kw)
                finally:
                    lab.unshape("hv1")
                hb = lab.wait_heartbeat_advances(vm, beyond=lab.heartbeat(vm).last_n + 5)
                gaps.stop()
                gap = gaps.longest_gap_ms()
                ids = boot_ids(hb)
                restarted = ids != [boot]
                if restarted:  # reported, not asserted: a benchmark prints what happened
                    print(f"  !! the guest RESTARTED (boot ids {ids}); console tail:\n"
                          + "\n".join(lab.console_path(vm).read_text(errors="replace").splitlines()[-40:]))
                assert result.outcome == "moved" and lab.running_on(vm) == ["hv2"], result.message
            finally:
                if os.environ.get("BENCH_KEEP_CONSOLE"):
                    (Path("/tmp") / f"{vm}.console").write_bytes(lab.console_path(vm).read_bytes())
                lab.vm_rm(vm)
            steps = ", ".join(s.action for s in result.steps if s.action not in ("start", "reconcile"))
            rows.append((label, seconds, result, gap, steps, restarted))
            if series_out:
                with open(series_out, "a") as f:
                    f.write(json.dumps({"label": label, "mbit": mbit, "stats": result.stats,
                                        "steps": [dataclasses.asdict(s) for s in result.steps]}) + "\n")
            print(f"  {label}: {seconds:.1f} s, {result.outcome} ({result.mode_used}), steps: {steps}", flush=True)
    print(f"\nHOT VM (256 MiB RAM, rewriting 128 MiB flat out), source link shaped to {mbit} Mbit/s")
    print(f"  {'mode':48s} {'wall s':>7s} {'libvirt downtime':>17s} {'guest pause':>12s} {'sent/RAM':>9s}"
          f" {'iter':>5s} {'max throttle':>13s} {'guest':>10s}")
    for label, seconds, result, gap, _steps, restarted in rows:
        down = f"{result.downtime_ms} ms" if result.downtime_ms is not None else "n/a"
        ratio = (result.bytes_sent or 0) / result.ram_bytes
        throttle = max((s["throttle_pct"] for s in result.stats), default=0)
        print(f"  {label:48s} {seconds:7.1f} {down:>17s} {gap:>9} ms {ratio:9.2f} {result.iterations:5d}"
              f" {throttle:>12d}% {'RESTARTED' if restarted else 'same boot':>10s}")


SERIES_FIELDS = ("t", "phase", "iteration", "memory_total", "memory_processed", "memory_remaining", "data_processed",
                 "dirty_rate_bps", "bandwidth_bps", "throttle_pct")


def compact_series(stats):
    """The job-stats samples with only the fields the convergence analysis reads, rounded (small JSON)."""
    out = []
    for sample in stats:
        row = {k: sample[k] for k in SERIES_FIELDS}
        row["dirty_rate_bps"] = round(row["dirty_rate_bps"])
        row["bandwidth_bps"] = round(row["bandwidth_bps"])
        out.append(row)
    return out


def record_series(lab, mbit, out_dir):
    """Real pre-copy series for the convergence unit tests (tests/unit/module_utils/data/).

    Default engine ladder (pre-copy, abort at the deadline or on a stall), source link shaped to
    `mbit`: an idle guest, a moderately dirty one, and one dirtying faster than the link (it is
    aborted, so it stays on the source and never switches over). Stats every 0.5 s.
    """
    cases = (
        ("idle", dict(memory=256)),
        ("moderate", dict(memory=256, dirty_mb=64, dirty_rate=8)),
        ("hot", dict(memory=256, dirty_mb=128, dirty_rate=100)),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for label, knobs in cases:
        vm = f"bench-series-{label}-{os.getpid()}"
        lab.vm_start(VMSpec(name=vm, hb_ms=100, **knobs), host="hv1")
        try:
            lab.wait_heartbeat_advances(vm, beyond=20)
            lab.shape("hv1", mbit)
            try:
                seconds, result = engine_move(lab, vm, "hv1", "hv2", stats_interval_s=0.5)
            finally:
                lab.unshape("hv1")
        finally:
            lab.vm_rm(vm)
        data = {"label": label, "vm": knobs, "mbit": mbit, "outcome": result.outcome,
                "duration_s": round(seconds, 2), "deadline_s": result.deadline_s, "ram_bytes": result.ram_bytes,
                "spec": {k: result.spec[k] for k in ("mode", "max_downtime_ms", "max_downtime_cap_ms",
                                                     "stall_iterations", "on_timeout", "auto_converge")},
                "steps": [dataclasses.asdict(s) for s in result.steps], "stats": compact_series(result.stats)}
        path = out_dir / f"series_{label}_{int(mbit)}mbit.json"
        path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        steps = ", ".join(s.action for s in result.steps)
        print(f"  series {label}: {result.outcome} in {seconds:.1f} s, {len(result.stats)} samples, "
              f"{result.iterations} iterations, steps: {steps} -> {path}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5, help="idle migrations per tool")
    parser.add_argument("--hot-mbit", type=float, default=100, help="source link for the hot VM, Mbit/s")
    parser.add_argument("--hot-runs", type=int, default=1, help="hot migrations per mode")
    parser.add_argument("--skip-hot", action="store_true")
    parser.add_argument("--skip-idle", action="store_true")
    parser.add_argument("--series-out", help="append each hot run's job-stats series (JSON lines) to this file")
    parser.add_argument("--record-series", metavar="DIR",
                        help="only record compact idle/moderate/hot pre-copy series into DIR (see record_series)")
    parser.add_argument("--series-mbit", type=float, default=100, help="source link for --record-series, Mbit/s")
    args = parser.parse_args()
    lab = Lab()
    was_up = lab.state.exists()
    lab.up(hosts_count=3)
    try:
        if args.record_series:
            record_series(lab, args.series_mbit, args.record_series)
            return
        if not args.skip_idle:
            idle_comparison(lab, args.runs)
        if not args.skip_hot:
            hot_comparison(lab, args.hot_mbit, args.hot_runs, args.series_out)
    finally:
        if not was_up:
            print("the lab was brought up for this benchmark and is left up (it is shared; take it down "
                  "with tests/lab/lab.py down when nobody uses it)")


if __name__ == "__main__":
    main()
