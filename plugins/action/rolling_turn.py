# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of hvfleet.drain.rolling_turn: wait for a host's turn in a rolling play, give it back.

Runs on the controller only (no module, no connection). Each host of a `strategy: free` play runs it in its own
worker process; they meet in the ledger (module_utils/fleet/rolling_ledger.py), a JSON file under an flock.
`state: acquired` registers the host as waiting, then polls: under the lock it asks rolling_ledger.consider()
(rolling_admission.decide() over the ledger's entries) whether the host may start, marks it in flight when so,
and otherwise sleeps `poll_interval` and asks again until `timeout`. `state: released` marks the turn ended with
its outcome. The run that owns an entry is the ansible-playbook process: a worker is forked from it, so it is the
worker's parent (pid plus start time; see rolling_ledger.Run).

The settings are read as the rolling strategy reads them (rolling_admission.read_settings): each host of the play
from its hostvars (inventory, facts, extra vars), with what this host sees beyond its hostvars (play vars,
vars_files, role or block vars) applied to every host.
"""

from __future__ import annotations

import os

from ansible import constants as C
from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import rolling_admission as RA
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import rolling_ledger as RL

display = Display()

NAME = "hvfleet.drain.rolling_turn"
DEFAULT_LEDGER = "~/.ansible/hvfleet/rolling-turns.json"
STRATEGY_PLUGIN = ("hvfleet.drain.rolling",)
LOCKSTEP = ("linear", "ansible.builtin.linear", "debug", "ansible.builtin.debug")

ARGUMENT_SPEC = {
    "state": {"type": "str", "required": True, "choices": ["acquired", "released"]},
    "outcome": {"type": "str", "choices": ["ok", "failed"], "default": "ok"},
    "timeout": {"type": "float", "default": 14400.0},
    "poll_interval": {"type": "float", "default": 2.0},
    "arrival_timeout": {"type": "float", "default": 30.0},
    "ledger": {"type": "path", "default": DEFAULT_LEDGER},
}


def _vars_of(hostvars, name):
    try:
        return hostvars[name]
    except KeyError:
        return {}


def _play_of(task):
    try:
        return task.get_play()
    except AttributeError:
        return None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        host = task_vars["inventory_hostname"]
        play = _play_of(self._task)
        strategy = (getattr(play, "strategy", None) or C.DEFAULT_STRATEGY) if play is not None else C.DEFAULT_STRATEGY
        if strategy in STRATEGY_PLUGIN:
            result.update(changed=False, admitted=True, admitted_by="strategy",
                          msg=f"{host}: admitted by the {strategy} strategy; the ledger is not used.")
            return result
        try:
            if args["state"] == "released":
                return self._release(result, args, task_vars, host, play)
            return self._acquire(result, args, task_vars, host, play, strategy)
        except HvfleetError as ex:
            result.update(failed=True, msg=f"{NAME}: {ex}")
            return result

    # ------------------------------------------------------------------ identity

    @staticmethod
    def _rollout(task_vars, play):
        run = RL.run_of(os.getppid())
        play_id = getattr(play, "_uuid", None) or task_vars.get("ansible_play_name", "play")
        return run, f"{run.key}/{play_id}"

    # ------------------------------------------------------------------ settings and hosts

    def _template(self, name, value, host):
        try:
            return self._templar.template(value)
        except AnsibleError as ex:
            raise RA.RollingConfigError(f"{name} of {host} cannot be read: {ex}.",
                                        "give it a value that templates without error.") from None

    def _settings_and_hosts(self, task_vars, host):
        hostvars = task_vars.get("hostvars", {})
        play_hosts = list(task_vars.get("ansible_play_hosts_all") or [host])
        own_inventory = _vars_of(hostvars, host)
        own = {n: self._template(n, task_vars[n], host) for n in task_vars if n.startswith(RA.SETTING_PREFIX)}
        play_level = {}
        for name, value in own.items():
            if name not in own_inventory or self._template(name, own_inventory[name], host) != value:
                play_level[name] = value
        values_by_host = {}
        for name in play_hosts:
            if name == host:
                values_by_host[name] = own
                continue
            their = _vars_of(hostvars, name)
            values = {n: self._template(n, their[n], name) for n in their if n.startswith(RA.SETTING_PREFIX)}
            values.update(play_level)
            values_by_host[name] = values
        settings = RA.read_settings(values_by_host)

        def value_of(variables, name):
            def value(path):
                found = RL.lookup(variables, str(path))
                return None if found is None else self._template(path, found, name)
            return value

        hosts = []
        for name in play_hosts:
            variables = task_vars if name == host else _vars_of(hostvars, name)
            hosts.append(RL.make_host(name, value_of(variables, name), settings))
        return settings, hosts

    # ------------------------------------------------------------------ acquire

    def _acquire(self, result, args, task_vars, host, play, strategy):
        if strategy in LOCKSTEP:
            raise RA.RollingConfigError(
                f"the play runs with strategy {strategy}: every host would wait at this task for the others, "
                "so the host admitted first could never go on.",
                "set strategy: free on the play (hvfleet.drain.rolling also works; then this task is a no-op).")
        settings, hosts = self._settings_and_hosts(task_vars, host)
        batch = list(task_vars.get("ansible_play_batch") or [host])
        forks = int(task_vars.get("ansible_forks") or C.DEFAULT_FORKS)
        if forks < len(batch):
            raise RA.RollingConfigError(
                f"forks={forks} is below the {len(batch)} hosts of the play: each host waiting for its turn holds a "
                "fork, so waiting hosts could take every fork while the host in flight needs one.",
                f"run with at least -f {len(batch)} (or forks in ansible.cfg).")
        run, rollout = self._rollout(task_vars, play)
        ledger = RL.Ledger(args["ledger"])
        request = RL.Request(ledger=ledger, run=run, rollout=rollout, host=host, hosts=hosts, settings=settings,
                             batch=tuple(batch), play=str(task_vars.get("ansible_play_name", "")))

        def say(turn):
            whom = ", ".join(turn.waits_for) or "nobody"
            display.display(f"{NAME}: {host} waits: {turn.reason} (waiting for {whom})")

        got = RL.wait_turn(request, args["timeout"], args["poll_interval"], args["arrival_timeout"], say=say)
        turn, waited = got.turn, round(got.waited, 1)
        result.update(admitted=turn.admitted, waited=waited, ledger=ledger.path)
        if got.already:
            result.update(changed=False, in_flight=[host], msg=f"{host} already holds its turn.")
        elif turn.admitted:
            in_flight = list(turn.in_flight) + [host]
            display.display(f"{NAME}: admitting {host} (in flight {len(in_flight)}/{settings.max_in_flight}: "
                            f"{', '.join(in_flight)})")
            result.update(changed=True, in_flight=in_flight,
                          msg=f"{host} admitted after {waited:g}s (in flight: {', '.join(in_flight)}).")
        elif got.timed_out:
            result.update(failed=True, reason=turn.reason, waits_for=list(turn.waits_for),
                          msg=f"{NAME}: {host} not admitted within timeout={args['timeout']:g}s: {turn.reason} "
                              f"(waiting for {', '.join(turn.waits_for) or 'nobody'}). Fix: raise timeout, or see "
                              f"why the hosts it waits for do not finish (ledger {ledger.path}).")
        else:
            result.update(failed=True, reason=turn.reason, waits_for=list(turn.waits_for),
                          msg=f"{NAME}: {host} not admitted: {turn.reason}.")
        return result

    # ------------------------------------------------------------------ release

    def _release(self, result, args, task_vars, host, play):
        _run, rollout = self._rollout(task_vars, play)
        ledger = RL.Ledger(args["ledger"])
        released = RL.give_back(ledger, rollout, host, args["outcome"])
        if not released:
            result.update(changed=False, released=False, ledger=ledger.path,
                          msg=f"{host} held no turn (nothing to release).")
            return result
        outcome = args["outcome"]
        display.display(f"{NAME}: {host} finished{' (failed)' if outcome == RL.FAILED else ''}")
        result.update(changed=True, released=True, outcome=outcome, ledger=ledger.path,
                      msg=f"{host} gave its turn back ({outcome}).")
        return result
