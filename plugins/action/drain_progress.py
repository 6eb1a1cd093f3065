# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of hvfleet.drain.drain_progress: follows a drain on the controller, or carries an `until` cursor.

With `follow: true` the plugin itself calls the module again and again with its cursor until the drain
has ended (or `follow_timeout` passes) and prints each new event as it arrives, one line each, through
Ansible's Display: no `until` loop, no `FAILED - RETRYING` lines, no callback to enable. The result is
marked `printed`, so the hvfleet.drain.drain_progress callback (when enabled) does not print it again.

While it follows, SIGINT and SIGTERM (Ctrl-C on the controller: ansible-core 2.18 delivers it to the
worker process from the terminal, 2.19 forwards it from the main process) make it tell the operator
that the drain goes on on the host, with the commands to stop it or to follow it again, before the
worker ends as it would have. The worker's stderr is that of ansible-playbook in 2.18; 2.19 detaches
workers from the terminal, so the line goes to the stderr of the parent (the ansible-playbook process).

Without `follow` it runs the module once. An `until` loop templates a task's arguments once, so
`offset: "{{ progress.offset }}"` would read the same bytes on every attempt. Ansible does update the
task's registered variable after each attempt, and hands it to the next one in `task_vars`: when that
previous result follows the same drain (same `job_id` and `since`), its cursor (`offset`, `run`,
`seq`) replaces the arguments'. The async job directory comes from the connection's `async_dir` shell
option, as for async_status.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import stat
import sys
import time

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.module_utils.common.validation import check_type_bool, check_type_float
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.hvfleet.drain.plugins.callback.drain_progress import TONE_COLORS, render_batch

display = Display()

CURSOR = ("offset", "run", "seq")
DEFAULT_STATE_DIR = "/var/lib/hvfleet"
FAILURES_TOLERATED = 3  # consecutive failed polls (a dropped SSH session) before following gives up


def registered_name(register):
    """The variable a task registers into: `register` is that name, or (ansible-core 2.21+, register projections)
    a mapping of names to expressions, whose first name holds the task's result."""
    if isinstance(register, dict):
        return next(iter(register), None)
    return register or None


def continued_args(args, previous):
    """The module arguments for this attempt: `args`, with the cursor of `previous` when it follows the same drain."""
    args = dict(args)
    if not isinstance(previous, dict) or "progress_path" not in previous or previous.get("finished"):
        return args
    if not (args.get("job_id") or args.get("since")):
        return args  # nothing tells this drain from an earlier one: start from the arguments
    if previous.get("job_id") != args.get("job_id") or previous.get("since") != args.get("since"):
        return args
    for key in CURSOR:
        if previous.get(key) is not None:
            args[key] = previous[key]
    return args


def fresh_events(events, seen):
    """The events not delivered before (by host, run and seq); `seen` is updated."""
    fresh = []
    for event in events or []:
        if not isinstance(event, dict):
            continue
        key = (event.get("host"), event.get("run"), event.get("seq"))
        if event.get("seq") is not None and key in seen:
            continue
        seen.add(key)
        fresh.append(event)
    return fresh


def playbook_command(argv, host, state):
    """The ansible-playbook command line that was run, with `-e drain_host_state=STATE` (and `-e target=HOST`
    unless given) added (extra vars given later win), or None when this is not an ansible-playbook run."""
    if not argv or "ansible-playbook" not in os.path.basename(argv[0]):
        return None
    program = os.path.basename(argv[0])
    if shutil.which(program) != argv[0]:
        program = argv[0]
    given = {argv[i + 1] for i in range(1, len(argv) - 1) if argv[i] in ("-e", "--extra-vars")}
    target = [] if f"target={host}" in given else ["-e", f"target={host}"]
    return shlex.join([program, *argv[1:], *target, "-e", f"drain_host_state={state}"])


def interrupt_message(host, action, state_dir, job_id, argv):
    """What the operator is told when the controller is interrupted while following a drain (or restore)."""
    what = action if action in ("drain", "restore") else "drain (or restore)"
    lines = [f"Interrupted: only this playbook stopped. The {what} CONTINUES on {host}"
             + (f" (async job {job_id})" if job_id else "") + "."]
    stop = playbook_command(argv, host, "cancelled")
    follow = playbook_command(argv, host, "followed")
    if stop:
        lines.append(f"  To stop it:   {stop}")
        lines.append(f"  To follow it: {follow}")
    module_args = "state=cancelled" + ("" if state_dir == DEFAULT_STATE_DIR else f" state_dir={state_dir}")
    lines.append(f"  Or: ansible {host} -m hvfleet.drain.host_drain -a '{module_args}'"
                 f" (the progress events are in {os.path.join(state_dir, 'drain-progress.jsonl')} on {host})")
    return "\n".join(lines) + "\n"


def _is_devnull(fd):
    try:
        st = os.fstat(fd)
        null = os.stat(os.devnull)
    except OSError:
        return True
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev


def tell_operator(text):
    """Write `text` where the operator sees it now, even while ansible-playbook is going down: this process's
    stderr when it is a real one (ansible-core 2.18), else the stderr of the parent ansible-playbook process
    (2.19 points a worker's stdio at /dev/null). Returns whether it was written."""
    data = text.encode("utf-8", "replace")
    if not _is_devnull(2):
        with contextlib.suppress(OSError):
            os.write(2, data)
            return True
    with contextlib.suppress(OSError):
        fd = os.open(f"/proc/{os.getppid()}/fd/2", os.O_WRONLY | os.O_APPEND | os.O_NOCTTY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return True
    return False


@contextlib.contextmanager
def interrupt_notice(message):
    """While inside: on SIGINT or SIGTERM write `message()` for the operator, then act as before (the worker's own
    handler, or KeyboardInterrupt). Outside the main thread (no signal handlers) it does nothing."""
    told = []
    previous = {}

    def handler(signum, frame):
        if not told:
            told.append(tell_operator(message()))
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        previous.clear()
    try:
        yield
    finally:
        for sig, before in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, before if before is not None else signal.SIG_DFL)


class ActionModule(ActionBase):
    """Run the drain_progress module: once, continuing an `until` loop's cursor, or following the drain to its end."""

    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        try:
            follow = check_type_bool(args.pop("follow", False))
            timeout = check_type_float(args.pop("follow_timeout", 0) or 0)
        except TypeError as exc:
            raise AnsibleActionFail(f"follow / follow_timeout: {exc}") from None
        if not args.get("async_dir"):
            args["async_dir"] = self.get_shell_option("async_dir", default="~/.ansible_async")
        if follow and not args.get("mark"):
            result.update(self._follow(args, timeout, task_vars))
            return result
        name = registered_name(self._task.register)
        previous = task_vars.get(name) if name else None
        args = continued_args(args, previous)
        result.update(self._execute_module(module_name="hvfleet.drain.drain_progress", module_args=args,
                                           task_vars=task_vars))
        return result

    def _poll(self, args, cursor, task_vars):
        try:
            return self._execute_module(module_name="hvfleet.drain.drain_progress",
                                        module_args=dict(args, **cursor), task_vars=task_vars)
        except AnsibleConnectionFailure as exc:
            return {"failed": True, "unreachable": True, "msg": str(exc)}

    def _follow(self, args, timeout, task_vars):
        host = self._task.delegate_to or task_vars.get("inventory_hostname") or "the host"
        state_dir = args.get("state_dir") or DEFAULT_STATE_DIR
        action = []  # the drain's or restore's, from its events

        def message():
            return interrupt_message(host, action[-1] if action else None, state_dir, args.get("job_id"), sys.argv)

        deadline = time.monotonic() + timeout if timeout > 0 else None
        cursor = {k: args.pop(k) for k in CURSOR if args.get(k) is not None}
        seen = set()
        kept = []
        failures = 0
        idle = 0
        last = {}
        with interrupt_notice(message):
            while True:
                res = self._poll(args, cursor, task_vars)
                if res.get("failed") or res.get("unreachable"):
                    failures += 1
                    if failures > FAILURES_TOLERATED:
                        return dict(res, failed=True, printed=True, events=kept,
                                    msg=f"Cannot follow the progress on {host} any more: {res.get('msg')} "
                                        "The drain itself goes on there; follow it again later.")
                    time.sleep(min(2.0 * failures, 10.0))  # a short pause before asking the host again
                    continue
                failures = 0
                last = res
                cursor = {k: res[k] for k in CURSOR if res.get(k) is not None}
                fresh = fresh_events(res.get("events"), seen)
                action.extend(e["action"] for e in fresh[-1:] if e.get("action"))
                for text, tone in render_batch(fresh):
                    display.display(f"  {text}", color=TONE_COLORS.get(tone))
                kept.extend(e for e in fresh if e.get("event") != "vm_progress")
                if res.get("finished"):
                    break
                idle = idle + 1 if res.get("running") is False and not fresh else 0
                if not args.get("job_id") and idle >= 2:
                    # no drain held the lock before this poll read the events to their end: nothing more will come
                    if not seen:
                        display.display(f"  No drain or restore is running on {host}.")
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    return dict(res, failed=True, printed=True, events=kept,
                                msg=f"The drain on {host} did not end within follow_timeout ({timeout:.0f} s); "
                                    "it goes on there. Follow it again, or stop it with state=cancelled.")
        return dict(last, events=kept, printed=True, changed=False)
