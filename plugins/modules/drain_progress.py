#!/usr/bin/python
# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: drain_progress
short_description: Read the live progress events of a drain or restore running on a hypervisor
version_added: 0.1.0
description:
  - Reads the progress events that M(hvfleet.drain.host_drain) appends to C(drain-progress.jsonl) in O(state_dir)
    (VM started, percentage and ETA of long migrations, VM finished, run finished), from a cursor on, and says
    whether the drain has ended. Read-only.
  - Meant for an C(until) loop next to a M(hvfleet.drain.host_drain) task started with C(async) and C(poll=0);
    the C(hvfleet.drain.drain_progress) callback plugin prints the events it returns as they arrive.
  - Inside an C(until) loop the task's arguments are templated once, so the cursor cannot be passed from one
    attempt to the next by templating. The action plugin of this module continues from the previous attempt's
    result (the task's registered variable) instead, when that result follows the same O(job_id); give the task a
    C(register).
  - The events file is emptied when a run starts. Events older than O(since) (a time read on the same host before
    the drain was launched, the RV(now) of an earlier call) belong to an earlier run and are skipped.
author:
  - hvfleet maintainers (@hvfleet)
extends_documentation_fragment:
  - hvfleet.drain.attributes.read_only
options:
  state_dir:
    description: Directory of the drain journal and progress events on the host.
    type: path
    default: /var/lib/hvfleet
  job_id:
    description:
      - The C(ansible_job_id) of the asynchronous M(hvfleet.drain.host_drain) task. The drain has ended when that
        job has (its results file in O(async_dir) holds the module's result, or is gone).
      - Without it, the drain has ended when its C(run_finished) event was read.
    type: str
  async_dir:
    description:
      - Directory of the async job results on the host. The action plugin sets it from the connection's
        C(async_dir) shell option, as M(ansible.builtin.async_status) does.
    type: path
    default: ~/.ansible_async
  since:
    description: Skip events written before this time (host clock, ISO 8601 as in RV(now)).
    type: str
  offset:
    description: Byte offset in the events file to read from (the cursor; see the description).
    type: int
    default: 0
  run:
    description: Id of the run being followed (the cursor); the first run found after O(since) when not set.
    type: str
  seq:
    description: Sequence number of the last event already delivered (the cursor).
    type: int
    default: 0
  mark:
    description:
      - Read nothing, return no events; only mark where a new drain starts. RV(now) is the host's time to give
        as O(since) to the calls that follow the drain, so that events of earlier runs are skipped.
    type: bool
    default: false
  wait:
    description:
      - Long poll. Wait up to this many seconds for something to report. A VM starting or finishing, a note, the
        end of the run or of the job returns at once; progress samples are collected until the time is up.
    type: float
    default: 0
  follow:
    description:
      - Follow the drain to its end on the controller. The action plugin calls the module again and again with its
        cursor, each call a long poll of O(wait) seconds, and prints each new event as it arrives (one line each,
        through Ansible's display), without an C(until) loop or a callback to enable. The task returns once the
        drain has ended, with the events other than C(vm_progress) samples in RV(events) and RV(printed) set.
      - Interrupting C(ansible-playbook) meanwhile (Ctrl-C) prints that the drain goes on on the host, and the
        commands to stop it (C(-e drain_host_state=cancelled)) or to follow it again (C(-e drain_host_state=followed)).
    type: bool
    default: false
  follow_timeout:
    description:
      - With O(follow), give up following after this many seconds (the drain goes on on the host) and fail.
        V(0) follows until the drain ends.
    type: float
    default: 0
notes:
  - Run it where M(hvfleet.drain.host_drain) runs (the same host, user and C(become)), so that it sees the same
    state directory and async job directory.
seealso:
  - module: hvfleet.drain.host_drain
  - module: ansible.builtin.async_status
"""

EXAMPLES = r"""
- name: Mark where the progress events of the new drain will start
  hvfleet.drain.drain_progress:
    mark: true
  register: before

- name: Start the drain in the background
  hvfleet.drain.host_drain:
    destinations: "{{ destinations }}"
  async: 21600
  poll: 0
  register: job

- name: Follow the drain (the hvfleet.drain.drain_progress callback prints each event)
  hvfleet.drain.drain_progress:
    job_id: "{{ job.ansible_job_id }}"
    since: "{{ before.now }}"
    wait: 15
  register: progress
  until: progress.finished
  retries: 1500
  delay: 1

- name: Collect the drain's result
  ansible.builtin.async_status:
    jid: "{{ job.ansible_job_id }}"
  register: drained
  until: drained is finished
  retries: 30
  delay: 1
"""

RETURN = r"""
events:
  description:
    - The new events, oldest first. Every event has the keys below; the other keys depend on its C(event) kind
      (see the C(journal.py) documentation in the collection).
    - C(run_started) adds C(vms), C(blocked), C(forecast_total_s), C(max_parallel), C(resumed). C(note) adds
      C(message).
    - C(vm_started) adds C(vm), C(destination), C(mode), C(auto_converge), C(policy), C(predicted_duration_s),
      C(predicted_downtime_ms), C(bandwidth_mib).
    - C(vm_progress) adds C(vm), C(destination), C(phase), C(percent), C(eta_s), C(iteration), C(remaining_bytes),
      C(bandwidth_bps), C(elapsed_s).
    - C(vm_finished) adds C(vm), C(destination), C(ok), C(state), C(outcome), C(mode), C(duration_s),
      C(downtime_ms), C(bytes_sent), C(message), C(recovery).
    - C(run_finished) adds C(state), C(moved), C(failed), C(blocked), C(not_started), C(duration_s),
      C(forecast_total_s), C(message).
  returned: always
  type: list
  elements: dict
  contains:
    seq:
      description: Sequence number of the event in its run, from 1.
      type: int
    at:
      description: When it happened, host clock, ISO 8601 UTC to the microsecond.
      type: str
    t:
      description: Seconds since the run started.
      type: float
    run:
      description: Id of the run.
      type: str
    host:
      description: The hypervisor being drained or restored.
      type: str
    action:
      description: V(drain) or V(restore).
      type: str
    event:
      description: V(run_started), V(note), V(vm_started), V(vm_progress), V(vm_finished) or V(run_finished).
      type: str
  sample:
    - {seq: 3, at: "2025-06-02T02:00:04.512031+00:00", t: 4.18, run: "20250602T020000-4127", host: hv1,
       action: drain, event: vm_started, vm: web01, destination: hv2, mode: precopy, auto_converge: false,
       policy: builtin-default, predicted_duration_s: 8.8, predicted_downtime_ms: 363.4, bandwidth_mib: null}
    - {seq: 4, at: "2025-06-02T02:00:09.530377+00:00", t: 9.2, run: "20250602T020000-4127", host: hv1,
       action: drain, event: vm_progress, vm: web01, destination: hv2, phase: precopy, percent: 57.3,
       eta_s: 3.8, iteration: 1, remaining_bytes: 458752000, bandwidth_bps: 119537664.0, elapsed_s: 5.0}
offset:
  description: Byte offset to continue from (the cursor).
  returned: always
  type: int
run:
  description: Id of the run being followed, or V(null) when none was found yet.
  returned: always
  type: str
seq:
  description: Sequence number of the last event delivered so far.
  returned: always
  type: int
finished:
  description: Whether the drain has ended (its async job ended, or without O(job_id) its run_finished was read).
  returned: always
  type: bool
job:
  description: State of the async job, V(running), V(finished) or V(missing); V(null) without O(job_id).
  returned: always
  type: str
job_id:
  description: The O(job_id) followed.
  returned: always
  type: str
since:
  description: The O(since) given.
  returned: always
  type: str
now:
  description: The host's current time (ISO 8601, UTC), to pass as O(since) to a later call.
  returned: always
  type: str
progress_path:
  description: Path of the events file on the host.
  returned: always
  type: str
running:
  description: Whether a drain or restore holds the host's drain lock now (read after the events).
  returned: unless O(mark)
  type: bool
  sample: true
printed:
  description: With O(follow), the events were printed as they arrived (the callback plugin prints them no more).
  returned: with O(follow)
  type: bool
"""

import functools  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import DrainLock  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.progress import follow, job_state, mark  # noqa: E402

ARGUMENT_SPEC = dict(
    state_dir=dict(type="path", default="/var/lib/hvfleet"),
    job_id=dict(type="str"),
    async_dir=dict(type="path", default="~/.ansible_async"),
    since=dict(type="str"),
    offset=dict(type="int", default=0),
    run=dict(type="str"),
    seq=dict(type="int", default=0),
    wait=dict(type="float", default=0.0),
    mark=dict(type="bool", default=False),
    follow=dict(type="bool", default=False),  # handled by the action plugin
    follow_timeout=dict(type="float", default=0.0),  # handled by the action plugin
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    if p["mark"]:
        module.exit_json(changed=False, job_id=p["job_id"], since=p["since"], **mark(p["state_dir"]))
    job = functools.partial(job_state, p["async_dir"], p["job_id"]) if p["job_id"] else None
    result = follow(p["state_dir"], cursor={"offset": p["offset"], "run": p["run"], "seq": p["seq"]},
                    since=p["since"], wait=p["wait"], job=job)
    running = DrainLock(p["state_dir"]).is_locked_elsewhere() is not None
    module.exit_json(changed=False, job_id=p["job_id"], since=p["since"], running=running, **result)


if __name__ == "__main__":
    main()
