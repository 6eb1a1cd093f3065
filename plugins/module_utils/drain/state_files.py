# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's own small files (a VM's NVRAM, its vTPM state), read and written through libvirt only.

libvirt keeps a UEFI guest's NVRAM and a vTPM's state in each host's private /var/lib/libvirt; a
definition defined on another host would start there with fresh firmware variables and an empty
TPM. The only channel to another host's files is libvirt itself: a `dir` storage pool over the
file's directory (the host's own pool for it, else a transient one this creates and destroys) and
volume streams (virStorageVolDownload / virStorageVolUpload). Callers bound every function here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError

VIR_STORAGE_POOL_CREATE_WITH_BUILD = 1
DIR_POOL_TYPES = ("dir", "fs", "netfs")  # pools whose volumes are the files of one directory
VIR_STORAGE_VOL_FILE = 0
VIR_ERR_SYSTEM_ERROR = 38
CHUNK = 256 * 1024
MAX_BYTES = 64 * 1024 * 1024  # firmware variables and TPM state are kilobytes to a few MiB


@dataclasses.dataclass(frozen=True)
class Perms:
    """A file's mode and numeric owner as the pool reports them (kept on the copy)."""

    mode: str = "0600"
    owner: Optional[str] = None
    group: Optional[str] = None

    def xml(self) -> str:
        ids = "".join(f"<{tag}>{value}</{tag}>" for tag, value in (("owner", self.owner), ("group", self.group))
                      if value is not None)
        return f"<permissions><mode>{self.mode}</mode>{ids}</permissions>"


@dataclasses.dataclass(frozen=True)
class FileCopy:
    """A file's content and permissions, read from one host."""

    path: str
    data: bytes
    perms: Perms

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def pool_name(directory: str) -> str:
    """The transient pool's name: one per directory, so two runs never hold two pools over one path."""
    return "hvfleet-state-" + hashlib.sha256(directory.encode()).hexdigest()[:12]


@contextmanager
def dir_pool(conn: Any, directory: str, build: Optional[Perms] = None) -> Iterator[Optional[Any]]:
    """The active pool over `directory` on `conn`, refreshed; None when the directory does not exist
    (and `build` is None). With `build`, a missing directory is made with those permissions. A pool
    this started (the host's inactive one, or a transient one) is stopped again on the way out."""
    pool, started = _open(conn, directory, build)
    try:
        yield pool
    finally:
        if started and pool is not None:
            pool.destroy()


def _open(conn: Any, directory: str, build: Optional[Perms]) -> tuple[Optional[Any], bool]:
    for attempt in (1, 2):
        existing = _pool_over(conn, directory)
        if existing is not None:
            if existing.isActive():
                existing.refresh(0)
                return existing, False
            existing.create(VIR_STORAGE_POOL_CREATE_WITH_BUILD if build else 0)
            return existing, True
        xml = (f"<pool type='dir'><name>{pool_name(directory)}</name><target><path>{_esc(directory)}</path>"
               f"{build.xml() if build else ''}</target></pool>")
        try:
            return conn.storagePoolCreateXML(xml, VIR_STORAGE_POOL_CREATE_WITH_BUILD if build else 0), True
        except Exception as exc:  # pylint: disable=broad-except
            if build is None and _missing(exc):
                return None, False
            if attempt == 2:
                raise
            # another run made the same pool meanwhile: use that one
    raise HvfleetError(f"No storage pool over {directory}.", "check the host's storage pools.")


def _pool_over(conn: Any, directory: str) -> Optional[Any]:
    wanted = os.path.normpath(directory)
    for pool in conn.listAllStoragePools(0):
        root = ET.fromstring(pool.XMLDesc(0))
        path = root.findtext("target/path")
        if root.get("type") in DIR_POOL_TYPES and path and os.path.normpath(path) == wanted:
            return pool
    return None


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "get_error_code", lambda: None)()
    return code in (None, VIR_ERR_SYSTEM_ERROR) and "No such file or directory" in str(exc)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")


def _volume(pool: Any, name: str) -> Optional[Any]:
    for vol in pool.listAllVolumes(0):
        if vol.name() == name:
            return vol
    return None


def _perms(vol: Any) -> Perms:
    root = ET.fromstring(vol.XMLDesc(0))
    return Perms(mode=root.findtext("target/permissions/mode") or "0600",
                 owner=root.findtext("target/permissions/owner"), group=root.findtext("target/permissions/group"))


def _download(conn: Any, vol: Any, path: str) -> bytes:
    size = int(vol.info()[1])
    if size > MAX_BYTES:
        raise HvfleetError(f"{path} is {size} bytes, more than the {MAX_BYTES} a NVRAM or TPM state file holds.",
                           "check the file; move the VM by hand if it is right.")
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, 0)
    chunks = []
    while True:
        data = stream.recv(CHUNK)
        if not data:
            break
        chunks.append(data)
    stream.finish()
    return b"".join(chunks)


def _upload(conn: Any, vol: Any, data: bytes) -> None:
    stream = conn.newStream(0)
    vol.upload(stream, 0, len(data), 0)
    view = memoryview(data)
    while view:
        sent = stream.send(bytes(view[:CHUNK]))
        view = view[max(0, int(sent)):]
    stream.finish()


def read_file(conn: Any, path: str) -> Optional[FileCopy]:
    """The file at `path` on `conn`'s host, or None when it (or its directory) does not exist."""
    with dir_pool(conn, os.path.dirname(path)) as pool:
        vol = None if pool is None else _volume(pool, os.path.basename(path))
        if vol is None:
            return None
        return FileCopy(path, _download(conn, vol, path), _perms(vol))


def list_files(conn: Any, directory: str, hidden: bool = False) -> list[str]:
    """The regular files in `directory` (with `hidden`, also lock files such as swtpm's .lock), or []
    when it does not exist."""
    with dir_pool(conn, directory) as pool:
        if pool is None:
            return []
        return sorted(os.path.join(directory, vol.name()) for vol in pool.listAllVolumes(0)
                      if (hidden or not vol.name().startswith(".")) and int(vol.info()[0]) == VIR_STORAGE_VOL_FILE)


def dir_exists(conn: Any, directory: str) -> bool:
    with dir_pool(conn, directory) as pool:
        return pool is not None


def remove_empty_dir(conn: Any, directory: str) -> bool:
    """rmdir through libvirt (a pool's delete), only for an empty directory no pool of the host covers;
    False when it was left (absent, not empty, or the host's own pool)."""
    if _pool_over(conn, directory) is not None:
        return False
    with dir_pool(conn, directory) as pool:
        if pool is None or pool.listAllVolumes(0):
            return False
    pool = conn.storagePoolDefineXML(f"<pool type='dir'><name>{pool_name(directory)}</name><target><path>"
                                     f"{_esc(directory)}</path></target></pool>", 0)
    try:
        pool.delete(0)
    finally:
        pool.undefine()
    return True


def write_file(conn: Any, copy: FileCopy, dir_perms: Perms) -> Optional[FileCopy]:
    """Write `copy` at its path on `conn`'s host (making the directory), read it back and compare.
    Returns what was there before (to put back on undo), or None when there was no file."""
    directory, name = os.path.split(copy.path)
    with dir_pool(conn, directory, build=dir_perms) as pool:
        if pool is None:
            raise HvfleetError(f"{directory} could not be made.", "check the host's storage.")
        before = None
        old = _volume(pool, name)
        if old is not None:
            before = FileCopy(copy.path, _download(conn, old, copy.path), _perms(old))
            old.delete(0)
        vol = _create(pool, name, len(copy.data), copy.perms)
        try:
            if copy.data:
                _upload(conn, vol, copy.data)
            written = int(vol.info()[1])
            back = _download(conn, vol, copy.path)
            if written != len(copy.data) or hashlib.sha256(back).hexdigest() != copy.digest:
                raise HvfleetError(f"{copy.path} was written with {written} bytes, not the {len(copy.data)} read.",
                                   "check the host's storage, then run again.")
        except Exception:
            vol.delete(0)  # half written: the destination gets back what it had
            if before is not None:
                _upload(conn, _create(pool, name, len(before.data), before.perms), before.data)
            raise
        return before


def _create(pool: Any, name: str, size: int, perms: Perms) -> Any:
    return pool.createXML(f"<volume><name>{_esc(name)}</name><capacity unit='bytes'>{size}</capacity>"
                          f"<allocation>0</allocation><target><format type='raw'/>{perms.xml()}</target></volume>", 0)


def remove_file(conn: Any, path: str) -> bool:
    """Remove `path` on `conn`'s host; False when it was not there."""
    with dir_pool(conn, os.path.dirname(path)) as pool:
        vol = None if pool is None else _volume(pool, os.path.basename(path))
        if vol is None:
            return False
        vol.delete(0)
        return True


def put_back(conn: Any, path: str, before: Optional[FileCopy], dir_perms: Perms) -> None:
    """Undo write_file: the earlier content again, or no file when there was none."""
    if before is None:
        remove_file(conn, path)
    else:
        write_file(conn, before, dir_perms)


def same_directory(src_conn: Any, dst_conn: Any, directory: str) -> bool:
    """Whether `directory` is one shared directory on both hosts (then nothing is copied or removed):
    a probe file made on the destination shows up on the source. False when either lacks it."""
    with dir_pool(dst_conn, directory) as dst_pool:
        if dst_pool is None:
            return False
        probe = f".hvfleet-probe-{uuid.uuid4().hex[:12]}"
        vol = dst_pool.createXML(f"<volume><name>{probe}</name><capacity unit='bytes'>0</capacity>"
                                 "<target><format type='raw'/></target></volume>", 0)
        try:
            with dir_pool(src_conn, directory) as src_pool:
                return src_pool is not None and _volume(src_pool, probe) is not None
        finally:
            vol.delete(0)
