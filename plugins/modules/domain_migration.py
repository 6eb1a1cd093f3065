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
    peer to peer, optionally over a dedicated migration network (O(migrate_address)).
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
  - libvirt-python (python3-libvirt) on the host that runs the module
  - libvirt >= 8.5 on both hypervisors when post-copy may be used (post-copy resume)
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
    description: libvirt URI of the host the domain runs on (the source).
    type: str
    default: qemu:///system
  dest_uri:
    description:
      - libvirt URI of the destination, as the B(source) libvirt daemon reaches it (peer-to-peer migration), and as
        this module reaches it to check where the domain is.
      - For example V(qemu+tcp://10.254.0.12/system), V(qemu+tls://hv2.example.com/system) or
        V(qemu+ssh://root@hv2/system).
    type: str
    required: true
  migrate_address:
    description:
      - Address (host name or IP, optionally C(:PORT)) of the destination on the dedicated migration network. The
        migration data goes to C(tcp://ADDRESS). Without it libvirt uses the destination's host name.
    type: str
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
  bandwidth:
    description: Bandwidth limit for pre-copy, in MiB/s. Unlimited when not set.
    type: int
  postcopy_bandwidth:
    description: Bandwidth limit for the post-copy phase, in MiB/s.
    type: int
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
    description: Copy non-shared disks along, V(all) or V(incremental). Leave unset for shared or network storage.
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
  connect_timeout:
    description: Seconds to wait for each libvirt connection to open.
    type: int
    default: 30
  auth_username:
    description: SASL user name for both libvirt connections, when the daemons ask for one.
    type: str
  auth_password:
    description: SASL password for both libvirt connections.
    type: str
notes:
  - The source libvirt daemon connects to O(dest_uri) itself (peer to peer), with its own credentials and
    certificates.
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
    migrate_address: 10.254.0.12

- name: Move a memory-hungry VM, falling back to post-copy when pre-copy cannot converge
  hvfleet.drain.domain_migration:
    name: db01
    dest_uri: qemu+tls://hv3.example.com/system
    migrate_address: 10.254.0.13
    tls: true
    mode: postcopy_after_precopy
    bandwidth: 1000
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
"""

RETURN = r"""
outcome:
  description:
    - V(moved), V(already_there) or V(postcopy_recovered) on success.
    - On failure V(stayed) (still on the source), V(postcopy_paused) (interrupted post-copy, see RV(recovery)),
      V(split_brain_paused), or the placement found (for example V(nowhere), V(unknown), V(both_paused)).
    - In check mode V(would_migrate), V(would_resume_postcopy) or V(already_there).
  returned: always
  type: str
  sample: moved
message:
  description: One sentence saying where the domain is and why.
  returned: always
  type: str
mode_used:
  description: V(precopy), V(postcopy) (post-copy was started), or V(none).
  returned: success or failure after the migration started
  type: str
suspended:
  description: Whether the VM was suspended to make the copy complete (O(on_timeout=suspend)).
  returned: success or failure after the migration started
  type: bool
steps:
  description: Every step taken, in order, with the time since start and the reason; C(error) when libvirt refused.
  returned: success or failure after the migration started
  type: list
  elements: dict
  sample: [{"t": 0.0, "action": "start", "reason": "...", "error": null}]
duration_s:
  description: Wall time of the whole task in seconds.
  returned: success or failure after the migration started
  type: float
deadline_s:
  description: Completion deadline that applied, in seconds.
  returned: success or failure after the migration started
  type: float
downtime_ms:
  description: Downtime of the switch-over as libvirt measured it, in milliseconds.
  returned: when libvirt reports it
  type: int
bytes_sent:
  description: Bytes the migration transferred (libvirt's data processed).
  returned: when libvirt reports it
  type: int
ram_bytes:
  description: Guest RAM size in bytes.
  returned: success or failure after the migration started
  type: int
iterations:
  description: Number of pre-copy memory iterations seen.
  returned: success or failure after the migration started
  type: int
max_dirty_rate_bps:
  description: Highest guest dirty rate seen, in bytes per second.
  returned: success or failure after the migration started
  type: float
stats:
  description: Time series of job samples (bytes, bytes/s, seconds), thinned to at most 600 points.
  returned: success or failure after the migration started
  type: list
  elements: dict
recovery:
  description: When the VM could not be brought to a clean state, exactly where it is and what to run.
  returned: on failure
  type: str
error:
  description: The libvirt error of the migration call, if it raised.
  returned: when the call raised
  type: str
source_state:
  description: The domain as last seen on the source (state, reason, label).
  returned: always
  type: dict
destination_state:
  description: The domain as last seen on the destination.
  returned: always
  type: dict
spec:
  description: The migration options as applied.
  returned: success or failure after the migration started
  type: dict
plan:
  description: In check mode, what would be done, with the libvirt flags and parameters.
  returned: check mode
  type: dict
"""

import traceback  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

try:
    import libvirt  # noqa: F401  pylint: disable=unused-import
    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection import close_quietly, connect_all  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError, MigrationFailed  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.redact import uri_passwords  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import Migration  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec, migrate_uri_for  # noqa: E402

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    uri=dict(type="str", default="qemu:///system"),
    dest_uri=dict(type="str", required=True),
    migrate_address=dict(type="str"),
    mode=dict(type="str", choices=["precopy", "postcopy", "postcopy_after_precopy"], default="precopy"),
    allow_postcopy=dict(type="bool", default=True),
    bandwidth=dict(type="int"),
    postcopy_bandwidth=dict(type="int"),
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
    connect_timeout=dict(type="int", default=30),
    auth_username=dict(type="str"),
    auth_password=dict(type="str", no_log=True),
)


class DomainMigrationModule:
    """Maps module parameters onto the migration core and its results onto Ansible's."""

    def __init__(self, module):
        self.module = module
        self.params = module.params

    def spec(self):
        p = self.params
        return MigrationSpec(
            mode=p["mode"], allow_postcopy=p["allow_postcopy"], migrate_uri=migrate_uri_for(p["migrate_address"]),
            persist_dest=p["persist"], undefine_source=p["undefine_source"], bandwidth_mib=p["bandwidth"],
            postcopy_bandwidth_mib=p["postcopy_bandwidth"], max_downtime_ms=p["max_downtime"],
            max_downtime_cap_ms=p["max_downtime_cap"], auto_converge=p["auto_converge"],
            auto_converge_initial=p["auto_converge_initial"], auto_converge_increment=p["auto_converge_increment"],
            compression=p["compression"], parallel_connections=p["parallel_connections"], tls=p["tls"],
            tls_destination=p["tls_destination"], copy_storage=p["copy_storage"],
            completion_timeout_s=p["completion_timeout"], completion_timeout_per_gib_s=p["completion_timeout_per_gib"],
            completion_timeout_min_s=p["completion_timeout_min"], on_timeout=p["on_timeout"],
            stall_iterations=p["stall_iterations"], stats_interval_s=p["stats_interval"],
            postcopy_recovery_timeout_s=p["postcopy_recovery_timeout"],
        )

    def connect_all(self, uris):
        p = self.params
        return connect_all(uris, timeout_s=p["connect_timeout"], username=p["auth_username"],
                           password=p["auth_password"])

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
            spec = self.spec()
            if self.module.check_mode:
                src, dst = self.connect_all([self.params["uri"], self.params["dest_uri"]])
            else:
                # the blocking migrate call gets its own connection: job-stats calls made on the
                # connection that carries it can stall until the migration ends (libvirt 9.0);
                # the three open in parallel
                src, dst, call = self.connect_all([self.params["uri"], self.params["dest_uri"], self.params["uri"]])
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
