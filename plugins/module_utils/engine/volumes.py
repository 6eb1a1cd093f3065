# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Destination volumes for the local disks a migration copies, and the offline copy of one volume.

A disk copied by the migration (copy_storage, libvirt's migrate_disks) is written into a file that must
already exist on the destination at the same path. libvirt can create it inside a storage pool there,
but it leaves it behind when the migration fails, and nobody then knows it was made for this VM. So the
engine creates each missing one itself, before the start - same format, same capacity, in the
destination's active pool whose target is the disk's directory - and removes what it created when the
VM stayed on the source. With no such pool it refuses before anything changed, saying how to make one.

`copy_offline` copies a volume's bytes from one host's pool to another's with libvirt streams (for a
shut-off VM's local disk); every libvirt call in here is bounded (common/bounded.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Optional, TypeVar

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError

T = TypeVar("T")

CALL_TIMEOUT_S = 15.0  # one lookup, refresh, create or delete; longer: the daemon is stuck
CHUNK_BYTES = 4 * 1024 * 1024  # one stream read or write
FORMATTED_POOLS = ("dir", "fs", "netfs")  # pools whose volumes carry a file format (qcow2, raw)


class VolumeError(HvfleetError):
    """A destination volume could not be found, made or removed; names the disk, the path and the fix."""


@dataclasses.dataclass(frozen=True)
class CopiedDisk:
    """One disk the migration copies, as the source's domain XML describes it."""

    target: str
    path: str
    fmt: str  # qcow2, raw, ... (the driver type); raw when the XML names none


@dataclasses.dataclass(frozen=True)
class Volume:
    """A disk's volume on the destination: `created` when this run made it (and may remove it)."""

    target: str
    path: str
    pool: str
    fmt: str
    capacity: int
    exists: bool = False  # there before this run
    created: bool = False  # made by this run

    def describe(self) -> str:
        return f"{self.path} ({self.fmt}, {self.capacity} bytes) in pool '{self.pool}' for disk {self.target}"


# ---- pure decisions -------------------------------------------------------------------------------


def copied_disks(domain_xml: str, targets: Sequence[str]) -> list[CopiedDisk]:
    """The disks named in `targets` (file or block disks) from the source's domain XML, in that order.

    Raises VolumeError for a target the XML lacks or that has no path: that list came from another read
    of the domain, so the VM changed meanwhile, and copying by a stale list could copy the wrong disk."""
    found: dict[str, CopiedDisk] = {}
    for disk in ET.fromstring(domain_xml).iterfind("devices/disk"):
        tgt = disk.find("target")
        target = tgt.get("dev") if tgt is not None else None
        source = disk.find("source")
        path = None if source is None else (source.get("file") or source.get("dev"))
        driver = disk.find("driver")
        if target and path and disk.get("type") in ("file", "block"):
            found[target] = CopiedDisk(target, path, (driver.get("type") if driver is not None else None) or "raw")
    missing = [t for t in targets if t not in found]
    if missing:
        raise VolumeError(f"The disk(s) {', '.join(missing)} to copy are not file or block disks of the VM "
                          "(its definition changed since the check?); nothing was changed.",
                          "run again: the disks to copy are read afresh.")
    return [found[t] for t in targets]


def volume_xml(name: str, capacity: int, fmt: str, pool_type: Optional[str]) -> str:
    """The XML of a new, empty volume (libvirt allocates it as the pool type does: sparse for files)."""
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(int(capacity))
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    if pool_type in FORMATTED_POOLS:
        ET.SubElement(ET.SubElement(vol, "target"), "format", type=fmt)
    return ET.tostring(vol, encoding="unicode")


def no_pool(vm: str, target: str, path: str, dest: str) -> tuple[str, str]:
    """(message, fix) when `dest` has no active storage pool at the disk's directory: nowhere to create the
    copy. The preflight (planning/disk_checks.py) says the same at plan time."""
    return _no_pool(f"{vm}: disk {target} ({path})", path, dest)


def _no_pool(what: str, path: str, dest: str) -> tuple[str, str]:
    directory = os.path.dirname(path)
    name = os.path.basename(directory.rstrip("/")) or "images"
    q = shlex.quote
    return (f"{what} is to be copied to {dest}, but {dest} has no active storage pool at "
            f"{directory}: the copy is created only inside a storage pool (or into a file that already exists "
            "there).",
            f"define and start a dir storage pool with target {directory} on {dest} (virsh pool-define-as {q(name)} "
            f"dir --target {q(directory)}; virsh pool-start {q(name)}; virsh pool-autostart {q(name)}), or "
            f"pre-create {path} there with the same size and format.")


def pool_type_of(pool_xml: str) -> Optional[str]:
    try:
        return ET.fromstring(pool_xml).get("type")
    except ET.ParseError:
        return None


def volume_format(vol_xml: str) -> Optional[str]:
    try:
        fmt = ET.fromstring(vol_xml).find("target/format")
    except ET.ParseError:
        return None
    return fmt.get("type") if fmt is not None else None


def mismatch(disk: CopiedDisk, capacity: int, have_capacity: int, have_fmt: Optional[str]) -> Optional[str]:
    """Why an existing destination file cannot take the copy (None: it can)."""
    if have_capacity < capacity:
        return f"it holds {have_capacity} bytes, the disk {capacity}"
    if have_fmt and have_fmt != disk.fmt and not (disk.fmt == "raw" and have_fmt in ("raw", "none")):
        return f"it is {have_fmt}, the disk {disk.fmt}"
    return None


# ---- on the destination ---------------------------------------------------------------------------


def _call(fn: Callable[[], T], what: str, timeout_s: float) -> T:
    """fn() bounded; no answer is an error naming `what` (the daemon is stuck: nothing more is tried)."""
    try:
        return bounded.call(fn, timeout_s=timeout_s, what=what)
    except bounded.NoAnswer as exc:
        raise VolumeError(f"No answer from libvirt for {what} within {timeout_s:g} s.",
                          "check that host's libvirt daemon (a stuck storage job?), then run again.") from exc


def _pool_at(conn: Any, directory: str, timeout_s: float) -> Any:
    """The active pool whose target is `directory` (the lookup libvirt's own pre-creation uses), or None."""
    try:
        return _call(lambda: conn.storagePoolLookupByTargetPath(directory), f"the pool at {directory}", timeout_s)
    except VolumeError:
        raise
    except Exception:  # pylint: disable=broad-except
        return None


def survey(src_dom: Any, dst_conn: Any, vm: str, targets: Sequence[str], dest: str,
           timeout_s: float = CALL_TIMEOUT_S) -> list[Volume]:
    """Each copied disk's volume on `dest` - existing (`created` False) or to be made - changing nothing.

    Raises VolumeError naming the disk, the path and the fix when there is no pool to make it in, or when
    an existing file there is smaller or of another format than the disk."""
    xml = _call(lambda: src_dom.XMLDesc(0), f"the definition of '{vm}'", timeout_s)
    out = []
    for disk in copied_disks(xml, targets):
        info = _call(partial(src_dom.blockInfo, disk.target, 0), f"the size of disk {disk.target}", timeout_s)
        capacity = int(info[0])
        pool = _pool_at(dst_conn, os.path.dirname(disk.path), timeout_s)
        if pool is None:
            raise VolumeError(*no_pool(vm, disk.target, disk.path, dest))
        pool_name = _call(pool.name, "the pool's name", timeout_s)
        _call(partial(pool.refresh, 0), f"a refresh of pool '{pool_name}'", timeout_s)  # files made by hand
        name = os.path.basename(disk.path)
        try:
            vol = _call(partial(pool.storageVolLookupByName, name), f"volume {name}", timeout_s)
        except VolumeError:
            raise
        except Exception:  # pylint: disable=broad-except
            out.append(Volume(disk.target, disk.path, pool_name, disk.fmt, capacity))
            continue
        have = int(_call(vol.info, f"the size of {disk.path}", timeout_s)[1])
        why = mismatch(disk, capacity, have, volume_format(_call(partial(vol.XMLDesc, 0), disk.path, timeout_s)))
        if why:
            raise VolumeError(f"{vm}: disk {disk.target} is to be copied into {disk.path} on {dest}, which exists "
                              f"but cannot take it: {why}; nothing was changed.",
                              f"remove {disk.path} on {dest} (the copy then creates it), or resize it to match.")
        out.append(Volume(disk.target, disk.path, pool_name, disk.fmt, have, exists=True))
    return out


def create(dst_conn: Any, volumes: Sequence[Volume], vm: str, dest: str,
           timeout_s: float = CALL_TIMEOUT_S) -> list[Volume]:
    """Create the volumes `survey` found missing; returns every volume, the new ones `created`.

    When one cannot be made, those made before it are removed again, and VolumeError says what is left."""
    done: list[Volume] = []
    for vol in volumes:
        if vol.exists or vol.created:
            done.append(vol)
            continue
        try:
            pool = _call(partial(dst_conn.storagePoolLookupByName, vol.pool), f"pool '{vol.pool}'", timeout_s)
            ptype = pool_type_of(_call(partial(pool.XMLDesc, 0), f"pool '{vol.pool}'", timeout_s))
            xml = volume_xml(os.path.basename(vol.path), vol.capacity, vol.fmt, ptype)
            _call(partial(pool.createXML, xml, 0), f"creating {vol.path}", timeout_s)
        except Exception as exc:  # pylint: disable=broad-except
            left = remove(dst_conn, [v for v in done if v.created], timeout_s)
            extra = f" Could not remove again: {'; '.join(left)}." if left else ""
            raise VolumeError(f"{vm}: could not create {vol.path} on {dest} for disk {vol.target}: "
                              f"{getattr(exc, 'message', None) or exc}; the VM was not migrated.{extra}",
                              f"check pool '{vol.pool}' on {dest} (space, permissions), or pre-create the file "
                              "there with the same size and format.") from exc
        done.append(dataclasses.replace(vol, created=True))
    return done


def remove(dst_conn: Any, volumes: Sequence[Volume], timeout_s: float = CALL_TIMEOUT_S) -> list[str]:
    """Delete the volumes this run created; returns what could not be removed (path: why), empty when all."""
    problems = []
    for vol in volumes:
        if not vol.created:
            continue
        try:
            found = _call(partial(dst_conn.storageVolLookupByPath, vol.path), vol.path, timeout_s)
            _call(partial(found.delete, 0), f"deleting {vol.path}", timeout_s)
        except Exception as exc:  # pylint: disable=broad-except
            problems.append(f"{vol.path}: {getattr(exc, 'message', None) or exc}")
    return problems


# ---- the offline copy -----------------------------------------------------------------------------


def copy_offline(src_conn: Any, dst_conn: Any, path: str, *, src_name: str, dest: str, deadline_s: float,
                 chunk_bytes: int = CHUNK_BYTES, timeout_s: float = CALL_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> tuple[Volume, int]:
    """Copy the volume at `path` in a pool of `src_name` into a new volume at the same path on `dest`, with
    libvirt streams (download there, upload here); for a disk no VM uses (a shut-off VM's). Returns the new
    volume and the bytes copied.

    The destination must have an active pool at the directory and no file at that path (a copy never
    overwrites). Every call is bounded and the whole copy ends by `deadline_s` seconds; when it fails the
    streams are aborted and the new volume is deleted again - or VolumeError says it is left."""
    start = clock()
    src_vol = _volume_at(src_conn, path, timeout_s)
    if src_vol is None:
        directory = os.path.dirname(path)
        raise VolumeError(f"{path} is in no active storage pool on {src_name}, so libvirt cannot read it out.",
                          f"define and start a dir storage pool with target {directory} on {src_name}.")
    capacity = int(_call(src_vol.info, f"the size of {path}", timeout_s)[1])
    disk = CopiedDisk(os.path.basename(path), path, volume_format(_call(lambda: src_vol.XMLDesc(0), path, timeout_s))
                      or "raw")
    pool = _pool_at(dst_conn, os.path.dirname(path), timeout_s)
    if pool is None:
        raise VolumeError(*_no_pool(path, path, dest))
    pool_name = _call(pool.name, "the pool's name", timeout_s)
    _call(lambda: pool.refresh(0), f"a refresh of pool '{pool_name}'", timeout_s)
    try:
        _call(lambda: pool.storageVolLookupByName(disk.target), disk.target, timeout_s)
        exists = True
    except VolumeError:
        raise
    except Exception:  # pylint: disable=broad-except
        exists = False
    if exists:
        raise VolumeError(f"{path} already exists on {dest}; nothing was copied (a copy never overwrites a file).",
                          f"look at both files; remove the one on {dest} if it is not needed, then run again.")
    [vol] = create(dst_conn, [Volume(disk.target, path, pool_name, disk.fmt, capacity)], disk.target, dest, timeout_s)
    streams: list[Any] = []
    try:
        copied = _stream(src_conn, dst_conn, src_vol, path, streams, start + deadline_s, chunk_bytes, timeout_s,
                         clock)
    except Exception as exc:  # pylint: disable=broad-except
        for stream in streams:
            with contextlib.suppress(Exception):  # else the connection's close ends it
                _call(stream.abort, "aborting a stream", timeout_s)
        left = remove(dst_conn, [vol], timeout_s)
        kept = (f" The partial copy is left on {dest}: {left[0]}; remove it before starting the VM there."
                if left else f" The partial copy on {dest} was removed.")
        raise VolumeError(f"Copying {path} from {src_name} to {dest} failed: {getattr(exc, 'message', None) or exc}."
                          f"{kept}", "check both hosts' libvirt daemons and the network, then run again.") from exc
    return vol, copied


def _volume_at(conn: Any, path: str, timeout_s: float) -> Any:
    """The volume at `path`, looked up again after a refresh of the pool at its directory (a dir pool knows
    only the files there at its last refresh); None when no active pool holds it."""
    try:
        return _call(partial(conn.storageVolLookupByPath, path), path, timeout_s)
    except VolumeError:
        raise
    except Exception:  # pylint: disable=broad-except
        pass
    pool = _pool_at(conn, os.path.dirname(path), timeout_s)
    if pool is None:
        return None
    _call(partial(pool.refresh, 0), f"a refresh of the pool at {os.path.dirname(path)}", timeout_s)
    try:
        return _call(partial(pool.storageVolLookupByName, os.path.basename(path)), path, timeout_s)
    except VolumeError:
        raise
    except Exception:  # pylint: disable=broad-except
        return None


def _stream(src_conn: Any, dst_conn: Any, src_vol: Any, path: str, streams: list[Any], deadline: float,
            chunk_bytes: int, timeout_s: float, clock: Callable[[], float]) -> int:
    """Move the bytes; `streams` collects the open ones so the caller can abort them."""
    down = _call(lambda: src_conn.newStream(0), "a new stream", timeout_s)
    streams.append(down)
    _call(lambda: src_vol.download(down, 0, 0, 0), f"download of {path}", timeout_s)
    dst_vol = _call(lambda: dst_conn.storageVolLookupByPath(path), path, timeout_s)
    up = _call(lambda: dst_conn.newStream(0), "a new stream", timeout_s)
    streams.append(up)
    _call(lambda: dst_vol.upload(up, 0, 0, 0), f"upload of {path}", timeout_s)
    copied = 0
    while True:
        if clock() > deadline:
            raise VolumeError(f"not done by its deadline ({copied} bytes copied)")
        data = _call(lambda: down.recv(chunk_bytes), f"reading {path}", timeout_s)
        if not isinstance(data, bytes):
            raise VolumeError(f"the source stream returned {data!r} instead of data")
        if not data:
            break
        view = memoryview(data)
        while view:
            sent = int(_call(partial(up.send, bytes(view)), f"writing {path}", timeout_s))
            if sent <= 0:
                raise VolumeError(f"the destination stream took no data ({sent})")
            view = view[sent:]
        copied += len(data)
    _call(down.finish, "finishing the download", timeout_s)
    streams.remove(down)
    _call(up.finish, "finishing the upload", timeout_s)
    streams.remove(up)
    return copied
