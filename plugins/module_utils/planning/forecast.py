# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Predict a live migration before it starts, and choose the mode for `auto`.

Pure arithmetic on measured inputs (RAM, the guest's dirty rate, the link bandwidth), so a
drain can be forecast - per VM and in total - before anything moves.

Pre-copy model (iterations, like QEMU): pass 1 sends `transferable_ratio` x RAM (zero pages
cost almost nothing; 1.0 is the conservative default; `guest_memory` estimates it from the QEMU
process's resident size). Each next pass sends what the guest dirtied during the previous one:
dirty rate x pass time, at most the dirty working set (default: all of RAM). Pass i ends
converged when what is left fits into the downtime limit at the link's bandwidth (`left <=
bandwidth x limit`); the final pause is left / bandwidth plus `precopy_switchover_ms`. The
limit is `max_downtime_ms`; when that does not converge within the deadline, the engine's
ladder raises it to the cap (convergence.py), modelled as: the cap applies from pass
`escalate_after_passes` + 1 on. Auto-converge throttles the vCPUs like QEMU: when a pass
dirtied more than half of what it sent, twice, the throttle starts at the initial percent
(QEMU: 20) and rises by the increment (QEMU: 10) up to 99 %; the dirty rate is scaled by (1 -
throttle). A guest that dirties at least as fast as the link sends, with a dirty set above the
cap, never converges: the run is fast-forwarded to the deadline.

Post-copy (engine mode `postcopy`): one pre-copy pass, then the switch (pause
`postcopy_switchover_ms`), then what was dirtied during that pass at the post-copy bandwidth. The
pause predicted for post-copy is what the guest sees: the switch plus the stall of its first writes
faulting on pages still on the source (`postcopy_stall_bytes` at the post-copy rate).

Every migration also costs `setup_s` (libvirt preparing the destination, the engine's checks);
copied disks go first, at the same bandwidth. The constants and the measurements they come from are
in precopy.py.
`postcopy_after_precopy`: pre-copy; if that is not predicted to converge, the switch after
`postcopy_after_passes` passes.

The `auto` rule, first that fits:
1. pre-copy, when predicted to converge within the deadline with a pause <= the cap;
2. post-copy, when the policy allows it and it finishes within the deadline;
3. pre-copy with auto-converge, when that converges within the deadline;
4. refuse, with the reason.

The deadline is the engine's: completion_timeout_per_gib_s x RAM in GiB, at least 60 s.
Compression and parallel connections are not modelled: give the bandwidth they achieve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, cast

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import ForecastVerdict, Mode, OnTimeout
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precopy import (  # noqa: F401 pylint: disable=unused-import
    DEFAULT_PARAMS,
    GIB,
    MIB,
    ForecastError,
    ModelParams,
    PrecopyRun,
    check_inputs,
    deadline_for,
    guest_memory,
    postcopy_stall_ms,
    simulate_precopy,
)

PRECOPY = Mode.PRECOPY
POSTCOPY = Mode.POSTCOPY
POSTCOPY_AFTER_PRECOPY = Mode.POSTCOPY_AFTER_PRECOPY
AUTO = Mode.AUTO
REFUSE = ForecastVerdict.REFUSE
MODES = tuple(Mode)
ON_TIMEOUT = tuple(OnTimeout)


@dataclasses.dataclass(frozen=True)
class Forecast:  # pylint: disable=too-many-instance-attributes
    """The predicted migration of one VM; `mode` is `refuse` when nothing fits."""

    mode: str
    auto_converge: bool
    reason: str
    predicted_duration_s: float | None
    predicted_downtime_ms: float | None
    predicted_bytes: int | None
    iterations: int
    completes: bool = True  # False: refused, or predicted to hit the deadline and abort
    deadline_s: float | None = None
    throttle_pct: int = 0
    # post-copy: the page-fault stall after the switch, part of predicted_downtime_ms (the pause the guest sees)
    predicted_stall_ms: float | None = None
    disk_bytes: int = 0  # of the predicted bytes, the disks copied

    def as_dict(self) -> dict[str, Any]:
        """The serialised forecast; the post-copy stall and the disk bytes only where they apply."""
        data = dataclasses.asdict(self)
        if data["predicted_stall_ms"] is None:
            del data["predicted_stall_ms"]
        if not data["disk_bytes"]:
            del data["disk_bytes"]
        return data


@dataclasses.dataclass(frozen=True)
class _Inputs:  # pylint: disable=too-many-instance-attributes
    ram: float
    dirty: float
    bw: float
    pc_bw: float
    downtime_ms: float
    cap_ms: float
    deadline: float
    allow_postcopy: bool
    on_timeout: str
    auto_converge: bool
    initial: int | None
    increment: int | None
    ratio: float
    wss: float | None
    params: ModelParams
    disk: float = 0.0


def _precopy(inp: _Inputs, auto_converge: bool) -> PrecopyRun:
    """The engine's pre-copy: at max downtime; if that misses the deadline, with the ladder's cap."""
    common: dict[str, Any] = {"transferable_ratio": inp.ratio, "dirty_working_set": inp.wss,
                              "auto_converge": auto_converge, "throttle_initial_pct": inp.initial,
                              "throttle_increment_pct": inp.increment, "disk_bytes": inp.disk,
                              "params": inp.params}
    run = simulate_precopy(inp.ram, inp.dirty, inp.bw, inp.deadline, inp.downtime_ms, **common)
    if run.converged or inp.cap_ms <= inp.downtime_ms:
        return run
    return simulate_precopy(inp.ram, inp.dirty, inp.bw, inp.deadline, inp.downtime_ms,
                            escalate_to_ms=inp.cap_ms, **common)


def _switch(inp: _Inputs, run: PrecopyRun) -> tuple[float, float, float, float]:
    """Post-copy after `run` stopped: (duration, the pause the guest sees, bytes, its page-fault stall).

    The pause is the switch plus the stall of the guest's first writes faulting on pages still on the
    source (precopy.postcopy_stall_ms), not the switch alone."""
    duration = run.elapsed_s + inp.params.postcopy_switchover_ms / 1000.0 + run.remaining_bytes / inp.pc_bw
    stall = round(postcopy_stall_ms(run.remaining_bytes, inp.pc_bw, inp.params), 1)
    return duration, round(inp.params.postcopy_switchover_ms + stall, 1), run.bytes_sent + run.remaining_bytes, stall


def _mib(rate: float) -> str:
    value = rate / MIB
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _head(inp: _Inputs) -> str:
    ratio = inp.dirty / inp.bw
    shown = f"{ratio:.2f}" if ratio >= 0.1 or ratio == 0 else f"{ratio:.1g}"
    touched = f", ~{inp.ram * inp.ratio / MIB:.0f} of {inp.ram / MIB:.0f} MiB in use" if inp.ratio < 1 else ""
    floor = " (at least: a sample cannot tell less from 0)" if inp.dirty <= inp.params.dirty_rate_floor_bps else ""
    return f"dirty {_mib(inp.dirty)} MiB/s{floor} = {shown} x link {_mib(inp.bw)} MiB/s{touched}"


def _converged_text(run: PrecopyRun, inp: _Inputs) -> str:
    limit = f"{run.limit_ms:.0f} ms" + (" (raised to the cap)" if run.limit_ms > inp.downtime_ms else "")
    throttle = f", guest throttled up to {run.throttle_pct}%" if run.throttle_pct else ""
    return (f"pre-copy converges in {run.iterations} pass{'es' if run.iterations != 1 else ''}, "
            f"{run.elapsed_s:.1f} s <= deadline {inp.deadline:.0f} s, pause ~{run.pause_ms:.0f} ms (limit {limit})"
            f"{throttle}")


def _miss_text(run: PrecopyRun, inp: _Inputs, what: str = "pre-copy") -> str:
    throttle = f" (guest throttled up to {run.throttle_pct}%)" if run.throttle_pct else ""
    if run.stalled:
        return f"{what} cannot converge{throttle}: dirty set above what {inp.cap_ms:.0f} ms of link can send"
    return f"{what} does not converge within the deadline {inp.deadline:.0f} s{throttle}"


def _precopy_forecast(inp: _Inputs, run: PrecopyRun, mode: str, auto_converge: bool, reason: str) -> Forecast:
    """The forecast of a converged `run` (so it has its pause)."""
    return Forecast(mode, auto_converge, reason, round(run.elapsed_s, 3), round(cast(float, run.pause_ms), 1),
                    int(run.bytes_sent), run.iterations, True, inp.deadline, run.throttle_pct)


def _explicit_precopy(inp: _Inputs) -> Forecast:
    run = _precopy(inp, inp.auto_converge)
    if run.converged:
        return _precopy_forecast(inp, run, PRECOPY, inp.auto_converge, f"{_head(inp)}: {_converged_text(run, inp)}")
    action = inp.on_timeout if (inp.on_timeout != OnTimeout.POSTCOPY or inp.allow_postcopy) else OnTimeout.ABORT
    miss = f"{_head(inp)}: {_miss_text(run, inp)}"
    if action == OnTimeout.SUSPEND:
        pause = run.remaining_bytes / inp.bw
        return Forecast(PRECOPY, inp.auto_converge,
                        f"{miss}; on_timeout suspend -> pause {pause:.1f} s at the deadline",
                        round(run.elapsed_s + pause, 3), round(pause * 1000 + inp.params.precopy_switchover_ms, 1),
                        int(run.bytes_sent + run.remaining_bytes), run.iterations, True, inp.deadline,
                        run.throttle_pct)
    if action == OnTimeout.POSTCOPY:
        duration, pause_ms, sent, stall = _switch(inp, run)
        return Forecast(PRECOPY, inp.auto_converge, f"{miss}; on_timeout postcopy -> post-copy at the deadline",
                        round(duration, 3), pause_ms, int(sent), run.iterations, True, inp.deadline, run.throttle_pct,
                        stall)
    return Forecast(PRECOPY, inp.auto_converge, f"{miss}; on_timeout abort -> the migration is predicted to fail",
                    round(run.elapsed_s, 3), 0.0, int(run.bytes_sent), run.iterations, False, inp.deadline,
                    run.throttle_pct)


def _postcopy(inp: _Inputs, mode: str = POSTCOPY) -> Forecast:
    """Mode postcopy: switch after the first pass. postcopy_after_precopy: only if pre-copy fails."""
    if mode == POSTCOPY_AFTER_PRECOPY:
        full = _precopy(inp, inp.auto_converge)
        if full.converged:
            return _precopy_forecast(inp, full, mode, inp.auto_converge,
                                     f"{_head(inp)}: {_converged_text(full, inp)}; no switch to post-copy expected")
        passes = inp.params.postcopy_after_passes
    else:
        passes = 1
    run = simulate_precopy(inp.ram, inp.dirty, inp.bw, inp.deadline, inp.downtime_ms,
                           escalate_to_ms=inp.cap_ms if mode == POSTCOPY_AFTER_PRECOPY else None,
                           transferable_ratio=inp.ratio, dirty_working_set=inp.wss,
                           auto_converge=inp.auto_converge and mode == POSTCOPY_AFTER_PRECOPY,
                           throttle_initial_pct=inp.initial, throttle_increment_pct=inp.increment,
                           max_passes=passes, disk_bytes=inp.disk, params=inp.params)
    if run.converged:
        return _precopy_forecast(inp, run, mode, False,
                                 f"{_head(inp)}: {_converged_text(run, inp)} before the switch to post-copy")
    duration, pause_ms, sent, stall = _switch(inp, run)
    late = f", {duration:.1f} s > deadline {inp.deadline:.0f} s" if duration > inp.deadline else ""
    reason = (f"{_head(inp)}: post-copy after {run.iterations} pre-copy pass{'es' if run.iterations != 1 else ''}, "
              f"then {run.remaining_bytes / MIB:.0f} MiB at {_mib(inp.pc_bw)} MiB/s{late}")
    return Forecast(mode, False, reason, round(duration, 3), pause_ms, int(sent), run.iterations, True,
                    inp.deadline, run.throttle_pct, stall)


def _auto(inp: _Inputs) -> Forecast:
    head = _head(inp)
    run = _precopy(inp, inp.auto_converge)
    if run.converged:
        return _precopy_forecast(inp, run, PRECOPY, inp.auto_converge,
                                 f"{head}: {_converged_text(run, inp)} -> pre-copy")
    miss = _miss_text(run, inp)
    post = _postcopy(inp) if inp.allow_postcopy else None
    if post is not None and cast(float, post.predicted_duration_s) <= inp.deadline:  # post-copy always has one
        return dataclasses.replace(post, reason=(
            f"{head}: {miss}; post-copy allowed -> post-copy ({post.predicted_duration_s:.1f} s, "
            f"guest paused ~{post.predicted_downtime_ms:.0f} ms: the switch, then page faults over the network)"))
    if post is None:
        why_not_post = "post-copy not allowed"
    else:
        why_not_post = f"post-copy would take {post.predicted_duration_s:.1f} s > deadline {inp.deadline:.0f} s"
    throttled = run if inp.auto_converge else _precopy(inp, True)
    if throttled.converged:
        return _precopy_forecast(inp, throttled, PRECOPY, True, (
            f"{head}: {miss}; {why_not_post} -> pre-copy with auto-converge ({throttled.iterations} passes, "
            f"{throttled.elapsed_s:.1f} s, pause {throttled.pause_ms:.0f} ms, guest throttled up to "
            f"{throttled.throttle_pct}%)"))
    return Forecast(REFUSE, False, f"{head}: {_miss_text(throttled, inp, 'pre-copy with auto-converge')}; "
                    f"{why_not_post} -> refuse", None, None, None, 0, False, inp.deadline, throttled.throttle_pct)


def forecast(ram_bytes: float, dirty_rate: float, bandwidth: float, *,  # pylint: disable=too-many-locals
             mode: str = AUTO, allow_postcopy: bool = True, max_downtime_ms: float = 500,
             max_downtime_cap_ms: float = 2000, deadline_s: float | None = None,
             completion_timeout_per_gib_s: float = 150.0, on_timeout: str = OnTimeout.ABORT,
             auto_converge: bool = False, auto_converge_initial: int | None = None,
             auto_converge_increment: int | None = None, postcopy_bandwidth: float | None = None,
             transferable_ratio: float = 1.0, dirty_working_set: float | None = None,
             disk_bytes: float = 0, params: ModelParams | None = None) -> Forecast:
    """Forecast one migration; for `auto`, choose its mode. Rates and bandwidths in bytes/s.

    `disk_bytes`: the disks the migration copies (not shared storage); they count in the time, the
    bytes and the deadline."""
    params = params or DEFAULT_PARAMS
    check_inputs(ram_bytes, dirty_rate, bandwidth, transferable_ratio, dirty_working_set, disk_bytes)
    if mode not in MODES:
        raise ForecastError(f"mode {mode!r} is not one of {', '.join(MODES)}.", "use a mode the policy schema allows.")
    if on_timeout not in ON_TIMEOUT:
        raise ForecastError(f"on_timeout {on_timeout!r} is not one of {', '.join(ON_TIMEOUT)}.",
                            "use abort, suspend or postcopy.")
    if mode in (POSTCOPY, POSTCOPY_AFTER_PRECOPY) and not allow_postcopy:
        raise ForecastError(f"mode {mode} needs post-copy, but allow_postcopy is false.",
                            "use mode precopy or auto, or allow post-copy.")
    if max_downtime_ms <= 0 or max_downtime_cap_ms <= 0:
        raise ForecastError("max downtime and its cap must be positive.", "use the policy's values.")
    if postcopy_bandwidth is not None and postcopy_bandwidth <= 0:
        raise ForecastError(f"postcopy_bandwidth must be positive, got {postcopy_bandwidth!r}.",
                            "leave it unset to use the link bandwidth.")
    if deadline_s is None:
        deadline_s = deadline_for(ram_bytes, completion_timeout_per_gib_s, params, disk_bytes=disk_bytes)
    dirty = max(float(dirty_rate), params.dirty_rate_floor_bps)  # what a sample cannot tell from 0
    inp = _Inputs(float(ram_bytes), dirty, float(bandwidth), float(postcopy_bandwidth or bandwidth),
                  float(max_downtime_ms), float(max(max_downtime_cap_ms, max_downtime_ms)), float(deadline_s),
                  bool(allow_postcopy), on_timeout, bool(auto_converge), auto_converge_initial,
                  auto_converge_increment, float(transferable_ratio), dirty_working_set, params, float(disk_bytes))
    if mode == AUTO:
        result = _auto(inp)
    elif mode == PRECOPY:
        result = _explicit_precopy(inp)
    else:
        result = _postcopy(inp, mode)
    return dataclasses.replace(result, disk_bytes=int(disk_bytes)) if disk_bytes else result


def forecast_for_settings(settings: Mapping[str, Any], ram_bytes: float, dirty_rate: float, link_bandwidth: float,
                          *, transferable_ratio: float = 1.0, dirty_working_set: float | None = None,
                          disk_bytes: float = 0, params: ModelParams | None = None) -> Forecast:
    """Forecast with a policy's effective settings (policy.select_policy): its limits cap the link."""
    bw = float(link_bandwidth)
    if settings.get("bandwidth_mib"):
        bw = min(bw, settings["bandwidth_mib"] * MIB)
    pc_bw = float(link_bandwidth)
    if settings.get("postcopy_bandwidth_mib"):
        pc_bw = min(pc_bw, settings["postcopy_bandwidth_mib"] * MIB)
    return forecast(
        ram_bytes, dirty_rate, bw, mode=settings.get("mode", AUTO),
        allow_postcopy=settings.get("allow_postcopy", True),
        max_downtime_ms=settings.get("max_downtime_ms", 500),
        max_downtime_cap_ms=settings.get("max_downtime_cap_ms", 2000),
        completion_timeout_per_gib_s=settings.get("completion_timeout_per_gib_s", 150),
        on_timeout=settings.get("on_timeout", OnTimeout.ABORT), auto_converge=settings.get("auto_converge", False),
        auto_converge_initial=settings.get("auto_converge_initial"),
        auto_converge_increment=settings.get("auto_converge_increment"),
        postcopy_bandwidth=pc_bw, transferable_ratio=transferable_ratio, dirty_working_set=dirty_working_set,
        disk_bytes=disk_bytes, params=params)
