# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of hvfleet.drain.drain_progress: carries the cursor from one `until` attempt to the next.

An `until` loop templates a task's arguments once, so `offset: "{{ progress.offset }}"` would read the
same bytes on every attempt. Ansible does update the task's registered variable after each attempt,
though, and hands it to the next one in `task_vars`: when that previous result follows the same
drain (same `job_id` and `since`), its cursor (`offset`, `run`, `seq`) replaces the arguments'.
The async job directory comes from the connection's `async_dir` shell option, as for async_status.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

CURSOR = ("offset", "run", "seq")


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


class ActionModule(ActionBase):
    """Run the drain_progress module with the cursor of the previous attempt."""

    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        previous = task_vars.get(self._task.register) if self._task.register else None
        args = continued_args(self._task.args, previous)
        if not args.get("async_dir"):
            args["async_dir"] = self.get_shell_option("async_dir", default="~/.ansible_async")
        result.update(self._execute_module(module_name="hvfleet.drain.drain_progress", module_args=args,
                                           task_vars=task_vars))
        return result
