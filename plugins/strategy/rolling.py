# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Strategy hvfleet.drain.rolling: the stock `free` strategy with admission control.

What is overridden from ansible-core's `free` strategy, and why (everything else is stock:
task queueing, result processing, includes, handlers, the final cleanup pass):

- `run()` reads the settings and every host's figures once, then hides the tasks of hosts that
  are not admitted yet: for those hosts it shadows the iterator's `get_next_task_for_host` with a
  gate answering "no task" (instance attribute, removed again when the play ends). The free
  loop then simply finds nothing to do for them, so it never queues their tasks and, when only
  non-admitted hosts are left, it ends the play as it would when every host is done. After the
  stock run it lists the hosts never admitted, marks them failed and breaks the playbook.
- `get_hosts_left()`, which the free loop calls at the top of each scheduling round (just after
  the previous round's results were processed), first runs an admission round: which admitted
  hosts are still in flight (blocked on a task, or with a next task), which finished or failed,
  then `rolling_admission.decide()` (pure, unit-tested) says who may start now. A host is
  admitted as soon as a slot frees up, so this is not batch-based like `serial`.

Gating the iterator rather than shortening `get_hosts_left()` keeps the free loop's round-robin
index valid (it indexes the list it got in the previous round) and keeps hosts in the list the
stock code uses for includes and the final pass.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: rolling
short_description: Roll maintenance through hosts under in-flight, failure-domain, capacity and window limits
description:
  - Runs each host through the play independently, like the C(free) strategy, but admits hosts into
    the play one by one. A host is I(in flight) from its admission until it has no task left
    (including handlers and rescue/always blocks).
  - At most O(hvfleet_rolling_max_in_flight) hosts are in flight, and at most one per failure
    domain (O(hvfleet_rolling_failure_domain_key)). The next host is admitted as soon as one
    finishes, not when a whole batch does (unlike C(serial)).
  - A host is admitted only if the hosts left in service can absorb its VMs (see
    O(hvfleet_rolling_capacity_check)).
  - Once more than O(hvfleet_rolling_max_failures) admitted hosts failed (or were unreachable), no
    host is admitted any more; hosts already in flight finish their play.
  - A host is admitted only inside its maintenance window (O(hvfleet_maintenance_window)); when
    the window closes, hosts in flight finish and nothing new starts.
  - Waiting hosts are considered in a deterministic order - by the O(hvfleet_rolling_order_key)
    value, then by inventory name; a host that cannot start yet (its domain is busy, it does not
    fit) does not hold back hosts behind it.
  - When the play ends with hosts never admitted, a warning lists each of them with the reason,
    they show in the recap with C(skipped=1), they are marked failed (so they appear in a retry
    file), the custom stat C(hvfleet_rolling_not_done) lists them, and the playbook stops there
    with exit code 2 - a CI job notices that the rollout is incomplete.
  - The custom stats C(hvfleet_rolling_admissions) (each admitted host with the hosts in flight
    then, in order) and C(hvfleet_rolling_settings) (the settings read) record the run for callbacks.
  - The O(hvfleet_rolling_max_in_flight), O(hvfleet_rolling_failure_domain_key),
    O(hvfleet_rolling_order_key), O(hvfleet_rolling_max_failures) and O(hvfleet_rolling_capacity_check)
    settings are read once when the play starts, from the variables of the play's hosts - inventory
    (group and host vars) as well as the play's C(vars), C(vars_files) and extra vars (C(-e)), which win
    over inventory as usual. They are play-wide, so every host of the play must get the same value.
  - The play does not start when a setting is wrong, with an error naming it and the fix - an unknown
    C(hvfleet_rolling_*) variable (a typo), a value that cannot be read (V(two) as a number), or hosts
    of the play with different values.
  - Per-host values (domain, order, memory figures, window) are read from each host's variables
    (inventory, facts and C(set_fact) results from earlier plays of the same run, play vars).
author: hvfleet maintainers (@hvfleet)
options:
  hvfleet_rolling_max_in_flight:
    description: Maximum number of hosts in flight at once. Keep C(forks) at least this large.
    type: int
    default: 1
    vars:
      - name: hvfleet_rolling_max_in_flight
  hvfleet_rolling_failure_domain_key:
    description:
      - Name of the host variable holding the host's failure domain (for example V(rack) or
        V(zone)); a dotted path such as V(hvfleet_hypervisor.rack) reads into a dictionary.
      - At most one host per failure domain is in flight. Hosts without that variable all share
        one domain (conservative, as an unknown rack cannot be assumed distinct).
      - Unset means no failure-domain limit.
    type: str
    vars:
      - name: hvfleet_rolling_failure_domain_key
  hvfleet_rolling_order_key:
    description:
      - Name (or dotted path) of the host variable giving the admission order. Numbers come
        first (ascending), then strings (ascending), then hosts without the variable; ties and
        hosts without it are ordered by inventory name.
      - Unset means order by inventory name only.
    type: str
    vars:
      - name: hvfleet_rolling_order_key
  hvfleet_rolling_max_failures:
    description:
      - Number of failed or unreachable admitted hosts tolerated. When more hosts than this
        failed, no new host is admitted. V(0) stops admission after the first failure.
      - A task failure that is rescued, or ignored with C(ignore_errors), is not a host failure.
    type: int
    default: 0
    vars:
      - name: hvfleet_rolling_max_failures
  hvfleet_rolling_capacity_check:
    description:
      - Admit a host only if the hosts remaining in service can absorb its VMs. The check is
        aggregate - the sum of C(hvfleet_vm_memory_mib) of every host out of service (in flight,
        failed, and the candidate) must not exceed the sum of C(hvfleet_free_memory_mib) of the
        hosts in service (all others). Per-VM placement is left to the drain itself.
      - Both figures are host variables in MiB, read once when the play starts - set them with
        C(set_fact) in an earlier play of the same run (for example from the drain forecast or
        libvirt facts) or in inventory.
      - When any host of the play lacks either figure, the check is skipped for the whole play
        and a warning says so.
    type: bool
    default: true
    vars:
      - name: hvfleet_rolling_capacity_check
  hvfleet_maintenance_window:
    description:
      - When hosts may be admitted. Either a daily UTC window V(HH:MM-HH:MM) (it may wrap
        midnight, V(24:00) is allowed as end), or a mapping with ISO 8601 C(start) and C(end)
        (a time without offset means UTC), or a list of those (open when any is open).
      - Read per host, so it may also be set in inventory per group or host; a host outside its
        window is not admitted. Hosts in flight when the window closes finish. The strategy does
        not wait for a window to open - with nothing in flight and every waiting host outside its
        window, the play ends and lists them.
      - Unset means always open.
    type: raw
    vars:
      - name: hvfleet_maintenance_window
notes:
  - Host variables read for capacity - C(hvfleet_vm_memory_mib) (memory of the VMs running on the
    host, MiB) and C(hvfleet_free_memory_mib) (memory the host can take on while in service, MiB).
  - Do not combine with C(serial) - each serial batch would be admitted separately and the failure
    count would restart with every batch. C(max_fail_percentage), C(any_errors_fatal) and
    C(run_once) behave as with the C(free) strategy (not supported).
  - Fact gathering of the play itself runs only once a host is admitted, so per-host figures
    must come from before the play.
seealso:
  - name: Rolling maintenance
    description: Operator guide for the rolling strategy (docs/ROLLING.md in the collection).
    link: https://github.com/hvfleet/drain/blob/main/docs/ROLLING.md
"""

EXAMPLES = r"""
- name: Drain hypervisors, two at a time, one per rack, in the night window
  hosts: hypervisors
  strategy: hvfleet.drain.rolling
  gather_facts: false
  vars:
    hvfleet_rolling_max_in_flight: 2
    hvfleet_rolling_failure_domain_key: rack
    hvfleet_rolling_order_key: maintenance_priority
    hvfleet_rolling_max_failures: 0
    hvfleet_maintenance_window: "22:00-04:00"
  tasks:
    - name: Drain, patch and return the host
      ansible.builtin.include_role:
        name: maintenance
"""

import dataclasses  # noqa: E402
import datetime  # noqa: E402

from ansible import constants as C  # noqa: E402
from ansible.errors import AnsibleError  # noqa: E402
from ansible.plugins.strategy.free import StrategyModule as FreeStrategyModule  # noqa: E402
from ansible.template import Templar  # noqa: E402
from ansible.utils.display import Display  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import rolling_admission as RA  # noqa: E402

display = Display()

_PREFIX = "hvfleet.drain.rolling"
_UNSET = object()


def _lookup(variables, path):
    """The value at a variable name or dotted path, or _UNSET."""
    value = variables
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _UNSET
        value = value[part]
    return value


class StrategyModule(FreeStrategyModule):
    """The free strategy, admitting hosts under the hvfleet_rolling_* limits (see module docstring)."""

    def __init__(self, tqm):
        super().__init__(tqm)
        self._rolling_settings = None
        self._rolling_hosts = []  # RA.Host, in admission order
        self._rolling_admitted = []  # names, in admission order
        self._rolling_finished = set()
        self._rolling_last = RA.Decision()
        self._rolling_stock_next = None
        self._rolling_reported = set()
        self._rolling_admissions = []  # {"host", "in_flight"} in admission order (custom stat)

    # ------------------------------------------------------------------ overrides

    def run(self, iterator, play_context):
        self._set_hosts_cache(iterator._play)
        self._rolling_configure(iterator)
        stock_next = iterator.get_next_task_for_host
        admitted = self._rolling_admitted

        def gated_next_task_for_host(host, peek=False):
            if host.name in admitted:
                return stock_next(host, peek=peek)
            return iterator.get_host_state(host), None

        self._rolling_stock_next = stock_next
        iterator.get_next_task_for_host = gated_next_task_for_host
        try:
            result = super().run(iterator, play_context)
        finally:
            del iterator.get_next_task_for_host
            stats = self._tqm._stats
            stats.set_custom_stats("hvfleet_rolling_admissions", list(self._rolling_admissions))
            if self._rolling_settings is not None:
                stats.set_custom_stats("hvfleet_rolling_settings", dataclasses.asdict(self._rolling_settings))
        return self._rolling_report(result)

    def get_hosts_left(self, iterator):
        hosts_left = super().get_hosts_left(iterator)
        if self._rolling_settings is not None:
            self._rolling_admit(iterator)
        return hosts_left

    # ------------------------------------------------------------------ reading settings

    def _rolling_templar(self, variables):
        return Templar(loader=self._loader, variables=variables)

    def _rolling_configure(self, iterator):
        play = iterator._play
        if play.serial:
            display.warning(f"{_PREFIX}: serial is set on play '{play.get_name()}'; each serial batch is admitted "
                            "separately and the failure count restarts with each batch. Remove serial.")
        hosts_vars = {name: self._variable_manager.get_vars(play=play, host=self._inventory.get_host(name),
                                                            _hosts=self._hosts_cache,
                                                            _hosts_all=self._hosts_cache_all)
                      for name in self._hosts_cache}
        if not hosts_vars:  # nobody to admit; still refuse a bad setting of the play
            hosts_vars = {"the play": self._variable_manager.get_vars(play=play, _hosts=self._hosts_cache,
                                                                      _hosts_all=self._hosts_cache_all)}
        try:
            settings = RA.read_settings({name: self._rolling_setting_values(name, host_vars)
                                         for name, host_vars in hosts_vars.items()})
        except RA.RollingConfigError as ex:
            raise AnsibleError(f"{_PREFIX}: {ex}") from ex
        self._rolling_settings = settings
        max_in_flight, max_failures = settings.max_in_flight, settings.max_failures
        domain_key, order_key = settings.failure_domain_key, settings.order_key

        hosts = [self._rolling_host(name, hosts_vars[name], domain_key, order_key) for name in self._hosts_cache]
        self._rolling_hosts = RA.order_hosts(hosts)

        forks = getattr(self._tqm, "_forks", None) or C.DEFAULT_FORKS
        if forks < max_in_flight:
            display.warning(f"{_PREFIX}: forks={forks} is below hvfleet_rolling_max_in_flight={max_in_flight}; "
                            "tasks of in-flight hosts will queue for workers.")
        if settings.capacity_check and not RA.capacity_known(self._rolling_hosts):
            missing = [h.name for h in self._rolling_hosts
                       if h.vm_memory_mib is None or h.free_memory_mib is None]
            display.warning(f"{_PREFIX}: capacity check skipped: hvfleet_vm_memory_mib or hvfleet_free_memory_mib "
                            f"undefined for {', '.join(missing)}.")
        display.display(f"{_PREFIX}: admission order: {', '.join(h.name for h in self._rolling_hosts)} "
                        f"(max in flight {max_in_flight}, failure domain key {domain_key or 'none'}, "
                        f"max failures {max_failures})")

    def _rolling_setting_values(self, host, host_vars):
        """The hvfleet_rolling_* variables a host of the play sees (inventory, play vars, -e), templated."""
        templar = self._rolling_templar(host_vars)
        values = {}
        for name in host_vars:
            if not name.startswith(RA.SETTING_PREFIX):
                continue
            try:
                values[name] = templar.template(host_vars[name])
            except AnsibleError as ex:
                raise AnsibleError(f"{_PREFIX}: {name} of {host} cannot be read: {ex}. Fix: give it a value that "
                                   "templates without error when the play starts.") from ex
        return values

    def _rolling_host(self, name, host_vars, domain_key, order_key):
        templar = self._rolling_templar(host_vars)

        def value(path):
            found = _lookup(host_vars, str(path))
            return None if found is _UNSET else templar.template(found)

        def mib(variable):
            found = value(variable)
            if found is None or found == "":
                return None
            try:
                figure = float(found)
            except (TypeError, ValueError):
                raise AnsibleError(f"{_PREFIX}: {variable} of {name} must be a number of MiB, got {found!r}.") from None
            if figure < 0:
                raise AnsibleError(f"{_PREFIX}: {variable} of {name} must not be negative, got {found!r}.")
            return figure

        domain = None
        if domain_key:
            found = value(domain_key)
            domain = RA.UNDEFINED_DOMAIN if found is None or found == "" else str(found)
        try:
            window = RA.parse_window(value("hvfleet_maintenance_window"))
        except RA.RollingConfigError as ex:
            raise AnsibleError(f"{_PREFIX}: host {name}: {ex}") from ex
        return RA.Host(
            name=name,
            domain=domain,
            order=value(order_key) if order_key else None,
            vm_memory_mib=mib("hvfleet_vm_memory_mib"),
            free_memory_mib=mib("hvfleet_free_memory_mib"),
            window=window,
        )

    # ------------------------------------------------------------------ admission rounds

    def _rolling_admit(self, iterator):
        unreachable = self._tqm._unreachable_hosts
        failed_hosts = self._tqm._failed_hosts
        in_flight, failed = [], []
        for name in self._rolling_admitted:
            host = self._inventory.get_host(name)
            if name in unreachable or name in failed_hosts or iterator.is_failed(host):
                failed.append(name)
            if name in self._rolling_finished:
                continue
            if name in unreachable:
                done = True
            elif self._blocked_hosts.get(name, False):
                done = False
            else:
                done = self._rolling_stock_next(host, peek=True)[1] is None
            if done:
                self._rolling_finished.add(name)
                display.display(f"{_PREFIX}: {name} finished{' (failed)' if name in failed else ''}")
            else:
                in_flight.append(name)

        decision = RA.decide(self._rolling_settings, self._rolling_hosts, in_flight=in_flight,
                             finished=self._rolling_finished, failed=failed,
                             now=datetime.datetime.now(datetime.UTC))
        self._rolling_last = decision
        for name in decision.admit:
            self._rolling_admitted.append(name)
            in_flight.append(name)
            self._rolling_admissions.append({"host": name, "in_flight": list(in_flight)})
            display.display(f"{_PREFIX}: admitting {name} (in flight {len(in_flight)}/"
                            f"{self._rolling_settings.max_in_flight}: {', '.join(in_flight)})")
        self._rolling_announce(decision, in_flight, failed)

    def _rolling_announce(self, decision, in_flight, failed):
        """Say once why admission stopped (failures, window), while hosts still wait."""
        reasons = list(decision.waiting.values())
        if not reasons:
            return
        if all(r.startswith(RA.REASON_FAILURES) for r in reasons) and "failures" not in self._rolling_reported:
            self._rolling_reported.add("failures")
            display.warning(f"{_PREFIX}: admission stopped: {len(failed)} host(s) failed ({', '.join(failed)}), "
                            f"more than hvfleet_rolling_max_failures={self._rolling_settings.max_failures}; "
                            f"hosts in flight finish: {', '.join(in_flight) or 'none'}.")
        elif (not decision.admit and all(r.startswith(RA.REASON_WINDOW) for r in reasons)
              and "window" not in self._rolling_reported):
            self._rolling_reported.add("window")
            display.warning(f"{_PREFIX}: outside the maintenance window: no new host admitted; "
                            f"hosts in flight finish: {', '.join(in_flight) or 'none'}.")

    # ------------------------------------------------------------------ end of play

    def _rolling_report(self, result):
        not_done = [h.name for h in self._rolling_hosts if h.name not in self._rolling_admitted]
        if not not_done:
            return result
        waiting = self._rolling_last.waiting
        listed = [{"host": name, "reason": waiting.get(name, "not admitted")} for name in not_done]
        display.warning(f"{_PREFIX}: {len(not_done)} host(s) never admitted, not done:\n"
                        + "\n".join(f"  - {item['host']}: {item['reason']}" for item in listed))
        stats = self._tqm._stats
        for name in not_done:
            stats.increment("skipped", name)
            self._tqm._failed_hosts[name] = True
        stats.set_custom_stats("hvfleet_rolling_not_done", listed)
        return self._tqm.RUN_FAILED_BREAK_PLAY
