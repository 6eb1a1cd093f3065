#!/usr/bin/python
# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_drain
short_description: Drain a hypervisor of its VMs (and bring them back), with a plan, a journal and resume
version_added: 0.1.0
description:
  - Runs on the hypervisor to drain (the source). With O(state=drained) it cordons the host, lists its domains,
    selects each VM's migration policy, runs the prerequisite checks for every VM and destination, places the VMs
    on the O(destinations) (memory with headroom, vCPU overcommit, anti-affinity labels, policy pins), forecasts
    each migration and chooses the mode of C(auto) policies, then migrates the running domains concurrently
    within O(max_parallel), O(max_outbound), O(max_inbound) and the O(bandwidth_mib) budget. Definitions of
    persistent shut-off domains are moved too. Finally it verifies that the host is empty.
  - A running VM that cannot live-migrate (a host device, a shared-memory device, local disks under
    C(storage=shared_only)) gets what its policy's C(on_unmigratable) says (C(docs/POLICIES.md)). It blocks the
    drain (C(block), the default), it is moved cold (C(shutdown)) - shut down by ACPI, its definition moved and
    started on the destination, an outage the plan states (RV(forecast.outages)) - or it stays running on the host
    (C(leave)). A drain that leaves VMs ends V(not_empty), not V(drained), and lists them in RV(left). That is not a
    failure, but the host is not empty and must not be rebooted.
  - Every destination is re-checked with fresh facts right before each migration starts.
  - A journal on the host (C(drain-journal.json) in O(state_dir)) records the plan and each VM's state as it
    changes. A drain that was interrupted (killed controller or module, lost SSH session, Ctrl-C) resumes from it
    when run again; what already moved is never migrated again. A second concurrent drain or restore of the same
    host is refused, naming the one that runs; a crashed run never leaves that lock behind.
  - Progress events (VM started and finished, percentage and ETA of long migrations, the steps of a cold move) are
    appended to C(drain-progress.jsonl) in O(state_dir) as they happen, one JSON object per line, for an C(async)
    poller or a callback plugin (C(docs/EVENTS.md) lists every event and field).
  - On failure, the VMs that could not move are reported with their reason, the others carry on until more than
    O(max_failures) migrations failed, the host stays cordoned, and every VM is running somewhere or in a state
    that the C(recovery) of its entry in RV(vms) names. After any error the VM is looked up on both hosts before its
    journal state is written. A VM that is not in exactly one place is listed in RV(recoverable) with where it is
    and what to do; a second running copy is paused. The task then fails with a summary.
  - O(state=restored) brings the VMs the journal recorded as moved away back to this host, with the same checks,
    forecast, concurrency and reporting, then uncordons the host and archives the journal.
  - Idempotent. A drained host (cordoned, no running or persistent domains) is reported unchanged; so is a restored
    one.
author:
  - hvfleet maintainers (@hvfleet)
extends_documentation_fragment:
  - hvfleet.drain.libvirt_connection
requirements:
  - libvirt-python (python3-libvirt) on the hypervisor (not for O(state=cancelled))
  - jsonschema on the hypervisor (the migration policies are validated with it)
attributes:
  check_mode:
    description: Returns the plan and changes nothing (no cordon, no journal, no migration).
    support: full
    details:
      - The plan names every VM, its destination, policy and why, the mode and why, the predicted duration and
        downtime, the forecast total and every blocker. With O(plan_file) the plan is also written to that file.
  diff_mode:
    description: Shows the moves, each VM with its host before and after.
    support: full
options:
  state:
    description:
      - V(drained) moves every VM off the host. V(restored) brings back the VMs that the journal says came from
        this host, then uncordons it.
      - V(cancelled) stops the drain or restore running on the host now (started by another task or
        C(ansible-playbook) run, for example in the background). It is found through the host's drain lock in
        O(state_dir); a free lock means nothing runs (unchanged). The request (O(by), O(reason),
        O(cancel_running)) is written to C(cancel.json) in O(state_dir), addressed to the running process only, and
        that process is sent SIGTERM. The running drain starts no new migration, aborts or finishes the running
        ones as O(cancel_running) says, records the request in its journal and ends with state V(cancelled). This
        task waits up to O(cancel_timeout) seconds for it to end and returns the journal's final state in
        RV(cancel). Needs neither O(destinations) nor libvirt.
    type: str
    choices: [drained, restored, cancelled]
    default: drained
  source:
    description: The hypervisor being drained (the one the module runs on).
    type: dict
    default: {}
    suboptions:
      name:
        description: Its inventory name. Defaults to the host name.
        type: str
      uri:
        description: libvirt URI the module opens for it. Defaults to O(uri).
        type: str
      peer_uri:
        description:
          - libvirt URI the other hypervisors reach it by, for example V(qemu+tls://hv1.example.com/system).
            Needed by O(state=restored) (the peer-to-peer migration target).
        type: str
      migration_address:
        description: Its address on the migration network (used by O(state=restored)).
        type: str
      link_mbit:
        description: Bandwidth of its migration link in Mbit/s, for the forecast.
        type: float
  destinations:
    description:
      - The hypervisors the VMs may go to, usually built from the inventory. Required with O(state=drained) and
        O(state=restored).
    type: list
    elements: dict
    suboptions:
      name:
        description: Inventory name of the destination.
        type: str
        required: true
      uri:
        description: libvirt URI of the destination, as this host reaches it (also the peer-to-peer target).
        type: str
        required: true
      migration_address:
        description: Address of the destination on the migration network; migration data goes to C(tcp://ADDRESS).
        type: str
      link_mbit:
        description: Bandwidth of the destination's migration link in Mbit/s.
        type: float
      cordoned:
        description:
          - The destination is cordoned (for example from its C(hvfleet.drain.host_maintenance) state). Not set means
            not cordoned.
        type: bool
      facts:
        description:
          - The destination's facts as read on the destination itself (the C(hypervisor) result of
            C(hvfleet.drain.hypervisor_info)). They complete what cannot be read remotely (its cordon state,
            userfaultfd for post-copy, its bridges); a cordoned state found there excludes the destination.
        type: dict
  policies:
    description:
      - Migration policies (the inventory variable C(hvfleet_migration_policies)); see the collection's
        C(docs/POLICIES.md). Without policies the built-in defaults apply.
    type: list
    elements: dict
  memory_headroom_mib:
    description: Memory kept free on every destination, in MiB.
    type: int
    default: 1024
  memory_headroom_fraction:
    description: Share of each destination's memory kept free (the larger of this and O(memory_headroom_mib)).
    type: float
    default: 0.0
  vcpu_overcommit:
    description: How many vCPUs a destination may carry per host CPU.
    type: float
    default: 4.0
  anti_affinity_labels:
    description: VM label keys whose values must not meet on one destination (VMs sharing a value are spread).
    type: list
    elements: str
    default: [anti_affinity]
  max_parallel:
    description: Most migrations running at once, in total.
    type: int
    default: 2
  max_outbound:
    description: Most migrations leaving one host at once.
    type: int
    default: 2
  max_inbound:
    description: Most migrations arriving at one destination at once.
    type: int
    default: 1
  bandwidth_mib:
    description:
      - Bandwidth budget in MiB/s shared equally by the running migrations (re-split as they start and end).
        Unlimited when not set (each policy's own limit still applies).
    type: int
  default_link_mbit:
    description: Link bandwidth in Mbit/s assumed for the forecast where a host declares none.
    type: float
    default: 1000.0
  max_failures:
    description:
      - How many failed migrations to tolerate. Once more have failed, no new migration starts (running ones
        finish). VMs blocked before the start (no fitting destination) do not count.
    type: int
    default: 0
  measure_dirty_rate:
    description: Measure each running VM's dirty rate (about one second, all at once) for the forecast.
    type: bool
    default: true
  plan_file:
    description:
      - Write the plan as JSON to this path on the host (also in check mode), for review. Apply a reviewed plan
        with O(plan_from).
    type: path
  plan_from:
    description:
      - A reviewed plan to apply, either the path of a file written by O(plan_file) on the host or the plan itself
        (the file's content as a mapping). The drain refuses to start when reality no longer matches it (a VM
        appeared or went away, a destination no longer fits); VMs go to the reviewed destinations.
    type: raw
  state_dir:
    description: Directory on the host for the journal, the progress events, the lock and the cordon state.
    type: path
    default: /var/lib/hvfleet
  reason:
    description: Why the host is drained (recorded with the cordon and in the journal), or why the drain is cancelled.
    type: str
  by:
    description:
      - Who drains (or cancels). Defaults to C($SUDO_USER) or the login user, with the controller's address.
    type: str
  cancel_running:
    description:
      - With O(state=cancelled), what happens to the migrations running when the request arrives.
      - V(abort) aborts running pre-copy migrations (each VM stays running on its source). V(finish) lets them
        finish. A post-copy migration cannot be aborted and always finishes.
    type: str
    choices: [abort, finish]
    default: abort
  cancel_timeout:
    description:
      - With O(state=cancelled), seconds to wait for the running drain to end. The task fails when it still runs
        then (the request stays in force; a post-copy or a migration left to finish may take longer).
    type: int
    default: 600
  orphan_wait:
    description:
      - When resuming, seconds to let a migration job left running by the interrupted run finish before it is
        aborted (a pre-copy abort leaves the VM on the source; a post-copy is never aborted).
    type: int
    default: 30
  progress_interval:
    description: Seconds between two progress events of a running migration.
    type: float
    default: 5.0
  metrics_dir:
    description:
      - A node_exporter textfile-collector directory. After a drain or restore (not in check mode) the run's
        figures are written there atomically, to C(hvfleet_drain_drain.prom) or C(hvfleet_drain_restore.prom)
        (the metrics are in the collection's docs/METRICS.md). A failure to write is a warning.
    type: path
  window_end:
    description:
      - End of the maintenance window, an ISO 8601 date-time (without an offset it is UTC), for example
        V(2025-06-02T04:00:00Z). No migration starts at or after it; migrations running then finish. The VMs not
        started are listed in RV(not_started), the task fails with a summary and a drained host stays cordoned;
        running the task again in the next window carries on from the journal.
      - A time already past refuses the run before anything changes. Ignored in check mode.
    type: str
notes:
  - Run it on the hypervisor to drain, with C(become) when the login is not root, and with C(async) plus
    C(poll) for long drains so the SSH session does not have to stay open; the journal makes a re-run safe.
  - If the controller dies while the module runs without C(async), the drain goes on on the host; running the task
    again meanwhile is refused (the lock names the running drain), and after it ends reports what it did.
  - The source libvirt daemon connects to each destination URI itself (peer to peer).
seealso:
  - module: hvfleet.drain.domain_migration
  - module: hvfleet.drain.host_maintenance
  - module: hvfleet.drain.migration_preflight
"""

EXAMPLES = r"""
- name: Review the plan for hv1 first
  hvfleet.drain.host_drain:
    destinations:
      - {name: hv2, uri: "qemu+tls://hv2.example.com/system", migration_address: 10.254.0.12}
      - {name: hv3, uri: "qemu+tls://hv3.example.com/system", migration_address: 10.254.0.13}
    policies: "{{ hvfleet_migration_policies | default([]) }}"
    plan_file: /var/lib/hvfleet/plan.json
  check_mode: true
  delegate_to: hv1

- name: Drain hv1 onto hv2 and hv3
  hvfleet.drain.host_drain:
    reason: "CHG-1234 kernel update"
    destinations:
      - {name: hv2, uri: "qemu+tls://hv2.example.com/system", migration_address: 10.254.0.12, link_mbit: 10000}
      - {name: hv3, uri: "qemu+tls://hv3.example.com/system", migration_address: 10.254.0.13, link_mbit: 10000}
    max_parallel: 2
    max_failures: 1
  async: 7200
  poll: 5
  register: drained
  delegate_to: hv1

- name: Stop before the reboot when hv1 still runs VMs their policy left on it (on_unmigratable=leave)
  ansible.builtin.fail:
    msg: "{{ drained.message }}; left: {{ drained.left | map(attribute='vm') | join(', ') }}"
  when: drained.state == 'not_empty'

- name: After maintenance, bring the VMs home and uncordon
  hvfleet.drain.host_drain:
    state: restored
    source:
      peer_uri: "qemu+tls://hv1.example.com/system"
      migration_address: 10.254.0.11
    destinations:
      - {name: hv2, uri: "qemu+tls://hv2.example.com/system"}
      - {name: hv3, uri: "qemu+tls://hv3.example.com/system"}
  delegate_to: hv1
"""

RETURN = r"""
state:
  description:
    - V(drained), V(not_empty) (everything else moved, but VMs whose policy says C(on_unmigratable=leave) still run
      on the host, see RV(left); the host must not be rebooted), V(failed) (something could not move; the host
      stays cordoned), V(interrupted) (Ctrl-C or a kill),
      V(cancelled) (a O(state=cancelled) request from another run stopped it, see RV(cancel)), V(restored), or
      V(planned) in check mode.
    - With O(state=cancelled), V(cancelled) when a running drain was stopped, else the journal's state (or V(idle)).
  returned: always
  type: str
  sample: drained
message:
  description: One paragraph summary naming every VM that did not move and why (and, when cancelled, who cancelled).
  returned: always
  type: str
  sample: "drain of hv1: 3 moved, 0 failed, 0 blocked, 0 not started; hv1 is empty and stays cordoned."
action:
  description: V(drain) or V(restore).
  returned: with O(state=drained) or O(state=restored)
  type: str
  sample: drain
host:
  description: The drained host's name.
  returned: with O(state=drained) or O(state=restored)
  type: str
  sample: hv1
plan:
  description: Every VM to move, in start order.
  returned: with O(state=drained) or O(state=restored)
  type: list
  elements: dict
  contains:
    vm:
      description: The VM.
      type: str
    kind:
      description:
        - V(live) (a running VM migrates), V(definition) (a shut-off VM's definition moves) or V(cold) (a running VM
          that cannot live-migrate, with C(on_unmigratable=shutdown) in its policy, is shut down by ACPI, its definition
          moves and it is started on the destination; see C(docs/POLICIES.md)).
      type: str
    source:
      description: The host it leaves.
      type: str
    destination:
      description: The host it goes to.
      type: str
    destination_uri:
      description: The libvirt URI of the destination.
      type: str
    policy:
      description: Its migration policy.
      type: str
    policy_reason:
      description: Why that policy.
      type: str
    mode:
      description: The migration mode, V(precopy), V(postcopy), V(postcopy_after_precopy), V(definition) or V(cold).
      type: str
    mode_reason:
      description: Why that mode; for V(cold) what stops the live migration and the expected outage.
      type: str
    auto_converge:
      description: Whether vCPU throttling is on.
      type: bool
    placement_reason:
      description: Why that destination.
      type: str
    spec:
      description: The migration's settings in one line.
      type: str
    memory_mib:
      description: Its memory.
      type: int
    vcpus:
      description: Its vCPUs.
      type: int
    dirty_rate_bps:
      description: Its measured dirty rate in bytes per second (null when not measured).
      type: float
    migrate_uri:
      description: Where the migration stream goes (C(tcp://) and the destination's migration address); null when
        the destination has none.
      type: str
    settings:
      description: Its effective policy settings (the matching policy's C(settings) over the defaults, see
        C(docs/POLICIES.md)).
      type: dict
    state:
      description: Its libvirt state when planned, for example V(running), V(paused) or V(shutoff).
      type: str
    persistent:
      description: Whether it is defined persistently (a transient VM has no definition to move).
      type: bool
    labels:
      description: Its labels, as policy selectors and anti-affinity read them.
      type: dict
    order:
      description: Its policy's C(drain_order) (lower starts first).
      type: int
    link_share_mib:
      description: The bandwidth in MiB/s its forecast and mode were decided at (its share of the link when it
        starts); null for a definition or a cold move.
      type: float
    forecast:
      description: Its own forecast at that bandwidth; null for a definition or a cold move.
      type: dict
      contains:
        mode:
          description: The mode the forecast chose, or V(refuse).
          type: str
        auto_converge:
          description: Whether the forecast needs vCPU throttling.
          type: bool
        reason:
          description: The forecast's reasoning.
          type: str
        predicted_duration_s:
          description: Forecast duration.
          type: float
        predicted_downtime_ms:
          description: Forecast pause the guest sees (post-copy, the page-fault stall included).
          type: float
        predicted_bytes:
          description: Forecast data to send, memory and copied disks.
          type: int
        iterations:
          description: Forecast pre-copy passes.
          type: int
        completes:
          description: False when the forecast refuses it or predicts it to hit its deadline and abort.
          type: bool
        deadline_s:
          description: Its completion deadline (null without one).
          type: float
        throttle_pct:
          description: The vCPU throttle the forecast expects.
          type: int
        predicted_stall_ms:
          description: After a post-copy switch-over, the forecast page-fault stall (only for post-copy).
          type: float
        disk_bytes:
          description: Of the predicted bytes, the local disks copied (only when disks are copied).
          type: int
    predicted_duration_s:
      description: Its forecast duration at its lane share (a cold move, the outage bound, without the guest's boot).
      type: float
    predicted_downtime_ms:
      description: Forecast pause at the switch-over (a cold move, the outage bound).
      type: float
    predicted_bytes:
      description: Forecast data to send.
      type: int
    rank_s:
      description: What the scheduler ranks it by (its lane-share forecast); null for a definition or a cold move.
      type: float
    predicted_start_s:
      description: When the drain schedule starts it, seconds after the run starts (null outside the schedule, for a
        definition or a cold move).
      type: float
    predicted_end_s:
      description: When the drain schedule predicts its move to end, seconds after the run starts (null as above).
      type: float
    resume:
      description: Whether it is taken over from the journal of an interrupted run (it goes first).
      type: bool
    live_blockers:
      description: For a V(cold) move, what stops its live migration; empty otherwise.
      type: list
      elements: str
    plan_version:
      description: The version of this item's format; a reviewed plan (O(plan_from)) of another version is refused.
      type: int
  sample:
    - vm: web1
      kind: live
      source: hv1
      destination: hv2
      destination_uri: qemu+tls://hv2.example.com/system
      policy: default
      policy_reason: no policy matched; the default applies
      mode: precopy
      mode_reason: "dirty rate 2.0 MiB/s against 112 MiB/s: pre-copy converges"
      auto_converge: false
      placement_reason: most free memory after headroom
      spec: precopy, max downtime 500 ms
      memory_mib: 2048
      vcpus: 2
      dirty_rate_bps: 2097152
      migrate_uri: tcp://10.0.0.2
      settings: {mode: auto, max_downtime_ms: 500, storage: shared_only, on_unmigratable: block}
      state: running
      persistent: true
      labels: {app: web}
      order: 0
      link_share_mib: 119.2
      forecast: {mode: precopy, auto_converge: false, reason: "pre-copy converges", predicted_duration_s: 19.4,
                 predicted_downtime_ms: 40, predicted_bytes: 2181038080, iterations: 3, completes: true,
                 deadline_s: 300.0, throttle_pct: 0}
      predicted_duration_s: 19.4
      predicted_downtime_ms: 40
      predicted_bytes: 2181038080
      rank_s: 19.4
      predicted_start_s: 0.0
      predicted_end_s: 19.4
      resume: false
      live_blockers: []
      plan_version: 1
vms:
  description: Per VM that was acted on, what happened.
  returned: with O(state=drained) or O(state=restored)
  type: list
  elements: dict
  contains:
    vm:
      description: The VM.
      type: str
    kind:
      description: V(live), V(definition) or V(cold).
      type: str
    source:
      description: The host it left.
      type: str
    destination:
      description: The host it went to (or was to go to).
      type: str
    policy:
      description: Its migration policy.
      type: str
    mode:
      description: The planned mode.
      type: str
    mode_used:
      description: The mode actually used.
      type: str
    state:
      description: Journal state, V(moved), V(stayed), V(failed), V(paused_postcopy), V(home) or
        V(return_paused_postcopy).
      type: str
    ok:
      description: Whether it moved.
      type: bool
    outcome:
      description: The migration engine's outcome.
      type: str
    duration_s:
      description: Seconds the move took.
      type: float
    downtime_ms:
      description: The pause at the switch-over (null after a post-copy).
      type: float
    bytes_sent:
      description: Data sent.
      type: int
    disk_bytes:
      description: Of the data sent, the local disks copied (null when the engine did not report it).
      type: int
    predicted_duration_s:
      description: The drain schedule's span for its move (predicted end - start, the link shared as the schedule
        shares it), else its own forecast; what RV(vms[].duration_s) is compared with.
      type: float
    predicted_start_s:
      description: When the drain schedule started it, seconds after the run started (null outside the schedule).
      type: float
    lane_forecast_s:
      description: The forecast its mode was chosen on (its lane share, alone).
      type: float
    predicted_downtime_ms:
      description: Forecast pause (a cold move, the outage bound without the guest's boot).
      type: float
    predicted_stall_ms:
      description: For a post-copy, the forecast page-fault stall after the switch-over; null otherwise.
      type: float
    predicted_disk_bytes:
      description: Forecast bytes of local disks to copy (0 when none are copied).
      type: int
    forecast_error_s:
      description: Predicted minus actual duration, in seconds; null when it did not move or was not forecast.
      type: float
    forecast_error_pct:
      description: Predicted minus actual duration in percent of the actual; null as above, or when the actual is 0.
      type: float
    forecast_within_goal:
      description: Whether the forecast was within its goal, max(20 % of the actual, 2 s); null as above.
      type: bool
    message:
      description: What happened.
      type: str
    recovery:
      description: What to do when it failed (null when it moved).
      type: str
    steps:
      description: What the migration engine did or saw, in order.
      type: list
      elements: dict
      contains:
        t:
          description: Seconds after the migration started.
          type: float
        action:
          description: What, for example V(start), V(bandwidth), V(abort), V(retry).
          type: str
        reason:
          description: Why, or what was seen.
          type: str
        error:
          description: libvirt's error when it refused (null otherwise).
          type: str
    attempts:
      description: How many times its migration was started.
      type: int
    started:
      description: When its last attempt started (ISO 8601).
      type: str
    finished:
      description: When it ended (ISO 8601).
      type: str
  sample:
    - vm: web1
      kind: live
      source: hv1
      destination: hv2
      policy: default
      mode: precopy
      mode_used: precopy
      state: moved
      ok: true
      outcome: moved
      duration_s: 18.2
      downtime_ms: 35
      bytes_sent: 2090000000
      disk_bytes: null
      predicted_duration_s: 19.4
      predicted_start_s: 0.0
      lane_forecast_s: 19.4
      predicted_downtime_ms: 40
      predicted_stall_ms: null
      predicted_disk_bytes: 0
      forecast_error_s: 1.2
      forecast_error_pct: 6.6
      forecast_within_goal: true
      message: "'web1' moved to hv2"
      recovery: null
      steps: []
      attempts: 1
      started: "2025-06-02T02:00:05.000000+00:00"
      finished: "2025-06-02T02:00:23.200000+00:00"
blockers:
  description: What kept VMs from moving.
  returned: with O(state=drained) or O(state=restored)
  type: list
  elements: dict
  contains:
    vm:
      description: The VM (null for a problem of the whole run).
      type: str
    kind:
      description: What kind of blocker, for example V(placement) or V(leftover).
      type: str
    message:
      description: What is wrong.
      type: str
    fix:
      description: What to do about it.
      type: str
    reasons:
      description: Per destination, why it does not fit.
      type: dict
  sample:
    - vm: db2
      kind: placement
      message: "no destination fits 'db2' (8192 MiB)"
      fix: free memory on a destination or add one.
      reasons: {hv2: "3072 MiB free after headroom, needs 8192 MiB"}
moves:
  description: Every planned move.
  returned: with O(state=drained) or O(state=restored)
  type: list
  elements: dict
  contains:
    vm:
      description: The VM.
      type: str
    from:
      description: The host it leaves.
      type: str
    to:
      description: The host it goes to.
      type: str
  sample:
    - {vm: web1, from: hv1, to: hv2}
forecast:
  description: The drain forecast.
  returned: when there is something to plan
  type: dict
  contains:
    total_s:
      description:
        - Forecast wall time of the whole drain. When dirty rates were measured, the total expected over their
          readings' precision (the schedule at the rates as read and at each reading x (1 -/+ sqrt(3) x its
          error), weighted 2/3, 1/6, 1/6; C(docs/DRAIN.md)); otherwise, and when those agree, the schedule's.
      type: float
    as_read_s:
      description: The schedule's wall time at the dirty rates as read (what the plan items' predicted starts and
        ends add up to). Only when a live migration was forecast.
      type: float
    serial_s:
      description: The sum of all migrations' forecast durations.
      type: float
    concurrency:
      description: Migrations at once.
      type: int
    migrations:
      description: Number of migrations.
      type: int
    blocked:
      description: VMs that cannot move.
      type: list
      elements: str
    predicted_bytes:
      description: Data to send in all.
      type: int
    worst_downtime_ms:
      description: The longest forecast pause.
      type: float
    summary:
      description: The forecast in one sentence.
      type: str
    schedule:
      description: The drain schedule, one entry per live migration (only when one was forecast).
      type: list
      elements: dict
      contains:
        vm:
          description: The VM.
          type: str
        start_s:
          description: When it starts, seconds after the run starts.
          type: float
        end_s:
          description: When it ends (null when refused as it came to start).
          type: float
        start_bandwidth_mib:
          description: The bandwidth it starts with, MiB/s.
          type: float
        mode:
          description: The mode forecast at that bandwidth.
          type: str
    outages:
      description: The cold moves (C(on_unmigratable=shutdown)) and the outage each means (a drain only).
      type: list
      elements: dict
      contains:
        vm:
          description: The VM.
          type: str
        mode:
          description: V(cold).
          type: str
        up_to_s:
          description: The outage bound in seconds, shutdown timeout plus define and start.
          type: float
        plus:
          description: What comes on top of the bound, V(boot) (the guest's own boot).
          type: str
    left:
      description: The VMs the plan leaves on the host by their policy (C(on_unmigratable=leave); a drain only).
      type: list
      elements: str
    range_s:
      description:
        - How far the total can be trusted, [shortest, longest] in seconds - the drain's wall time with every
          measured dirty rate at its reading x (1 -/+ sqrt(3) x its error), and as read (C(docs/DRAIN.md)).
          The summary names it when it is wider than the forecast's goal. Only when a live migration was forecast.
      type: list
      elements: float
    dirty_rate_error_pct:
      description: Per VM whose dirty rate was measured, one standard deviation of that reading, in percent (a drain
        only; empty when no rate was measured).
      type: dict
  sample:
    total_s: 42.0
    serial_s: 61.5
    concurrency: 2
    migrations: 3
    blocked: []
    predicted_bytes: 6442450944
    worst_downtime_ms: 120
    summary: 3 migrations on 2 lanes, about 42 s
    schedule:
      - {vm: web1, start_s: 0.0, end_s: 19.4, start_bandwidth_mib: 59.6, mode: precopy}
    outages:
      - {vm: gpu2, mode: cold, up_to_s: 130.0, plus: boot}
    left: [gpu1]
    as_read_s: 42.0
    range_s: [40.1, 47.3]
    dirty_rate_error_pct: {web1: 25}
actual:
  description:
    - What the run measured. A restore returns C(total_s), C(migrations) and C(forecast_total_s) only.
  returned: when migrations ran
  type: dict
  contains:
    total_s:
      description: Wall time of the run.
      type: float
    migrations:
      description: Live migrations run.
      type: int
    bytes_sent:
      description: Data sent in all.
      type: int
    worst_downtime_ms:
      description: The longest pause measured.
      type: float
    forecast_total_s:
      description: The forecast wall time, to compare.
      type: float
    forecast_error_s:
      description: Forecast minus actual wall time, in seconds (null without a forecast).
      type: float
    forecast_error_pct:
      description: Forecast minus actual wall time, in percent of the actual (null without a forecast or a duration).
      type: float
    forecast_within_goal:
      description: Whether the forecast wall time was within its goal, max(20 % of the actual, 2 s).
      type: bool
    vms_within_goal:
      description: Of the VMs whose forecast was checked, how many were within their goal.
      type: int
    vms_checked:
      description: VMs whose forecast was checked (moved, with a forecast).
      type: int
  sample: {total_s: 39.8, migrations: 3, bytes_sent: 6300000000, worst_downtime_ms: 95, forecast_total_s: 42.0,
           forecast_error_s: 2.2, forecast_error_pct: 5.5, forecast_within_goal: true, vms_within_goal: 3,
           vms_checked: 3}
summary:
  description: Counts of the run.
  returned: with O(state=drained) or O(state=restored)
  type: dict
  contains:
    moved:
      description: VMs moved.
      type: int
    failed:
      description: Migrations that failed.
      type: int
    blocked:
      description: VMs that could not be placed or checked.
      type: int
    not_started:
      description: VMs not started (interrupted, cancelled, too many failures, window closed).
      type: int
    definitions_moved:
      description: Definitions of shut-off VMs moved.
      type: int
    left:
      description: VMs left running on the host by their policy (C(on_unmigratable=leave)), see RV(left); 0 after a
        restore.
      type: int
  sample: {moved: 3, failed: 0, blocked: 0, not_started: 0, definitions_moved: 0, left: 0}
verified_empty:
  description:
    - Whether the host had no running or persistent domain left at the end (false when RV(state) is V(not_empty));
      null when not looked at (check mode, a restore).
  returned: with O(state=drained) or O(state=restored)
  type: bool
  sample: true
leftovers:
  description: Domains still on the host at the end.
  returned: with O(state=drained) or O(state=restored)
  type: list
  elements: str
  sample: [db2]
resumed:
  description: Whether this run resumed an interrupted one from the journal.
  returned: with O(state=drained) or O(state=restored)
  type: bool
  sample: false
reconciled:
  description: For a resumed run, what was found for each VM the journal had in flight.
  returned: with O(state=drained) or O(state=restored)
  type: list
  elements: dict
  contains:
    vm:
      description: The VM.
      type: str
    journal_state:
      description: Its state in the journal.
      type: str
    destination:
      description: Its planned destination.
      type: str
    found:
      description: What was found, for example V(moved), V(on_source), V(leftover_definition).
      type: str
    where:
      description: The host it was found on.
      type: str
    reason:
      description: How that was told.
      type: str
    changed:
      description: Whether the journal or a host was changed to match.
      type: bool
  sample:
    - {vm: web1, journal_state: migrating, destination: hv2, found: moved, where: hv2,
       reason: running on hv2 only, changed: true}
cordon:
  description: The cordon a drain set, or a restore lifted.
  returned: when a drain or a restore ran
  type: dict
  contains:
    changed:
      description: Whether this run cordoned the host.
      type: bool
    state:
      description: V(cordoned) after a drain, V(active) after a restore uncordoned the host.
      type: str
  sample: {changed: true, state: cordoned}
journal_path:
  description: Path of the journal on the host.
  returned: not in check mode
  type: str
  sample: /var/lib/hvfleet/drain-journal.json
progress_path:
  description: Path of the progress events (JSON lines) on the host.
  returned: with O(state=drained) or O(state=restored), not in check mode
  type: str
  sample: /var/lib/hvfleet/drain-progress.jsonl
lock_holder:
  description: In check mode, the drain or restore running now, if any.
  returned: check mode
  type: dict
  contains:
    pid:
      description: Its process id.
      type: int
    purpose:
      description: V(drain) or V(restore).
      type: str
    started:
      description: When it took the lock (ISO 8601).
      type: str
    by:
      description: Who runs it.
      type: str
    host:
      description: The host.
      type: str
  sample: {pid: 4242, purpose: drain, started: "2025-06-02T02:00:00+00:00", by: alice@10.0.0.5, host: hv1}
plan_differences:
  description: With O(plan_from), how reality differs from the reviewed plan.
  returned: with O(state=drained) or O(state=restored)
  type: list
  elements: str
  sample: ["'web3' is on hv1 but not in the reviewed plan"]
not_started:
  description: VMs whose migration was not started (interrupted, cancelled, too many failed, or the window closed).
  returned: with O(state=drained) or O(state=restored)
  type: list
  elements: str
  sample: [web2, web3]
left:
  description:
    - VMs that cannot live-migrate and that their policy (C(on_unmigratable=leave)) leaves running on the host, which
      is then not empty (RV(state) V(not_empty), RV(verified_empty) false). Not a failure; the rolling upgrade refuses
      to reboot such a host.
  returned: with O(state=drained) or O(state=restored) (always empty after a restore)
  type: list
  elements: dict
  contains:
    vm:
      description: The VM.
      type: str
    policy:
      description: Its migration policy.
      type: str
    live_blockers:
      description: What stops its live migration (a device bound to the host, a shared-memory device); empty for a
        VM with disks on local storage under C(storage=shared_only).
      type: list
      elements: str
    why:
      description: Why it stays, in words.
      type: str
    fix:
      description: What to do to empty the host.
      type: str
  sample:
    - vm: gpu1
      policy: gpu
      live_blockers: ["host PCI device 0000:3b:00.0"]
      why: "cannot live-migrate (host PCI device 0000:3b:00.0); on_unmigratable: leave: it keeps running on hv1, which
        is therefore not empty"
      fix: "hv1 must not be rebooted while 'gpu1' runs on it: shut 'gpu1' down for the maintenance, or give it a policy
        with on_unmigratable: shutdown (a cold move with an outage), then drain again."
recoverable:
  description:
    - VMs that are not provably in exactly one place (running on two hosts, seen on none, a leftover definition that
      could not be removed, a host that cannot be seen). Nothing more is done with them until a person acts.
  returned: with O(state=drained) or O(state=restored)
  type: list
  elements: dict
  contains:
    vm:
      description: The VM.
      type: str
    where:
      description: Where each copy or definition of it was found, and in what state.
      type: str
    fix:
      description: What to do about it.
      type: str
  sample:
    - vm: db1
      where: "running on both hosts and it cannot be told which copy is current; paused: hv1, hv2"
      fix: decide which copy is current, destroy the other, resume the one kept, then run again.
cancel:
  description:
    - With O(state=cancelled), what the cancel did. In the result of a drain that a request stopped, the request
      (C(request) only).
  returned: with O(state=cancelled), or when a cancel request stopped this run
  type: dict
  contains:
    cancelled:
      description: Whether a running drain or restore was stopped.
      type: bool
    changed:
      description: Whether a request was sent.
      type: bool
    message:
      description: What happened.
      type: str
    holder:
      description: The drain that held the lock (C(pid), C(purpose), C(started), C(by), C(host)); null when none ran.
      type: dict
    request:
      description:
        - The request, C(pid) and C(holder_started) (the run it is for), C(by), C(reason), C(mode), C(requested).
      type: dict
    journal:
      description: The journal's final C(state), its last C(run) record (with the C(cancel) request) and C(vms) (state
        and destination of each).
      type: dict
  sample:
    cancelled: true
    changed: true
    message: "The drain run by pid 4242 (drain, started 2025-06-02T02:00:00+00:00, host hv1) stopped: ..."
    holder: {pid: 4242, purpose: drain, started: "2025-06-02T02:00:00+00:00", by: alice@10.0.0.5, host: hv1}
    request: {pid: 4242, holder_started: "2025-06-02T02:00:00+00:00", by: bob@10.0.0.6, reason: change withdrawn,
              mode: abort, requested: "2025-06-02T02:03:00.000000+00:00", purpose: drain}
    journal: {state: interrupted, run: {id: 20250602T020000-4242, state: interrupted}, vms: {web1: {state: moved,
              destination: hv2}}}
plan_file:
  description: Where the plan was written.
  returned: when O(plan_file) is set
  type: str
  sample: /var/lib/hvfleet/plan.json
metrics_file:
  description: The textfile-collector file the run's figures were written to.
  returned: when O(metrics_dir) is set and the file was written
  type: str
  sample: /var/lib/prometheus/node-exporter/hvfleet_drain_drain.prom
"""

import contextlib  # noqa: E402
import functools  # noqa: E402
import getpass  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

try:
    import libvirt  # noqa: F401  pylint: disable=unused-import
    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection_spec import (  # noqa: E402
    connect_options,
    connection_argument_spec,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.redact import uri_passwords  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import cancel, metrics  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.journal import atomic_write_json  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.libvirt_backend import LibvirtBackend  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet.rolling_admission import parse_instant  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import PlacementConfig  # noqa: E402

ARGUMENT_SPEC = dict(
    connection_argument_spec(),
    state=dict(type="str", choices=["drained", "restored", "cancelled"], default="drained"),
    source=dict(type="dict", default={}, options=dict(
        name=dict(type="str"),
        uri=dict(type="str"),
        peer_uri=dict(type="str"),
        migration_address=dict(type="str"),
        link_mbit=dict(type="float"),
    )),
    destinations=dict(type="list", elements="dict", options=dict(
        name=dict(type="str", required=True),
        uri=dict(type="str", required=True),
        migration_address=dict(type="str"),
        link_mbit=dict(type="float"),
        cordoned=dict(type="bool"),
        facts=dict(type="dict"),
    )),
    policies=dict(type="list", elements="dict"),
    memory_headroom_mib=dict(type="int", default=1024),
    memory_headroom_fraction=dict(type="float", default=0.0),
    vcpu_overcommit=dict(type="float", default=4.0),
    anti_affinity_labels=dict(type="list", elements="str", default=["anti_affinity"]),
    max_parallel=dict(type="int", default=2),
    max_outbound=dict(type="int", default=2),
    max_inbound=dict(type="int", default=1),
    bandwidth_mib=dict(type="int"),
    default_link_mbit=dict(type="float", default=1000.0),
    max_failures=dict(type="int", default=0),
    measure_dirty_rate=dict(type="bool", default=True),
    plan_file=dict(type="path"),
    plan_from=dict(type="raw"),
    state_dir=dict(type="path", default="/var/lib/hvfleet"),
    reason=dict(type="str"),
    by=dict(type="str"),
    orphan_wait=dict(type="int", default=30),
    progress_interval=dict(type="float", default=5.0),
    window_end=dict(type="str"),
    metrics_dir=dict(type="path"),
    cancel_running=dict(type="str", choices=["abort", "finish"], default="abort"),
    cancel_timeout=dict(type="int", default=600),
)
REQUIRED_IF = [("state", "drained", ["destinations"]), ("state", "restored", ["destinations"])]


def default_by():
    """user@controller: the user from sudo or the login, the controller from the SSH connection."""
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    client = (os.environ.get("SSH_CLIENT") or "").split(" ")[0]
    return f"{user}@{client or socket.gethostname()}"


def window_end_epoch(text):
    """Seconds since the epoch of an ISO 8601 date-time (naive means UTC); None when not given."""
    if text is None or str(text).strip() == "":
        return None
    try:
        return parse_instant(str(text), "end").timestamp()
    except HvfleetError:
        raise HvfleetError(f"window_end {text!r} is not an ISO 8601 date-time.",
                           "write it like 2025-06-02T04:00:00Z.") from None


class HostDrainModule:
    """Maps module parameters onto drain.Drainer and its DrainResult onto Ansible's result."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.cancel_request = None  # the cancel request this run honoured, if any

    def drainer(self):
        p = self.params
        src = p["source"] or {}
        source = Host(name=src.get("name") or socket.gethostname().split(".")[0], uri=src.get("uri") or p["uri"],
                      peer_uri=src.get("peer_uri"), migration_address=src.get("migration_address"),
                      link_mbit=src.get("link_mbit"))
        destinations = [Host(name=d["name"], uri=d["uri"], migration_address=d.get("migration_address"),
                             link_mbit=d.get("link_mbit"), facts=d.get("facts"), cordoned=bool(d.get("cordoned")))
                        for d in p["destinations"]]
        config = DrainConfig(
            policies=p["policies"] or [],
            placement=PlacementConfig(memory_headroom_mib=p["memory_headroom_mib"],
                                      memory_headroom_fraction=p["memory_headroom_fraction"],
                                      vcpu_overcommit=p["vcpu_overcommit"]),
            max_parallel=p["max_parallel"], max_outbound=p["max_outbound"], max_inbound=p["max_inbound"],
            bandwidth_mib=p["bandwidth_mib"], max_failures=p["max_failures"],
            anti_affinity_labels=tuple(p["anti_affinity_labels"] or ()), default_link_mbit=p["default_link_mbit"],
            reason=p["reason"], by=p["by"] or default_by(), orphan_wait_s=float(p["orphan_wait"]),
            progress_interval_s=p["progress_interval"], measure_dirty_rate=p["measure_dirty_rate"])
        end = window_end_epoch(p["window_end"])
        if end is not None:
            if end <= time.time() and not self.module.check_mode:
                raise HvfleetError(f"The maintenance window ended at {p['window_end']}: nothing was started and "
                                   "nothing changed.", "run it again inside a maintenance window.")
            # the Drainer's clock is time.monotonic
            config.start_deadline = time.monotonic() + (end - time.time())
        options = connect_options(p)
        backend = LibvirtBackend(connect_timeout_s=options["timeout_s"], username=options["username"],
                                 password=options["password"], state_dir=p["state_dir"],
                                 memory_headroom_mib=p["memory_headroom_mib"])
        return Drainer(backend, source, destinations, config, state_dir=p["state_dir"])

    def reviewed_plan(self):
        given = self.params["plan_from"]
        if given is None or given == "":
            return None
        if isinstance(given, dict):
            return given
        if isinstance(given, str):
            try:
                with open(given, encoding="utf-8") as handle:
                    return json.load(handle)
            except (OSError, ValueError) as exc:
                raise HvfleetError(f"Cannot read the reviewed plan {given}: {exc}",
                                   "give the path of a file written with plan_file, on this host.") from exc
        raise HvfleetError("plan_from must be a path or a mapping.", "give the plan_file path or its content.")

    def write_metrics(self, result):
        """The run's figures for node_exporter's textfile collector (docs/METRICS.md); a failure only warns."""
        if not self.params["metrics_dir"] or self.module.check_mode:
            return
        path = os.path.join(self.params["metrics_dir"], metrics.textfile_name(result.get("action") or "drain"))
        try:
            metrics.write_textfile(path, metrics.render(result, now=time.time()))
            result["metrics_file"] = path
        except (OSError, ValueError) as exc:
            self.module.warn(f"Cannot write the drain metrics to {path}: {exc}")

    def write_plan(self, result):
        path = self.params["plan_file"]
        if not path:
            return None
        doc = {"host": result["host"], "action": result["action"], "plan": result["plan"],
               "blockers": result["blockers"], "forecast": result["forecast"], "moves": result["moves"]}
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        atomic_write_json(path, doc)
        return path

    def diff(self, result):
        before, after = {}, {}
        if self.module.check_mode:
            moves = result["moves"]
        else:
            moves = [{"vm": r["vm"], "from": r.get("source") or result["host"], "to": r["destination"]}
                     for r in result["vms"] if r.get("ok")]
        for move in moves:
            before[move["vm"]] = move["from"]
            after[move["vm"]] = move["to"]
        return {"before": before, "after": after}

    def _honour(self, drainer, request):
        """A cancel request arrived (in the signal handler): remember it; record it out of the handler."""
        if self.cancel_request is None:
            self.cancel_request = request
            threading.Thread(target=_record_cancel, args=(drainer, request), daemon=True,
                             name="drain-cancel-record").start()

    def cancel_other(self):
        """state=cancelled: stop the drain or restore running on this host and wait for it to end."""
        p = self.params
        try:
            outcome = cancel.cancel_running(p["state_dir"], by=p["by"] or default_by(), mode=p["cancel_running"],
                                            reason=p["reason"] or "", wait_s=float(p["cancel_timeout"]),
                                            check_only=self.module.check_mode)
        except HvfleetError as exc:
            self.module.fail_json(msg=str(exc), changed=True, state="cancelling")
        journal = outcome["journal"] or {}
        state = "cancelled" if outcome["cancelled"] else (journal.get("state") or "idle")
        self.module.exit_json(changed=outcome["changed"], state=state, message=outcome["message"],
                              cancel=outcome, journal_path=os.path.join(p["state_dir"], "drain-journal.json"))

    def run(self):
        if self.params["state"] == "cancelled":
            self.cancel_other()
        if LIBVIRT_IMPORT_ERROR is not None:
            self.module.fail_json(msg=missing_required_lib("libvirt-python (python3-libvirt)"),
                                  exception=LIBVIRT_IMPORT_ERROR)
        try:
            drainer = self.drainer()
            self._trap_signals(drainer, self.params["state_dir"], functools.partial(self._honour, drainer))
            check = self.module.check_mode
            if self.params["state"] == "restored":
                outcome = drainer.restore(plan_only=check)
            else:
                outcome = drainer.drain(plan_only=check, reviewed_plan=self.reviewed_plan())
        except HvfleetError as exc:
            self.module.fail_json(msg=str(exc), changed=False)
        result = outcome.to_dict()
        if self.cancel_request is not None:
            request = self.cancel_request
            result["state"] = "cancelled"
            result["message"] = f"{result.get('action') or 'drain'} {request.describe()}. {result.get('message')}"
            result["cancel"] = {"request": request.to_dict()}
            cancel.clear_request(self.params["state_dir"], request)
        self.write_metrics(result)
        try:
            written = self.write_plan(result)
        except OSError as exc:
            self.module.fail_json(msg=f"Cannot write plan_file: {exc}", **result)
        if written:
            result["plan_file"] = written
        if self.module._diff:  # pylint: disable=protected-access
            result["diff"] = self.diff(result)
        if outcome.failed:
            self.module.fail_json(msg=result["message"], **result)
        self.module.exit_json(**result)

    @staticmethod
    def _trap_signals(drainer, state_dir=None, on_request=None):
        """Ctrl-C / kill: start nothing new, abort pre-copy, journal, report (cancel never blocks).
        A SIGTERM with a cancel request addressed to this process in `state_dir` (host_drain state=cancelled)
        does as the request says, and `on_request(request)` records who asked. A hang-up is not a cancel: a
        dropped SSH session must not stop a drain that goes on on the host."""

        def handler(_signum, _frame):
            request = cancel.request_for(state_dir) if state_dir else None
            if request is not None and request.mode == "finish":
                drainer.ctx.cancel(abort_running=False)
            else:
                drainer.cancel()
            if request is not None and on_request is not None:
                on_request(request)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _record_cancel(drainer, request):
    """Out of the signal handler: the request goes into the journal's run record and the progress events."""
    with contextlib.suppress(Exception):
        cancel.record(drainer.journal, request)
        drainer.ctx.note(request.describe())


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    module.no_log_values.update(uri_passwords(module.params))  # a user:password@ in a URI is masked too
    HostDrainModule(module).run()


if __name__ == "__main__":
    main()
