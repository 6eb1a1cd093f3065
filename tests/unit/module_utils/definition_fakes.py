# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fake libvirt host for definition moves: domains with snapshots, checkpoints, managed-save images and
autostart; a private file system under /var/lib/libvirt reached only through dir storage pools and volume
streams; and faults by operation. It refuses what libvirt 9 refuses (an undefine that would drop snapshot
metadata or a managed-save image without the flag, two pools over one directory, a pool over a missing
directory without BUILD) and deletes what libvirt deletes (the TPM state on an undefine without KEEP_TPM).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

UNDEFINE_MANAGED_SAVE, UNDEFINE_SNAPSHOTS_METADATA, UNDEFINE_NVRAM, UNDEFINE_KEEP_NVRAM = 1, 2, 4, 8
UNDEFINE_TPM, UNDEFINE_KEEP_TPM = 32, 64
SNAP_REDEFINE, SNAP_CURRENT = 1, 2


class LibvirtError(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code

    def get_error_code(self):
        return self.code


class File:
    def __init__(self, data=b"", mode="0600", owner="0", group="0"):
        self.data, self.mode, self.owner, self.group = data, mode, owner, group


class Host:
    """One fake hypervisor. `fs` may be shared between two hosts (a shared directory); `fail` maps an
    operation to (how many calls succeed first, the error message)."""

    def __init__(self, uri, fs=None, dirs=None):
        self.uri = uri
        self.fs = {} if fs is None else fs
        self.dirs = {"/var/lib/libvirt/qemu/nvram", "/var/lib/libvirt/swtpm"} if dirs is None else dirs
        self.domains = {}
        self.pools = {}
        self.fail = {}
        self.calls = {}
        self.log = []

    def check(self, op):
        self.calls[op] = self.calls.get(op, 0) + 1
        self.log.append(op)
        if op in self.fail:
            after, message = self.fail[op]
            if self.calls[op] > after:
                raise LibvirtError(message)

    # ---- the connection ---------------------------------------------------------------------------

    def getURI(self):  # noqa: N802 - libvirt's names
        return self.uri

    def lookupByName(self, name):  # noqa: N802
        self.check("lookupByName")
        if name not in self.domains:
            raise LibvirtError(f"Domain not found: no domain with matching name '{name}'", 42)
        return self.domains[name]

    def defineXML(self, xml):  # noqa: N802
        self.check("defineXML")
        root = ET.fromstring(xml)
        name, uuid = root.findtext("name"), root.findtext("uuid")
        if name in self.domains:
            self.domains[name].xml = xml
        else:
            self.domains[name] = Domain(self, name, uuid, xml)
        return self.domains[name]

    def listAllStoragePools(self, flags=0):  # noqa: N802
        return list(self.pools.values())

    def storagePoolCreateXML(self, xml, flags=0):  # noqa: N802
        self.check("storagePoolCreateXML")
        root = ET.fromstring(xml)
        pool = Pool(self, root.findtext("name"), root.findtext("target/path"), transient=True)
        for other in self.pools.values():
            if other.path == pool.path or other.pool_name == pool.pool_name:
                raise LibvirtError(f"operation failed: Storage source conflict with pool: '{other.pool_name}'")
        pool.start(flags, root.findtext("target/permissions/mode"))
        self.pools[pool.pool_name] = pool
        return pool

    def storagePoolDefineXML(self, xml, flags=0):  # noqa: N802
        root = ET.fromstring(xml)
        pool = Pool(self, root.findtext("name"), root.findtext("target/path"), transient=False)
        if any(other.path == pool.path for other in self.pools.values()):
            raise LibvirtError("operation failed: Storage source conflict")
        self.pools[pool.pool_name] = pool
        return pool

    def newStream(self, flags=0):  # noqa: N802
        return Stream(self)

    # ---- test helpers -----------------------------------------------------------------------------

    def add_pool(self, name, path, active=True, kind="dir"):
        """The host's own (persistent) pool over `path`."""
        pool = Pool(self, name, path, transient=False)
        pool.active, pool.kind = active, kind
        self.pools[name] = pool
        return pool

    def files_under(self, directory):
        return {p: f.data for p, f in self.fs.items() if os.path.dirname(p) == directory}

    def mkdirs(self, path):
        while path not in ("/", ""):
            self.dirs.add(path)
            path = os.path.dirname(path)


class Domain:
    def __init__(self, host, name, uuid, xml):
        self.host, self.dom_name, self.uuid, self.xml = host, name, uuid, xml
        self.active = False
        self.auto = False
        self.managed_save = False
        self.snapshots = {}  # name -> Snapshot, in creation order
        self.current = None
        self.checkpoints = 0
        self.undefine_flags = []

    def name(self):
        return self.dom_name

    def UUIDString(self):  # noqa: N802
        return self.uuid

    def isActive(self):  # noqa: N802
        return int(self.active)

    def isPersistent(self):  # noqa: N802
        return 1

    def XMLDesc(self, flags=0):  # noqa: N802
        return self.xml

    def autostart(self):
        return int(self.auto)

    def setAutostart(self, value):  # noqa: N802
        self.host.check("setAutostart")
        self.auto = bool(value)

    def hasManagedSaveImage(self, flags=0):  # noqa: N802
        return int(self.managed_save)

    def managedSaveRemove(self, flags=0):  # noqa: N802
        self.host.check("managedSaveRemove")
        self.managed_save = False

    def listAllSnapshots(self, flags=0):  # noqa: N802
        return list(self.snapshots.values())

    def snapshotNum(self, flags=0):  # noqa: N802
        return len(self.snapshots)

    def snapshotLookupByName(self, name, flags=0):  # noqa: N802
        if name not in self.snapshots:
            raise LibvirtError(f"Domain snapshot not found: no snapshot with matching name '{name}'", 72)
        return self.snapshots[name]

    def snapshotCreateXML(self, xml, flags=0):  # noqa: N802
        self.host.check("snapshotCreateXML")
        root = ET.fromstring(xml)
        name, parent = root.findtext("name"), root.findtext("parent/name")
        if flags & SNAP_REDEFINE and parent and parent not in self.snapshots:
            raise LibvirtError(f"invalid argument: parent {parent} for snapshot {name} not found")
        if not flags & SNAP_REDEFINE:
            parent = self.current
            xml = xml.replace("</domainsnapshot>", f"<parent><name>{parent}</name></parent></domainsnapshot>") \
                if parent else xml
        self.snapshots[name] = Snapshot(self, name, xml)
        if flags & SNAP_CURRENT or not flags & SNAP_REDEFINE:
            self.current = name
        return self.snapshots[name]

    def listAllCheckpoints(self, flags=0):  # noqa: N802
        return [object()] * self.checkpoints

    def undefineFlags(self, flags=0):  # noqa: N802
        self.host.check("undefineFlags")
        self.undefine_flags.append(flags)
        if self.active:
            raise LibvirtError("Requested operation is not valid: cannot undefine a running domain here", 55)
        if self.snapshots and not flags & UNDEFINE_SNAPSHOTS_METADATA:
            raise LibvirtError(f"Requested operation is not valid: cannot delete inactive domain with "
                               f"{len(self.snapshots)} snapshots", 55)
        if self.managed_save and not flags & UNDEFINE_MANAGED_SAVE:
            raise LibvirtError("Requested operation is not valid: Refusing to undefine while domain managed save "
                               "image exists", 55)
        nvram = (ET.fromstring(self.xml).findtext("os/nvram") or "").strip()
        if nvram and nvram in self.host.fs and not flags & (UNDEFINE_NVRAM | UNDEFINE_KEEP_NVRAM):
            raise LibvirtError("Requested operation is not valid: cannot undefine domain with nvram", 55)
        if nvram and flags & UNDEFINE_NVRAM:
            self.host.fs.pop(nvram, None)
        if ET.fromstring(self.xml).find("devices/tpm") is not None and not flags & UNDEFINE_KEEP_TPM:
            for path in [p for p in self.host.fs if p.startswith(f"/var/lib/libvirt/swtpm/{self.uuid}/")]:
                del self.host.fs[path]
        del self.host.domains[self.dom_name]


class Snapshot:
    def __init__(self, dom, name, xml):
        self.dom, self.snap_name, self.xml = dom, name, xml

    def getName(self):  # noqa: N802
        return self.snap_name

    def getXMLDesc(self, flags=0):  # noqa: N802
        return self.xml

    def isCurrent(self, flags=0):  # noqa: N802
        return int(self.dom.current == self.snap_name)

    def parent(self):
        return ET.fromstring(self.xml).findtext("parent/name")

    def delete(self, flags=0):
        self.dom.host.check("snapshotDelete")
        del self.dom.snapshots[self.snap_name]
        if self.dom.current == self.snap_name:
            self.dom.current = None


class Pool:
    def __init__(self, host, name, path, transient):
        self.host, self.pool_name, self.path, self.transient = host, name, os.path.normpath(path), transient
        self.active = False
        self.kind = "dir"

    def name(self):
        return self.pool_name

    def XMLDesc(self, flags=0):  # noqa: N802
        return f"<pool type='{self.kind}'><name>{self.pool_name}</name><target><path>{self.path}</path></target></pool>"

    def isActive(self):  # noqa: N802
        return int(self.active)

    def start(self, flags, mode=None):
        if self.path not in self.host.dirs:
            if not flags & 1:
                raise LibvirtError(f"cannot open directory '{self.path}': No such file or directory", 38)
            self.host.mkdirs(self.path)
            self.host.log.append(f"mkdir {self.path} {mode}")
        self.active = True

    def create(self, flags=0):
        self.start(flags)

    def destroy(self):
        self.active = False
        if self.transient:
            del self.host.pools[self.pool_name]

    def refresh(self, flags=0):
        pass

    def delete(self, flags=0):
        """rmdir, as libvirt's dir backend does (inactive pools only; fails when not empty)."""
        assert not self.active
        if any(p.startswith(self.path + "/") for p in self.host.fs) or any(
                d.startswith(self.path + "/") for d in self.host.dirs):
            raise LibvirtError(f"cannot remove pool directory '{self.path}': Directory not empty")
        self.host.dirs.discard(self.path)

    def undefine(self):
        del self.host.pools[self.pool_name]

    def listAllVolumes(self, flags=0):  # noqa: N802
        assert self.active, "a pool is used only while active"
        return [Volume(self.host, p) for p in sorted(self.host.fs) if os.path.dirname(p) == self.path]

    def storageVolLookupByName(self, name):  # noqa: N802
        return Volume(self.host, os.path.join(self.path, name))

    def createXML(self, xml, flags=0):  # noqa: N802
        self.host.check("volCreate")
        root = ET.fromstring(xml)
        path = os.path.join(self.path, root.findtext("name"))
        if path in self.host.fs:
            raise LibvirtError(f"storage volume '{root.findtext('name')}' exists already")
        size = int(root.findtext("capacity") or 0)
        self.host.fs[path] = File(b"\0" * size, root.findtext("target/permissions/mode") or "0600",
                                  root.findtext("target/permissions/owner") or "0",
                                  root.findtext("target/permissions/group") or "0")
        return Volume(self.host, path)


class Volume:
    def __init__(self, host, path):
        self.host, self.vol_path = host, path

    def name(self):
        return os.path.basename(self.vol_path)

    def info(self):
        size = len(self.host.fs[self.vol_path].data)
        return [0, size, size]

    def XMLDesc(self, flags=0):  # noqa: N802
        f = self.host.fs[self.vol_path]
        return (f"<volume><name>{self.name()}</name><target><path>{self.vol_path}</path><permissions>"
                f"<mode>{f.mode}</mode><owner>{f.owner}</owner><group>{f.group}</group></permissions></target>"
                "</volume>")

    def download(self, stream, offset, length, flags=0):
        self.host.check("download")
        stream.pending = bytearray(self.host.fs[self.vol_path].data)

    def upload(self, stream, offset, length, flags=0):
        self.host.check("upload")
        stream.target, stream.length = self.vol_path, length

    def delete(self, flags=0):
        self.host.check("volDelete")
        del self.host.fs[self.vol_path]


class Stream:
    def __init__(self, host):
        self.host = host
        self.pending = bytearray()
        self.target = None
        self.length = 0
        self.sent = bytearray()

    def recv(self, nbytes):
        chunk, self.pending = bytes(self.pending[:nbytes]), self.pending[nbytes:]
        return chunk

    def send(self, data):
        self.sent.extend(data)
        return len(data)

    def finish(self):
        if self.target is not None:
            self.host.check("uploadFinish")
            data = bytes(self.sent)
            if "truncate" in self.host.fail:
                data = data[:-1]
            self.host.fs[self.target].data = data


def domain_xml(name="vm1", uuid="6990a74b-fe3c-4549-861b-2076fcd3ceea", nvram=True, tpm=False, disks=()):
    """A shut-off UEFI domain's XML; `disks`: (target, type, source) triples."""
    nbd = "protocol='nbd' name"
    disk_xml = "".join(
        f"<disk type='{kind}' device='disk'><source {nbd if kind == 'network' else 'file'}="
        f"'{source}'/><target dev='{target}'/></disk>" for target, kind, source in disks)
    return (f"<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid><memory unit='KiB'>131072</memory>"
            "<os><type arch='x86_64' machine='q35'>hvm</type>"
            "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
            + (f"<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/{name}_VARS.fd"
               "</nvram>" if nvram else "")
            + "</os><devices>" + disk_xml
            + ("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>" if tpm else "")
            + "</devices></domain>")


def snapshot_xml(name, parent=None, disks=""):
    return (f"<domainsnapshot><name>{name}</name><state>shutoff</state>"
            + (f"<parent><name>{parent}</name></parent>" if parent else "") + disks + "</domainsnapshot>")


def parents(dom):
    return {name: snap.parent() for name, snap in dom.snapshots.items()}


def strip_ws(text):
    return re.sub(r"\s+", " ", text)
