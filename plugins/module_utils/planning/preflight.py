# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prerequisite checks: can this VM live-migrate to that destination, and if not, why?

Every check is reported - a failed one never hides the others - with its own id, the VM, the
device, the destination and the fix, so a blocker is named for what it is (a local disk is
never reported as "not enough memory"). A failing check is data; nothing here changes anything.

What each check can and cannot see:

- storage: network disks (nbd, rbd, iscsi, gluster, ...) pass. A file/block disk is shared when
  its source volume is in a shared libvirt pool (netfs, iscsi, rbd, ...) or, when this runs on
  the source host, its path lies on a shared filesystem type (the list libvirt uses: nfs, cifs,
  ceph, gfs2, ocfs2, glusterfs, ...; read from /proc/self/mounts). The destination is asked
  through libvirt whether it has a volume at the same path (`storageVolLookupByPath`, after a
  refresh of the pool whose target is the disk's directory). libvirt can only see files inside
  storage pools: a shared disk the destination has no pool for is a warning (we cannot prove the
  same share is mounted there), not a pass. Not shared and the policy copies storage: it passes
  when the destination has the file or a pool at its directory (libvirt creates the copy only
  inside a pool), and the migration must then use copy_storage. Otherwise it fails.
- reachability of the migration address: name resolution, a route, and a TCP connection to the
  address on the destination's libvirt port (the URI's port, 16509 for qemu+tcp, 16514 for
  qemu+tls, 22 for qemu+ssh). Accepted or refused both prove the host answers there; a timeout
  is a warning (a firewall may drop traffic), no route is a failure. The migration ports
  49152-49215 are not probed on purpose: a probe could hit an incoming migration of another VM,
  which QEMU would take as its data stream. The probe runs where this code runs; when that is
  not the source host, a failure is only a warning and says so.
- versions and machine type: a destination with an older libvirt or QEMU is a warning, not a
  blocker (a VM that came from an older host still has that host's machine type and can go back);
  what blocks is a machine type the destination's QEMU does not offer (from its capabilities):
  a VM started on a newer QEMU runs that QEMU's machine type until it is restarted.
- CPU: libvirt's compareHypervisorCPU on the destination with the domain's <cpu> (host-passthrough
  domains: the host CPU models must match); pins and huge pages: shape_checks.py.
- post-copy: versions and the kernel's userfaultfd (known only from facts read on the host).
"""

from __future__ import annotations

import socket

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import ForecastVerdict, Mode, OnTimeout
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.check_cache import (
    CheckCache,
    cpu_definition,
    destination_scope,
    recall,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.device_support import unsupported
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.disk_checks import DiskChecks
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import (
    Connection,
    DomainFacts,
    Interface,
    version_text,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import HostFacts
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.hugepages import pool_split
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_problems import POSTCOPY_MODES
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import Settings
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import FAIL, PASS, WARN, PrecheckResult
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.probe import (
    LocalProbe,
    Probe,
    probe_port,
    split_address,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.shape_checks import shape_findings

DEFAULT_HEADROOM_MIB = 1024

VIR_CPU_COMPARE_INCOMPATIBLE = 0
VIR_CPU_COMPARE_IDENTICAL = 1
VIR_CPU_COMPARE_SUPERSET = 2
VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE = 1
VIR_DOMAIN_XML_MIGRATABLE = 8


# ---- the checks -------------------------------------------------------------------------------


class _Checker(DiskChecks):
    """Every prerequisite check of one VM against one destination; the storage ones are DiskChecks'."""

    # ---- destination identity, reachability, versions ----

    def identity(self) -> None:
        src, dst = self.source, self.destination
        same_uuid = bool(src.host_uuid and dst.host_uuid and src.host_uuid == dst.host_uuid)
        same_uri = bool(src.uri and dst.uri and src.uri == dst.uri)
        if same_uuid or same_uri:
            why = f"host UUID {dst.host_uuid}" if same_uuid else f"URI {dst.uri}"
            self.add("dest.is_source", FAIL, f"{self.dest_name} is the host {self.domain.name} runs on ({why}).",
                     "choose another hypervisor as destination (and give each libvirtd its own host_uuid).")
        else:
            self.add("dest.is_source", PASS, f"{self.dest_name} is not the source host of {self.domain.name}.")
        cordoned = dst.cordoned
        if cordoned:
            cordon = dst.cordon or {}
            self.add("dest.cordoned", FAIL,
                     f"{self.dest_name} is cordoned (maintenance) since {cordon.get('since') or '?'} by "
                     f"{cordon.get('by') or '?'}: {cordon.get('reason') or 'no reason given'}; {self.domain.name} "
                     "must not be moved there.",
                     f"choose another destination, or uncordon {self.dest_name} (hvfleet.drain.host_maintenance "
                     "state=active) when its maintenance is over.")
        elif cordoned is None:
            self.add("dest.cordoned", WARN,
                     f"the cordon state of {self.dest_name} is unknown (not read on that host), so {self.domain.name} "
                     "might be sent to a host under maintenance.",
                     f"run hvfleet.drain.hypervisor_info on {self.dest_name} and pass its facts, or pass cordoned.")
        else:
            self.add("dest.cordoned", PASS, f"{self.dest_name} is not cordoned.")

    def reachability(self) -> None:
        self.add("reach.libvirt", PASS,
                 f"libvirt on {self.dest_name} ({self.destination.uri}) answers: libvirt "
                 f"{version_text(self.destination.libvirt_version)}.")
        address = self.migration_address
        if not address:
            self.add("reach.migration_address", WARN,
                     f"no migration address for {self.dest_name}: {self.domain.name} would be sent to the "
                     "destination's own host name, which may not resolve on the source or may use the "
                     "management network.",
                     f"set hvfleet_migration_address for {self.dest_name} (its address on the migration network).")
            return
        host, port = split_address(address, probe_port(self.destination.uri))
        status, text = recall(self.cache, destination_scope(self.dest_name), ("reach", host, port),
                              lambda: self.probe.reach(host, port))
        where = "from the source" if self.on_source else \
            f"from {socket.gethostname()} (where this runs, not the source host {self.source.name})"
        if status == FAIL and not self.on_source:
            status = WARN
        self.add("reach.migration_address", status,
                 f"migration address {address} of {self.dest_name} for {self.domain.name}, checked {where}: {text}.",
                 f"make {address} reachable from {self.source.name} (routes, firewall: the destination's libvirt "
                 "port and the migration ports 49152-49215), or fix hvfleet_migration_address.")

    def versions(self) -> None:
        for check_id, what, src_v, dst_v in (
            ("version.libvirt", "libvirt", self.source.libvirt_version, self.destination.libvirt_version),
            ("version.qemu", "QEMU", self.source.qemu_version, self.destination.qemu_version),
        ):
            if not src_v or not dst_v:
                self.add(check_id, WARN, f"{what} version of {'the source' if not src_v else self.dest_name} is "
                         f"unknown; cannot tell whether {self.domain.name} can move to {self.dest_name}.",
                         "check that libvirt answers on both hosts.")
            elif dst_v < src_v:
                self.add(check_id, WARN,
                         f"{what} on {self.dest_name} ({version_text(dst_v)}) is older than on the source "
                         f"{self.source.name} ({version_text(src_v)}): {self.domain.name} can go there only with "
                         "a machine type, CPU model and devices the older stack has (checked: machine.type, "
                         "cpu.compat; libvirt on the destination refuses anything else when the migration starts).",
                         "prefer a destination of the same or a newer generation (upgrade destinations before "
                         "sources).")
            else:
                self.add(check_id, PASS, f"{what} {version_text(dst_v)} on {self.dest_name} >= "
                         f"{version_text(src_v)} on {self.source.name}.")

    def machine(self) -> None:
        """The VM's machine type must exist in the destination's QEMU: a VM started on a newer QEMU keeps
        that QEMU's machine type (e.g. pc-i440fx-10.0) until it is restarted, and an older QEMU lacks it."""
        vm, dest, dom, dst = self.domain.name, self.dest_name, self.domain, self.destination
        have = dst.has_machine(dom.machine, dom.domain_type)
        src_q, dst_q = self.source.qemu_version, dst.qemu_version
        if have is None and src_q and dst_q and dst_q >= src_q:
            self.add("machine.type", PASS,
                     f"QEMU {version_text(dst_q)} on {dest} is not older than {version_text(src_q)} on "
                     f"{self.source.name}, so it offers {vm}'s machine type {dom.machine or '(default)'}.")
        elif have is None:
            self.add("machine.type", WARN,
                     f"cannot tell whether {dest} offers machine type {dom.machine or '?'} for {vm} "
                     f"({'the VM names none' if not dom.machine else 'its machine types are unknown'}).",
                     f"read {dest}'s facts with libvirt (hvfleet.drain.hypervisor_info lists machine_types).")
        elif have:
            self.add("machine.type", PASS,
                     f"QEMU {version_text(dst.qemu_version)} on {dest} offers {vm}'s machine type {dom.machine}.")
        else:
            newest = ", ".join(f"{alias} = {canonical}" for alias, canonical in sorted(dst.machine_aliases.items()))
            self.add("machine.type", FAIL,
                     f"{vm} runs machine type {dom.machine} ({dom.domain_type or '?'}), which QEMU "
                     f"{version_text(dst.qemu_version)} on {dest} does not offer"
                     + (f" (its newest: {newest})" if newest else "") + f"; libvirt on {dest} would refuse the "
                     "migration.",
                     f"choose a destination of the same or a newer generation than {self.source.name} (QEMU >= "
                     f"{version_text(self.source.qemu_version)}), or give {vm} a machine type every host offers "
                     "(set it in the domain XML and restart the VM) before it moves to older hosts.")

    # ---- devices ----

    def devices(self) -> None:
        if not self.domain.local_devices:
            self.add("device.hostdev", PASS, f"{self.domain.name} has no host-bound devices.")
        for device in self.domain.local_devices:
            self.add("device.hostdev", FAIL,
                     f"{self.domain.name} uses {device.description}, which is bound to {self.source.name} and "
                     f"cannot be live-migrated to {self.dest_name}.",
                     f"detach the {device.kind} from {self.domain.name} before the drain (and re-attach after), "
                     "or shut the VM down for the maintenance.", device=device.description)

    # ---- network ----

    def networks(self) -> None:
        vm, dest = self.domain.name, self.dest_name
        dst_bridges = self.destination.bridges
        for nic in self.domain.interfaces:
            device = f"interface {nic.mac or '?'}"
            bridge = None
            if nic.type == "bridge":
                bridge = nic.source
                if dst_bridges is None:
                    self.add("network.bridge", WARN,
                             f"{vm}: {device} is on bridge {bridge}; the bridges of {dest} are unknown (its libvirt "
                             "has no interface driver and no facts read on that host were given).",
                             f"run hvfleet.drain.hypervisor_info on {dest} and pass its facts.", device=device)
                elif bridge in dst_bridges:
                    self.add("network.bridge", PASS, f"{vm}: {device}: bridge {bridge} exists on {dest}.",
                             device=device)
                else:
                    self.add("network.bridge", FAIL,
                             f"{vm}: {device} is on bridge {bridge}, which does not exist on {dest} (bridges there: "
                             f"{', '.join(sorted(dst_bridges)) or 'none'}).",
                             f"create bridge {bridge} on {dest} (same name, same network), or choose a destination "
                             "that has it.", device=device)
            elif nic.type == "network":
                net = (self.destination.networks or {}).get(nic.source or "")
                if net is None:
                    self.add("network.bridge", FAIL,
                             f"{vm}: {device} uses libvirt network {nic.source}, which is not defined on {dest}.",
                             f"define and start network {nic.source} on {dest}.", device=device)
                elif not net.get("active"):
                    self.add("network.bridge", FAIL,
                             f"{vm}: {device} uses libvirt network {nic.source}, which is defined but not active on "
                             f"{dest}.", f"start network {nic.source} on {dest} and mark it autostart.", device=device)
                else:
                    self.add("network.bridge", PASS, f"{vm}: {device}: network {nic.source} is active on {dest}.",
                             device=device)
                    bridge = net.get("bridge")
            elif nic.type in ("user", "hostdev"):
                continue  # user networking needs nothing; SR-IOV is reported by device.hostdev
            else:
                self.add("network.bridge", WARN, f"{vm}: {device} is a {nic.type} interface"
                         f"{' on ' + nic.source if nic.source else ''}; whether {dest} has it is not checked.",
                         f"make sure {nic.source or 'the same network'} exists on {dest}.", device=device)
            self._mtu(nic, device, bridge)

    def _mtu(self, nic: Interface, device: str, bridge: str | None) -> None:
        src_bridges = self.source.bridges or {}
        dst_bridges = self.destination.bridges or {}
        if nic.type == "network":
            src_net = (self.source.networks or {}).get(nic.source or "") or {}
            src_bridge = src_net.get("bridge")
        else:
            src_bridge = bridge
        src_mtu = src_bridges.get(src_bridge) if src_bridge else None
        dst_mtu = dst_bridges.get(bridge) if bridge else None
        if not src_mtu or not dst_mtu:
            return
        vm, dest = self.domain.name, self.dest_name
        if src_mtu == dst_mtu and (nic.mtu is None or nic.mtu <= dst_mtu):
            self.add("network.mtu", PASS, f"{vm}: {device}: MTU {dst_mtu} on {dest} as on the source.", device=device)
        else:
            self.add("network.mtu", WARN,
                     f"{vm}: {device}: bridge {bridge} has MTU {dst_mtu} on {dest} but {src_bridge} has {src_mtu} on "
                     f"{self.source.name}{f' (the interface asks for {nic.mtu})' if nic.mtu else ''}; large packets "
                     "may be dropped after the move.", "set the same MTU on both bridges.", device=device)

    # ---- CPU, capacity, post-copy ----

    def cpu(self) -> None:
        vm, dest, dom = self.domain.name, self.dest_name, self.domain
        if dom.cpu_mode in ("host-passthrough", "maximum"):
            src_model, dst_model = self.source.cpu_model, self.destination.cpu_model
            if src_model and dst_model and src_model == dst_model and self.source.cpu_vendor == \
                    self.destination.cpu_vendor:
                self.add("cpu.compat", WARN,
                         f"{vm} uses CPU mode {dom.cpu_mode}: host CPU models match ({dst_model}) but libvirt cannot "
                         "verify microcode and feature flags for this mode.",
                         "prefer host-model or a named CPU model for VMs that must move.")
            else:
                self.add("cpu.compat", FAIL,
                         f"{vm} uses CPU mode {dom.cpu_mode}, which needs an identical host CPU; {dest} has "
                         f"{dst_model or 'unknown'}, {self.source.name} has {src_model or 'unknown'}.",
                         f"give {vm} a CPU model both hosts provide (host-model or a named model), or choose a "
                         "destination with the same CPU.")
            return
        if not dom.cpu_xml or not (dom.cpu_model or dom.cpu_mode == "host-model"):
            self.add("cpu.compat", PASS, f"{vm} uses the machine type's default CPU model; {dest} provides it.")
            return
        virttype = dom.domain_type or "kvm"
        try:
            result = self._compare_cpu(virttype, 0)
        except Exception as exc:  # pylint: disable=broad-except
            self.add("cpu.compat", WARN, f"{vm}: libvirt on {dest} could not compare CPU "
                     f"{dom.cpu_model or dom.cpu_mode}: {exc}",
                     f"check that {dest} has the emulator {dom.emulator} and machine type {dom.machine}.")
            return
        if result in (VIR_CPU_COMPARE_IDENTICAL, VIR_CPU_COMPARE_SUPERSET):
            how = "identical to" if result == VIR_CPU_COMPARE_IDENTICAL else "a subset of"
            self.add("cpu.compat", PASS, f"{vm}: CPU {dom.cpu_model or dom.cpu_mode} ({virttype}) is {how} what "
                     f"{dest} provides.")
            return
        detail = ""
        try:
            self._compare_cpu(virttype, VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
        # libvirt names the missing features
        except Exception as exc:  # pylint: disable=broad-except
            detail = f": {exc}"
        self.add("cpu.compat", FAIL, f"{vm}: CPU {dom.cpu_model or dom.cpu_mode} is incompatible with {dest}{detail}.",
                 f"give {vm} a CPU model every destination provides (a cluster-wide baseline), or choose another "
                 "destination.")

    def _compare_cpu(self, virttype: str, flags: int) -> int:
        """libvirt's compareHypervisorCPU on the destination, once per plan and distinct CPU definition."""
        dom = self.domain
        args = (dom.emulator, dom.arch, dom.machine, virttype, cpu_definition(dom.cpu_xml or ""), flags)
        result: int = recall(self.cache, destination_scope(self.dest_name), ("cpu", *args),
                             lambda: self.dst_conn.compareHypervisorCPU(*args))
        return result

    def device_models(self) -> None:
        """Only towards an older stack: the device models, buses and backends the VM uses against the
        destination's domain capabilities (device_support.py); libvirt there would refuse what it lacks."""
        dom, dest = self.domain, self.dest_name
        src, dst = self.source.stack, self.destination.stack
        if not (all(src) and all(dst)) or dst >= src:
            return
        try:
            xml = self.src_conn.lookupByName(dom.name).XMLDesc(VIR_DOMAIN_XML_MIGRATABLE)
            args = (None, dom.arch, dom.machine, dom.domain_type, 0)
            caps = recall(self.cache, destination_scope(dest), ("domcaps", *args),
                          lambda: self.dst_conn.getDomainCapabilities(*args))
            missing = unsupported(xml, caps)
        except Exception as exc:  # pylint: disable=broad-except
            self.add("device.models", WARN, f"cannot compare {dom.name}'s devices with what {dest} supports: {exc}.",
                     f"check that libvirt on both hosts answers (virsh domcapabilities on {dest}).")
            return
        if missing:
            self.add("device.models", FAIL, f"{dom.name} uses {', '.join(missing)}, which the older stack on {dest} "
                     "does not offer; libvirt there would refuse the migration.",
                     f"choose a destination of the same or a newer generation, or change {dom.name}'s devices to "
                     "models every host offers (and restart it) before it moves to older hosts.")
        else:
            self.add("device.models", PASS, f"every device model {dom.name} uses is offered on {dest}.")

    def capacity(self) -> None:
        vm, dest = self.domain.name, self.dest_name
        ram, pooled = pool_split(self.domain.hugepages, self.domain.memory_mib)  # huge pages: capacity.hugepages
        need, have = ram + self.headroom, self.destination.memory_available_mib
        text = (f"{vm} needs {ram} MiB{f' (and {pooled} MiB in huge pages)' if pooled else ''} + {self.headroom} "
                f"MiB headroom = {need} MiB; {dest} has "
                f"{have} MiB available (free {self.destination.memory_free_mib} MiB of "
                f"{self.destination.memory_total_mib} MiB; {self.destination.memory_allocated_mib} MiB allocated to "
                f"{self.destination.domains_running} running domains)")
        if have >= need:
            self.add("capacity.memory", PASS, text + ".")
        else:
            self.add("capacity.memory", FAIL, text + f": {need - have} MiB short.",
                     f"choose a destination with more free memory, free memory on {dest}, or lower the headroom "
                     "(memory_headroom_mib) if it is too cautious.")

    def postcopy(self) -> None:
        vm, dest = self.domain.name, self.dest_name
        settings = self.settings
        reasons = []
        if self.mode in POSTCOPY_MODES:
            reasons.append(f"mode {self.mode}")
        elif self.mode == Mode.AUTO and settings.get("allow_postcopy", True):
            reasons.append("mode auto without a forecast, which may choose post-copy")
        if settings.get("allow_postcopy", True) and settings.get("on_timeout") == OnTimeout.POSTCOPY:
            reasons.append("on_timeout postcopy")
        if not reasons:
            self.add("postcopy.support", PASS, f"{vm} will not use post-copy (mode {self.mode or Mode.PRECOPY}).")
            return
        why = " and ".join(reasons)
        support = self.destination.postcopy
        if support["supported"] is False:
            self.add("postcopy.support", FAIL, f"{vm} may use post-copy ({why}) but {dest} cannot: "
                     f"{support['reason']}.", f"use a policy without post-copy for {vm} (allow_postcopy: false), or "
                     f"upgrade {dest}.")
        elif not support["resume"] or not self.source.postcopy["resume"]:
            self.add("postcopy.support", FAIL, f"{vm} may use post-copy ({why}) but libvirt on "
                     f"{dest if not support['resume'] else self.source.name} cannot resume an interrupted post-copy "
                     "(needs >= 8.5.0): a network failure would lose the VM.",
                     "upgrade libvirt on both hosts, or set allow_postcopy: false in the policy.")
        elif support["supported"] is None:
            self.add("postcopy.support", WARN, f"{vm} may use post-copy ({why}); {dest}: {support['reason']}.",
                     f"run hvfleet.drain.hypervisor_info on {dest} and pass its facts.")
        else:
            self.add("postcopy.support", PASS, f"{vm} may use post-copy ({why}); {dest} supports it: "
                     f"{support['reason']}.")

    def forecast(self) -> None:
        if self.mode == ForecastVerdict.REFUSE:
            self.add("forecast.mode", FAIL, f"{self.domain.name}: the forecast refuses to migrate it: "
                     f"{self.forecast_reason or 'no mode converges in time'}.",
                     "raise the bandwidth or max_downtime_cap_ms, allow post-copy or auto-converge in its policy, "
                     "or migrate it in a quiet moment.")

    def run(self) -> None:
        self.identity()
        if self.dst_conn is None:
            self.add("reach.libvirt", FAIL,
                     f"libvirt on {self.dest_name} ({self.destination.uri}) does not answer, so {self.domain.name} "
                     f"cannot go there: {self.destination_error or 'no connection'}.",
                     f"start libvirtd on {self.dest_name} and check the URI, network and credentials.")
            self.devices()
            return
        self.reachability()
        self.versions()
        self.machine()
        self.device_models()
        self.devices()
        self.storage()
        self.networks()
        self.cpu()
        for check_id, status, message, fix in shape_findings(self.domain, self.destination, self.settings):
            self.add(check_id, status, message, fix)  # cpu.pinning, capacity.hugepages
        self.capacity()
        self.postcopy()
        self.forecast()


def unreachable_host(name: str, uri: str | None) -> HostFacts:
    """Placeholder facts for a destination whose libvirt did not answer."""
    return HostFacts(name=name, uri=uri, cordon=None)


def run_prechecks(src_conn: Connection, dst_conn: Connection, domain: DomainFacts, source: HostFacts,
                  destination: HostFacts, settings: Settings | None = None, *, migration_address: str | None = None,
                  mode: str | None = None, forecast_reason: str | None = None,
                  memory_headroom_mib: int = DEFAULT_HEADROOM_MIB, on_source: bool | None = None,
                  probe: Probe | None = None, destination_error: str | None = None,
                  cache: CheckCache | None = None) -> PrecheckResult:
    """Every prerequisite check of `domain` (DomainFacts) moving from `source` to `destination` (HostFacts).

    `dst_conn` None means the destination's libvirt did not answer (`destination_error` says why):
    only what needs no destination is checked then. `settings` are the VM's policy settings
    (policy.select_policy(...).settings); `mode` the mode the forecast chose. `on_source`
    (default: source.local) says this runs on the source host, so its mounts and routes count.
    `cache` (check_cache.CheckCache, one per plan) makes each live call once per destination and distinct
    question, with the same outcome; its probe is used when no `probe` is given.
    Returns a PrecheckResult; raises nothing for a failing check.
    """
    probe = probe or (cache.probe if cache is not None else LocalProbe())
    checker = _Checker(src_conn, dst_conn, domain, source, destination, settings, migration_address, mode,
                       forecast_reason, memory_headroom_mib,
                       source.local if on_source is None else on_source, probe, destination_error)
    checker.cache = cache
    checker.run()
    return PrecheckResult(domain.name, checker.dest_name, checker.checks,
                          checker.copy_storage if checker.copy_disks else None, tuple(checker.copy_disks))
