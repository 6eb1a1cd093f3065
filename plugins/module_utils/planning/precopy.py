# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pre-copy simulation and the model's constants, measured on the lab (forecast.py chooses modes with it).

Kept apart from the mode choice because the constants are measurements: each says what it was
measured on and with which command, so a forecast that misses can be traced to one of them.
"""

from __future__ import annotations

import dataclasses
import math

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError

MIB = 1024 ** 2
GIB = 1024 ** 3


class ForecastError(HvfleetError):
    """The inputs of a forecast are impossible (no bandwidth, negative rates, unknown mode)."""


@dataclasses.dataclass(frozen=True)
class ModelParams:  # pylint: disable=too-many-instance-attributes
    """Constants of the model, each with the lab measurement it comes from (docs/BENCHMARKS.md)."""

    # Fixed cost of one migration besides its bytes: libvirt preparing the destination (a QEMU
    # started), the stream's start, the destination resuming, the engine's reconcile. Lab, TCG,
    # benchmarks/forecast_calibration.py at 300 Mbit/s: engine duration - bytes / link - predicted
    # pause = 0.48-0.50 s for idle 256 MiB and 1024 MiB guests alike (no per-GiB part); unshaped,
    # duration - QEMU's own elapsed time = 0.22 s. The same for small and large guests.
    setup_s: float = 0.5
    precopy_switchover_ms: float = 20.0  # device state at the final pause (lab idle VM, unshaped: 12-35 ms)
    first_check_s: float = 0.1  # QEMU measures the bandwidth over its first 100 ms before it may switch
    # libvirt's page sampling checks 512 pages per GiB, so one changed sample stands for 2 MiB: a 1 s
    # reading of 0 means "below ~2 MiB/s", not "nothing". An idle lab guest read 0 yet paused 260-430 ms
    # at the final switch on a 300 Mbit/s link (~10 MB left: it does dirty memory). Below this the
    # measured rate is taken as this.
    dirty_rate_floor_bps: float = 2 * 1024 ** 2
    postcopy_switchover_ms: float = 200.0  # the switch to post-copy itself (libvirt's pause at the switch)
    # After the switch to post-copy the guest's writes fault on pages still on the source, each waiting
    # for the network: the guest sees a stall as long as receiving this many bytes at the migration's
    # rate (capped by what is left). Lab, TCG, hot 384 MiB guest rewriting 192 MiB at 100 MiB/s: worst
    # heartbeat gap - 200 ms, times the rate it had, median 34.6 MB over 11 post-copies at 200-300 Mbit/s
    # (benchmarks/production_sim.py's calibration from benchmarks/results/; range 10-38 MB).
    postcopy_stall_bytes: float = 35e6
    escalate_after_passes: int = 2  # the ladder raises max downtime to the cap after this many passes
    postcopy_after_passes: int = 2  # postcopy_after_precopy: passes before the switch
    throttle_trigger: float = 0.5  # QEMU: a pass dirtied more than this fraction of what it sent
    throttle_max_pct: int = 99  # QEMU's max-cpu-throttle
    throttle_initial_pct: int = 20  # QEMU's defaults when the policy leaves them unset
    throttle_increment_pct: int = 10
    completion_timeout_min_s: float = 60.0  # the engine's floor for the deadline (spec.py)
    max_iterations: int = 10000
    # QEMU's own resident memory beside the guest's (code, libraries, buffers; under TCG also its
    # translation cache): lab, TCG, idle 256 MiB guest: 222 MiB resident, 92 MiB sent -> ~130 MiB.
    # KVM is not measured here; the smaller figure over-predicts what a guest sends (the safe side).
    qemu_overhead_mib_tcg: float = 128.0
    qemu_overhead_mib_kvm: float = 48.0
    min_transferable_ratio: float = 0.05


DEFAULT_PARAMS = ModelParams()


@dataclasses.dataclass(frozen=True)
class PrecopyRun:  # pylint: disable=too-many-instance-attributes
    """The simulated course of a pre-copy: converged, or where it stood when it stopped."""

    converged: bool
    iterations: int
    elapsed_s: float  # to the end of the pause when converged, else to where it stopped
    bytes_sent: float  # including the final pause when converged
    remaining_bytes: float  # sent in the pause when converged; still to send otherwise
    pause_ms: float | None  # predicted downtime when converged
    limit_ms: float  # the downtime limit in force at the end
    throttle_pct: int
    stalled: bool  # can never converge: dirty rate >= bandwidth and the dirty set exceeds the cap


def guest_memory(ram_bytes: float, resident_bytes: float | None, domain_type: str = "kvm",
                 params: ModelParams = DEFAULT_PARAMS) -> tuple[float, float | None]:
    """(transferable_ratio, dirty_working_set) from the QEMU process's resident size, or (1.0, None).

    QEMU sends a never-written (zero) page as a few bytes, and a page the guest never touched is not
    resident on the host. So what pass 1 sends is about the resident size minus QEMU's own part,
    and only touched pages can be dirty again. Resident size unknown: all of RAM, the old default.
    """
    if not resident_bytes or not ram_bytes:
        return 1.0, None
    overhead = params.qemu_overhead_mib_tcg if domain_type == "qemu" else params.qemu_overhead_mib_kvm
    touched = min(float(ram_bytes), max(0.0, float(resident_bytes) - overhead * MIB))
    ratio = max(params.min_transferable_ratio, touched / float(ram_bytes))
    return ratio, ratio * float(ram_bytes)


def deadline_for(ram_bytes: float, completion_timeout_per_gib_s: float = 150.0,
                 params: ModelParams = DEFAULT_PARAMS, *, disk_bytes: float = 0) -> float:
    """The completion deadline: per GiB of what moves (RAM and the disks copied), rounded up, at least the floor."""
    moved = float(ram_bytes) + max(0.0, float(disk_bytes))
    return float(max(params.completion_timeout_min_s, math.ceil(completion_timeout_per_gib_s * moved / GIB)))


def postcopy_stall_ms(remaining_bytes: float, bandwidth: float, params: ModelParams = DEFAULT_PARAMS) -> float:
    """The stall the guest sees after the switch to post-copy, beyond the switch: its first writes fault on
    pages still on the source and wait for the network (at most what is left to send)."""
    return min(max(0.0, remaining_bytes), params.postcopy_stall_bytes) / bandwidth * 1000.0


def check_inputs(ram_bytes: float | None, dirty_rate: float | None, bandwidth: float | None,
                 transferable_ratio: float = 1.0, dirty_working_set: float | None = None,
                 disk_bytes: float = 0) -> None:
    """Refuse impossible inputs before any arithmetic, naming the input and the fix."""
    if not ram_bytes or ram_bytes <= 0:
        raise ForecastError(f"RAM must be positive, got {ram_bytes!r}.", "pass the domain's memory in bytes.")
    if not bandwidth or bandwidth <= 0:
        raise ForecastError(f"bandwidth must be positive, got {bandwidth!r} bytes/s.",
                            "declare the migration link's bandwidth for the host, or measure it.")
    if dirty_rate is None or dirty_rate < 0:
        raise ForecastError(f"dirty rate must be >= 0, got {dirty_rate!r} bytes/s.",
                            "measure the dirty rate (libvirt's dirty-rate calculation) first.")
    if not 0 < transferable_ratio <= 1:
        raise ForecastError(f"transferable_ratio must be in (0, 1], got {transferable_ratio!r}.",
                            "give the fraction of RAM that is not zero pages, or 1.0.")
    if dirty_working_set is not None and dirty_working_set < 0:
        raise ForecastError(f"dirty_working_set must be >= 0, got {dirty_working_set!r}.",
                            "give the dirty working set in bytes, or leave it unset (all of RAM).")
    if disk_bytes is None or disk_bytes < 0:
        raise ForecastError(f"disk_bytes must be >= 0, got {disk_bytes!r}.",
                            "give the bytes of the disks the migration copies (0 with shared storage).")


def switch_point(to_send: float, bandwidth: float, rate: float, wss: float, budget: float,
                 first_check_s: float = 0.0) -> tuple[float, float]:
    """(seconds into the pass, bytes pending) when QEMU switches over in a pass that converges.

    QEMU does not finish the pass first: it checks what is pending (unsent + dirtied since the pass
    began) every ~100 ms and stops the guest as soon as that fits the downtime limit (`budget`
    bytes). So the pause is close to the limit whenever the pass started above it (lab, 300 Mbit/s,
    limit 500 ms: idle and moderate guests paused 260-900 ms), and the pass's own remainder when it
    started below it (after the first bandwidth measurement, `first_check_s`)."""
    def pending(at: float) -> float:
        return max(0.0, to_send - bandwidth * at) + min(rate * at, wss)

    end = to_send / bandwidth
    start = min(first_check_s, end)
    if pending(start) <= budget:
        return start, pending(start)
    if rate < bandwidth and to_send - budget <= (wss / rate if rate > 0 else end) * (bandwidth - rate):
        at = (to_send - budget) / (bandwidth - rate)  # before the dirtied part reaches the working set
    else:
        at = (to_send + wss - budget) / bandwidth
    at = min(end, max(start, at))
    return at, min(budget, pending(at))


def simulate_precopy(ram_bytes: float, dirty_rate: float, bandwidth: float, deadline_s: float,
                     max_downtime_ms: float, *, escalate_to_ms: float | None = None,
                     transferable_ratio: float = 1.0, dirty_working_set: float | None = None,
                     auto_converge: bool = False, throttle_initial_pct: int | None = None,
                     throttle_increment_pct: int | None = None, max_passes: int | None = None,
                     disk_bytes: float = 0, params: ModelParams = DEFAULT_PARAMS) -> PrecopyRun:
    """Iterate pre-copy passes until convergence, the deadline, or `max_passes` (forecast.py's doc).

    Copied disks (`disk_bytes`) go first, over the same link, before the first RAM pass (libvirt
    mirrors them, then migrates memory); they count in the time and in the bytes sent.
    """
    # pylint: disable=too-many-locals,too-many-branches,too-many-statements
    check_inputs(ram_bytes, dirty_rate, bandwidth, transferable_ratio, dirty_working_set, disk_bytes)
    wss = float(ram_bytes if dirty_working_set is None else min(dirty_working_set, ram_bytes))
    top_ms = max(max_downtime_ms, escalate_to_ms or 0)
    initial = throttle_initial_pct or params.throttle_initial_pct
    increment = throttle_increment_pct or params.throttle_increment_pct

    def limit_ms(i: int) -> float:
        if escalate_to_ms is not None and i > params.escalate_after_passes:
            return max(max_downtime_ms, escalate_to_ms)
        return max_downtime_ms

    elapsed = params.setup_s + disk_bytes / bandwidth
    sent = float(disk_bytes)
    if elapsed > deadline_s:  # the disks alone outlast the deadline: the engine aborts during their copy
        copied = max(0.0, bandwidth * (deadline_s - params.setup_s))
        return PrecopyRun(False, 0, deadline_s, copied, disk_bytes - copied + float(ram_bytes) * transferable_ratio,
                          None, limit_ms(1), 0, False)
    to_send = float(ram_bytes) * transferable_ratio
    throttle = 0
    high = 0
    i = 0
    stalled = False
    while True:
        i += 1
        rate = dirty_rate * (1 - throttle / 100.0)
        t = to_send / bandwidth
        if elapsed + t > deadline_s:  # cut inside this pass
            dt = max(0.0, deadline_s - elapsed)
            sent += bandwidth * dt
            left = min(to_send - bandwidth * dt + min(rate * dt, wss), float(ram_bytes))
            return PrecopyRun(False, i, max(elapsed, deadline_s), sent, left, None, limit_ms(i), throttle, stalled)
        elapsed += t
        sent += to_send
        dirtied = min(rate * t, wss)
        limit = limit_ms(i)
        if dirtied <= bandwidth * limit / 1000.0:
            cross = switch_point(to_send, bandwidth, rate, wss, bandwidth * limit / 1000.0,
                                 params.first_check_s if i == 1 else 0.0)
            pending = cross[1]
            pause = pending / bandwidth
            at = elapsed - t + cross[0]
            if at + pause <= deadline_s:
                return PrecopyRun(True, i, at + pause, sent - to_send + bandwidth * cross[0] + pending, pending,
                                  pause * 1000.0 + params.precopy_switchover_ms, limit, throttle, False)
            sent += bandwidth * (deadline_s - elapsed)
            return PrecopyRun(False, i, deadline_s, sent, dirtied, None, limit, throttle, stalled)
        if max_passes is not None and i >= max_passes:
            return PrecopyRun(False, i, elapsed, sent, dirtied, None, limit, throttle, stalled)
        if auto_converge and throttle < params.throttle_max_pct and dirtied > params.throttle_trigger * to_send:
            high += 1
            if high >= 2:
                high = 0
                throttle = initial if throttle == 0 else throttle + increment
                throttle = min(throttle, params.throttle_max_pct)
        more_throttle = auto_converge and throttle < params.throttle_max_pct
        next_rate = dirty_rate * (1 - throttle / 100.0)
        if not more_throttle and next_rate >= bandwidth and dirtied > bandwidth * top_ms / 1000.0:
            stalled = True
        steady = min(next_rate * dirtied / bandwidth, wss) == dirtied
        settled = not more_throttle and i >= params.escalate_after_passes
        if (steady and settled and dirtied > bandwidth * top_ms / 1000.0) or i >= params.max_iterations:
            # nothing changes from here on: each pass resends the same set until the deadline
            span = max(0.0, deadline_s - elapsed)
            pass_s = dirtied / bandwidth
            i += int(span // pass_s) if pass_s > 0 else 0
            return PrecopyRun(False, i + 1, deadline_s, sent + bandwidth * span, dirtied, None, limit_ms(i + 1),
                              throttle, stalled)
        to_send = dirtied
