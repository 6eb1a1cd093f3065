#!/usr/bin/python
# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: migration_preflight
short_description: Check whether VMs can live-migrate to candidate destinations, before anything moves
version_added: 0.1.0
description:
  - For each VM (O(vms), default every running domain on the source O(uri)) and each candidate destination
    (O(destinations)), runs every prerequisite check and reports each with an id, a status (V(pass), V(warn),
    V(fail)) and a message naming the VM, the device, the destination and the fix.
  - Checks are storage (every disk reachable from the destination, or copied when the VM's policy says
    V(copy_all) / V(copy_incremental); CD-ROM images present), networks (bridge or libvirt network present and
    active, MTU differences), host-bound devices (PCI/USB passthrough and the like), CPU compatibility (libvirt's
    hypervisor CPU comparison), memory capacity with O(memory_headroom_mib), post-copy support when the VM's mode
    may use it, reachability (the destination's libvirt and its migration address), libvirt / QEMU not older on the
    destination, and that the destination is neither cordoned nor the source itself.
  - Each VM gets its migration policy (from O(policies) or O(policy_file)) with the reason it matched, and a
    forecast of the migration (the mode, for V(auto) chosen from the VM's measured dirty rate and the link
    bandwidth, with predicted duration and downtime).
  - Read-only. A failing check is data, not a task failure; the task fails only on bad input (an unknown VM, a
    malformed URI or policy, an unreachable source) or, with O(fail_on_blockers), when a VM can go nowhere.
  - Run it on the source hypervisor (O(uri) local) so that its filesystems and its network path to the migration
    addresses are what is checked. Run from elsewhere, those checks only warn.
author:
  - hvfleet maintainers (@hvfleet)
requirements:
  - jsonschema on the host that runs the module, when policies are given
extends_documentation_fragment:
  - hvfleet.drain.libvirt_connection
  - hvfleet.drain.attributes.read_only
options:
  uri:
    description:
      - libvirt URI of the source hypervisor, where the VMs run. The same O(connect_timeout), O(auth_username) and
        O(auth_password) apply to the connections to the destinations.
  name:
    description: Name of the source hypervisor in messages (for example the inventory hostname).
    type: str
  vms:
    description: Names of the VMs to check. Default is every running domain on the source.
    type: list
    elements: str
  destinations:
    description: Candidate destinations.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Name of the destination (for example its inventory hostname).
        type: str
        required: true
      uri:
        description: libvirt URI of the destination, as the source reaches it (V(qemu+tcp://ADDR/system), ...).
        type: str
        required: true
      migration_address:
        description: Address of the destination on the migration network (C(hvfleet_migration_address)).
        type: str
      cordoned:
        description:
          - Whether the destination is cordoned. When not given, the cordon state comes from O(destinations[].facts);
            without either it is unknown and reported as a warning.
        type: bool
      link_mbit:
        description: Bandwidth of the migration link to this destination in Mbit/s, for the forecast.
        type: float
      facts:
        description:
          - The RV(hvfleet.drain.hypervisor_info#module:hypervisor) result of that destination, read on it. It
            supplies what libvirt cannot tell from here (cordon state, Linux bridges, userfaultfd).
        type: dict
  policies:
    description: The migration policies (the C(hvfleet_migration_policies) list).
    type: list
    elements: dict
  policy_file:
    description:
      - A YAML or JSON file with the policies on the host running the module (a list, or a mapping with the key
        C(hvfleet_migration_policies)). Mutually exclusive with O(policies).
    type: path
  memory_headroom_mib:
    description: Memory in MiB that must stay available on a destination after the VM arrived.
    type: int
    default: 1024
  dirty_rates:
    description:
      - Dirty rate per VM in MiB/s, for example from an earlier measurement. VMs not listed are measured when
        O(measure_dirty_rate) is true.
    type: dict
  measure_dirty_rate:
    description: Measure each running VM's dirty rate with libvirt (all VMs at once) for the forecast.
    type: bool
    default: true
  dirty_rate_seconds:
    description: Length of the dirty-rate measurement in seconds.
    type: int
    default: 1
  default_link_mbit:
    description:
      - Migration link bandwidth in Mbit/s for destinations without O(destinations[].link_mbit), and of the source.
      - The same default as M(hvfleet.drain.host_drain), so both forecast a VM alike.
    type: float
    default: 1000
  fail_on_blockers:
    description:
      - Fail the task when a VM cannot go to any of the destinations. The results are returned either way.
    type: bool
    default: false
  state_dir:
    description: Directory of the maintenance state on the source (read for its own facts).
    type: path
    default: /var/lib/hvfleet
notes:
  - A destination whose libvirt does not answer is not a task failure. Its checks say so (C(reach.libvirt) fails)
    for every VM.
  - File disks count as shared when they lie on a shared filesystem (the types libvirt treats as shared, for example
    NFS, CIFS, CephFS, GFS2, OCFS2, GlusterFS) or in a shared storage pool. The destination is asked through libvirt
    whether it has the same path, which it can only see inside a storage pool. Without a pool there, a shared disk is
    a warning, not a pass.
  - The migration address is probed with a TCP connection to the destination's libvirt port on that address. An
    accepted or refused connection means the address is reachable. The migration ports 49152-49215 are not probed,
    because a probe could disturb an incoming migration.
seealso:
  - module: hvfleet.drain.hypervisor_info
  - module: hvfleet.drain.host_maintenance
  - module: hvfleet.drain.domain_migration
"""

EXAMPLES = r"""
- name: Gather the destinations' facts on the destinations themselves
  hvfleet.drain.hypervisor_info:
    name: "{{ inventory_hostname }}"
  register: hv

- name: Can the VMs of hv1 go to hv2 or hv3?
  hvfleet.drain.migration_preflight:
    name: hv1
    policies: "{{ hvfleet_migration_policies | default([]) }}"
    destinations:
      - name: hv2
        uri: "{{ hostvars['hv2'].hvfleet_libvirt_uri }}"
        migration_address: "{{ hostvars['hv2'].hvfleet_migration_address }}"
        facts: "{{ hostvars['hv2'].hv.hypervisor }}"
      - name: hv3
        uri: "{{ hostvars['hv3'].hvfleet_libvirt_uri }}"
        migration_address: "{{ hostvars['hv3'].hvfleet_migration_address }}"
        facts: "{{ hostvars['hv3'].hv.hypervisor }}"
  register: preflight
  when: inventory_hostname == 'hv1'

- name: Show what blocks
  ansible.builtin.debug:
    msg: "{{ preflight.summary.message }}"
  when: inventory_hostname == 'hv1'
"""

RETURN = r"""
results:
  description: One entry per VM and destination, VMs in name order, destinations in the order of O(destinations).
  returned: success, and failure with O(fail_on_blockers)
  type: list
  elements: dict
  contains:
    vm:
      description: Name of the VM.
      type: str
    destination:
      description: Name of the destination (O(destinations[].name)).
      type: str
    status:
      description: The worst status of its checks, V(pass), V(warn) or V(fail).
      type: str
    ok:
      description: Whether the VM can go there (no check failed).
      type: bool
    copy_storage:
      description: V(all) or V(incremental) when the migration must copy disks (the VM's policy says so); else V(null).
      type: str
    copy_disks:
      description: Target names of the disks that would be copied.
      type: list
      elements: str
    checks:
      description: Every check, in the order they ran.
      type: list
      elements: dict
      contains:
        id:
          description:
            - What was checked, for example V(dest.is_source), V(dest.cordoned), V(reach.libvirt),
              V(reach.migration_address), V(version.libvirt), V(version.qemu), V(machine.type), V(device.models),
              V(device.hostdev), V(storage.disk), V(storage.cdrom), V(storage.copy), V(network.bridge),
              V(network.mtu), V(cpu.compat), V(capacity.memory), V(postcopy.support), V(forecast.mode).
          type: str
        status:
          description: V(pass), V(warn) (it may work; read the message) or V(fail) (it will not).
          type: str
        vm:
          description: Name of the VM.
          type: str
        destination:
          description: Name of the destination.
          type: str
        message:
          description: What was found, naming the VM, the device and the destination.
          type: str
        fix:
          description: What to do about a warning or failure; V(null) for a pass.
          type: str
        device:
          description: The disk, interface or device concerned, when the check is about one; else V(null).
          type: str
    blockers:
      description: The failed checks (keys as in C(checks)), most fundamental first.
      type: list
      elements: dict
      contains:
        id:
          description: What was checked.
          type: str
        status:
          description: V(fail).
          type: str
        vm:
          description: Name of the VM.
          type: str
        destination:
          description: Name of the destination.
          type: str
        message:
          description: What blocks.
          type: str
        fix:
          description: What to do about it.
          type: str
        device:
          description: The device concerned, or V(null).
          type: str
    summary:
      description: One line, V(VM -> DESTINATION) with V(can migrate) or the blockers.
      type: str
    policy:
      description: The VM's migration policy.
      type: dict
      contains:
        name:
          description: Name of the policy (V(builtin-default) when none matched).
          type: str
        reason:
          description: Why it applies.
          type: str
    forecast:
      description:
        - The predicted migration to that destination (the drain's own per-VM planning); V(null) when the VM is
          not running.
        - C(mode) is V(null) when no forecast could be made (dirty rate unknown, or the policy refuses); C(reason)
          says why.
      type: dict
      contains:
        mode:
          description: V(precopy), V(postcopy) or V(postcopy_after_precopy) as forecast; V(null) when refused.
          type: str
        auto_converge:
          description: Whether auto-converge would be armed.
          type: bool
        reason:
          description: How the mode was chosen, with the figures.
          type: str
        predicted_duration_s:
          description: Predicted duration in seconds.
          type: float
        predicted_downtime_ms:
          description: Predicted downtime in milliseconds.
          type: float
        predicted_bytes:
          description: Predicted bytes to transfer.
          type: int
        iterations:
          description: Predicted pre-copy passes.
          type: int
        completes:
          description: Whether it is predicted to finish before its deadline.
          type: bool
        deadline_s:
          description: The completion deadline in seconds.
          type: float
        throttle_pct:
          description: Predicted auto-converge CPU throttle in percent.
          type: int
        planned_mode:
          description: The mode the drain would use.
          type: str
        mode_reason:
          description: Why the drain would use that mode.
          type: str
  sample:
    - vm: web01
      destination: hv2
      status: warn
      ok: true
      copy_storage: null
      copy_disks: []
      checks:
        - {id: dest.is_source, status: pass, vm: web01, destination: hv2, message: hv2 is not the source host of web01.,
           fix: null, device: null}
        - id: network.mtu
          status: warn
          vm: web01
          destination: hv2
          message: "web01: interface 52:54:00:12:34:56: bridge br0 has MTU 1500 on hv2 but br0 has 9000 on hv1;
            large packets may be dropped after the move."
          fix: set the same MTU on both bridges.
          device: "interface 52:54:00:12:34:56"
      blockers: []
      summary: "web01 -> hv2: can migrate, 1 warning(s)"
      policy: {name: builtin-default, reason: "policy 'builtin-default': no policy matched and none is declared
          default, built-in defaults apply"}
      forecast:
        mode: precopy
        auto_converge: false
        reason: "dirty 5.0 MiB/s = 0.04 x link 119 MiB/s, ~976 of 8192 MiB in use: pre-copy converges in 1 pass,
          8.8 s <= deadline 1200 s, pause 363 ms <= 500 ms -> pre-copy"
        predicted_duration_s: 8.831
        predicted_downtime_ms: 363.4
        predicted_bytes: 1066335109
        iterations: 1
        completes: true
        deadline_s: 1200.0
        throttle_pct: 0
        planned_mode: precopy
        mode_reason: "dirty 5.0 MiB/s = 0.04 x link 119 MiB/s, ~976 of 8192 MiB in use: pre-copy converges in 1
          pass, 8.8 s <= deadline 1200 s, pause 363 ms <= 500 ms -> pre-copy"
vms:
  description: Per VM, keyed by its name.
  returned: success, and failure with O(fail_on_blockers)
  type: dict
  contains:
    state:
      description: Domain state, for example V(running), V(paused), V(shutoff).
      type: str
    memory_mib:
      description: Maximum memory of the VM in MiB.
      type: int
    labels:
      description: The VM's labels (domain metadata), name to value.
      type: dict
    policy:
      description: C(name) and C(reason) of the migration policy that applies.
      type: dict
    dirty_rate_mib_s:
      description: The dirty rate used for the forecast in MiB/s; V(null) when not measured.
      type: float
    destinations_ok:
      description: The destinations it can go to.
      type: list
      elements: str
    blocked:
      description: Destination name to the messages of what blocks the VM there.
      type: dict
  sample:
    web01:
      state: running
      memory_mib: 8192
      labels: {tier: web, anti_affinity: web}
      policy: {name: builtin-default, reason: "policy 'builtin-default': no policy matched and none is declared
          default, built-in defaults apply"}
      dirty_rate_mib_s: 5.0
      destinations_ok: [hv2]
      blocked:
        hv3: ["web01 needs 8192 MiB + 1024 MiB headroom = 9216 MiB; hv3 has 6100 MiB available (free 5800 MiB
            of 32000 MiB; 24576 MiB allocated to 3 running domains): 3116 MiB short."]
summary:
  description: The whole answer in figures and one paragraph.
  returned: success, and failure with O(fail_on_blockers)
  type: dict
  contains:
    movable:
      description: VMs with at least one destination.
      type: list
      elements: str
    stuck:
      description: VMs with no destination.
      type: list
      elements: str
    blockers:
      description: Number of failed checks.
      type: int
    warnings:
      description: Number of checks that warned.
      type: int
    message:
      description: One paragraph naming where each VM can go, or why it can go nowhere.
      type: str
  sample:
    movable: [web01]
    stuck: [db01]
    blockers: 2
    warnings: 1
    message: "1 of 2 VM(s) can migrate. web01 -> hv2. db01 can go nowhere (hv2: db01 uses PCI device
      0000:3b:00.0, which is bound to hv1 and cannot be live-migrated to hv2. (+1 more))."
source:
  description: The source hypervisor's facts, as RV(hvfleet.drain.hypervisor_info#module:hypervisor) returns them.
  returned: success, and failure with O(fail_on_blockers)
  type: dict
  contains:
    name:
      description: O(name), else the host name.
      type: str
    hostname:
      description: The host name libvirt reports.
      type: str
    uri:
      description: The URI it was read through.
      type: str
    host_uuid:
      description: libvirt's host UUID (the source and a destination must differ).
      type: str
    arch:
      description: CPU architecture.
      type: str
    cpu_model:
      description: Host CPU model.
      type: str
    cpu_vendor:
      description: Host CPU vendor.
      type: str
    cpus:
      description: Host CPUs.
      type: int
    memory_total_mib:
      description: Memory in MiB.
      type: int
    memory_free_mib:
      description: Free memory in MiB.
      type: int
    memory_available_mib:
      description: Memory a new guest can get without swapping (free, buffers, cache) in MiB.
      type: int
    memory_allocated_mib:
      description: Maximum memory of the running domains together, in MiB.
      type: int
    vcpus_allocated:
      description: vCPUs of the running domains together.
      type: int
    domains_running:
      description: Running domains.
      type: int
    libvirt_version:
      description: libvirt version number (major * 1000000 + minor * 1000 + micro).
      type: int
    libvirt_version_text:
      description: libvirt version as text.
      type: str
    qemu_version:
      description: QEMU version number.
      type: int
    qemu_version_text:
      description: QEMU version as text.
      type: str
    machine_types:
      description:
        - Machine types QEMU offers for the host's architecture, by domain type (V(qemu), V(kvm)), aliases
          included; V(null) when libvirt's capabilities list none.
      type: dict
    machine_aliases:
      description: Alias to the machine type it stands for, for example V(pc) to V(pc-i440fx-7.2).
      type: dict
    migration_live:
      description: Whether the host can live-migrate; V(null) when unknown.
      type: bool
    migration_transports:
      description: Migration URI transports libvirt offers, for example V(tcp), V(rdma).
      type: list
      elements: str
    userfaultfd:
      description: Whether the kernel offers userfaultfd (post-copy); V(null) when not read on the host itself.
      type: bool
    bridges:
      description: Linux bridge name to MTU; V(null) when unknown.
      type: dict
    bridges_source:
      description: Where the bridges were read, V(sysfs) or V(libvirt); V(null) when unknown.
      type: str
    networks:
      description: libvirt network name to C(active) and C(bridge).
      type: dict
    cordon:
      description: The maintenance state (C(state), C(reason), C(by), C(since)); V(null) when not read on the host.
      type: dict
    cordoned:
      description: Whether the host is cordoned; V(null) when unknown.
      type: bool
    local:
      description: Whether the facts were read on the host itself.
      type: bool
    numa_cells:
      description: NUMA node to the CPU ids in it (a VM's pins are checked against them); V(null) when unknown.
      type: dict
    hugepages:
      description: Huge page size in KiB to C(total) and C(free) pages; V(null) when unknown.
      type: dict
    hugepages_free_nodes:
      description: NUMA node to free huge pages by page size in KiB; V(null) when unknown.
      type: dict
    postcopy:
      description: Post-copy support, C(supported) (V(true), V(false) or V(null) when unknown), C(resume), C(reason).
      type: dict
  sample:
    name: hv1
    hostname: hv1
    uri: qemu:///system
    host_uuid: 4c4c4544-0042-3510-8052-b4c04f4e3132
    arch: x86_64
    cpu_model: Skylake-Server-IBRS
    cpu_vendor: Intel
    cpus: 16
    memory_total_mib: 64000
    memory_free_mib: 30500
    memory_available_mib: 41200
    memory_allocated_mib: 24576
    vcpus_allocated: 12
    domains_running: 3
    libvirt_version: 9000000
    libvirt_version_text: 9.0.0
    qemu_version: 7002000
    qemu_version_text: 7.2.0
    machine_types: {kvm: [pc, pc-i440fx-7.2, pc-q35-7.2, q35], qemu: [pc, pc-i440fx-7.2, pc-q35-7.2, q35]}
    machine_aliases: {pc: pc-i440fx-7.2, q35: pc-q35-7.2}
    migration_live: true
    migration_transports: [tcp, rdma]
    userfaultfd: true
    bridges: {br0: 1500, br-mig: 9000}
    bridges_source: sysfs
    networks: {default: {active: true, bridge: virbr0}}
    cordon: {state: cordoned, reason: CHG-1234, by: alice, since: "2025-01-31T08:00:00Z"}
    cordoned: true
    local: true
    postcopy: {supported: true, resume: true, reason: "libvirt 9.0.0, QEMU 7.2.0, kernel userfaultfd"}
"""

import dataclasses  # noqa: E402
import traceback  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

try:
    import libvirt  # noqa: F401  pylint: disable=unused-import
    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection import (  # noqa: E402
    check_uri,
    close_quietly,
    connect,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection_spec import (  # noqa: E402
    connect_options,
    connection_argument_spec,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import (  # noqa: E402
    DomainNotFound,
    HvfleetError,
    InvalidSpec,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.common.redact import uri_passwords  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet.maintenance import ACTIVE, CORDONED  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import forecast as fc  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy as policy_mod  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import preflight  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import (  # noqa: E402
    FactsError,
    domain_facts,
    measure_dirty_rates,
    resident_mib,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import (  # noqa: E402
    host_facts,
    is_local_uri,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import (  # noqa: E402
    DEFAULT_LINK_MBIT,
    Host,
    VmInfo,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import WARN  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.probe import LocalProbe  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import (  # noqa: E402
    lane_bandwidth,
    plan_vm,
)

ARGUMENT_SPEC = dict(
    connection_argument_spec(),  # uri, connect_timeout, auth_username, auth_password
    name=dict(type="str"),
    vms=dict(type="list", elements="str"),
    destinations=dict(type="list", elements="dict", required=True, options=dict(
        name=dict(type="str", required=True),
        uri=dict(type="str", required=True),
        migration_address=dict(type="str"),
        cordoned=dict(type="bool"),
        link_mbit=dict(type="float"),
        facts=dict(type="dict"),
    )),
    policies=dict(type="list", elements="dict"),
    policy_file=dict(type="path"),
    memory_headroom_mib=dict(type="int", default=1024),
    dirty_rates=dict(type="dict"),
    measure_dirty_rate=dict(type="bool", default=True),
    dirty_rate_seconds=dict(type="int", default=1),
    default_link_mbit=dict(type="float", default=DEFAULT_LINK_MBIT),
    fail_on_blockers=dict(type="bool", default=False),
    state_dir=dict(type="path", default="/var/lib/hvfleet"),
)
MUTUALLY_EXCLUSIVE = [("policies", "policy_file")]


def check_input(params):
    """Bad input is an error before anything is read: URIs, names, numbers."""
    check_uri(params["uri"])
    seen = set()
    for dest in params["destinations"]:
        check_uri(dest["uri"])
        if dest["name"] in seen:
            raise InvalidSpec(f"The destination '{dest['name']}' is listed twice.", "list each destination once.")
        seen.add(dest["name"])
        if dest.get("link_mbit") is not None and dest["link_mbit"] <= 0:
            raise InvalidSpec(f"link_mbit of destination '{dest['name']}' must be positive, got {dest['link_mbit']}.",
                              "give the migration link's bandwidth in Mbit/s, or leave it unset.")
    if params["memory_headroom_mib"] < 0:
        raise InvalidSpec(f"memory_headroom_mib must be >= 0, got {params['memory_headroom_mib']}.",
                          "give the memory in MiB that must stay free on a destination.")
    if params["default_link_mbit"] <= 0 or params["dirty_rate_seconds"] < 1:
        raise InvalidSpec("default_link_mbit must be positive and dirty_rate_seconds at least 1.",
                          "fix the values.")
    for vm, rate in (params["dirty_rates"] or {}).items():
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate < 0:
            raise InvalidSpec(f"dirty_rates['{vm}'] must be a number of MiB/s >= 0, got {rate!r}.",
                              "give the dirty rate in MiB/s.")


def cordon_override(cordoned):
    state = CORDONED if cordoned else ACTIVE
    return {"state": state, "reason": "given as the destination's cordoned parameter", "by": None, "since": None}


class MigrationPreflightModule:
    """Reads both ends and runs preflight.run_prechecks per VM and destination; changes nothing."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.conns = []

    def connect(self, uri):
        conn = connect(uri, **connect_options(self.params))
        self.conns.append(conn)
        return conn

    def run(self):
        if LIBVIRT_IMPORT_ERROR is not None:
            self.module.fail_json(msg=missing_required_lib("libvirt-python (python3-libvirt)"),
                                  exception=LIBVIRT_IMPORT_ERROR)
        try:
            result = self.preflight()
        except HvfleetError as exc:
            self.module.fail_json(msg=str(exc), changed=False)
        finally:
            for conn in self.conns:
                close_quietly(conn)
        if self.params["fail_on_blockers"] and result["summary"]["stuck"]:
            self.module.fail_json(msg=result["summary"]["message"], **result)
        self.module.exit_json(**result)

    def load_policies(self):
        p = self.params
        if p["policy_file"]:
            return policy_mod.load_policy_file(p["policy_file"])
        if not p["policies"]:
            return []  # the built-in defaults; no schema check (nor jsonschema) needed
        return policy_mod.load_policies(p["policies"])

    def domains(self, src):
        if self.params["vms"]:
            known = {d.name(): d for d in src.listAllDomains(0)}
            missing = [n for n in self.params["vms"] if n not in known]
            if missing:
                raise DomainNotFound(missing[0], self.params["uri"], known)
            return [known[n] for n in dict.fromkeys(self.params["vms"])]
        return sorted(src.listAllDomains(1), key=lambda d: d.name())  # running ones

    def dirty_rates(self, doms, facts):
        given = {str(k): float(v) * fc.MIB for k, v in (self.params["dirty_rates"] or {}).items()}
        running = [d for d in doms if facts[d.name()].state == "running" and d.name() not in given]
        notes = {}
        if running and self.params["measure_dirty_rate"]:
            for name, rate in measure_dirty_rates(running, self.params["dirty_rate_seconds"]).items():
                if isinstance(rate, FactsError):
                    notes[name] = str(rate)
                else:
                    given[name] = rate
        return given, notes

    def destination(self, dest):
        """(conn or None, HostFacts, error text)."""
        try:
            conn = self.connect(dest["uri"])
            facts = host_facts(conn, name=dest["name"], uri=dest["uri"], local=is_local_uri(dest["uri"]))
        except HvfleetError as exc:
            return None, preflight.unreachable_host(dest["name"], dest["uri"]), str(exc)
        facts = facts.merged_with(dest.get("facts"))
        if dest.get("cordoned") is not None:
            facts = dataclasses.replace(facts, cordon=cordon_override(dest["cordoned"]))
        return conn, facts, None

    def forecast(self, vm, match, dest, note):
        """(forecast dict or None, mode): the drain's own per-VM planning (vm_plan.plan_vm), one lane."""
        if vm.state != "running":
            return None, match.settings.get("mode")
        if vm.dirty_rate_bps is None:
            return {"mode": None, "reason": f"dirty rate unknown: {note or 'not measured'}"}, match.settings.get("mode")
        p = self.params
        source = Host(p["name"] or "source", p["uri"])
        target = Host(dest["name"], dest["uri"], migration_address=dest.get("migration_address"),
                      link_mbit=dest.get("link_mbit"))
        bandwidth = lane_bandwidth(source, target, 1, default_link_mbit=p["default_link_mbit"], max_inbound=None,
                                   budget_bps=None)
        decision = plan_vm(vm, match.settings, match.policy.name, match.reason, source, target,
                           placement_reason="checked by migration_preflight", bandwidth_bps=bandwidth)
        if decision.item is None:
            reason = decision.blocker.message if decision.blocker else "refused"
            return dict(decision.forecast.as_dict() if decision.forecast else {}, mode=None, reason=reason), None
        prediction = decision.forecast.as_dict() if decision.forecast else {"mode": None, "reason": "no forecast"}
        return dict(prediction, planned_mode=decision.item.mode, mode_reason=decision.item.mode_reason), \
            decision.item.mode

    @staticmethod
    def vm_info(dom, dom_facts, rate):
        return VmInfo(dom_facts.name, dom_facts.memory_mib, dom_facts.vcpus, active=dom_facts.running,
                      persistent=bool(dom_facts.persistent), state=dom_facts.state, labels=dict(dom_facts.labels),
                      dirty_rate_bps=rate, facts=dom_facts,
                      resident_mib=resident_mib(dom) if dom_facts.running else None)

    def preflight(self):  # pylint: disable=too-many-locals
        p = self.params
        check_input(p)
        policies = self.load_policies()
        src = self.connect(p["uri"])
        on_source = is_local_uri(p["uri"])
        source = host_facts(src, name=p["name"], uri=p["uri"], local=on_source, state_dir=p["state_dir"])
        doms = self.domains(src)
        facts = {}
        for dom in doms:
            facts[dom.name()] = domain_facts(dom)
        rates, notes = self.dirty_rates(doms, facts)
        infos = {dom.name(): self.vm_info(dom, facts[dom.name()], rates.get(dom.name())) for dom in doms}
        matches = {name: policy_mod.select_policy(policies, name, f.labels, f.memory_mib) for name, f in facts.items()}
        dests = [(d, *self.destination(d)) for d in p["destinations"]]
        probe = LocalProbe()
        results = []
        vms = {}
        for name, dom_facts in facts.items():
            match = matches[name]
            entry = vms[name] = {
                "state": dom_facts.state, "memory_mib": dom_facts.memory_mib, "labels": dom_facts.labels,
                "policy": {"name": match.policy.name, "reason": match.reason},
                "dirty_rate_mib_s": round(rates[name] / fc.MIB, 2) if name in rates else None,
                "destinations_ok": [], "blocked": {},
            }
            for dest, conn, dest_facts, error in dests:
                prediction, mode = self.forecast(infos[name], match, dest, notes.get(name))
                checked = preflight.run_prechecks(
                    src, conn, dom_facts, source, dest_facts, match.settings,
                    migration_address=dest.get("migration_address"), mode=mode,
                    forecast_reason=(prediction or {}).get("reason"), memory_headroom_mib=p["memory_headroom_mib"],
                    on_source=on_source, probe=probe, destination_error=error)
                item = checked.to_dict()
                item["policy"] = {"name": match.policy.name, "reason": match.reason}
                item["forecast"] = prediction
                results.append(item)
                if checked.ok:
                    entry["destinations_ok"].append(dest["name"])
                else:
                    entry["blocked"][dest["name"]] = [c.message for c in checked.blockers]
        return dict(changed=False, results=results, vms=vms, summary=summarize(vms, results),
                    source=source.to_dict())


def summarize(vms, results):
    movable = sorted(n for n, v in vms.items() if v["destinations_ok"])
    stuck = sorted(n for n, v in vms.items() if not v["destinations_ok"])
    blockers = sum(len(r["blockers"]) for r in results)
    warnings = sum(1 for r in results for c in r["checks"] if c["status"] == WARN)
    parts = [f"{len(movable)} of {len(vms)} VM(s) can migrate"]
    for name in movable:
        parts.append(f"{name} -> {', '.join(vms[name]['destinations_ok'])}")
    for name in stuck:
        reasons = "; ".join(f"{dest}: {msgs[0]}" + (f" (+{len(msgs) - 1} more)" if len(msgs) > 1 else "")
                            for dest, msgs in vms[name]["blocked"].items())
        parts.append(f"{name} can go nowhere ({reasons or 'no destination given'})")
    return {"movable": movable, "stuck": stuck, "blockers": blockers, "warnings": warnings,
            "message": ". ".join(parts) + "."}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, mutually_exclusive=MUTUALLY_EXCLUSIVE, supports_check_mode=True)
    module.no_log_values.update(uri_passwords(module.params))  # a user:password@ in a URI is masked too
    MigrationPreflightModule(module).run()


if __name__ == "__main__":
    main()
