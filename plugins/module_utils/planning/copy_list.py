# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which disks of one VM a copying migration copies, for a caller with two connections and no plan.

Without a list libvirt copies every disk it does not know to be shared, so a disk on a share it cannot
recognise would be mirrored onto itself. The drain asks the preflight right before each start; the
domain_migration module asks here, through the same preflight (run_prechecks): only the disks it finds
local and copyable are listed, and a storage check that fails refuses the migration before anything changes.
"""

from __future__ import annotations

from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import DomainNotFound, HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import facts as hvfacts
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import host_facts as hvhost
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import preflight
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import DEFAULT_SETTINGS
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import STORAGE
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import FAIL, PrecheckResult

TIMEOUT_S = 60.0  # reading both hosts' facts and the VM's disks; longer: a daemon is stuck
POLICY_STORAGE = {copy: storage for storage, copy in STORAGE.items() if copy}  # "all" -> "copy_all"


def storage_refusal(res: PrecheckResult) -> Optional[HvfleetError]:
    """The first failing storage check as an error (its message and fix), or None."""
    for check in res.checks:
        if check.status == FAIL and check.id.startswith("storage."):
            return HvfleetError(check.message, check.fix)
    return None


def copy_list(src_conn: Any, dst_conn: Any, name: str, source_uri: str, dest_uri: str, copy_storage: str,
              migration_address: Optional[str] = None, timeout_s: float = TIMEOUT_S) -> tuple[str, ...]:
    """The targets of the disks of `name` that copy_storage (all, incremental) copies to `dest_uri`: the
    preflight's list, never a shared disk. Raises HvfleetError when a storage check fails (a disk neither
    shared nor copyable there, e.g. no pool to create its copy in)."""
    if copy_storage not in POLICY_STORAGE:
        raise HvfleetError(f"copy_storage={copy_storage!r} is not one of: {', '.join(POLICY_STORAGE)}.",
                           f"set copy_storage to one of {', '.join(POLICY_STORAGE)}.")

    def ask() -> PrecheckResult:
        try:
            dom = src_conn.lookupByName(name)
        except Exception as exc:  # pylint: disable=broad-except
            if reconcile.no_domain(exc):
                raise DomainNotFound(name, source_uri) from exc
            raise
        domain = hvfacts.domain_facts(dom)
        source = hvhost.host_facts(src_conn, uri=source_uri)
        destination = hvhost.host_facts(dst_conn, uri=dest_uri, local=False)
        settings = dict(DEFAULT_SETTINGS, storage=POLICY_STORAGE[copy_storage])
        return preflight.run_prechecks(src_conn, dst_conn, domain, source, destination, settings,
                                       migration_address=migration_address)

    try:
        res = bounded.call(ask, timeout_s=timeout_s, what=f"the disks of '{name}'")
    except bounded.NoAnswer as exc:
        raise HvfleetError(f"No answer from libvirt within {timeout_s:g} s while reading the disks of '{name}' and "
                           "both hosts' facts; nothing was changed.", "check both libvirt daemons, then run again.") \
            from exc
    except HvfleetError:
        raise
    except Exception as exc:  # pylint: disable=broad-except
        raise HvfleetError(f"Could not read the disks of '{name}' and both hosts' facts: {exc}; nothing was "
                           "changed.", "check both libvirt daemons, then run again.") from exc
    refusal = storage_refusal(res)
    if refusal is not None:
        raise refusal
    return tuple(res.copy_disks)
