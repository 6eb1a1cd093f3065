#!/usr/bin/python
# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: domain_migration
short_description: Live-migrate one libvirt domain, with escalation and safe recovery
version_added: 0.1.0
description:
  - Live-migrates one running libvirt/QEMU domain from the host it runs on (O(uri)) to another host (O(dest_uri)),
    peer to peer, optionally over a dedicated migration network (O(migration_address)).
  - While the migration runs, job statistics are sampled every O(stats_interval) seconds. A migration that does not
    converge (the dirty set does not shrink over O(stall_iterations) iterations, or the projected finish lies beyond
    the completion deadline) is escalated step by step. Max downtime is raised towards O(max_downtime_cap), an armed
    auto-converge throttle is given time, post-copy is started if O(mode) allows it, and finally O(on_timeout) is
    applied. Every step is returned with its reason.
  - After the migration call returns or fails, the domain is looked up on both hosts and the outcome is decided from
    what is there. Once post-copy has started the source copy is never resumed; an interrupted post-copy is resumed
    with libvirt's post-copy resume, retried with back-off for O(postcopy_recovery_timeout) seconds, and otherwise
    left paused with instructions in RV(recovery).
  - Idempotent. A domain already running on the destination (and not on the source) is reported as
    RV(outcome=already_there) without change. Running the task again after an interrupted post-copy resumes it.
author:
  - hvfleet maintainers (@hvfleet)
requirements:
  - libvirt >= 8.5 on both hypervisors when post-copy may be used (post-copy resume)
  - jsonschema is not needed (the prerequisite-check code the module shares imports it only if present)
extends_documentation_fragment:
  - hvfleet.drain.libvirt_connection
attributes:
  check_mode:
    description: Can run in check mode and predict whether the domain would move, without changing anything.
    support: full
    details: Connects to both hosts, checks the domain and the options, and reports what would be done.
  diff_mode:
    description: Returns the host the domain runs on before and after (or would, in check mode).
    support: full
    details: Shows the host the domain runs on before and after.
options:
  name:
    description: Name of the domain to migrate.
    type: str
    required: true
  uri:
    description:
      - libvirt URI of the host the domain runs on (the source).
  dest_uri:
    description:
      - libvirt URI of the destination, as the B(source) libvirt daemon reaches it (peer-to-peer migration), and as
        this module reaches it to check where the domain is.
      - For example V(qemu+tcp://10.254.0.12/system), V(qemu+tls://hv2.example.com/system) or
        V(qemu+ssh://root@hv2/system).
    type: str
    required: true
  migration_address:
    description:
      - Address (host name or IP, optionally C(:PORT)) of the destination on the dedicated migration network. The
        migration data goes to C(tcp://ADDRESS). Without it libvirt uses the destination's host name.
      - The same as C(migration_address) of a destination of M(hvfleet.drain.host_drain) and
        M(hvfleet.drain.migration_preflight) (the inventory's C(hvfleet_migration_address)).
      - The alias C(migrate_address) is deprecated and will be removed in version 1.0.0.
    type: str
    aliases: [migrate_address]
  mode:
    description:
      - V(precopy) copies memory while the VM runs and switches over once the rest fits into the max downtime.
      - V(postcopy) starts in pre-copy and switches to post-copy as soon as the first full pass is done.
      - V(postcopy_after_precopy) switches to post-copy only when pre-copy does not converge.
    type: str
    choices: [precopy, postcopy, postcopy_after_precopy]
    default: precopy
  allow_postcopy:
    description:
      - Whether post-copy may be used at all. V(false) rejects O(mode) values and O(on_timeout=postcopy) that need it.
      - In post-copy the VM runs on the destination while its memory still streams from the source; a network
        failure pauses it until the stream is resumed.
    type: bool
    default: true
  bandwidth_mib:
    description:
      - Bandwidth limit for pre-copy, in MiB/s. Unlimited when not set.
      - The alias C(bandwidth) is deprecated and will be removed in version 1.0.0.
    type: int
    aliases: [bandwidth]
  postcopy_bandwidth_mib:
    description:
      - Bandwidth limit for the post-copy phase, in MiB/s. Unlimited when not set.
      - The alias C(postcopy_bandwidth) is deprecated and will be removed in version 1.0.0.
    type: int
    aliases: [postcopy_bandwidth]
  max_downtime:
    description: Initial maximum downtime (pause at switch-over) in milliseconds.
    type: int
    default: 300
  max_downtime_cap:
    description: Highest maximum downtime, in milliseconds, the escalation may raise O(max_downtime) to.
    type: int
    default: 2000
  auto_converge:
    description:
      - Arm QEMU's auto-converge at the start; QEMU throttles the guest's vCPUs when it dirties memory faster than
        the link sends it. libvirt cannot enable it later in a running migration.
    type: bool
    default: false
  auto_converge_initial:
    description: Initial CPU throttle in percent for auto-converge.
    type: int
  auto_converge_increment:
    description: Throttle increment in percent for auto-converge.
    type: int
  compression:
    description:
      - Compression of the migration stream. V(xbzrle) (not with O(parallel_connections)) or V(zstd) (needs
        O(parallel_connections) and libvirt >= 9.4 on both hosts).
    type: str
    choices: [xbzrle, zstd]
  parallel_connections:
    description: Number of parallel connections for the migration stream. Cannot be combined with post-copy.
    type: int
  tls:
    description: Encrypt the migration stream with TLS (libvirt's migrate TLS certificates must be set up).
    type: bool
    default: false
  tls_destination:
    description: Host name to check the destination's TLS certificate against, when it differs from the address.
    type: str
  copy_storage:
    description:
      - Copy the VM's local disks along, V(all) or V(incremental). Leave unset for shared or network storage.
      - Which disks are copied is decided per disk by the prerequisite checks (as in a drain) and given to libvirt
        as C(migrate_disks) (RV(spec.copy_disks)); a shared disk (network, shared filesystem or pool, shareable)
        is never copied. When no disk needs copying, nothing is copied and the module warns.
      - A copied disk is written into the file at the same path on the destination; when it is missing, the module
        creates it (same format and capacity) in the destination's active storage pool whose target is the disk's
        directory, and removes it again when the VM stays on the source. Without such a pool the task fails
        before anything changes, naming the disk and the pool to define.
    type: str
    choices: [all, incremental]
  completion_timeout:
    description:
      - Completion deadline in seconds. When not set, it is O(completion_timeout_per_gib) per GiB of guest RAM,
        at least O(completion_timeout_min).
    type: int
  completion_timeout_per_gib:
    description: Completion deadline per GiB of guest RAM, in seconds.
    type: int
    default: 150
  completion_timeout_min:
    description: Lower bound of the per-GiB completion deadline, in seconds.
    type: int
    default: 60
  on_timeout:
    description:
      - Final step when the migration stalls with no step left, or at the completion deadline.
      - V(abort) cancels it (the VM keeps running on the source), V(suspend) pauses the VM so the copy completes
        (longer downtime; the VM is resumed on the destination), V(postcopy) switches to post-copy.
    type: str
    choices: [abort, suspend, postcopy]
    default: abort
  stall_iterations:
    description: Number of pre-copy iterations without the dirty set shrinking that count as a stall.
    type: int
    default: 3
  persist:
    description: Define the domain persistently on the destination.
    type: bool
    default: true
  undefine_source:
    description: Undefine the domain on the source after a successful migration. Needs O(persist).
    type: bool
    default: true
  stats_interval:
    description: Seconds between two samples of the migration's job statistics.
    type: float
    default: 1.0
  postcopy_recovery_timeout:
    description: Seconds to keep trying to resume an interrupted post-copy before leaving the VM paused.
    type: int
    default: 300
notes:
  - The source libvirt daemon connects to O(dest_uri) itself (peer to peer), with its own credentials and
    certificates. O(auth_username) and O(auth_password) are what this module uses for its connections to both
    hosts.
  - URIs and names are passed to libvirt as data; no shell and no C(virsh) are involved.
seealso:
  - name: libvirt migration guide
    description: How libvirt migrates domains.
    link: https://libvirt.org/migration.html
"""

EXAMPLES = r"""
- name: Move web01 to hv2 over the migration network
  hvfleet.drain.domain_migration:
    name: web01
    dest_uri: qemu+tcp://hv2.mgmt.example.com/system
    migration_address: 10.254.0.12

- name: Move a memory-hungry VM, falling back to post-copy when pre-copy cannot converge
  hvfleet.drain.domain_migration:
    name: db01
    dest_uri: qemu+tls://hv3.example.com/system
    migration_address: 10.254.0.13
    tls: true
    mode: postcopy_after_precopy
    bandwidth_mib: 1000
    max_downtime: 300
    max_downtime_cap: 1000
  register: moved

- name: Show what happened
  ansible.builtin.debug:
    msg: "{{ moved.outcome }} in {{ moved.duration_s }} s, downtime {{ moved.downtime_ms }} ms"

- name: Never use post-copy; give up after 10 minutes and leave the VM where it is
  hvfleet.drain.domain_migration:
    name: legacy01
    dest_uri: qemu+ssh://root@hv2/system
    allow_postcopy: false
    completion_timeout: 600
    on_timeout: abort

- name: Daemons that ask for SASL credentials; the connection options come from the group's defaults
  module_defaults:
    group/hvfleet.drain.libvirt:
      auth_username: "{{ vault_libvirt_sasl_user }}"
      auth_password: "{{ vault_libvirt_sasl_password }}"
      connect_timeout: 10
  block:
    - name: Move web02 from hv1 to hv3
      hvfleet.drain.domain_migration:
        name: web02
        uri: qemu+tcp://hv1.mgmt.example.com/system
        dest_uri: qemu+tcp://hv3.mgmt.example.com/system
        migration_address: 10.254.0.13
"""

RETURN = r"""
outcome:
  description:
    - V(moved), V(already_there) or V(postcopy_recovered) on success.
    - On failure V(stayed) (still on the source), V(postcopy_paused) (interrupted post-copy, see RV(recovery)),
      V(split_brain_paused), or the placement found (for example V(nowhere), V(unknown), V(both_paused)).
    - In check mode V(would_migrate), V(would_resume_postcopy) or V(already_there).
  returned: when both hosts were read (not when an option is invalid or a host cannot be reached; see C(msg))
  type: str
  sample: moved
message:
  description: One sentence saying where the domain is and why.
  returned: when both hosts were read
  type: str
  sample: "'web01' moved to qemu+tcp://10.254.0.12/system (precopy)."
name:
  description: Name of the domain (O(name)).
  returned: when both hosts were read, not in check mode
  type: str
  sample: web01
source:
  description: The source URI (O(uri)).
  returned: when both hosts were read, not in check mode
  type: str
  sample: qemu:///system
destination:
  description: The destination URI (O(dest_uri)).
  returned: when both hosts were read, not in check mode
  type: str
  sample: qemu+tcp://10.254.0.12/system
mode_used:
  description: V(precopy), V(postcopy) (post-copy was started), or V(none) (no migration was started).
  returned: when both hosts were read, not in check mode
  type: str
  sample: precopy
suspended:
  description: Whether the VM was suspended to make the copy complete (O(on_timeout=suspend)).
  returned: when both hosts were read, not in check mode
  type: bool
  sample: false
steps:
  description: Every step taken, in order.
  returned: when both hosts were read, not in check mode
  type: list
  elements: dict
  contains:
    t:
      description: Seconds since the task started.
      type: float
    action:
      description:
        - What was done or seen, for example V(set_max_downtime), V(start), V(raise_downtime),
          V(auto_converge_engaged), V(postcopy), V(abort), V(suspend), V(call_failed), V(reconnect),
          V(postcopy_resume), V(reconcile), V(undefine_source), V(create_volume) (a copied disk's file made on
          the destination, or found there), V(remove_volume) (removed again after a failed migration),
          V(source_disk) (the source's own file of a copied disk, which is kept).
      type: str
    reason:
      description: Why, with the figures the decision was made on.
      type: str
    error:
      description: The libvirt error when libvirt refused the step, else V(null).
      type: str
  sample:
    - {t: 0.005, action: set_max_downtime, reason: initial max downtime 300 ms (before the start), error: null}
    - t: 0.005
      action: start
      reason: "migrateToURI3 to qemu+tcp://10.254.0.12/system: mode precopy, max downtime 300 ms (cap 2000 ms),
        on timeout abort, data over tcp://10.254.0.12"
      error: null
    - t: 30.308
      action: reconcile
      reason: "running on the destination (source qemu:///system: absent; destination
        qemu+tcp://10.254.0.12/system: running (migrated))"
      error: null
duration_s:
  description: Wall time of the whole task in seconds.
  returned: when both hosts were read, not in check mode
  type: float
  sample: 30.32
deadline_s:
  description: Completion deadline that applied, in seconds; V(null) when no migration was needed.
  returned: when both hosts were read, not in check mode
  type: float
  sample: 60.0
downtime_ms:
  description: Downtime of the switch-over as libvirt measured it, in milliseconds; V(null) when libvirt reports none.
  returned: when both hosts were read, not in check mode
  type: int
  sample: 212
bytes_sent:
  description: Bytes the migration transferred (libvirt's data processed); V(null) when libvirt reports none.
  returned: when both hosts were read, not in check mode
  type: int
  sample: 281018368
ram_bytes:
  description: Guest RAM size in bytes; V(null) when no migration was needed.
  returned: when both hosts were read, not in check mode
  type: int
  sample: 268435456
iterations:
  description: Number of pre-copy memory iterations seen.
  returned: when both hosts were read, not in check mode
  type: int
  sample: 3
max_dirty_rate_bps:
  description: Highest guest dirty rate seen, in bytes per second.
  returned: when both hosts were read, not in check mode
  type: float
  sample: 8388608.0
stats:
  description:
    - Time series of the job samples taken every O(stats_interval) seconds, thinned evenly to at most 600 points.
  returned: when both hosts were read, not in check mode
  type: list
  elements: dict
  contains:
    t:
      description: Seconds since the task started.
      type: float
    phase:
      description: V(none), V(precopy), V(postcopy), V(postcopy_failed), V(completed), V(failed) or V(cancelled).
      type: str
    time_elapsed_s:
      description: Seconds the libvirt job has run.
      type: float
    data_total:
      description: Bytes to transfer in total (memory and disks), as libvirt counts them.
      type: int
    data_processed:
      description: Bytes transferred so far.
      type: int
    data_remaining:
      description: Bytes still to transfer.
      type: int
    memory_total:
      description: Guest memory to transfer, in bytes.
      type: int
    memory_processed:
      description: Guest memory transferred so far, in bytes.
      type: int
    memory_remaining:
      description: Guest memory still to transfer, in bytes.
      type: int
    dirty_rate_bps:
      description: Rate at which the guest dirties memory, in bytes per second.
      type: float
    iteration:
      description: Pre-copy pass over memory (1 is the first full pass).
      type: int
    bandwidth_bps:
      description: Transfer rate of memory, in bytes per second.
      type: float
    downtime_ms:
      description: Downtime libvirt expects (while running) or measured (completed), in ms; V(null) when unknown.
      type: int
    throttle_pct:
      description: The auto-converge CPU throttle in percent.
      type: int
    postcopy_requests:
      description: Page requests the destination made in post-copy.
      type: int
    disk_remaining:
      description: Bytes of disks still to copy (O(copy_storage)).
      type: int
  sample:
    - {t: 1.017, phase: precopy, time_elapsed_s: 0.98, data_total: 269230080, data_processed: 5206053,
       data_remaining: 264024027, memory_total: 269230080, memory_processed: 5206053, memory_remaining: 263057408,
       dirty_rate_bps: 0.0, iteration: 1, bandwidth_bps: 19957926.0, downtime_ms: null, throttle_pct: 0,
       postcopy_requests: 0, disk_remaining: 0}
recovery:
  description:
    - When the VM could not be brought to a clean state, exactly where it is and what to run; else V(null).
  returned: when both hosts were read, not in check mode
  type: str
  sample: null
error:
  description: The libvirt error of the migration call, if it raised; else V(null).
  returned: when both hosts were read, not in check mode
  type: str
  sample: "operation failed: migration out job: unexpectedly failed"
source_state:
  description: The domain as last seen on the source.
  returned: when both hosts were read
  type: dict
  contains:
    uri:
      description: URI the host was read through.
      type: str
    reachable:
      description: Whether the host answered.
      type: bool
    present:
      description: Whether the domain exists there.
      type: bool
    state:
      description:
        - libvirt's domain state number (C(virDomainState), 1 running, 3 paused, 5 shut off); V(null) when absent.
      type: int
    reason:
      description: libvirt's reason number for that state; V(null) when absent.
      type: int
    job_active:
      description: Whether a libvirt job (a migration) holds the domain there.
      type: bool
    persistent:
      description: Whether the domain is defined persistently there; V(null) when absent or unknown.
      type: bool
    error:
      description: Why the host could not be read; V(null) when it was.
      type: str
    no_answer:
      description: Whether the daemon was connected but did not answer in time.
      type: bool
    label:
      description: The state in words, for example V(running (migrated)), V(paused (post-copy)), V(absent).
      type: str
  sample:
    {uri: "qemu:///system", reachable: true, present: true, state: 1, reason: 1, job_active: false,
     persistent: true, error: null, no_answer: false, label: running (booted)}
destination_state:
  description: The domain as last seen on the destination, with the keys of RV(source_state).
  returned: when both hosts were read
  type: dict
  contains:
    uri:
      description: URI the host was read through.
      type: str
    reachable:
      description: Whether the host answered.
      type: bool
    present:
      description: Whether the domain exists there.
      type: bool
    state:
      description: libvirt's domain state number; V(null) when absent.
      type: int
    reason:
      description: libvirt's reason number for that state; V(null) when absent.
      type: int
    job_active:
      description: Whether a libvirt job holds the domain there.
      type: bool
    persistent:
      description: Whether the domain is defined persistently there; V(null) when absent or unknown.
      type: bool
    error:
      description: Why the host could not be read; V(null) when it was.
      type: str
    no_answer:
      description: Whether the daemon was connected but did not answer in time.
      type: bool
    label:
      description: The state in words.
      type: str
  sample:
    {uri: "qemu+tcp://10.254.0.12/system", reachable: true, present: false, state: null, reason: null,
     job_active: false, persistent: null, error: null, no_answer: false, label: absent}
spec:
  description: The migration options as applied (the options of this module, with units in the names).
  returned: when both hosts were read, not in check mode
  type: dict
  contains:
    mode:
      description: O(mode).
      type: str
    allow_postcopy:
      description: O(allow_postcopy).
      type: bool
    migrate_uri:
      description: Where the migration data goes, C(tcp://) O(migration_address); V(null) without it.
      type: str
    persist_dest:
      description: O(persist).
      type: bool
    undefine_source:
      description: O(undefine_source).
      type: bool
    bandwidth_mib:
      description: O(bandwidth_mib).
      type: int
    postcopy_bandwidth_mib:
      description: O(postcopy_bandwidth_mib).
      type: int
    max_downtime_ms:
      description: O(max_downtime).
      type: int
    max_downtime_cap_ms:
      description: O(max_downtime_cap).
      type: int
    auto_converge:
      description: O(auto_converge).
      type: bool
    auto_converge_initial:
      description: O(auto_converge_initial).
      type: int
    auto_converge_increment:
      description: O(auto_converge_increment).
      type: int
    compression:
      description: O(compression).
      type: str
    parallel_connections:
      description: O(parallel_connections).
      type: int
    tls:
      description: O(tls).
      type: bool
    tls_destination:
      description: O(tls_destination).
      type: str
    copy_storage:
      description: O(copy_storage).
      type: str
    copy_disks:
      description:
        - The disks (targets) copied when storage is copied, as given to libvirt (C(migrate_disks)); the local disks
          the prerequisite checks found, never a shared one. V(null) when no storage is copied.
      type: list
      elements: str
    dest_xml:
      description:
        - The domain XML run on the destination when it differs from the source's (a drain re-mapping CPU pins);
          always V(null) here, the module migrates the source's definition unchanged.
      type: str
    persist_xml:
      description: The definition kept on the destination when it differs from the source's; always V(null) here.
      type: str
    completion_timeout_s:
      description: O(completion_timeout).
      type: float
    completion_timeout_per_gib_s:
      description: O(completion_timeout_per_gib).
      type: float
    completion_timeout_min_s:
      description: O(completion_timeout_min).
      type: float
    on_timeout:
      description: O(on_timeout).
      type: str
    stall_iterations:
      description: O(stall_iterations).
      type: int
    stats_interval_s:
      description: O(stats_interval).
      type: float
    postcopy_recovery_timeout_s:
      description: O(postcopy_recovery_timeout).
      type: float
  sample:
    {mode: precopy, allow_postcopy: true, migrate_uri: "tcp://10.254.0.12", persist_dest: true,
     undefine_source: true, bandwidth_mib: null, postcopy_bandwidth_mib: null, max_downtime_ms: 300,
     max_downtime_cap_ms: 2000, auto_converge: false, auto_converge_initial: null, auto_converge_increment: null,
     compression: null, parallel_connections: null, tls: false, tls_destination: null, copy_storage: null,
     copy_disks: null, dest_xml: null, persist_xml: null, completion_timeout_s: null, completion_timeout_per_gib_s: 150,
     completion_timeout_min_s: 60,
     on_timeout: abort, stall_iterations: 3, stats_interval_s: 1.0, postcopy_recovery_timeout_s: 300}
plan:
  description: In check mode, what would be done, with the libvirt flags and parameters.
  returned: check mode, when both hosts were read
  type: dict
  contains:
    name:
      description: Name of the domain.
      type: str
    source:
      description: The source URI.
      type: str
    destination:
      description: The destination URI.
      type: str
    action:
      description: V(migrate), V(resume_postcopy) or V(already_there).
      type: str
    changed:
      description: Whether the task would change something.
      type: bool
    libvirt_versions:
      description: libvirt version number of C(source) and C(destination) (major * 1000000 + minor * 1000 + micro).
      type: dict
      contains:
        source:
          description: The source's libvirt version; V(null) when it could not be read.
          type: int
        destination:
          description: The destination's libvirt version; V(null) when it could not be read.
          type: int
    source_state:
      description: As RV(source_state).
      type: dict
    destination_state:
      description: As RV(destination_state).
      type: dict
    ram_bytes:
      description: Guest RAM in bytes (C(migrate) only).
      type: int
    deadline_s:
      description: Completion deadline that would apply, in seconds (C(migrate) only).
      type: float
    spec:
      description: The migration options in one line (C(migrate) only).
      type: str
    flags:
      description: The C(virDomainMigrateFlags) that would be passed (C(migrate) only).
      type: int
    params:
      description: The C(VIR_MIGRATE_PARAM_*) parameters that would be passed, by name (C(migrate) only).
      type: dict
    volumes:
      description: The destination files of the copied disks (C(migrate) with O(copy_storage) only).
      type: list
      elements: dict
      contains:
        target:
          description: The disk's target, for example V(vdb).
          type: str
        path:
          description: The file's path, the same on both hosts.
          type: str
        pool:
          description: The destination's storage pool at that directory.
          type: str
        format:
          description: The disk's format, for example V(qcow2).
          type: str
        capacity:
          description: Its capacity in bytes.
          type: int
        exists:
          description: V(true) when the file is already there (the copy goes into it), V(false) when it is to be made.
          type: bool
    message:
      description: What would be done, in one sentence.
      type: str
  sample:
    name: db1
    source: qemu:///system
    destination: qemu+tcp://10.254.0.12/system
    action: migrate
    changed: true
    libvirt_versions: {source: 9000000, destination: 9000000}
    source_state: {uri: "qemu:///system", reachable: true, present: true, state: 1, reason: 1, job_active: false,
                   persistent: true, error: null, no_answer: false, label: running (booted)}
    destination_state: {uri: "qemu+tcp://10.254.0.12/system", reachable: true, present: false, state: null,
                        reason: null, job_active: false, persistent: null, error: null, no_answer: false,
                        label: absent}
    ram_bytes: 536870912
    deadline_s: 75.0
    spec: "mode precopy, max downtime 300 ms (cap 2000 ms), on timeout abort, bandwidth 100 MiB/s,
      data over tcp://10.254.0.12"
    flags: 27
    params: {migrate_uri: "tcp://10.254.0.12", bandwidth: 100}
    message: "would live-migrate 'db1' from qemu:///system to qemu+tcp://10.254.0.12/system (mode precopy,
      max downtime 300 ms (cap 2000 ms), on timeout abort, bandwidth 100 MiB/s, data over tcp://10.254.0.12)"
"""

import traceback  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

try:
    import libvirt  # noqa: F401  pylint: disable=unused-import
    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection import close_quietly, connect_all  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection_spec import (  # noqa: E402
    connect_options,
    connection_argument_spec,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import (  # noqa: E402
    DomainNotFound,
    HvfleetError,
    MigrationFailed,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.common.redact import uri_passwords  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import Migration  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec, migrate_uri_for  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.copy_list import copy_list  # noqa: E402


def deprecated(alias):
    """An old option name Ansible still accepts, with a deprecation warning naming the new one."""
    return dict(aliases=[alias],
                deprecated_aliases=[dict(name=alias, version="1.0.0", collection_name="hvfleet.drain")])


ARGUMENT_SPEC = dict(
    connection_argument_spec(),  # uri, connect_timeout, auth_username, auth_password
    name=dict(type="str", required=True),
    dest_uri=dict(type="str", required=True),
    migration_address=dict(type="str", **deprecated("migrate_address")),
    mode=dict(type="str", choices=["precopy", "postcopy", "postcopy_after_precopy"], default="precopy"),
    allow_postcopy=dict(type="bool", default=True),
    bandwidth_mib=dict(type="int", **deprecated("bandwidth")),
    postcopy_bandwidth_mib=dict(type="int", **deprecated("postcopy_bandwidth")),
    max_downtime=dict(type="int", default=300),
    max_downtime_cap=dict(type="int", default=2000),
    auto_converge=dict(type="bool", default=False),
    auto_converge_initial=dict(type="int"),
    auto_converge_increment=dict(type="int"),
    compression=dict(type="str", choices=["xbzrle", "zstd"]),
    parallel_connections=dict(type="int"),
    tls=dict(type="bool", default=False),
    tls_destination=dict(type="str"),
    copy_storage=dict(type="str", choices=["all", "incremental"]),
    completion_timeout=dict(type="int"),
    completion_timeout_per_gib=dict(type="int", default=150),
    completion_timeout_min=dict(type="int", default=60),
    on_timeout=dict(type="str", choices=["abort", "suspend", "postcopy"], default="abort"),
    stall_iterations=dict(type="int", default=3),
    persist=dict(type="bool", default=True),
    undefine_source=dict(type="bool", default=True),
    stats_interval=dict(type="float", default=1.0),
    postcopy_recovery_timeout=dict(type="int", default=300),
)


class DomainMigrationModule:
    """Maps module parameters onto the migration core and its results onto Ansible's."""

    def __init__(self, module):
        self.module = module
        self.params = module.params

    def spec(self, copy_disks=None):
        """The migration's options; `copy_disks` the disks copy_storage copies (copy_list), none: no copy."""
        p = self.params
        return MigrationSpec(
            mode=p["mode"], allow_postcopy=p["allow_postcopy"],
            migrate_uri=migrate_uri_for(p["migration_address"], owner="migration_address"),
            persist_dest=p["persist"], undefine_source=p["undefine_source"], bandwidth_mib=p["bandwidth_mib"],
            postcopy_bandwidth_mib=p["postcopy_bandwidth_mib"], max_downtime_ms=p["max_downtime"],
            max_downtime_cap_ms=p["max_downtime_cap"], auto_converge=p["auto_converge"],
            auto_converge_initial=p["auto_converge_initial"], auto_converge_increment=p["auto_converge_increment"],
            compression=p["compression"], parallel_connections=p["parallel_connections"], tls=p["tls"],
            tls_destination=p["tls_destination"], copy_storage=p["copy_storage"] if copy_disks else None,
            copy_disks=tuple(copy_disks) if copy_disks else None,
            completion_timeout_s=p["completion_timeout"], completion_timeout_per_gib_s=p["completion_timeout_per_gib"],
            completion_timeout_min_s=p["completion_timeout_min"], on_timeout=p["on_timeout"],
            stall_iterations=p["stall_iterations"], stats_interval_s=p["stats_interval"],
            postcopy_recovery_timeout_s=p["postcopy_recovery_timeout"],
        )

    def copy_disks(self, src, dst):
        """With copy_storage: the VM's local disks to copy, from the prerequisite checks (as a drain does)."""
        p = self.params
        if not p["copy_storage"]:
            return None
        try:
            disks = copy_list(src, dst, p["name"], p["uri"], p["dest_uri"], p["copy_storage"],
                              migration_address=p["migration_address"])
        except DomainNotFound:
            return None  # not on the source: the engine tells "already there" from "unknown"
        if not disks:
            self.module.warn(f"copy_storage={p['copy_storage']}: no disk of {p['name']} needs copying (none is "
                             "local), so no storage is copied.")
        return disks

    def connect_all(self, uris):
        return connect_all(uris, **connect_options(self.params))

    def diff(self, moved):
        p = self.params
        return {"before": {"name": p["name"], "host": p["uri"]},
                "after": {"name": p["name"], "host": p["dest_uri"] if moved else p["uri"]}}

    def run(self):
        if LIBVIRT_IMPORT_ERROR is not None:
            self.module.fail_json(msg=missing_required_lib("libvirt-python (python3-libvirt)"),
                                  exception=LIBVIRT_IMPORT_ERROR)
        src = dst = call = None
        try:
            self.spec()  # bad options fail before any connection
            if self.module.check_mode:
                src, dst = self.connect_all([self.params["uri"], self.params["dest_uri"]])
            else:
                # the blocking migrate call gets its own connection: job-stats calls made on the
                # connection that carries it can stall until the migration ends (libvirt 9.0);
                # the three open in parallel
                src, dst, call = self.connect_all([self.params["uri"], self.params["dest_uri"], self.params["uri"]])
            spec = self.spec(self.copy_disks(src, dst))
            job = Migration(src, dst, self.params["name"], self.params["dest_uri"], spec, source_uri=self.params["uri"],
                            call_conn=call)
            if self.module.check_mode:
                self.check(job)
            else:
                self.migrate(job)
        except MigrationFailed as exc:
            result = exc.result.to_dict()
            result.pop("ok", None)
            self.module.fail_json(msg=str(exc), **result)
        except HvfleetError as exc:
            self.module.fail_json(msg=str(exc), changed=False)
        finally:
            close_quietly(call)
            close_quietly(src)
            close_quietly(dst)

    def check(self, job):
        plan = job.plan()
        outcome = {"migrate": "would_migrate", "resume_postcopy": "would_resume_postcopy"}.get(
            plan["action"], "already_there")
        result = dict(changed=plan["changed"], outcome=outcome, message=plan["message"], plan=plan,
                      source_state=plan["source_state"], destination_state=plan["destination_state"])
        if self.module._diff:  # pylint: disable=protected-access
            result["diff"] = self.diff(plan["changed"])
        self.module.exit_json(**result)

    def migrate(self, job):
        result = job.run().to_dict()
        result.pop("ok", None)
        if self.module._diff:  # pylint: disable=protected-access
            result["diff"] = self.diff(result["changed"])
        self.module.exit_json(**result)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.no_log_values.update(uri_passwords(module.params))  # a user:password@ in a URI is masked too
    DomainMigrationModule(module).run()


if __name__ == "__main__":
    main()
