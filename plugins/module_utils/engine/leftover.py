# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Remove a domain's definition from one host without deleting what another copy may need.

Two places need it: a migration that libvirt did not finish itself (or one that completed before
this run) can leave the VM's definition behind on the source, shut off - starting it would run a
second copy on the same disks; and moving a shut-off VM's definition ends by undefining it on the
source. A plain undefine is wrong in both: libvirt refuses it for a domain with NVRAM, and with
other flags it would delete the NVRAM or TPM state, which the copy on the other host may still use
(a shared path) or need. So: undefine with KEEP_NVRAM | KEEP_TPM, never with MANAGED_SAVE, and with
SNAPSHOTS_METADATA only once a definition move has redefined the snapshots on the destination
(otherwise libvirt refuses for snapshots, checkpoints or a managed-save image - and so do we, naming
which, since deleting them could lose a saved state); and remove a leftover only when
the other host holds the same domain, running or paused, with a persistent definition of its own.
Otherwise the leftover may be the only definition there is. Every libvirt call is bounded.
"""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.reconcile import SideView

VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA = 2
VIR_DOMAIN_UNDEFINE_KEEP_NVRAM = 8
VIR_DOMAIN_UNDEFINE_KEEP_TPM = 64
KEEP_STATE = VIR_DOMAIN_UNDEFINE_KEEP_NVRAM | VIR_DOMAIN_UNDEFINE_KEEP_TPM
VIR_ERR_INVALID_ARG = 8
UNDEFINE_TIMEOUT_S = 15.0


class DefinitionKept(HvfleetError):
    """A definition that was to be removed is still there; `uri` names the host that holds it.
    `unsure`: the undefine got no answer - it may still have happened."""

    def __init__(self, message: str, hint: Optional[str], uri: str, unsure: bool = False) -> None:
        super().__init__(message, hint)
        self.uri = uri
        self.unsure = unsure


def undefine_command(uri: str, name: str) -> str:
    """The shell command that removes the definition by hand, keeping NVRAM and TPM state."""
    return f"virsh -c {shlex.quote(uri)} undefine {shlex.quote(name)} --keep-nvram --keep-tpm"


def leftover_problem(src: SideView, dst: SideView) -> Optional[str]:
    """Why the source's definition must stay, or None when it is a leftover that may go (pure)."""
    if not src.reachable:
        return f"the source {src.uri} cannot be read ({src.label()})"
    if not src.gone:
        return f"it is {src.label()} on the source {src.uri}, not a shut-off leftover"
    if not dst.reachable:
        return f"the destination {dst.uri} cannot be read ({dst.label()})"
    if not (dst.running or dst.paused):
        return f"the destination {dst.uri} holds no running or paused copy ({dst.label()})"
    if dst.persistent is None:
        return f"whether the copy on {dst.uri} is persistent could not be read"
    if not dst.persistent:
        return (f"the copy on {dst.uri} is transient: the definition on {src.uri} is the only persistent one "
                "(undefining it would leave the VM defined nowhere once it stops)")
    return None


def drop_leftover(src_conn: Any, dst_conn: Any, name: str, src: SideView, dst: SideView,
                  timeout_s: float = UNDEFINE_TIMEOUT_S) -> bool:
    """Remove the shut-off definition of `name` the source `src` kept while `dst` holds the VM.

    `src`/`dst` are fresh observations of both hosts. Returns False when there is nothing to remove
    (the source has no definition), True once removed; raises DefinitionKept naming why it stays.
    """
    if src.reachable and not src.present:
        return False
    problem = leftover_problem(src, dst)
    if problem is not None:
        hint = (f"make the destination's copy persistent (virsh -c {shlex.quote(dst.uri)} dumpxml {shlex.quote(name)}"
                f" > {shlex.quote(name)}.xml; virsh -c {shlex.quote(dst.uri)} define {shlex.quote(name)}.xml), then "
                f"remove the leftover: {undefine_command(src.uri, name)}" if dst.persistent is False
                else "look at both hosts; remove the source's definition only once the VM runs on the destination "
                     f"with a persistent definition: {undefine_command(src.uri, name)}")
        raise DefinitionKept(f"'{name}' is still defined on {src.uri} (shut off): kept, because {problem}.",
                             hint, src.uri)
    try:
        uuids = bounded.call(lambda: (src_conn.lookupByName(name).UUIDString(),
                                      dst_conn.lookupByName(name).UUIDString()),
                             timeout_s=timeout_s, what=f"UUIDs of '{name}'")
    except Exception as exc:  # pylint: disable=broad-except
        raise DefinitionKept(f"'{name}' is still defined on {src.uri} (shut off): its identity could not be "
                             f"compared with the copy on {dst.uri} ({exc}).",
                             f"check both hosts, then: {undefine_command(src.uri, name)}", src.uri) from exc
    if uuids[0] != uuids[1]:
        raise DefinitionKept(f"'{name}' on {src.uri} is a different domain (UUID {uuids[0]}) from the one running "
                             f"on {dst.uri} (UUID {uuids[1]}); its definition was kept.",
                             "two domains share a name: rename one of them.", src.uri)
    undefine(src_conn, name, src.uri, runs_on=dst.uri, timeout_s=timeout_s)
    return True


def undefine(conn: Any, name: str, uri: str, runs_on: Optional[str] = None,
             timeout_s: float = UNDEFINE_TIMEOUT_S, then: Optional[str] = None, snapshots_carried: bool = False
             ) -> None:
    """Undefine the inactive domain `name` on `conn` (host `uri`) keeping NVRAM and TPM state.

    `runs_on`: the host where the VM runs meanwhile, if any (a saved memory state here is then stale).
    `then`: the last step of the fix, once the obstacle is gone (default: the undefine command - right
    for a leftover, wrong where this definition is the only one). `snapshots_carried`: the snapshots'
    metadata is redefined on the destination, so it goes here with the definition (the disks keep the
    data). Raises DefinitionKept with the reason
    (snapshots, checkpoints, a managed-save image, libvirt's error, or no answer) and the fix.
    """
    last = then or undefine_command(uri, name)
    try:
        extra = VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA if snapshots_carried else 0
        blockers, error = bounded.call(_undefine, conn, name, extra, timeout_s=timeout_s, what=f"undefine '{name}'")
    except bounded.NoAnswer as exc:
        raise DefinitionKept(f"'{name}' may still be defined on {uri}: the undefine got no answer within "
                             f"{timeout_s:g} s (the daemon is busy or stuck).",
                             f"look with virsh -c {shlex.quote(uri)} list --all; if it is still there: {last}", uri,
                             unsure=True) from exc
    except Exception as exc:  # pylint: disable=broad-except
        raise DefinitionKept(f"'{name}' is still defined on {uri}: {exc}", f"check the host, then: {last}",
                             uri) from exc
    if error is None:
        return
    why = "; ".join(blockers) if blockers else "libvirt refused"
    raise DefinitionKept(f"'{name}' is still defined on {uri}: not undefined, because {why} ({error}).",
                         _fix(uri, name, blockers, runs_on, last), uri)


def _undefine(conn: Any, name: str, extra: int = 0) -> tuple[list[str], Optional[str]]:
    """(blockers, None) once undefined; (blockers, libvirt's error) when refused. Runs bounded."""
    dom = conn.lookupByName(name)
    if dom.isActive():
        return ["it is running there"], "an active domain is not undefined here"
    try:
        dom.undefineFlags(KEEP_STATE | extra)
        return [], None
    except Exception as exc:  # pylint: disable=broad-except
        if not _unsupported_flags(exc):
            return _blockers(dom, extra), str(exc)
    # a libvirt without the KEEP flags (before 8.9 for KEEP_TPM; the test driver): a plain undefine
    # refuses NVRAM itself, but might delete a TPM's state - so only when there is none
    kept = _state_kept_by_flags(dom)
    if kept:
        return [f"this libvirt cannot keep its {kept} on undefine"], "KEEP_NVRAM/KEEP_TPM not supported"
    try:
        dom.undefineFlags(extra)
        return [], None
    except Exception as exc:  # pylint: disable=broad-except
        return _blockers(dom, extra), str(exc)


def _unsupported_flags(exc: Exception) -> bool:
    code = getattr(exc, "get_error_code", lambda: None)()
    return code == VIR_ERR_INVALID_ARG and "unsupported flags" in str(exc)


def _state_kept_by_flags(dom: Any) -> str:
    """'NVRAM' / 'TPM state' the domain has (what the KEEP flags would protect), from its XML."""
    try:
        root = ET.fromstring(dom.XMLDesc(0))
    except Exception:  # pylint: disable=broad-except
        return "NVRAM or TPM state (its XML could not be read)"
    parts = (("NVRAM", "os/nvram"), ("TPM state", "devices/tpm"))
    found = [what for what, path in parts if root.find(path) is not None]
    return " and ".join(found)


def _blockers(dom: Any, extra: int = 0) -> list[str]:
    """What makes libvirt refuse an undefine that must delete nothing (each looked up best effort);
    snapshots are no obstacle when `extra` drops their metadata."""
    found = []
    asks = (("snapshot", lambda: 0 if extra & VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA else dom.snapshotNum(0)),
            ("checkpoint", lambda: len(dom.listAllCheckpoints(0))))
    for what, ask in asks:
        try:
            count = int(ask())
        except Exception:  # pylint: disable=broad-except
            continue
        if count:
            found.append(f"it has {count} {what}{'s' if count > 1 else ''}")
    try:
        if dom.hasManagedSaveImage(0):
            found.append("it has a managed save image (a saved memory state)")
    except Exception:  # pylint: disable=broad-except
        pass
    return found


def _fix(uri: str, name: str, blockers: list[str], runs_on: Optional[str], then: str) -> str:
    host, vm = shlex.quote(uri), shlex.quote(name)
    steps = []
    text = " ".join(blockers)
    if "snapshot" in text or "checkpoint" in text:
        steps.append(f"libvirt keeps snapshot and checkpoint metadata per host and undefining would delete it: "
                     f"recreate what is still needed on the other host (virsh -c {host} snapshot-list {vm}; "
                     f"snapshot-dumpxml here, snapshot-create --redefine there) or delete it here")
    if "managed save" in text:
        if runs_on:
            steps.append(f"the saved memory state is stale, the VM runs on {runs_on}: remove it with virsh -c {host} "
                         f"managedsave-remove {vm} (never start the VM here)")
        else:
            steps.append(f"restore the saved state (virsh -c {host} start {vm}) or, if it is not wanted, remove it "
                         f"(virsh -c {host} managedsave-remove {vm})")
    if "running" in text:
        steps.append("look at both hosts first: a running copy is never undefined by this")
    if "cannot keep" in text:
        steps.append("upgrade libvirt to 8.9 or newer on that host (KEEP_TPM), or save the NVRAM/TPM files first")
    steps.append(f"then: {then}" if steps else f"check the host, then: {then}")
    return "; ".join(steps) + "."
