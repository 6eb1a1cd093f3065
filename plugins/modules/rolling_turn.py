#!/usr/bin/python
# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# The work is done by the action plugin of the same name (plugins/action/rolling_turn.py), on the controller;
# this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rolling_turn
short_description: Wait for a host's turn in a rolling maintenance, and give it back
version_added: 0.1.0
description:
  - Admission control for rolling maintenance under ansible-core's own C(free) strategy. At the start of a host's
    maintenance, O(state=acquired) waits until the host may start; at its end (in an C(always) block),
    O(state=released) gives the turn back with its O(outcome).
  - A host is admitted only while fewer than C(hvfleet_rolling_max_in_flight) hosts hold a turn, no other host of
    its failure domain (C(hvfleet_rolling_failure_domain_key)) holds one, the hosts left in service can absorb its
    VMs (C(hvfleet_rolling_capacity_check), from C(hvfleet_vm_memory_mib) and C(hvfleet_free_memory_mib)), no more
    than C(hvfleet_rolling_max_failures) hosts of the play gave their turn back with O(outcome=failed), and inside
    its C(hvfleet_maintenance_window). These are the rules and the settings of the C(hvfleet.drain.rolling)
    strategy (see its documentation for each setting), decided by the same code.
  - The settings are read from each host's variables - inventory (group and host vars), facts, extra vars
    (C(-e)) - and from the play's own variables (C(vars), C(vars_files)), which apply to every host. An unknown
    C(hvfleet_rolling_*) variable, a value that cannot be read, or hosts of the play with different values fail
    the task with an error naming the setting.
  - Waiting hosts are admitted in order (C(hvfleet_rolling_order_key), then inventory name). A host waits for the
    hosts of the play ahead of it that have not asked yet, for at most O(arrival_timeout) seconds; a host that
    cannot start (its failure domain is busy, it does not fit) does not hold back the hosts behind it.
  - The hosts meet in a ledger file on the controller (O(ledger)), read and written under a lock, so two
    ansible-playbook runs on the same controller with the same ledger share one in-flight limit and the failure
    domains; the failure count is per play of a run. A turn belongs to the ansible-playbook process that took it
    (its pid and start time); a turn of a run that has ended, or crashed, counts as released.
  - While waiting it prints whom the host waits for, each time the reason changes. When failures stop admission,
    or a closed window leaves nothing in flight, the waiting hosts fail at once with the reason; after
    O(timeout) seconds of waiting a host fails, naming whom it waited for.
  - Under the C(hvfleet.drain.rolling) strategy the task does nothing (the strategy admits the hosts).
author:
  - hvfleet maintainers (@hvfleet)
options:
  state:
    description:
      - V(acquired) waits for the host's turn and marks it in flight; V(released) marks its turn ended. Releasing
        a host that holds no turn (its acquire failed, or it was released already) changes nothing.
    type: str
    required: true
    choices: [acquired, released]
  outcome:
    description: With O(state=released), how the host's maintenance ended; V(failed) counts against
      C(hvfleet_rolling_max_failures).
    type: str
    choices: [ok, failed]
    default: ok
  timeout:
    description: Seconds to wait for the turn before failing.
    type: float
    default: 14400
  poll_interval:
    description: Seconds between two looks at the ledger while waiting.
    type: float
    default: 2
  arrival_timeout:
    description:
      - Seconds a waiting host leaves to the hosts of the play ahead of it in order that have not asked for their
        turn yet, so that the admission order does not depend on which host reaches the task first. A host that
        does not ask within this time (it failed before, or skips the task) no longer holds the others back.
    type: float
    default: 30
  ledger:
    description:
      - The ledger file on the controller (created with its directory). Runs that use the same file share their
        limits.
    type: path
    default: ~/.ansible/hvfleet/rolling-turns.json
attributes:
  check_mode:
    description: Runs the same in check mode (the ledger is written), so a C(--check) run rolls like a real one.
    support: full
  diff_mode:
    description: Returns no diff.
    support: none
notes:
  - Run the play with C(strategy=free) and at least as many forks as the play has hosts - a waiting host holds
    its fork. Under C(linear) every host would wait at this task for the others; the task refuses it.
  - A host that becomes unreachable during its turn does not run its C(always) block; its turn stays in flight
    until the run ends. The hosts waiting for that slot give up after O(timeout).
  - Use it in one play per run for a given set of hosts; each play of a run is a rollout of its own.
seealso:
  - name: Rolling maintenance
    description: Operator guide (docs/ROLLING.md in the collection).
    link: https://github.com/hvfleet/drain/blob/main/docs/ROLLING.md
"""

EXAMPLES = r"""
- name: Patch the hypervisors, two at a time, one per rack
  hosts: hypervisors
  strategy: free
  gather_facts: false
  vars:
    hvfleet_rolling_max_in_flight: 2
    hvfleet_rolling_failure_domain_key: rack
  tasks:
    - name: Take the host's turn, do its maintenance, give the turn back
      block:
        - name: Wait for the host's turn
          hvfleet.drain.rolling_turn:
            state: acquired

        - name: Do the maintenance
          ansible.builtin.include_role:
            name: maintenance

        - name: Note that the maintenance went through
          ansible.builtin.set_fact:
            maintenance_outcome: ok
      always:
        - name: Give the turn back
          hvfleet.drain.rolling_turn:
            state: released
            outcome: "{{ maintenance_outcome | default('failed') }}"
"""

RETURN = r"""
admitted:
  description: Whether the host holds its turn (O(state=acquired)).
  returned: state is acquired
  type: bool
  sample: true
admitted_by:
  description: V(strategy) when the play runs under the hvfleet.drain.rolling strategy and the task did nothing.
  returned: under the rolling strategy
  type: str
waited:
  description: Seconds the host waited for its turn.
  returned: state is acquired
  type: float
  sample: 12.5
in_flight:
  description: The hosts in flight once this one was admitted (hosts of other runs as C(host (run pid N))).
  returned: when admitted
  type: list
  elements: str
  sample: [hv1, hv3]
reason:
  description: Why the host was not admitted.
  returned: when not admitted
  type: str
  sample: "admission stopped after failures (1 failed, threshold 0)"
waits_for:
  description: The hosts it waited for when it gave up.
  returned: when not admitted
  type: list
  elements: str
  sample: [hv1]
released:
  description: Whether a turn was given back (O(state=released)).
  returned: state is released
  type: bool
outcome:
  description: The outcome recorded for the turn.
  returned: when released
  type: str
ledger:
  description: Path of the ledger file.
  returned: when the ledger was used
  type: str
  sample: /root/.ansible/hvfleet/rolling-turns.json
"""
