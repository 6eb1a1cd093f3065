# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt calls of a cold move (drain/cold.py): read what stops a live migration, press the power
button, start a domain. Every call is bounded: a busy daemon must not hold up the drain.

Apart from the real backend (drain/libvirt_backend.py) so that drain.Backend can offer them as its defaults.
"""

from __future__ import annotations

import shlex
from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.core import ACTION_TIMEOUT_S, conn_uri
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.unmigratable import live_blockers

VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN = 1
START_TIMEOUT_S = 60.0  # QEMU starting up under load, not the guest's boot


def _call(fn: Any, what: str, hint: str, timeout_s: float = ACTION_TIMEOUT_S) -> Any:
    try:
        return bounded.call(fn, timeout_s=timeout_s, what=what)
    except bounded.NoAnswer as exc:
        raise HvfleetError(f"Could not {what}: no answer within {timeout_s:g} s (the daemon is busy or stuck).",
                           hint) from exc
    except Exception as exc:  # pylint: disable=broad-except  # libvirtError
        raise HvfleetError(f"Could not {what}: {exc}", hint) from exc


def read_live_blockers(conn: Any, name: str) -> tuple[str, ...]:
    """What in the running domain's XML stops libvirt from live-migrating it."""
    xml = _call(lambda: conn.lookupByName(name).XMLDesc(0), f"read the XML of '{name}'",
                "check the host's libvirt daemon.")
    return live_blockers(xml)


def press_power_button(conn: Any, name: str) -> None:
    """Ask the guest to shut down (ACPI power button); returns at once, the guest decides when."""
    uri = conn_uri(conn) or "its host"
    _call(lambda: conn.lookupByName(name).shutdownFlags(VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN),
          f"send the ACPI power button to '{name}' on {uri}",
          f"check that '{name}' has ACPI (<features><acpi/>) and that libvirt on {uri} answers.")


def start(conn: Any, name: str) -> None:
    """Start the defined, shut-off domain."""
    uri = conn_uri(conn) or "its host"
    _call(lambda: conn.lookupByName(name).create(), f"start '{name}' on {uri}",
          f"read the error, fix it on {uri}, then start it there: virsh -c {shlex.quote(uri)} start "
          f"{shlex.quote(name)}", timeout_s=START_TIMEOUT_S)
