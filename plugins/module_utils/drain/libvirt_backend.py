# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real drain.Backend: libvirt connections, facts, prerequisite checks, the engine, the cordon file.

Thin on purpose: every decision is in drain.py; this only talks to libvirt and the other helpers
(facts, preflight, maintenance, migration). Domain XML read to move a definition includes secrets
(VIR_DOMAIN_XML_SECURE, so a VNC password survives the move); it is passed to the destination's
libvirt and never logged, journalled or returned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection import close_quietly, connect
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import DomainNotFound, HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import definition_move, definition_shape
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.backend import Backend
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger_store import SecretLedgerStore
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import leftover, reconcile
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.control import MigrationControl
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.core import (
    ACTION_TIMEOUT_S,
    CLOSE_TIMEOUT_S,
    conn_uri,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import Migration
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import maintenance
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import (
    copy_list,
    dirty_rate,
    hugepages,
    pinning,
    preflight,
    shape_checks,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import facts as hvfacts
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import host_facts as hvhost
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.check_cache import SOURCE, CheckCache
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import CheckResult, Host, VmInfo
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import HostCapacity

VIR_DOMAIN_XML_SECURE = 1
VIR_DOMAIN_XML_INACTIVE = 2
VIR_DOMAIN_XML_MIGRATABLE = 8
_PAUSED = 3
_POSTCOPY_PAUSED_REASONS = (12, 13)
RESIDENT_TIMEOUT_S = 5.0


class LibvirtBackend(Backend):
    """drain.Backend over libvirt; `state_dir` is this host's /var/lib/hvfleet."""

    def __init__(self, connect_timeout_s: float = 30.0, state_dir: str = maintenance.DEFAULT_DIR,
                 memory_headroom_mib: int = 0, dirty_rate_seconds: float = 1, username: Optional[str] = None,
                 password: Optional[str] = None, dirty_rate_resample_s: float = dirty_rate.LONG_SAMPLE_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.username = username
        self.password = password
        self.state_dir = state_dir
        self.memory_headroom_mib = memory_headroom_mib
        self.dirty_rate_seconds = dirty_rate_seconds
        self.dirty_rate_resample_s = dirty_rate_resample_s
        self.measuring_s = 0.0  # what the last measurement cost at drain start (for the record)
        self.first_rates: dict[str, float] = {}  # the last first-sample readings, before any re-sample
        self._facts: dict[str, hvhost.HostFacts] = {}
        self._definition_settings: dict[str, dict] = {}
        self._facts_lock = threading.Lock()

    # ---- connections ------------------------------------------------------------------------

    def connect(self, uri: str) -> Any:
        return connect(uri, timeout_s=self.connect_timeout_s, username=self.username, password=self.password)

    def close(self, conn: Any) -> None:
        close_quietly(conn)

    # ---- facts ------------------------------------------------------------------------------

    def list_vms(self, conn: Any, host: Host, measure: bool = True) -> list[VmInfo]:
        try:
            doms = conn.listAllDomains(0)
        except Exception as exc:  # pylint: disable=broad-except
            raise HvfleetError(f"Cannot list the domains of {host.name}: {exc}", "check its libvirt daemon.") from exc
        found: list[tuple[Any, VmInfo]] = []
        for dom in doms:
            try:
                active = bool(dom.isActive())
                persistent = bool(dom.isPersistent())
                if not active and not persistent:
                    continue
                state, reason = dom.state()
                info = hvfacts.domain_facts(dom)
            except hvfacts.FactsError:
                continue  # went away meanwhile
            except Exception:  # pylint: disable=broad-except
                continue
            found.append((dom, VmInfo(
                name=info.name, memory_mib=info.memory_mib, vcpus=info.vcpus, active=active, persistent=persistent,
                state=info.state, labels=dict(info.labels), dirty_rate_bps=None,
                postcopy=state == _PAUSED and reason in _POSTCOPY_PAUSED_REASONS, facts=info,
                resident_mib=_resident_mib(dom) if active else None,
                local_disk_bytes=_local_disk_bytes(dom, info) if active else 0)))
        if measure:
            running = [dom for dom, vm in found if vm.state == "running"]
            readings = self._dirty_rates(running, {vm.name: vm for _dom, vm in found}, host)
            found = [(dom, _with_reading(vm, readings.get(vm.name))) for dom, vm in found]
        return [vm for _dom, vm in found]

    def _dirty_rates(self, doms: list[Any], vms: dict[str, VmInfo], host: Host) -> dict[str, dirty_rate.Reading]:
        """All running domains sampled at once for `dirty_rate_seconds`; then those whose forecast depends on
        that reading sampled again, at once, for `dirty_rate_resample_s` (planning/dirty_rate.py says why)."""
        began = time.monotonic()
        first = self._sample(doms, self.dirty_rate_seconds)
        link = host.link_bps()

        def depends(name: str, rate: float) -> bool:
            return dirty_rate.vm_depends_on_rate(vms[name], rate, (link, link / 2))

        readings = dirty_rate.steady_rates(doms, first, depends, self._sample, first_s=self.dirty_rate_seconds,
                                           long_s=self.dirty_rate_resample_s)
        self.measuring_s = time.monotonic() - began
        self.first_rates = dict(first)
        return readings

    def _sample(self, doms: list[Any], seconds: float) -> dict[str, float]:
        """One sample of each domain, all at once; bounded: a domain whose libvirt call hangs has no reading."""
        rates: dict[str, float] = {}

        def one(dom: Any) -> None:
            with contextlib.suppress(Exception):
                rates[dom.name()] = hvfacts.measure_dirty_rate(dom, seconds=seconds)

        threads = [threading.Thread(target=one, args=(dom,), daemon=True) for dom in doms]
        for t in threads:
            t.start()
        deadline = time.monotonic() + seconds + 15
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return dict(rates)

    def host_facts(self, conn: Any, host: Host) -> hvhost.HostFacts:
        local = hvhost.is_local_uri(host.uri)
        hf = hvhost.host_facts(conn, name=host.name, uri=host.uri, local=local, state_dir=self.state_dir)
        if host.facts:
            hf = hf.merged_with(host.facts)  # userfaultfd, bridges, cordon as read on the host itself
        with self._facts_lock:
            self._facts[host.name] = hf
        return hf

    def _cached_facts(self, conn: Any, host: Host) -> hvhost.HostFacts:
        with self._facts_lock:
            hf = self._facts.get(host.name)
        return hf if hf is not None else self.host_facts(conn, host)

    def capacity(self, conn: Any, host: Host, anti_affinity_labels: tuple[str, ...] = ()) -> HostCapacity:
        try:
            hf = self.host_facts(conn, host)
        except hvfacts.FactsError as exc:
            raise HvfleetError(exc.message, exc.hint) from exc
        held: dict[str, set[str]] = {}
        if anti_affinity_labels:
            with contextlib.suppress(Exception):
                for dom in conn.listAllDomains(1):  # active
                    with contextlib.suppress(Exception):
                        labels = hvfacts.domain_facts(dom).labels
                        for key in anti_affinity_labels:
                            if key in labels:
                                held.setdefault(key, set()).add(labels[key])
        used = max(hf.memory_allocated_mib, hf.memory_total_mib - hf.memory_available_mib
                   if hf.memory_available_mib else 0)
        return HostCapacity(name=host.name, memory_total_mib=hf.memory_total_mib, memory_used_mib=used,
                            vcpus_total=hf.cpus, vcpus_used=hf.vcpus_allocated, cordoned=bool(hf.cordoned),
                            anti_affinity={k: frozenset(v) for k, v in held.items()}, stack=hf.stack,
                            hugepages_free=hugepages.free_pages(hf.hugepages))

    # ---- checks -----------------------------------------------------------------------------

    def prechecks(self, src_conn: Any, dst_conn: Any, vm: VmInfo, source: Host, destination: Host,
                  settings: dict, cache: Optional[CheckCache] = None) -> list[CheckResult]:
        """`cache`: the plan's CheckCache - each live call once per destination and distinct question."""
        src_facts = self._cached_facts(src_conn, source)
        dst_facts = self._cached_facts(dst_conn, destination)
        domain = vm.facts if vm.facts is not None else hvfacts.domain_facts(src_conn.lookupByName(vm.name))
        with self._facts_lock:  # a definition move reads them (managed_save), also a cold one's
            self._definition_settings[vm.name] = dict(settings or {})
        if not vm.active:
            return self.definition_refusals(src_conn, vm, source, destination, settings, cache) + _definition_checks(
                vm, domain, destination, settings)
        res = preflight.run_prechecks(src_conn, dst_conn, domain, src_facts, dst_facts, settings,
                                      migration_address=destination.migration_address,
                                      memory_headroom_mib=self.memory_headroom_mib, cache=cache)
        return [CheckResult(c.id, c.status, c.vm, destination.name, c.message, c.fix) for c in res.checks
                if c.id not in ("capacity.memory", "dest.cordoned")]  # placement counts memory cumulatively

    def definition_refusals(self, src_conn: Any, vm: VmInfo, source: Host, destination: Host, settings: dict,
                            cache: Optional[CheckCache] = None) -> list[CheckResult]:
        """What a definition move of `vm` could not carry (drain/definition_shape.py), as failed checks: the
        plan-time check of a shut-off VM, and of a running one that is to be shut down and moved cold.
        The source is read once per plan (`cache`)."""
        return _refusals(src_conn, vm, source, destination, settings, cache)

    def copy_disks(self, src_conn: Any, dst_conn: Any, name: str, source: Host, destination: Host,
                   settings: dict) -> Optional[list[str]]:
        """The preflight's disk checks of `name` towards `destination`, right before its migration: the targets of
        the disks they found local and copyable (a shared disk is never among them)."""
        domain = _bounded(lambda: hvfacts.domain_facts(src_conn.lookupByName(name)), f"read '{name}'",
                          "check the source's libvirt daemon.")
        res = preflight.run_prechecks(src_conn, dst_conn, domain, self._cached_facts(src_conn, source),
                                      self._cached_facts(dst_conn, destination), settings,
                                      migration_address=destination.migration_address,
                                      memory_headroom_mib=self.memory_headroom_mib)
        refusal = copy_list.storage_refusal(res)  # our words, not libvirt's "Unsafe migration"
        if refusal is not None:
            raise refusal
        return list(res.copy_disks)

    def destination_xmls(self, src_conn: Any, dst_conn: Any, name: str,
                         settings: dict) -> tuple[Optional[str], Optional[str]]:
        """(destination XML, persistent XML) re-mapping `name`'s pins onto the destination under `pinning: adapt`
        (planning/pinning.py); (None, None) otherwise or when its pins fit there as they are."""
        if shape_checks.pinning_setting(settings or {}) != pinning.ADAPT:
            return None, None
        return _bounded(lambda: pinning.adapted_xmls(src_conn.lookupByName(name), dst_conn),
                        f"re-map the pins of '{name}' onto the destination",
                        "set pinning: refuse for this VM's policy, or pin it to CPUs the destination has.")

    # ---- actions ----------------------------------------------------------------------------

    def migrate(self, src_conn: Any, dst_conn: Any, name: str, dest_uri: str, spec: Any, source_uri: str,
                control: Optional[MigrationControl]) -> Any:
        """The engine's migration of `name`; the drain aborts it and sets its bandwidth through `control`. With SASL
        credentials the blocking call's own connection is opened here (the engine opens one without them)."""
        call = None
        if self.username:
            with contextlib.suppress(HvfleetError):
                call = self.connect(source_uri)
        try:
            return Migration(src_conn, dst_conn, name, dest_uri, spec, source_uri=source_uri, control=control,
                             call_conn=call).run()
        finally:
            if call is not None:
                close_quietly(call, timeout_s=CLOSE_TIMEOUT_S)

    def move_definition(self, src_conn: Any, dst_conn: Any, name: str,
                        settings: Optional[dict] = None) -> Any:
        """Move the shut-off domain's definition with its NVRAM, TPM state, snapshot metadata and autostart
        (drain/definition_move.py); on failure it stays defined on the source only, or the error names
        both hosts and the fix. `settings`: its policy's (managed_save); None: those its plan-time check
        was given in this run, else the defaults (a managed-save image is then refused). Returns the
        definition_move.Moved: what the move did besides the definition, for the result."""
        src_uri, dst_uri = conn_uri(src_conn) or "the source", conn_uri(dst_conn) or "the destination"
        if settings is None:
            with self._facts_lock:
                settings = self._definition_settings.get(name)
        return definition_move.move(src_conn, dst_conn, name, settings, src_uri, dst_uri)

    def drop_leftover_definition(self, src_conn: Any, dst_conn: Any, name: str) -> None:
        """Undefine the shut-off definition a finished migration left on the source - only when the
        destination holds the same domain, running or paused, and persistent (leftover.py's rule, the one
        the engine follows). Nothing to do when the source has no definition; HvfleetError otherwise."""
        src_uri, dst_uri = conn_uri(src_conn) or "the source", conn_uri(dst_conn) or "the destination"
        src = reconcile.observe(src_conn, name, src_uri)
        dst = reconcile.observe(dst_conn, name, dst_uri)
        leftover.drop_leftover(src_conn, dst_conn, name, src, dst, timeout_s=ACTION_TIMEOUT_S)

    def pause(self, conn: Any, name: str) -> None:
        """Suspend the running copy of `name` on `conn` (one of two found running). A copy that is already
        paused or not active is left as it is; HvfleetError when it cannot be paused (or is not there)."""
        uri = conn_uri(conn) or "that host"

        def suspend() -> None:
            dom = conn.lookupByName(name)
            state = dom.state()[0]
            if state in (reconcile.RUNNING, reconcile.BLOCKED):
                dom.suspend()

        try:
            bounded.call(suspend, timeout_s=ACTION_TIMEOUT_S, what=f"suspend '{name}'")
        except Exception as exc:  # pylint: disable=broad-except
            if reconcile.no_domain(exc):
                raise DomainNotFound(name, uri, hint="look at both hosts again: the copy is no longer there.") from exc
            why = f"no answer within {ACTION_TIMEOUT_S:g} s (the daemon is busy or stuck)" \
                if isinstance(exc, bounded.NoAnswer) else str(exc)
            raise HvfleetError(f"Could not pause '{name}' on {uri}: {why}.",
                               f"it may still run on two hosts: pause it by hand (virsh -c {shlex.quote(uri)} suspend "
                               f"{shlex.quote(name)}), then decide which copy is current.") from exc

    def abort_job(self, conn: Any, name: str) -> None:
        _bounded(lambda: conn.lookupByName(name).abortJob(), f"abort the job of '{name}'",
                 f"abort it by hand: virsh -c {shlex.quote(conn_uri(conn) or 'URI')} domjobabort {shlex.quote(name)}")

    # ---- cordon and ledger ------------------------------------------------------------------

    def ledger(self, conn: Any, host: Host, holder: str) -> SecretLedgerStore:
        return SecretLedgerStore(conn, host.name, holder)

    def read_cordon(self, state_dir: str) -> bool:
        return maintenance.read_state(state_dir).cordoned

    def set_cordon(self, state_dir: str, cordoned: bool, reason: Optional[str] = None,
                   by: Optional[str] = None) -> bool:
        changed, _before, _after = maintenance.set_state(
            state_dir, maintenance.CORDONED if cordoned else maintenance.ACTIVE, reason=reason, by=by)
        return changed


def _bounded(fn: Callable[[], Any], what: str, hint: str) -> Any:
    """fn() within ACTION_TIMEOUT_S, its failure an HvfleetError naming `what` with `hint`."""
    try:
        return bounded.call(fn, timeout_s=ACTION_TIMEOUT_S, what=what)
    except HvfleetError:
        raise
    except bounded.NoAnswer as exc:
        raise HvfleetError(f"Could not {what}: no answer within {ACTION_TIMEOUT_S:g} s (the daemon is busy or stuck).",
                           hint) from exc
    except Exception as exc:  # pylint: disable=broad-except
        raise HvfleetError(f"Could not {what}: {exc}", hint) from exc


def _resident_mib(dom: Any) -> Optional[int]:
    """The QEMU process's resident size (libvirt reads it from the host, no guest agent needed), or None.
    Bounded: the call queues behind a domain's job, and a busy domain must not hold up the plan."""
    try:
        stats = bounded.call(dom.memoryStats, timeout_s=RESIDENT_TIMEOUT_S, what="memory stats")
        return int(stats["rss"]) // 1024 if stats.get("rss") else None
    except Exception:  # pylint: disable=broad-except
        return None


def _local_disk_bytes(dom: Any, info: hvfacts.DomainFacts) -> int:
    """The data on the VM's disks at host paths (not shareable, not read-only): what a copying storage policy
    sends beside the RAM, for the forecast. Each size asked bounded; an unreadable one counts 0."""
    total = 0
    for disk in info.disks:
        if disk.device != "disk" or disk.type not in ("file", "block") or disk.empty or disk.shareable \
                or disk.readonly:
            continue
        try:
            total += int(bounded.call(lambda t=disk.target: dom.blockInfo(t, 0), timeout_s=RESIDENT_TIMEOUT_S,
                                      what="disk size")[1])
        except Exception:  # pylint: disable=broad-except
            continue
    return total


def _with_reading(vm: VmInfo, reading: Optional[dirty_rate.Reading]) -> VmInfo:
    if reading is None:
        return vm
    return dataclasses.replace(vm, dirty_rate_bps=reading.rate_bps, dirty_rate_sampled_s=reading.seconds)


def _refusals(src_conn: Any, vm: VmInfo, source: Host, destination: Host, settings: dict,
              cache: Optional[CheckCache] = None) -> list[CheckResult]:
    """What of the VM its definition move could not carry (definition_shape), as failed checks."""
    def read() -> definition_shape.Shape:
        return definition_shape.read_shape(src_conn, vm.name)

    try:
        shape = cache.recall(SOURCE, ("definition_shape", vm.name), read) if cache is not None else read()
    except HvfleetError as exc:
        return [CheckResult("definition.read", "fail", vm.name, destination.name, exc.message, exc.hint)]
    return [CheckResult(r.check, "fail", vm.name, destination.name, r.message, r.fix)
            for r in definition_shape.refusals(shape, settings, source.uri, cold=vm.active)]


def _definition_checks(vm: VmInfo, domain: hvfacts.DomainFacts, destination: Host,
                       settings: Optional[dict]) -> list[CheckResult]:
    """A shut-off definition can move unless its disks are local (it would not find them there)."""
    out: list[CheckResult] = []
    storage = (settings or {}).get("storage", "shared_only")
    for disk in domain.disks:
        if disk.device in ("cdrom", "floppy") or disk.empty or disk.type == "network":
            continue
        if disk.type in ("file", "block") and storage == "shared_only":
            out.append(CheckResult("storage.disk", "warn", vm.name, destination.name,
                                   f"disk {disk.target} ({disk.source}) is a path: it must exist at the same path on "
                                   f"{destination.name} for the VM to start there", None))
    return out
