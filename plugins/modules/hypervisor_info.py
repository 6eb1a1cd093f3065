#!/usr/bin/python
# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hypervisor_info
short_description: Facts about one libvirt/QEMU hypervisor and its domains
version_added: 0.1.0
description:
  - Reads, without changing anything, what a drain needs to know about one hypervisor. That is its capacity (memory
    total, free, available and allocated to running domains, CPUs and allocated vCPUs, NUMA nodes and their CPUs,
    huge pages per size), CPU model, libvirt and QEMU versions, the machine types its QEMU offers (per domain type,
    from libvirt's capabilities), migration capabilities (live migration, post-copy), Linux bridges and libvirt
    networks, and its maintenance (cordon) state.
  - For each domain, its state, memory, vCPUs, disks (type, source, whether other hosts can reach them),
    interfaces, labels (from the domain metadata, namespace C(https://hvfleet.github.io/drain/xmlns/1)) and, when
    O(policies) or O(policy_file) is given, the migration policy that applies to it and why.
  - Bridges, the filesystems disks live on, userfaultfd and the cordon state can only be read on the hypervisor
    itself. They are read when O(uri) is local (the module runs on the hypervisor) and are V(null) (unknown)
    otherwise.
author:
  - hvfleet maintainers (@hvfleet)
requirements:
  - jsonschema on the host that runs the module, when policies are given
extends_documentation_fragment:
  - hvfleet.drain.libvirt_connection
  - hvfleet.drain.attributes.read_only
options:
  uri:
    description: libvirt URI of the hypervisor.
  name:
    description: Name to report the hypervisor under (for example the inventory hostname). Defaults to its host name.
    type: str
  policies:
    description:
      - The migration policies (the C(hvfleet_migration_policies) list) to select each domain's policy from.
    type: list
    elements: dict
  policy_file:
    description:
      - A YAML or JSON file on the host running the module with the policies (a list, or a mapping with the key
        C(hvfleet_migration_policies)). Mutually exclusive with O(policies).
    type: path
  include_domains:
    description: Whether to list the domains.
    type: bool
    default: true
  state_dir:
    description: Directory of the maintenance state (C(maintenance.json)) on the hypervisor.
    type: path
    default: /var/lib/hvfleet
notes:
  - A malformed policy fails the task with the JSON path of each bad field; nothing else is read then.
seealso:
  - module: hvfleet.drain.migration_preflight
  - module: hvfleet.drain.host_maintenance
"""

EXAMPLES = r"""
- name: Read the facts of every hypervisor
  hvfleet.drain.hypervisor_info:
    name: "{{ inventory_hostname }}"
    policies: "{{ hvfleet_migration_policies | default(omit) }}"
  register: hv

- name: Show free memory and the policy of each VM
  ansible.builtin.debug:
    msg: "{{ hv.hypervisor.memory_available_mib }} MiB free; {{ hv.domains | map(attribute='policy.name') }}"
"""

RETURN = r"""
hypervisor:
  description:
    - Facts of the hypervisor. Memory in MiB, versions as libvirt's integers and as text.
    - C(bridges) maps bridge names to their MTU; C(networks) maps libvirt networks to C(active) and C(bridge).
    - C(cordon) is the maintenance state (C(state), C(reason), C(by), C(since)), V(null) when not read on the host.
    - C(postcopy) says whether post-copy is supported (V(true), V(false), or V(null) when unknown) and why.
    - The libvirt and QEMU versions and the machine types tell hosts of different generations apart (a rolling upgrade
      is a mixed fleet for days). A VM keeps the machine type it was started with, so it can only move to a host whose
      QEMU offers that type; hvfleet.drain.migration_preflight checks it (C(machine.type)).
  returned: always
  type: dict
  contains:
    libvirt_version:
      description: Version of the libvirt daemon, as libvirt's integer (major * 1000000 + minor * 1000 + micro).
      type: int
      sample: 11003000
    libvirt_version_text:
      description: The libvirt daemon's version as text.
      type: str
      sample: 11.3.0
    qemu_version:
      description: Version of the hypervisor (QEMU), as libvirt's integer.
      type: int
      sample: 10000013
    qemu_version_text:
      description: The QEMU version as text.
      type: str
      sample: 10.0.13
    machine_types:
      description:
        - Machine types QEMU offers for the host's architecture, by domain type (V(qemu) for TCG, V(kvm)), aliases
          such as V(pc) and V(q35) included, sorted. V(null) when libvirt's capabilities list none.
      type: dict
      sample: {"qemu": ["pc", "pc-i440fx-10.0", "pc-i440fx-7.2", "pc-q35-10.0", "q35"], "kvm": ["pc", "q35"]}
    machine_aliases:
      description: What each alias machine type stands for on this host (its newest version of that machine).
      type: dict
      sample: {"pc": "pc-i440fx-10.0", "q35": "pc-q35-10.0"}
    numa_cells:
      description:
        - The host's NUMA nodes and the CPU ids in each, from libvirt's capabilities. A VM pinned to CPUs or nodes a
          destination lacks is refused there, or re-mapped with the policy setting C(pinning=adapt).
        - V(null) when libvirt's capabilities list no topology.
      type: dict
      sample: {"0": [0, 1, 2, 3], "1": [4, 5, 6, 7]}
    hugepages:
      description:
        - Huge pages by page size in KiB, each with C(total) (reserved) and C(free), summed over the NUMA nodes
          (libvirt's capabilities and virNodeGetFreePages). A VM backed by huge pages needs free pages of its size on
          its destination.
        - V(null) when libvirt cannot say.
      type: dict
      sample: {"2048": {"total": 512, "free": 128}, "1048576": {"total": 0, "free": 0}}
    hugepages_free_nodes:
      description:
        - Free huge pages by NUMA node, then by page size in KiB. A VM whose memory C(numatune) binds to some nodes
          needs its free pages on those nodes.
        - V(null) when libvirt cannot say.
      type: dict
      sample: {"0": {"2048": 100, "1048576": 0}, "1": {"2048": 28, "1048576": 0}}
  sample:
    name: hv1
    hostname: hv1
    memory_total_mib: 24000
    memory_available_mib: 20000
    libvirt_version: 9000000
    libvirt_version_text: 9.0.0
    qemu_version: 7002000
    qemu_version_text: 7.2.0
    machine_types: {"qemu": ["pc", "pc-i440fx-7.2", "pc-q35-7.2", "q35"]}
    machine_aliases: {"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"}
    cordoned: false
    postcopy: {"supported": true, "resume": true, "reason": "libvirt 9.0.0, QEMU 7.2.0, kernel userfaultfd"}
domains:
  description:
    - One entry per domain with C(name), C(uuid), C(state), C(persistent), C(memory_mib), C(vcpus), C(disks),
      C(interfaces), C(local_devices) (devices that block live migration), C(labels) and C(cpu_mode) / C(cpu_model).
    - Each disk has C(shared) (V(true), V(false) or V(null) when unknown) and C(shared_reason).
    - C(policy) (when policies are given) has C(name), C(reason) and the effective C(settings).
  returned: when O(include_domains=true)
  type: list
  elements: dict
  contains:
    name: {description: Domain name., type: str}
    uuid: {description: Domain UUID., type: str}
    state: {description: "V(running), V(paused), V(shutoff), ...", type: str}
    persistent: {description: Whether the domain has a persistent definition., type: bool}
    memory_mib: {description: Maximum memory in MiB., type: int}
    current_memory_mib: {description: Current (balloon) memory in MiB., type: int}
    vcpus: {description: Number of vCPUs., type: int}
    domain_type: {description: "libvirt domain type (V(kvm), V(qemu))", type: str}
    arch: {description: Guest architecture., type: str}
    machine: {description: "Machine type (for example V(pc-i440fx-7.2)); V(null) when not given.", type: str}
    emulator: {description: Path of the QEMU binary; V(null) when not given., type: str}
    cpu_mode: {description: "CPU mode (V(host-model), V(custom), ...); V(null) when not given.", type: str}
    cpu_model: {description: CPU model name; V(null) when not given., type: str}
    cpu_xml: {description: The domain's C(<cpu>) element (for a CPU comparison); V(null) when absent., type: str}
    pins:
      description:
        - The domain's pins. C(cpus) lists pins to host CPUs (C(<vcpu cpuset>), C(vcpupin), C(emulatorpin),
          C(iothreadpin)), C(nodes) pins to host NUMA nodes (C(numatune)), each as [where, [ids]].
      type: dict
      sample: {"cpus": [["vcpupin vcpu 0", [1]], ["emulatorpin", [0]]], "nodes": []}
    hugepages:
      description: Huge pages the domain needs, by page size in KiB; empty when it is not backed by huge pages.
      type: dict
      sample: {"2048": 128}
    memory_nodes:
      description: Host NUMA nodes its C(numatune) binds its memory to (not in C(preferred) mode); empty when none.
      type: list
      elements: int
      sample: [1]
    disks:
      description: The domain's disks.
      type: list
      elements: dict
      contains:
        target: {description: "Target device (V(vda))", type: str}
        device: {description: "V(disk), V(cdrom), ...", type: str}
        type: {description: "Source type (V(file), V(block), V(network), V(volume))", type: str}
        path: {description: File or block device path; V(null) for other types., type: str}
        protocol: {description: "Network protocol (V(nbd), V(rbd), ...); V(null) otherwise.", type: str}
        name: {description: Network export or image name; V(null) otherwise., type: str}
        hosts: {description: Network disk servers as C(host:port)., type: list, elements: str}
        pool: {description: Storage pool of a volume disk; V(null) otherwise., type: str}
        format: {description: "Image format (V(qcow2), V(raw)); V(null) when not given.", type: str}
        readonly: {description: Whether the disk is read-only., type: bool}
        shareable: {description: Whether the disk is marked C(<shareable/>)., type: bool}
        source: {description: The source as one string (path or protocol URL)., type: str}
        shared: {description: "Whether other hosts reach the same storage; V(null) when unknown.", type: bool}
        shared_reason: {description: "Why it counts as shared or local, or why it is unknown.", type: str}
    interfaces:
      description: The domain's network interfaces.
      type: list
      elements: dict
      contains:
        type: {description: "V(network), V(bridge), V(direct), ...", type: str}
        source: {description: Network or bridge name., type: str}
        mac: {description: MAC address., type: str}
        model: {description: "Device model (V(virtio)); V(null) when not given.", type: str}
        mtu: {description: MTU when set; V(null) otherwise., type: int}
        target: {description: Host-side device name while running; V(null) otherwise., type: str}
    local_devices:
      description: Devices tied to this host, which block live migration.
      type: list
      elements: dict
      contains:
        kind: {description: "V(hostdev), V(interface-hostdev), V(serial), V(parallel), V(channel), V(smartcard),
                             V(filesystem) or V(nvme-disk)", type: str}
        description: {description: The device in words., type: str}
    labels: {description: Labels from the domain metadata., type: dict}
    policy:
      description: The migration policy that applies, when O(policies) or O(policy_file) is given.
      type: dict
      returned: when policies are given
      contains:
        name: {description: Policy name., type: str}
        reason: {description: Why this policy applies., type: str}
        specificity: {description: How specific the matching selector is (higher wins)., type: int}
        settings: {description: The effective settings (see the policy schema in docs/POLICIES.md)., type: dict}
  sample:
    - name: web1
      uuid: 6695eb01-f6a4-8304-79aa-97f2502e193f
      state: running
      persistent: true
      memory_mib: 4096
      current_memory_mib: 4096
      vcpus: 2
      domain_type: kvm
      arch: x86_64
      machine: pc-q35-7.2
      emulator: /usr/bin/qemu-system-x86_64
      cpu_mode: host-model
      cpu_model: null
      cpu_xml: "<cpu mode='host-model'/>"
      disks:
        - {target: vda, device: disk, type: network, path: null, protocol: nbd, name: web1, hosts: ["10.0.0.2:10809"],
           pool: null, format: raw, readonly: false, shareable: false, source: "nbd://10.0.0.2:10809/web1",
           shared: true, shared_reason: network disk (nbd)}
      interfaces:
        - {type: bridge, source: br0, mac: "52:54:00:12:34:56", model: virtio, mtu: null, target: vnet0}
      local_devices: []
      labels: {anti_affinity: web}
      policy:
        name: default
        reason: "policy 'default': the default policy, no other policy matched"
        specificity: 0
        settings: {mode: auto, allow_postcopy: true, max_downtime_ms: 500}
"""

import traceback  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

try:
    import libvirt  # noqa: F401  pylint: disable=unused-import
    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection import close_quietly, connect  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection_spec import (  # noqa: E402
    connect_options,
    connection_argument_spec,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy as policy_mod  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.disk_checks import disk_sharing  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import FactsError, domain_facts  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import host_facts, is_local_uri  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.probe import LocalProbe  # noqa: E402

ARGUMENT_SPEC = dict(
    connection_argument_spec(),
    name=dict(type="str"),
    policies=dict(type="list", elements="dict"),
    policy_file=dict(type="path"),
    include_domains=dict(type="bool", default=True),
    state_dir=dict(type="path", default="/var/lib/hvfleet"),
)


def load_policies(params):
    """Checked policies from `policies` or `policy_file` (PolicyError names the bad fields)."""
    if params.get("policy_file"):
        return policy_mod.load_policy_file(params["policy_file"])
    if params.get("policies") is not None:
        # an empty list means the built-in defaults: no schema check (nor jsonschema) needed
        return policy_mod.load_policies(params["policies"]) if params["policies"] else []
    return None


def describe_domain(conn, dom, local, probe, policies, host_name):
    """A domain's facts as a dict, with disk sharing and (when policies are given) its policy."""
    facts = domain_facts(dom)
    data = facts.to_dict()
    for index, disk in enumerate(facts.disks):
        entry = data["disks"][index]
        verdict, why = disk_sharing(conn, disk, local, probe, host_name)
        entry["shared"] = {"shared": True, "local": False}.get(verdict)
        entry["shared_reason"] = why
    if policies is not None:
        match = policy_mod.select_policy(policies, facts.name, facts.labels, facts.memory_mib)
        chosen = match.as_dict()
        data["policy"] = {"name": chosen.pop("policy"), **chosen}
    return data


class HypervisorInfoModule:
    """Reads host and domain facts; never changes anything."""

    def __init__(self, module):
        self.module = module
        self.params = module.params

    def run(self):
        if LIBVIRT_IMPORT_ERROR is not None:
            self.module.fail_json(msg=missing_required_lib("libvirt-python (python3-libvirt)"),
                                  exception=LIBVIRT_IMPORT_ERROR)
        p = self.params
        conn = None
        try:
            policies = load_policies(p)
            conn = connect(p["uri"], readonly=True, **connect_options(p))
            local = is_local_uri(p["uri"])
            host = host_facts(conn, name=p["name"], uri=p["uri"], local=local, state_dir=p["state_dir"])
            result = dict(changed=False, hypervisor=host.to_dict())
            if p["include_domains"]:
                probe = LocalProbe()
                result["domains"] = []
                for dom in sorted(conn.listAllDomains(0), key=lambda d: d.name()):
                    try:
                        result["domains"].append(describe_domain(conn, dom, local, probe, policies, host.name))
                    except FactsError:
                        continue  # the domain went away while we listed them
        except HvfleetError as exc:
            self.module.fail_json(msg=str(exc), changed=False)
        finally:
            close_quietly(conn)
        self.module.exit_json(**result)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, mutually_exclusive=[("policies", "policy_file")],
                           supports_check_mode=True)
    HypervisorInfoModule(module).run()


if __name__ == "__main__":
    main()
