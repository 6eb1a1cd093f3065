# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Move a shut-off VM's definition to another host, with what it carries, or leave it where it was.

The order keeps the VM defined on exactly one host after any failure: refuse what cannot be carried
(definition_shape.refusals) before anything changes; copy the NVRAM and vTPM state files to the
destination (state_files); define there; redefine the snapshots' metadata parent before child;
set autostart; discard a managed-save image only when the policy says so, right before the end;
undefine the source keeping its NVRAM/TPM files (and dropping the snapshot metadata now carried).
Every step that changed something pushes its undo; a failure runs them newest first. Once the
source's definition is gone, its NVRAM and TPM files are stale copies and are removed (not when
the directory is shared with the destination: then they are the destination's files).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
from collections.abc import Callable
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import state_files
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.definition_shape import (
    Shape,
    read_shape,
    refusals,
    snapshot_order,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import leftover

VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE = 1
VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT = 2
VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY = 2
STEP_TIMEOUT_S = 15.0
FILE_TIMEOUT_S = 60.0
NVRAM_DIR_PERMS = state_files.Perms(mode="0755")
TPM_DIR_PERMS = state_files.Perms(mode="0700")


@dataclasses.dataclass
class Moved:
    """What a definition move did besides the definition itself (`notes`: one sentence each)."""

    autostart: bool = False
    snapshots: int = 0
    nvram: Optional[str] = None
    tpm_files: int = 0
    managed_save_discarded: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Undo:
    """The steps to take back, newest first; each one bounded and described for the error."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], Any], float]] = []

    def push(self, what: str, fn: Callable[[], Any], timeout_s: float = STEP_TIMEOUT_S) -> None:
        self.steps.append((what, fn, timeout_s))

    def run(self) -> list[str]:
        """Undo everything; returns what could not be undone, each with libvirt's error."""
        failed = []
        for what, fn, timeout_s in reversed(self.steps):
            try:
                bounded.call(fn, timeout_s=timeout_s, what=what)
            except Exception as exc:  # pylint: disable=broad-except
                failed.append(f"{what}: {exc}")
        self.steps.clear()
        return failed


def _step(fn: Callable[[], Any], what: str, timeout_s: float = STEP_TIMEOUT_S) -> Any:
    """fn() bounded; its failure an HvfleetError naming `what` (the caller rolls back)."""
    try:
        return bounded.call(fn, timeout_s=timeout_s, what=what)
    except HvfleetError:
        raise
    except bounded.NoAnswer as exc:
        raise HvfleetError(f"could not {what}: no answer within {timeout_s:g} s", None) from exc
    except Exception as exc:  # pylint: disable=broad-except
        raise HvfleetError(f"could not {what}: {exc}", None) from exc


def move(src_conn: Any, dst_conn: Any, name: str, settings: Optional[dict], src_uri: str,
         dst_uri: str) -> Moved:
    """Move the definition of the shut-off domain `name`; HvfleetError (naming where it is) otherwise."""
    shape = read_shape(src_conn, name)
    refused = refusals(shape, settings, src_uri)
    if refused:
        raise HvfleetError(f"The definition of '{name}' was not moved (nothing changed): "
                           + "; ".join(r.message for r in refused) + ".", " ".join(r.fix for r in refused))
    defined_here = _step(lambda: _check_destination(dst_conn, shape), f"look up '{name}' on {dst_uri}")
    moved, undo = Moved(), _Undo()
    try:
        _copy_state(src_conn, dst_conn, shape, moved, undo)
        if defined_here:
            _step(lambda: dst_conn.defineXML(shape.xml), f"define '{name}' on {dst_uri}")
            undo.push(f"undefine the new definition of '{name}' on {dst_uri}",  # with its redefined snapshots
                      functools.partial(leftover.undefine, dst_conn, name, dst_uri, snapshots_carried=True))
        _redefine_snapshots(dst_conn, shape, moved, undo if not defined_here else None, dst_uri)
        if shape.autostart:
            _step(lambda: dst_conn.lookupByName(name).setAutostart(1), f"set autostart of '{name}' on {dst_uri}")
            undo.push(f"clear autostart of '{name}' on {dst_uri}", lambda: dst_conn.lookupByName(name).setAutostart(0))
            moved.autostart = True
            moved.notes.append(f"autostart set on {dst_uri}, as it was on {src_uri}")
        _check_unchanged(src_conn, shape, src_uri)
        if shape.managed_save:
            _step(lambda: src_conn.lookupByName(name).managedSaveRemove(0),
                  f"remove the managed-save image of '{name}' on {src_uri}")
            moved.managed_save_discarded = True
            moved.notes.append(f"its managed-save image on {src_uri} was discarded (policy managed_save: discard); "
                               "it boots afresh")
        leftover.undefine(src_conn, name, src_uri, then="run the drain again: it moves the definition then",
                          snapshots_carried=bool(shape.snapshots))
    except leftover.DefinitionKept as kept:
        if kept.unsure:
            raise HvfleetError(f"'{name}' is defined on {dst_uri} and maybe still on {src_uri}: {kept.message}",
                               f"look at {src_uri}; if '{name}' is still defined there, remove one of the two "
                               f"definitions: {leftover.undefine_command(src_uri, name)}") from kept
        raise _rolled_back(name, src_uri, dst_uri, kept.message, str(kept.hint or ""), undo, defined_here,
                           moved) from kept
    except HvfleetError as exc:
        raise _rolled_back(name, src_uri, dst_uri, exc.message, exc.hint or "check both hosts, then run again.",
                           undo, defined_here, moved) from exc
    _drop_stale_copies(src_conn, shape, moved, src_uri)
    return moved


def _check_destination(dst_conn: Any, shape: Shape) -> bool:
    """True when the destination has no definition of the VM (this move defines it there)."""
    try:
        existing = dst_conn.lookupByName(shape.name)
    except Exception as exc:  # pylint: disable=broad-except
        if "not found" in str(exc).lower() or "no domain" in str(exc).lower():
            return True
        raise
    if existing.UUIDString() != shape.uuid:
        raise HvfleetError(f"The destination already has a different domain named '{shape.name}'.",
                           "rename one of them, then run again.")
    if existing.isActive():
        raise HvfleetError(f"'{shape.name}' runs on the destination while its definition is still on the source.",
                           "inspect both hosts; undefine the stale copy by hand.")
    return False


def _check_unchanged(src_conn: Any, shape: Shape, src_uri: str) -> None:
    """Right before the source's undefine: still shut off, and no snapshot made since it was read."""
    def look() -> tuple[bool, int]:
        dom = src_conn.lookupByName(shape.name)
        return bool(dom.isActive()), int(dom.snapshotNum(0))

    active, count = _step(look, f"look at '{shape.name}' on {src_uri} again")
    if active:
        raise HvfleetError(f"'{shape.name}' was started on {src_uri} meanwhile", "run the drain again: it is "
                           "then migrated live.")
    if count != len(shape.snapshots):
        raise HvfleetError(f"'{shape.name}' has {count} snapshot(s) on {src_uri} now, not the "
                           f"{len(shape.snapshots)} carried over", "run the drain again.")


def _copy_state(src_conn: Any, dst_conn: Any, shape: Shape, moved: Moved, undo: _Undo) -> None:
    """Copy the NVRAM file and the TPM state files to the destination, each verified; undo puts back
    what the destination had before (nothing, or a stale copy an earlier move left)."""
    files: list[tuple[str, state_files.Perms]] = []
    if shape.nvram and not _shared(src_conn, dst_conn, os.path.dirname(shape.nvram), moved, "NVRAM"):
        files.append((shape.nvram, NVRAM_DIR_PERMS))
    if shape.tpm_dir and not _shared(src_conn, dst_conn, shape.tpm_dir, moved, "TPM state"):
        tpm_dir = shape.tpm_dir
        listed = _step(lambda: state_files.list_files(src_conn, tpm_dir), f"list the TPM state of '{shape.name}'")
        files.extend((path, TPM_DIR_PERMS) for path in listed)
        if listed and not _step(lambda: state_files.dir_exists(dst_conn, tpm_dir), f"look for {tpm_dir}"):
            undo.push(f"remove {tpm_dir} on the destination", functools.partial(_remove_dirs, dst_conn, tpm_dir))
    for path, dir_perms in files:
        copy = _step(functools.partial(state_files.read_file, src_conn, path), f"read {path} on the source",
                     FILE_TIMEOUT_S)
        if copy is None:
            continue  # never started there: no NVRAM yet, libvirt makes it from the template on first start
        before = _step(functools.partial(state_files.write_file, dst_conn, copy, dir_perms),
                       f"copy {path} to the destination", FILE_TIMEOUT_S)
        undo.push(f"put back {path} on the destination",
                  functools.partial(state_files.put_back, dst_conn, path, before, dir_perms), FILE_TIMEOUT_S)
        if path == shape.nvram:
            moved.nvram = path
            moved.notes.append(f"NVRAM {path} copied ({len(copy.data)} bytes, verified)")
        else:
            moved.tpm_files += 1
    if moved.tpm_files:
        moved.notes.append(f"TPM state ({moved.tpm_files} file(s) in {shape.tpm_dir}) copied, verified")


def _remove_dirs(conn: Any, tpm_dir: str) -> None:
    """The TPM state directory and its per-VM parent, once empty (an empty state directory left behind
    would make a later first start there skip the TPM's manufacture)."""
    if state_files.remove_empty_dir(conn, tpm_dir):
        state_files.remove_empty_dir(conn, os.path.dirname(tpm_dir))


def _shared(src_conn: Any, dst_conn: Any, directory: str, moved: Moved, what: str) -> bool:
    shared = bool(_step(lambda: state_files.same_directory(src_conn, dst_conn, directory),
                        f"compare {directory} on both hosts", FILE_TIMEOUT_S))
    if shared:
        moved.notes.append(f"{what} in {directory}: one directory shared by both hosts, nothing to copy")
    return shared


def _redefine_snapshots(dst_conn: Any, shape: Shape, moved: Moved, undo: Optional[_Undo], dst_uri: str) -> None:
    """`undo`: where to push each snapshot's removal - None when the new definition's undefine takes them."""
    for snap in snapshot_order(shape.snapshots):
        flags = VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | (VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT if snap.current else 0)
        _step(functools.partial(_redefine, dst_conn, shape.name, snap.xml, flags),
              f"redefine snapshot '{snap.name}' of '{shape.name}' on {dst_uri}")
        if undo is not None:
            undo.push(f"remove snapshot '{snap.name}' of '{shape.name}' on {dst_uri}",
                      functools.partial(_forget, dst_conn, shape.name, snap.name))
        moved.snapshots += 1
    if moved.snapshots:
        current = [s.name for s in shape.snapshots if s.current]
        moved.notes.append(f"{moved.snapshots} snapshot(s) carried over as metadata"
                           + (f" (current: {current[0]})" if current else "") + "; their data stays on the disks")


def _redefine(conn: Any, name: str, xml: str, flags: int) -> None:
    conn.lookupByName(name).snapshotCreateXML(xml, flags)


def _forget(conn: Any, name: str, snapshot: str) -> None:
    """Remove a snapshot's metadata only (its data is on the shared disks, for the source's copy)."""
    conn.lookupByName(name).snapshotLookupByName(snapshot, 0).delete(VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)


def _rolled_back(name: str, src_uri: str, dst_uri: str, why: str, fix: str, undo: _Undo, defined_here: bool,
                 moved: Moved) -> HvfleetError:
    """The move failed after changes: undo them so the VM is defined on the source only (as before)."""
    lost = " Its managed-save image was already discarded." if moved.managed_save_discarded else ""
    failed = undo.run()
    if failed:
        return HvfleetError(
            f"'{name}' was not moved ({why}) and undoing the move on {dst_uri} failed too: {'; '.join(failed)}. "
            f"It is defined on {src_uri} and may also be defined on {dst_uri}.{lost}",
            f"keep the definition on {src_uri}: remove the one on {dst_uri} by hand (virsh -c {shlex.quote(dst_uri)} "
            f"undefine {shlex.quote(name)} --snapshots-metadata --keep-nvram --keep-tpm), then {fix}")
    if not defined_here:
        return HvfleetError(f"'{name}' is defined on both {src_uri} and {dst_uri} (it was already defined there): "
                            f"{why}.{lost}", fix)
    return HvfleetError(f"The definition of '{name}' was not moved: {why}. What was done on {dst_uri} was undone: "
                        f"'{name}' is defined on {src_uri} only, as before.{lost}", fix)


def _drop_stale_copies(src_conn: Any, shape: Shape, moved: Moved, src_uri: str) -> None:
    """The source's NVRAM/TPM files are stale once the destination holds the definition and its copies."""
    stale = [moved.nvram] if moved.nvram else []
    if moved.tpm_files and shape.tpm_dir:
        try:
            stale.extend(bounded.call(state_files.list_files, src_conn, shape.tpm_dir, True,
                                      timeout_s=FILE_TIMEOUT_S, what="list the TPM state"))
        except Exception as exc:  # pylint: disable=broad-except
            moved.notes.append(f"the stale TPM state in {shape.tpm_dir} on {src_uri} could not be listed ({exc}); "
                               "remove it by hand")
    removed = 0
    for path in stale:
        try:
            bounded.call(state_files.remove_file, src_conn, path, timeout_s=FILE_TIMEOUT_S, what=f"remove {path}")
            removed += 1
        except Exception as exc:  # pylint: disable=broad-except
            moved.notes.append(f"the stale copy {path} on {src_uri} could not be removed ({exc}); remove it by hand")
    if moved.tpm_files and shape.tpm_dir and removed == len(stale):
        try:
            bounded.call(_remove_dirs, src_conn, shape.tpm_dir, timeout_s=FILE_TIMEOUT_S, what="remove the TPM dir")
        except Exception as exc:  # pylint: disable=broad-except
            moved.notes.append(f"the empty directory {shape.tpm_dir} on {src_uri} could not be removed ({exc})")
    if removed:
        moved.notes.append(f"the source's stale copies of the NVRAM/TPM state removed from {src_uri} "
                           f"({removed} file(s))")
