# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: drain_progress
type: aggregate
short_description: Print the live progress of a drain, one line per event
version_added: 0.1.0
description:
  - Not needed when the M(hvfleet.drain.drain_progress) task has C(follow=true) (as in the C(hvfleet.drain.drain_host)
    role). Its action plugin then prints each event itself as it arrives and marks its result C(printed), and this
    callback prints nothing more.
  - Prints the progress events that M(hvfleet.drain.drain_progress) returns while it follows a drain or restore
    in an C(until) loop next to an C(async) M(hvfleet.drain.host_drain) task, one line each, as each attempt of
    the loop returns. That is, when the run starts (VMs to move, blocked, forecast), when each VM starts (destination,
    mode and why, policy, predicted duration and downtime), percentage and ETA of long migrations, each step of a
    cold move (shut down, moved, started), when each VM finishes (seconds, downtime, data sent) or fails (reason,
    recovery), notes, and the end of the run.
  - A drain that ends C(not_empty) (VMs left on the host by their policy, C(on_unmigratable=leave)) ends with a
    warning, not a success, that names them (in the run's message) and says the host is not empty.
  - An aggregate callback, it only adds these lines next to the normal output of the stdout callback (which still
    prints its own C(FAILED - RETRYING) line for each attempt of the loop).
  - Events already printed (same host, run and sequence number) are not printed again. When several progress
    samples of one VM arrive together, only the latest is printed.
requirements:
  - enabled in C(callbacks_enabled) in C(ansible.cfg) (or C(ANSIBLE_CALLBACKS_ENABLED))
"""

from ansible import constants as C  # noqa: E402
from ansible.plugins.callback import CallbackBase  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.units import MIB, fmt_duration, fmt_mib  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import (  # noqa: E402
    Action,
    CycleState,
    Kind,
)

TONE_COLORS = {"ok": C.COLOR_OK, "error": C.COLOR_ERROR, "warn": C.COLOR_WARN, "start": C.COLOR_CHANGED,
               "progress": None, "info": None}
# the steps of a cold move that an operator must not miss: it did not happen, or not as planned
COLD_STEP_TONES = {"failed": "error", "shutdown_timed_out": "warn", "restarted_at_source": "warn"}


def fmt_clock(seconds):
    """Elapsed time since the run started, as M:SS (or H:MM:SS)."""
    total = int(seconds or 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _mode(event):
    mode = event.get("mode") or "?"
    if event.get("auto_converge"):
        mode += " + auto-converge"
    if event.get("mode_reason"):
        mode += f" ({event['mode_reason']})"
    return mode


def render_event(event):
    """(text, tone) for one progress event, or None for an event kind that is not shown."""
    # pylint: disable=too-many-return-statements
    kind = event.get("event")
    head = f"{event.get('host', '?')} {fmt_clock(event.get('t'))}"
    action = event.get("action") or "drain"
    vm = event.get("vm")
    where = f"{vm} -> {event.get('destination') or '?'}"
    if kind == "run_started":
        text = (f"{head} {action} started: {event.get('vms', 0)} VM(s) to move, {event.get('blocked', 0)} blocked, "
                f"forecast {fmt_duration(event.get('forecast_total_s'))}, up to {event.get('max_parallel', '?')} "
                f"at once")
        if event.get("resumed"):
            text += ", resuming the interrupted run from the journal"
        return text, "info"
    if kind == "note":
        return f"{head} {event.get('message', '')}", "info"
    if kind == "vm_started":
        if event.get("mode") == Kind.DEFINITION:
            return f"{head} {where}: moving the definition (the VM is shut off)", "start"
        if event.get("mode") == Kind.COLD:
            return _cold_started(head, where, event), "start"
        parts = [f"{head} {where}: started, {_mode(event)}"]
        if event.get("policy"):
            parts.append(f"policy {event['policy']}")
        if event.get("policy_reason"):
            parts[-1] += f" ({event['policy_reason']})"
        predicted = f"predicted {fmt_duration(event.get('predicted_duration_s'))}"
        if event.get("predicted_downtime_ms") is not None:
            predicted += f", downtime {event['predicted_downtime_ms']:.0f} ms"
        parts.append(predicted)
        if event.get("bandwidth_mib"):
            parts.append(f"bandwidth {event['bandwidth_mib']} MiB/s")
        return "; ".join(parts), "start"
    if kind == "vm_progress":
        text = f"{head} {where}: "
        text += f"{event['percent']:.0f}%" if event.get("percent") is not None else "running"
        if event.get("iteration"):
            text += f" of pass {event['iteration']}"
        if event.get("phase") and event.get("phase") not in ("precopy", "active"):
            text += f" ({event['phase']})"
        if event.get("eta_s") is not None:
            text += f", ETA {fmt_duration(event['eta_s'])}"
        details = []
        if event.get("remaining_bytes") is not None:
            details.append(f"{fmt_mib(event['remaining_bytes'])} left")
        if event.get("bandwidth_bps"):
            details.append(f"{event['bandwidth_bps'] / MIB:.1f} MiB/s")
        if event.get("elapsed_s") is not None:
            details.append(f"{fmt_duration(event['elapsed_s'])} so far")
        if details:
            text += f" ({', '.join(details)})"
        return text, "progress"
    if kind == "vm_cold_step":
        text = f"{head} {vm}: cold move, {event.get('step')} on {event.get('step_host')}"
        if event.get("message"):
            text += f": {event['message']}"
        return text, COLD_STEP_TONES.get(event.get("step"), "info")
    if kind == "vm_finished":
        if event.get("ok"):
            verb = "came home" if action == Action.RESTORE else "moved"
            if event.get("mode") == Kind.DEFINITION:
                return f"{head} {where}: definition {verb} in {fmt_duration(event.get('duration_s'))}", "ok"
            if event.get("mode") == Kind.COLD:
                outage = fmt_duration(event["downtime_ms"] / 1000) if event.get("downtime_ms") is not None else "?"
                return (f"{head} {where}: {verb} cold in {fmt_duration(event.get('duration_s'))}, outage {outage} "
                        "(its boot on top)"), "ok"
            text = f"{head} {where}: {verb} in {fmt_duration(event.get('duration_s'))}"
            if event.get("downtime_ms") is not None:
                text += f", downtime {event['downtime_ms']:.0f} ms"
            if event.get("bytes_sent") is not None:
                text += f", {fmt_mib(event['bytes_sent'])} sent"
            if event.get("mode"):
                text += f" ({event['mode']})"
            return text, "ok"
        text = f"{head} {where}: FAILED ({event.get('outcome') or 'error'}"
        if event.get("state") and event.get("state") != event.get("outcome"):
            text += f", now {event['state']}"
        text += f"): {event.get('message') or 'no reason given'}"
        if event.get("recovery"):
            text += f" Recovery: {event['recovery']}"
        return text, "error"
    if kind == "run_finished":
        text = (f"{head} {action} {event.get('state', 'ended')}: {event.get('moved', 0)} moved, "
                f"{event.get('failed', 0)} failed, {event.get('blocked', 0)} blocked, "
                f"{event.get('not_started', 0)} not started in {fmt_duration(event.get('duration_s'))}")
        if event.get("forecast_total_s") is not None:
            text += f" (forecast {fmt_duration(event['forecast_total_s'])})"
        if event.get("state") == CycleState.NOT_EMPTY:
            return _not_empty(text, event), "warn"
        ok = event.get("state") in (CycleState.DRAINED, CycleState.RESTORED) and not event.get("failed")
        return text, "ok" if ok else "error"
    return None


def _cold_started(head, where, event):
    """A cold move starting: the VM is about to be shut down, so say so and how long it is expected to be down
    (the planner's reason states the outage; without one, the forecast bound does)."""
    text = f"{head} {where}: moving cold (shut down, moved, started there)"
    if event.get("policy"):
        text += f", policy {event['policy']}"
    if event.get("mode_reason"):
        text += f": {event['mode_reason']}"
    elif event.get("predicted_downtime_ms") is not None:
        text += f": outage up to {fmt_duration(event['predicted_downtime_ms'] / 1000)} plus its boot"
    return text


def _not_empty(text, event):
    """A drain that moved all it could but left VMs on the host by policy: not a success (the host must not be
    rebooted) and not a failure. The event counts them; its message, the run's closing one, names them, why and
    the fix, so it follows on a line of its own."""
    count = event.get("left")
    host = event.get("host") or "the host"
    left = f"{count} VM(s)" if isinstance(count, int) else "VMs"
    text += f"; {host} is NOT empty: {left} left on it by policy (on_unmigratable: leave), do not reboot it"
    if event.get("message"):
        text += f"\n    {event['message']}"
    return text


def collapse(events):
    """Drop the progress samples of a VM that a later sample or its end in the same batch supersedes."""
    keep = []
    for index, event in enumerate(events):
        if event.get("event") == "vm_progress":
            later = events[index + 1:]
            if any(e.get("vm") == event.get("vm") and e.get("event") in ("vm_progress", "vm_finished")
                   for e in later):
                continue
        keep.append(event)
    return keep


def render_batch(events):
    """[(text, tone)] for the events one poll returned."""
    lines = []
    for event in collapse(list(events)):
        rendered = render_event(event)
        if rendered is not None:
            lines.append(rendered)
    return lines


def is_progress_result(data):
    return isinstance(data, dict) and isinstance(data.get("events"), list) and "progress_path" in data


class CallbackModule(CallbackBase):
    """Renders hvfleet.drain.drain_progress results as one line per event."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hvfleet.drain.drain_progress"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None, options=None):
        super().__init__(display=display, options=options)
        self._last_seq = {}

    def _fresh(self, events, host):
        fresh = []
        for event in events:
            if not isinstance(event, dict):
                continue
            key = (event.get("host") or host, event.get("run"))
            seq = event.get("seq")
            if isinstance(seq, int):
                if seq <= self._last_seq.get(key, 0):
                    continue
                self._last_seq[key] = seq
            fresh.append(event)
        return fresh

    def _show(self, result):
        data = result.result if hasattr(result, "result") else result._result  # pylint: disable=protected-access
        if not is_progress_result(data) or data.get("printed"):
            return  # not progress, or already printed as it arrived (drain_progress with follow)
        host = result.host.get_name() if getattr(result, "host", None) is not None else "?"
        for text, tone in render_batch(self._fresh(data["events"], host)):
            self._display.display(f"  {text}", color=TONE_COLORS.get(tone))

    def v2_runner_retry(self, result):
        self._show(result)

    def v2_runner_on_ok(self, result):
        self._show(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._show(result)
