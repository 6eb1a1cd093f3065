"""Drain benchmark on the lab: hvfleet.drain against the usual alternatives; not a test (docs/BENCHMARKS.md).

One scenario, every contender in the same run: hv1 holds a mix of guests (two idle, one moderately
dirty, one dirtying faster than the link), hv1's link is shaped with tc to a fixed rate, hv2 and hv3
are the destinations. Contenders:

1. `virsh-loop`: the shell loop operators use - `virsh migrate --live --p2p --persistent
   --undefinesource` one VM after another, destinations alternating, libvirt defaults, capped with
   `--timeout N --timeout-suspend` so a VM that does not converge ends (paused, then copied).
2. `nova-like`: what Nova's libvirt driver does with auto-converge permitted and post-copy not
   (its default): one migration at a time, pre-copy + auto-converge, max downtime raised in
   Nova's steps (live_migration_downtime 500 ms in 10 steps, one step per
   live_migration_downtime_delay x GiB), and at live_migration_completion_timeout x GiB the
   force-complete action (live_migration_timeout_action=force_complete: pause the guest, since
   post-copy is not permitted). Nova's per-GiB figures (800 s and 75 s) are scaled down by
   --nova-scale (default 10) to fit guests of a few hundred MiB on a lab link; said in the output.
3. `hvfleet`: the drain core (drain.Drainer over drain_backend.LibvirtBackend, as the host_drain
   module runs it) with its defaults: built-in `auto` policy, max_parallel 2, max_inbound 1.
   It runs here on the controller over qemu+tcp (the module runs on the source host); its
   state directory (journal, lock, cordon) is a temporary directory.

Before each contender the guests are created fresh on hv1 (same start state) and their heartbeats
watched: each guest prints a line every 50 ms on its console, so the longest gap between two
lines is the pause the guest itself saw (contender-neutral; libvirt reports no downtime after a
post-copy). A heartbeat with a new boot id means the guest rebooted (under TCG, QEMU 7.2, a
dirtying guest sometimes takes a kernel GPF right after a multi-pass pre-copy): reported, not fatal.

Figures per contender: makespan (request to the last VM running on a destination), makespan over
the physical bound (every guest's RAM once over the link), libvirt downtime and guest pause (max,
median), bytes sent / RAM, failed VMs, VMs paused >= 1 s, VMs force-paused, guest reboots, and
for hvfleet its forecast vs its actual migration time, per VM too (the schedule's predicted span, pause
and post-copy stall against the measured ones). `--runs N` repeats the scenario (the contender order
rotates) and reports medians. The lab lock (/var/tmp/hvfleet-lab-use.lock) is taken per run, so do
not wrap this script in flock(1). hvfleet measures the guests' dirty rates as the drain does
(drain/libvirt_backend.py: a 1 s sample of all, then 3 s more of each guest whose forecast depends on its
reading, planning/dirty_rate.py); `--dirty-rate one-sample` leaves out the second sample, for comparison.

    .venv/bin/python benchmarks/drain_bench.py --runs 3 --json docs/drain-bench.json --svg docs/drain-bench.svg
    .venv/bin/python benchmarks/drain_bench.py --merge a.json b.json --json all.json --svg all.svg
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / ".collections"), str(REPO / "tests" / "lab"), str(Path(__file__).resolve().parent)]

import drain_report  # noqa: E402
import forecast_report  # noqa: E402
import libvirt  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common import connection  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.libvirt_backend import LibvirtBackend  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import PlacementConfig  # noqa: E402
from heartbeat_gaps import Gaps  # noqa: E402
from hvlab import Lab, VMSpec  # noqa: E402
from hvlab.vm import HB_RE, boot_ids  # noqa: E402

MIB = 2**20
GIB = 2**30
LOCK = "/var/tmp/hvfleet-lab-use.lock"
VCPU_OVERCOMMIT = 8.0  # hvfleet's placement on the lab: its 2-CPU hosts may already hold other guests
SOURCE, DESTS = "hv1", ("hv2", "hv3")
HB_MS = 50
CONSOLES = Path("/tmp/drain-bench-consoles")  # console logs of guests that rebooted, hung or did not move
FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
         | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
COMPLETED = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
# Nova's defaults (nova/conf/libvirt.py)
NOVA_COMPLETION_S_PER_GIB = 800
NOVA_DOWNTIME_MS, NOVA_DOWNTIME_STEPS, NOVA_DOWNTIME_DELAY_S_PER_GIB = 500, 10, 75
NOVA_POLL_S = 0.5

# (name, kind, VMSpec knobs): 1152 MiB in all
GUESTS = (
    ("idle1", "idle", dict(memory=256)),
    ("idle2", "idle", dict(memory=256)),
    ("warm", "moderate", dict(memory=256, dirty_mb=64, dirty_rate=8)),
    ("hot", "hot", dict(memory=384, dirty_mb=192, dirty_rate=100)),
)


def log(msg):
    print(msg, flush=True)


# ---- guests and their heartbeats ------------------------------------------------------------


def write_rate_mib_s(lab, vm, span=20):
    """MiB/s the guest writes, from its own heartbeat fields (dirtied_mb, up_ms)."""
    hb = lab.wait_heartbeat_advances(vm, beyond=lab.heartbeat(vm).last_n + span, timeout=60)
    fields = [HB_RE.search(line) for line in hb.lines[-(span + 1):]]
    first, last = fields[0], fields[-1]
    dt = (int(last.group("up_ms")) - int(first.group("up_ms"))) / 1000
    return (int(last.group("dirtied_mb")) - int(first.group("dirtied_mb"))) / dt if dt > 0 else None


def make_guests(lab, prefix):
    """Start the scenario's guests on the source; returns [{name, kind, ram_bytes}] once all beat."""
    guests = []
    for suffix, kind, knobs in GUESTS:
        name = f"{prefix}-{suffix}"
        lab.vm_start(VMSpec(name=name, hb_ms=HB_MS, **knobs), host=SOURCE)
        guests.append({"name": name, "kind": kind, "ram_bytes": knobs["memory"] * MIB})
    for g in guests:
        g["boot"] = lab.wait_heartbeat_advances(g["name"], beyond=40, timeout=120).boot_id
    for (_suffix, _kind, knobs), g in zip(GUESTS, guests, strict=True):
        if knobs.get("dirty_mb"):
            wait_dirtying(lab, g["name"])
    return guests


def wait_dirtying(lab, vm, timeout=60):
    """Wait until the guest's dirtier has touched its buffer (it starts a few seconds after the
    heartbeat): every contender then starts on a guest that is already writing."""
    deadline = time.monotonic() + timeout
    while True:
        hb = lab.wait_heartbeat_advances(vm, beyond=lab.heartbeat(vm).last_n, timeout=30)
        if int(HB_RE.search(hb.lines[-1]).group("dirtied_mb")) > 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{vm} did not start writing within {timeout} s")


def remove_guests(lab, guests):
    for g in guests:
        with contextlib.suppress(Exception):
            lab.vm_rm(g["name"])


def completed_stats(lab, host, name):
    """libvirt's completed-job stats of `name` on `host` (destination side), or {}."""
    try:
        conn = libvirt.open(lab.uri(host))
    except libvirt.libvirtError:
        return {}
    try:
        return conn.lookupByName(name).jobStats(COMPLETED) or {}
    except libvirt.libvirtError:
        return {}
    finally:
        conn.close()


def wait_alive(lab, name, timeout=45.0):
    """The guest's heartbeat once it beats on (5 more lines of the same boot, or 3 of a new boot
    after a crash); None when it does neither within `timeout` s."""
    start = lab.heartbeat(name)
    deadline = time.monotonic() + timeout
    while True:
        hb = lab.heartbeat(name)
        if hb.boot_id == start.boot_id and hb.last_n > start.last_n + 5:
            return hb
        if hb.boot_id != start.boot_id and hb.last_n >= 3:
            return hb
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def settle_and_check(lab, guests, records):
    """After a contender: where each guest is, resume one left paused (noted), reboots, ok."""
    for g in guests:
        rec = records.setdefault(g["name"], {})
        where = lab.locate(g["name"])
        rec["where"] = where
        dest = next((h for h in DESTS if where.get(h) in ("running", "paused")), None)
        rec["ok"] = dest is not None and where.get(dest) == "running" and SOURCE not in where
        if dest and where.get(dest) == "paused":
            rec["left_paused"] = True
            with contextlib.suppress(Exception), contextlib.closing(libvirt.open(lab.uri(dest))) as conn:
                conn.lookupByName(g["name"]).resume()
        rec.setdefault("destination", dest)
        hb = wait_alive(lab, g["name"])
        if hb is None:  # no new heartbeat (nor a new boot) for 45 s: the guest hangs
            rec["rebooted"] = len(boot_ids(lab.heartbeat(g["name"]))) > 1
            rec["hung"] = True
            rec["ok"] = False
        else:
            rec["rebooted"] = len(boot_ids(hb)) > 1 or hb.boot_id != g["boot"]
        if rec.get("rebooted") or rec.get("hung") or not rec["ok"]:
            keep = CONSOLES / f"{g['name']}.console"
            keep.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                keep.write_bytes(lab.console_path(g["name"]).read_bytes())
                rec["console"] = str(keep)


# ---- contenders ----------------------------------------------------------------------------


def virsh_loop(lab, guests, timeout_s):
    records = {}
    for i, g in enumerate(guests):
        dst = DESTS[i % len(DESTS)]
        t0 = time.monotonic()
        res = subprocess.run(["virsh", "-c", lab.uri(SOURCE), "migrate", "--live", "--p2p", "--persistent",
                              "--undefinesource", "--timeout", str(timeout_s), "--timeout-suspend", g["name"],
                              lab.uri(dst), f"tcp://{lab.addr(dst)}"], capture_output=True, text=True, check=False)
        took = time.monotonic() - t0
        stats = completed_stats(lab, dst, g["name"]) if res.returncode == 0 else {}
        records[g["name"]] = {"destination": dst, "duration_s": round(took, 2), "mode": "precopy",
                              "suspended": res.returncode == 0 and took >= timeout_s,
                              "downtime_ms": stats.get("downtime"), "bytes_sent": stats.get("data_processed"),
                              "error": res.stderr.strip() or None}
        log(f"    virsh {g['name']} -> {dst}: rc {res.returncode}, {took:.1f} s, downtime {stats.get('downtime')} ms"
            + (f" [{res.stderr.strip()}]" if res.returncode else ""))
    return records, {}


def nova_downtime_steps(data_gib, scale):
    """Nova's (delay s, max downtime ms) steps (nova.virt.libvirt.migration.downtime_steps), delay scaled."""
    delay = NOVA_DOWNTIME_DELAY_S_PER_GIB / scale * data_gib
    base = NOVA_DOWNTIME_MS / NOVA_DOWNTIME_STEPS
    offset = (NOVA_DOWNTIME_MS - base) / NOVA_DOWNTIME_STEPS
    return [(delay * i, int(base + offset * i)) for i in range(NOVA_DOWNTIME_STEPS + 1)]


def _nova_migrate(lab, call, name, dst, box):
    try:
        call.lookupByName(name).migrateToURI3(lab.uri(dst), {"migrate_uri": f"tcp://{lab.addr(dst)}"},
                                              FLAGS | libvirt.VIR_MIGRATE_AUTO_CONVERGE)
    except libvirt.libvirtError as exc:
        box["error"] = str(exc)


def nova_like(lab, guests, scale):
    records = {}
    for i, g in enumerate(guests):
        dst = DESTS[i % len(DESTS)]
        data_gib = g["ram_bytes"] / GIB  # shared storage: Nova counts RAM only
        completion_s = NOVA_COMPLETION_S_PER_GIB / scale * data_gib
        steps = nova_downtime_steps(data_gib, scale)
        mon, call = connection.connect_all([lab.uri(SOURCE)] * 2)  # job stats block on the migrating connection
        try:
            dom = mon.lookupByName(g["name"])
            box = {}
            t0 = time.monotonic()
            worker = threading.Thread(target=_nova_migrate, args=(lab, call, g["name"], dst, box), daemon=True)
            worker.start()
            paused = False
            step_i = 0
            throttle = 0
            while True:
                worker.join(NOVA_POLL_S)
                if not worker.is_alive():
                    break
                elapsed = time.monotonic() - t0
                with contextlib.suppress(libvirt.libvirtError):
                    throttle = max(throttle, int(dom.jobStats().get("auto_converge_throttle", 0)))
                while step_i < len(steps) and elapsed >= steps[step_i][0]:
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.migrateSetMaxDowntime(steps[step_i][1], 0)
                    step_i += 1
                if not paused and elapsed > completion_s:
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.suspend()
                        paused = True
            took = time.monotonic() - t0
        finally:
            connection.close_quietly(call)
            connection.close_quietly(mon)
        stats = completed_stats(lab, dst, g["name"]) if "error" not in box else {}
        records[g["name"]] = {"destination": dst, "duration_s": round(took, 2), "mode": "precopy",
                              "suspended": paused, "downtime_ms": stats.get("downtime"),
                              "bytes_sent": stats.get("data_processed"), "error": box.get("error"),
                              "max_throttle_pct": throttle}
        log(f"    nova-like {g['name']} -> {dst}: {took:.1f} s (completion timeout {completion_s:.0f} s), "
            f"{'force-paused, ' if paused else ''}throttle {throttle}%, downtime {stats.get('downtime')} ms"
            + (f" [{box['error']}]" if "error" in box else ""))
    return records, {}


def _stamp(text):
    return datetime.datetime.fromisoformat(text) if text else None


def per_vm_forecast(result):
    """{vm: predicted span/start/pause/stall from the plan, actual start/duration} (seconds from the first start)."""
    plan = {p["vm"]: p for p in result.plan or []}
    starts = [_stamp(v.get("started")) for v in result.vms if v.get("started")]
    t0 = min(starts) if starts else None
    out = {}
    for vm in result.vms:
        item = plan.get(vm["vm"], {})
        start, end = item.get("predicted_start_s"), item.get("predicted_end_s")
        began = _stamp(vm.get("started"))
        out[vm["vm"]] = {
            "predicted_start_s": start, "predicted_span_s": round(end - start, 3) if None not in (start, end) else None,
            "lane_forecast_s": item.get("predicted_duration_s"),
            "predicted_pause_ms": item.get("predicted_downtime_ms"),
            "predicted_stall_ms": (item.get("forecast") or {}).get("predicted_stall_ms"),
            "dirty_rate_mib_s": None if item.get("dirty_rate_bps") is None else round(item["dirty_rate_bps"] / MIB, 1),
            "actual_start_s": round((began - t0).total_seconds(), 3) if began and t0 else None}
    return out


def hvfleet(lab, guests, mbit, dirty="product"):
    with tempfile.TemporaryDirectory(prefix="hvfleet-drain-bench-") as state_dir:
        source = Host(name=SOURCE, uri=lab.uri(SOURCE), migration_address=lab.addr(SOURCE), link_mbit=mbit)
        dests = [Host(name=h, uri=lab.uri(h), migration_address=lab.addr(h)) for h in DESTS]
        # the lab's hosts report 2 CPUs and hv2/hv3 may hold other guests (e.g. the README demo's); the
        # other contenders check no capacity, so hvfleet may overcommit vCPUs here too
        config = DrainConfig(reason="benchmark", placement=PlacementConfig(vcpu_overcommit=VCPU_OVERCOMMIT))
        backend = LibvirtBackend(state_dir=state_dir, **({"dirty_rate_resample_s": 0} if dirty == "one-sample" else {}))
        drainer = Drainer(backend, source, dests, config, state_dir=state_dir)
        result = drainer.drain()
    spans = per_vm_forecast(result)
    records = {}
    for vm in result.vms:
        records[vm["vm"]] = {"destination": vm.get("destination"), "duration_s": vm.get("duration_s"),
                             "mode": vm.get("mode_used") or vm.get("mode"), "downtime_ms": vm.get("downtime_ms"),
                             "bytes_sent": vm.get("bytes_sent"), "suspended": False,
                             "error": None if vm.get("ok") else vm.get("message"),
                             "predicted_s": spans[vm["vm"]]["predicted_span_s"], **spans[vm["vm"]]}
        log(f"    hvfleet {vm['vm']} -> {vm.get('destination')}: {vm.get('outcome')} ({vm.get('mode_used')}), "
            f"{vm.get('duration_s')} s (predicted {vm.get('predicted_duration_s')}), "
            f"downtime {vm.get('downtime_ms')} ms")
    extra = {"forecast_s": (result.forecast or {}).get("total_s"),
             "migration_s": (result.actual or {}).get("total_s"), "state": result.state,
             "blockers": [b.get("message") for b in result.blockers], "dirty_rate": dirty,
             "measuring_s": round(backend.measuring_s, 2) or None,
             "first_rates_mib_s": {k: round(v / MIB, 1) for k, v in backend.first_rates.items()},
             "range_s": (result.forecast or {}).get("range_s"),
             "as_read_s": (result.forecast or {}).get("as_read_s"),
             "dirty_rate_error_pct": (result.forecast or {}).get("dirty_rate_error_pct")}
    log(f"    hvfleet: {result.state}; forecast {extra['forecast_s']} s, migrations took {extra['migration_s']} s")
    return records, extra


CONTENDERS = ("virsh-loop", "nova-like", "hvfleet")


def run_contender(lab, name, args, run_no):
    prefix = f"db{os.getpid() % 1000}r{run_no}{name[0]}"
    guests = make_guests(lab, prefix)
    gaps = {g["name"]: Gaps(lab.console_path(g["name"]), g["name"]) for g in guests}
    hot = next(g for g in guests if g["kind"] == "hot")
    try:
        hot_rate = write_rate_mib_s(lab, hot["name"])
        lab.shape(SOURCE, args.mbit)
        try:
            t_base = time.monotonic()
            for g in guests:  # a baseline of gaps with nothing migrating (the machine's own jitter)
                lab.wait_heartbeat_advances(g["name"], beyond=lab.heartbeat(g["name"]).last_n + 20, timeout=30)
            baseline = max(filter(None, (gaps[g["name"]].longest_gap_ms(since=t_base) for g in guests)), default=None)
            log(f"  [{name}] guests up; hot guest writes {hot_rate:.1f} MiB/s, link {args.mbit:g} Mbit/s "
                f"({args.mbit / 8.388608:.1f} MiB/s); baseline heartbeat gap {baseline} ms")
            t0 = time.monotonic()
            if name == "virsh-loop":
                records, extra = virsh_loop(lab, guests, args.virsh_timeout)
            elif name == "nova-like":
                records, extra = nova_like(lab, guests, args.nova_scale)
            else:
                records, extra = hvfleet(lab, guests, args.mbit, args.dirty_rate)
            t_end = time.monotonic()
        finally:
            lab.unshape(SOURCE)
        settle_and_check(lab, guests, records)
        vms = []
        for g in guests:
            rec = records.get(g["name"], {})
            vms.append({"name": g["name"], "kind": g["kind"], "ram_bytes": g["ram_bytes"], "ok": rec.get("ok", False),
                        "downtime_ms": rec.get("downtime_ms"), "bytes_sent": rec.get("bytes_sent"),
                        "guest_pause_ms": gaps[g["name"]].longest_gap_ms(since=t0, until=t_end + 1),
                        "rebooted": bool(rec.get("rebooted")), "suspended": bool(rec.get("suspended")),
                        "left_paused": bool(rec.get("left_paused")), "hung": bool(rec.get("hung")),
                        "where": rec.get("where"), "console": rec.get("console"), "mode": rec.get("mode"),
                        "duration_s": rec.get("duration_s"), "destination": rec.get("destination"),
                        "error": rec.get("error"), "predicted_s": rec.get("predicted_s"),
                        "max_throttle_pct": rec.get("max_throttle_pct"),
                        **{k: rec.get(k) for k in forecast_report.FORECAST_KEYS}})
        forecast = extra.get("forecast_s")
        run = {"contender": name, "run": run_no, "makespan_s": round(t_end - t0, 2), "link_bps": args.mbit * 1e6 / 8,
               "mbit": args.mbit, "forecast_s": forecast, "migration_s": extra.get("migration_s"),
               "baseline_gap_ms": baseline, "hot_write_mib_s": round(hot_rate, 1) if hot_rate else None,
               "vms": vms, "extra": extra}
        if forecast and extra.get("migration_s"):
            # the forecast covers the migrations; compare it with their actual span, not with set-up time
            run["forecast_basis_s"] = extra["migration_s"]
        row = drain_report.figures(run)
        if forecast:
            log(forecast_report.render_forecast(run))
        log(f"  [{name}] makespan {run['makespan_s']:.1f} s = {row['bound_ratio']:.2f} x bound; "
            f"failed {row['failed']}, rebooted {row['rebooted']}, worst guest pause {row['pause_max_ms']} ms")
        return run
    finally:
        for g in gaps.values():
            g.stop()
        remove_guests(lab, guests)


def foreign_domains(lab, prefix="db"):
    """Domains on the source that are not this benchmark's: the hvfleet contender drains the whole host, so
    a run waits until other lab users' domains are gone rather than move them."""
    conn = libvirt.open(lab.uri(SOURCE))
    try:
        return sorted(d.name() for d in conn.listAllDomains(0) if not d.name().startswith(prefix))
    finally:
        conn.close()


@contextlib.contextmanager
def lab_lock(enabled):
    if not enabled:
        yield
        return
    with open(LOCK, "a") as handle:
        log(f"waiting for the lab lock {LOCK} ...")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def machine():
    def out(argv):
        with contextlib.suppress(Exception):
            return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=20).stdout.strip()
        return None

    qemu = out(["qemu-system-x86_64", "--version"]) or ""
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "libvirt": libvirt.getVersion(), "libvirt_text": (out(["virsh", "--version"]) or "").strip(),
            "qemu": (re.search(r"version (\S+)", qemu) or [None, None])[1], "accel": "TCG (no usable KVM)"}


def report(runs, meta, args):
    rows = drain_report.aggregate(runs)
    bound = drain_report.median([drain_report.figures(r)["bound_s"] for r in runs])
    log("\n" + drain_report.render_table(rows))
    log(f"\nphysical bound {bound:.1f} s; medians over {max(r['runs'] for r in rows)} run(s); link {runs[0]['mbit']:g} "
        f"Mbit/s; Nova's per-GiB timeouts scaled 1/{meta.get('nova_scale')}")
    data = {"meta": meta, "summary": rows, "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
        log(f"wrote {args.json}")
    if args.svg:
        Path(args.svg).write_text(drain_report.render_svg(rows, bound_s=bound))
        log(f"wrote {args.svg}")
    if args.markdown:
        log("\n" + drain_report.render_table(rows, markdown=True))
        log("\n" + forecast_report.forecast_markdown(runs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--mbit", type=float, default=300, help="hv1's link (tc tbf), Mbit/s")
    parser.add_argument("--virsh-timeout", type=int, default=30, help="virsh --timeout (then suspend), s")
    parser.add_argument("--nova-scale", type=float, default=10, help="divide Nova's per-GiB timeouts by this")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--json", help="write figures and per-VM records here")
    parser.add_argument("--svg", help="draw makespan and worst pause per contender here")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--no-lock", action="store_true", help=f"do not take {LOCK} per run")
    parser.add_argument("--dirty-rate", choices=("product", "one-sample"), default="product",
                        help="hvfleet's dirty-rate sampling: the drain's (product) or one 1 s sample per guest")
    parser.add_argument("--merge", nargs="+", help="re-report runs from earlier --json files (no lab)")
    args = parser.parse_args()
    if args.merge:
        loaded = [json.loads(Path(p).read_text()) for p in args.merge]
        runs = [r for d in loaded for r in d["runs"]]
        meta = dict(loaded[0]["meta"], merged_from=args.merge)
        report(runs, meta, args)
        return
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    meta = {"machine": machine(), "mbit": args.mbit, "dirty_rate": args.dirty_rate,
            "virsh_timeout_s": args.virsh_timeout,
            "nova_scale": args.nova_scale, "guests": [dict(name=n, kind=k, **kn) for n, k, kn in GUESTS],
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    lab = Lab()
    runs = []
    for run_no in range(1, args.runs + 1):
        order = contenders[(run_no - 1) % len(contenders):] + contenders[:(run_no - 1) % len(contenders)]
        for attempt in range(60):  # the source must hold nothing but this benchmark's guests
            with lab_lock(not args.no_lock):
                lab.up(hosts_count=3)
                others = foreign_domains(lab)
                if not others:
                    log(f"run {run_no}/{args.runs}: {', '.join(order)}")
                    for name in order:
                        runs.append(run_contender(lab, name, args, run_no))
                    break
            log(f"  {SOURCE} holds other domains ({', '.join(others)}); waiting 20 s (attempt {attempt + 1}/60)")
            time.sleep(20)
        else:
            raise SystemExit(f"{SOURCE} kept other domains for 20 min: {', '.join(others)}")
        if args.json:  # after every run, so an interrupted benchmark keeps what it measured
            Path(args.json).write_text(json.dumps({"meta": meta, "runs": runs, "partial": True}, indent=1) + "\n")
    report(runs, meta, args)


if __name__ == "__main__":
    main()
