# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local disks of a VM moved cold (drain/cold.py), copied while it is shut off: libvirt streams from the
source's pool into a new volume at the same path on the destination (engine/volumes.copy_offline).

Only the disks the preflight lists as local and copyable under a copying storage policy are copied (never a
shared one). A copy never overwrites a file; when one disk fails, the copies made before it are removed again,
so the destination is left as it was. The source's files stay the VM's until it runs from the copies; then they
are stale duplicates and drain/cold.py removes them (so a move back finds no file in the way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import volumes
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.core import ACTION_TIMEOUT_S

COPY_DEADLINE_S = 3600.0  # one disk's whole copy; a disk that takes longer is not one a cold move should wait for
VIR_DOMAIN_XML_INACTIVE = 2


def copy_local_disks(src_conn: Any, dst_conn: Any, name: str, targets: Sequence[str], source: str,
                     dest: str) -> list[volumes.Volume]:
    """Copy the disks `targets` of the shut-off `name` from `source` to `dest`; the new volumes, or HvfleetError
    with every copy made removed again (or named when it could not be)."""
    try:
        xml = bounded.call(lambda: src_conn.lookupByName(name).XMLDesc(VIR_DOMAIN_XML_INACTIVE),
                           timeout_s=ACTION_TIMEOUT_S, what=f"read the XML of '{name}'")
    except Exception as exc:  # pylint: disable=broad-except  # libvirtError, NoAnswer
        raise HvfleetError(f"Could not read the disks of '{name}' on {source}: {exc}",
                           f"check the libvirt daemon of {source}, then run again.") from exc
    done: list[volumes.Volume] = []
    for disk in volumes.copied_disks(xml, targets):
        try:
            vol, _copied = volumes.copy_offline(src_conn, dst_conn, disk.path, src_name=source, dest=dest,
                                                deadline_s=COPY_DEADLINE_S)
        except HvfleetError as exc:
            left = volumes.remove(dst_conn, done)
            extra = f" Copies not removed from {dest}: {'; '.join(left)}." if left else ""
            raise HvfleetError(f"Copying disk {disk.target} of '{name}' failed: {exc.message}{extra}",
                               exc.hint) from exc
        done.append(vol)
    return done


def remove_copies(conn: Any, copies: Sequence[Any]) -> list[str]:
    """Remove the files at the copies' paths on the host of `conn`; what could not be removed."""
    return volumes.remove(conn, [c for c in copies if isinstance(c, volumes.Volume)])
