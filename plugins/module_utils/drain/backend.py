# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a drain needs from the world outside this process (libvirt, the cordon file, the checks).

The orchestration talks to nothing else, so it is unit-tested with a fake fleet and the real backend
(drain/libvirt_backend.py) stays thin. Every method may raise HvfleetError; none may block without
bound (the real backend bounds its libvirt calls).
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.drain import guest_power, offline_disks
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger import LedgerStore, MemoryLedgers
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.check_cache import CheckCache
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import CheckResult, Host, VmInfo
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import HostCapacity

_LEDGERS_LOCK = threading.Lock()


class Backend:
    """The outside world of a drain; see LibvirtBackend for the real one."""

    def connect(self, uri: str) -> Any:
        raise NotImplementedError

    def close(self, conn: Any) -> None:
        raise NotImplementedError

    def list_vms(self, conn: Any, host: Host, measure: bool = True) -> list[VmInfo]:
        """The domains to move: active ones, and persistent inactive ones."""
        raise NotImplementedError

    def capacity(self, conn: Any, host: Host, anti_affinity_labels: tuple = ()) -> HostCapacity:
        """The capacity of `host` now (its cordon read live on the host when it can be)."""
        raise NotImplementedError

    def prechecks(self, src_conn: Any, dst_conn: Any, vm: VmInfo, source: Host, destination: Host,
                  settings: dict, cache: Optional[CheckCache] = None) -> list[CheckResult]:
        """The prerequisite checks for moving `vm` from `source` to `destination` under `settings`; `cache` (one
        per plan) makes each live call once per destination and distinct question."""
        raise NotImplementedError

    def copy_disks(self, src_conn: Any, dst_conn: Any, name: str, source: Host, destination: Host,
                   settings: dict) -> Optional[list[str]]:
        """The disks of `name` a copying storage policy copies to `destination`: the preflight's list (local disks
        only, never a shared one). None leaves the choice to libvirt (this default, for fakes)."""
        return None

    def observe(self, conn: Any, name: str, uri: str) -> reconcile.SideView:
        return reconcile.observe(conn, name, uri)

    def migrate(self, src_conn: Any, dst_conn: Any, name: str, dest_uri: str, spec: Any, source_uri: str,
                control: Any) -> Any:
        """Run one live migration; returns a MigrationResult or raises MigrationFailed. `control`
        (engine/control.py MigrationControl) carries aborts and bandwidth changes from the drain."""
        raise NotImplementedError

    def move_definition(self, src_conn: Any, dst_conn: Any, name: str, settings: Optional[dict] = None) -> Any:
        """Define the inactive domain on the destination, then undefine it on the source; on failure the
        domain stays defined on exactly one of them. Returns what the move did besides the definition
        (an object with `notes`, one sentence each, for the result), or None."""
        raise NotImplementedError

    def definition_refusals(self, src_conn: Any, vm: VmInfo, source: Host, destination: Host, settings: dict,
                            cache: Optional[CheckCache] = None) -> list[CheckResult]:
        """What a definition move of `vm` could not carry (snapshots in local files, checkpoints...), as failed
        checks; [] (this default, for fakes): everything it has moves."""
        return []

    def destination_xmls(self, src_conn: Any, dst_conn: Any, name: str,
                         settings: dict) -> tuple[Optional[str], Optional[str]]:
        """(destination XML, persistent XML) for a VM whose pins must be re-mapped onto `dst_conn`'s host
        (pinning: adapt); (None, None): it migrates with its own XML (this default, for fakes)."""
        return None, None

    def live_blockers(self, conn: Any, vm: VmInfo) -> tuple[str, ...]:
        """What stops the running `vm` from live-migrating anywhere (planning/unmigratable.py); empty: nothing."""
        return guest_power.read_live_blockers(conn, vm.name)

    def shutdown(self, conn: Any, name: str) -> None:
        """Ask the guest to shut down (ACPI power button); the caller polls observe() until it is shut off."""
        guest_power.press_power_button(conn, name)

    def copy_disks_offline(self, src_conn: Any, dst_conn: Any, name: str, source: Host, destination: Host,
                           settings: dict) -> list:
        """Copy the local disks of the shut-off `name` that a copying storage policy copies (copy_disks' list) to
        `destination`, at the same paths; the copies (for remove_offline_copies), or HvfleetError with none left."""
        targets = self.copy_disks(src_conn, dst_conn, name, source, destination, settings)
        if not targets:
            return []
        return offline_disks.copy_local_disks(src_conn, dst_conn, name, targets, source.name, destination.name)

    def remove_offline_copies(self, conn: Any, copies: list) -> list[str]:
        """Remove the files at the paths of copy_disks_offline's copies on the host of `conn` (the destination's
        when the VM stays where it was, the source's once it runs from the copies); what could not be removed."""
        return offline_disks.remove_copies(conn, copies)

    def start(self, conn: Any, name: str) -> None:
        """Start the defined, shut-off domain `name` (bounded); HvfleetError naming the reason."""
        guest_power.start(conn, name)

    def drop_leftover_definition(self, src_conn: Any, dst_conn: Any, name: str) -> None:
        """Undefine the shut-off definition a finished migration left on the source - only when the
        destination holds the domain, running or paused, and persistent."""
        raise NotImplementedError

    def pause(self, conn: Any, name: str) -> None:
        """Pause a running copy (one of two found running)."""
        raise NotImplementedError

    def abort_job(self, conn: Any, name: str) -> None:
        raise NotImplementedError

    def read_cordon(self, state_dir: str) -> bool:
        """True when the host running this code is cordoned."""
        raise NotImplementedError

    def set_cordon(self, state_dir: str, cordoned: bool, reason: Optional[str] = None,
                   by: Optional[str] = None) -> bool:
        """Cordon or uncordon the host running this code; returns changed."""
        raise NotImplementedError

    def ledger(self, conn: Any, host: Host, holder: str) -> LedgerStore:
        """Where `host`'s capacity ledger (drain/ledger.py) lives, reached through `conn`; `holder` names this
        run in the lock. This default keeps ledgers in the backend object (fakes); the real backend keeps
        each on its host (drain/ledger_store.py)."""
        with _LEDGERS_LOCK:
            ledgers = getattr(self, "_memory_ledgers", None)
            if ledgers is None:
                ledgers = MemoryLedgers()
                self._memory_ledgers = ledgers  # pylint: disable=attribute-defined-outside-init
        return ledgers.store(host.name)
