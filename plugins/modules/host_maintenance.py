#!/usr/bin/python
# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_maintenance
short_description: Cordon or uncordon a hypervisor (maintenance state)
version_added: 0.1.0
description:
  - Sets the maintenance state of the hypervisor the module runs on. A V(cordoned) host is never chosen as a
    migration destination by the prerequisite checks and the drain; V(active) makes it eligible again.
  - The state, the reason, who set it and since when (UTC) are kept on the host itself in
    C(maintenance.json) under O(state_dir), written atomically, so every controller sees the same state.
  - The state also goes into the host's capacity ledger in its own libvirtd (O(uri); two libvirt secret objects,
    see the collection's docs/DRAIN.md), written before the file. A drain running on another host reads a
    destination's ledger right before each migration it starts, so a host cordoned here receives no VM from then on.
  - Idempotent. Asking for the state the host is already in changes nothing and keeps the recorded reason,
    author and time.
author:
  - hvfleet maintainers (@hvfleet)
extends_documentation_fragment:
  - hvfleet.drain.libvirt_connection
attributes:
  check_mode:
    description: Reports whether the state would change, without writing it.
    support: full
  diff_mode:
    description: Shows the maintenance state before and after.
    support: full
options:
  state:
    description: V(cordoned) to take the host out of placement, V(active) to put it back.
    type: str
    choices: [cordoned, active]
    required: true
  reason:
    description: Why, for example a ticket number. Recorded with the state.
    type: str
  by:
    description:
      - Who sets the state. Defaults to C($SUDO_USER) on the host, else the user the module runs as.
    type: str
  state_dir:
    description: Directory that holds C(maintenance.json).
    type: path
    default: /var/lib/hvfleet
notes:
  - Run it on the hypervisor itself (for example with C(delegate_to) the host to cordon), with C(become) when the
    login is not root.
seealso:
  - module: hvfleet.drain.hypervisor_info
  - module: hvfleet.drain.migration_preflight
"""

EXAMPLES = r"""
- name: Cordon hv1 before its maintenance
  hvfleet.drain.host_maintenance:
    state: cordoned
    reason: "CHG-1234 firmware update"
  delegate_to: hv1

- name: Put hv1 back into service
  hvfleet.drain.host_maintenance:
    state: active
    reason: "CHG-1234 done"
  delegate_to: hv1
"""

RETURN = r"""
maintenance:
  description: The maintenance state after the task (or as it would be, in check mode).
  returned: success
  type: dict
  contains:
    state:
      description: V(cordoned) or V(active).
      type: str
    reason:
      description: Why (O(reason)); V(null) when none was given.
      type: str
    by:
      description: Who set the state (O(by)); V(null) when no state was ever written on the host.
      type: str
    since:
      description: When the state was set, UTC, ISO 8601; V(null) when no state was ever written on the host.
      type: str
  sample: {"state": "cordoned", "reason": "CHG-1234 firmware update", "by": "alice", "since": "2025-01-31T08:00:00Z"}
before:
  description: The maintenance state before the task, with the keys of RV(maintenance).
  returned: success
  type: dict
  contains:
    state:
      description: V(cordoned) or V(active).
      type: str
    reason:
      description: Why it was set; V(null) when no reason was recorded.
      type: str
    by:
      description: Who set it; V(null) when no state was ever written on the host.
      type: str
    since:
      description: When it was set, UTC, ISO 8601; V(null) when no state was ever written on the host.
      type: str
  sample: {"state": "active", "reason": null, "by": null, "since": null}
message:
  description: One sentence saying what was done.
  returned: success
  type: str
  sample: host is now cordoned (was active)
"""

import getpass  # noqa: E402
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection import connection  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection_spec import (  # noqa: E402
    connect_options,
    connection_argument_spec,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger import Cordon  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger_store import publish_host_cordon  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import maintenance  # noqa: E402

ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["cordoned", "active"], required=True),
    reason=dict(type="str"),
    by=dict(type="str"),
    state_dir=dict(type="path", default=maintenance.DEFAULT_DIR),
    **connection_argument_spec(),
)


def default_by():
    """$SUDO_USER (the person behind become), else the login this runs as."""
    user = os.environ.get("SUDO_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.geteuid()}"


class HostMaintenanceModule:
    """Maps the parameters onto maintenance.set_state."""

    def __init__(self, module):
        self.module = module
        self.params = module.params

    def run(self):
        p = self.params
        by = p["by"] or default_by()
        published = False
        try:
            if not self.module.check_mode:
                with connection(p["uri"], **connect_options(p)) as conn:
                    cordon = Cordon(p["state"] == maintenance.CORDONED, by=by, reason=p["reason"] or "",
                                    since=maintenance.utc_now())
                    published = publish_host_cordon(conn, os.uname().nodename, cordon)
            changed, before, after = maintenance.set_state(
                p["state_dir"], p["state"], reason=p["reason"], by=by, check_mode=self.module.check_mode)
        except HvfleetError as exc:
            self.module.fail_json(msg=str(exc), changed=published)
        changed = changed or published
        if changed:
            verb = "would be" if self.module.check_mode else "is now"
            message = f"host {verb} {after.state} (was {before.state})"
        else:
            message = f"host already {after.state} since {after.since or 'always'}; nothing changed"
        result = dict(changed=changed, maintenance=after.to_dict(), before=before.to_dict(), message=message)
        if self.module._diff:  # pylint: disable=protected-access
            result["diff"] = {"before": before.to_dict(), "after": after.to_dict()}
        self.module.exit_json(**result)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    HostMaintenanceModule(module).run()


if __name__ == "__main__":
    main()
