"""Shared storage for the lab: one qemu-storage-daemon in the `storage` namespace exporting guest
disks over NBD on 10.254.0.2:10809. libvirt treats a network disk as shared, so VMs using it
migrate without `--unsafe`, like on a real SAN/Ceph.

Disks are qcow2 files in LAB_ROOT/storage/disks/; exports (export name = VM name) are added and
removed at run time over QMP. The daemon can be restarted (a fault for later tests): the exports
recorded in the state file are added again.

Local storage: every hypervisor host also has a libvirt `dir` pool named `local` over its own private
LOCAL_POOL_DIR (inside the host's /var/lib/libvirt, which no other host sees), as a hypervisor's
local image pool: where a VM's local disk lives and where a copied disk is created on the destination.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from pathlib import Path

from . import hosts, netns
from .state import alive, kill_record

NBD_PORT = 10809
NAME = "storage"
LOCAL_POOL = "local"
LOCAL_POOL_DIR = "/var/lib/libvirt/local-images"  # as seen inside a host; private to it


def storage_dir(root: Path) -> Path:
    return root / "storage"


def qmp_sock(root: Path) -> Path:
    return storage_dir(root) / "qmp.sock"


class QMP:
    """Minimal QMP client (one command at a time, events skipped)."""

    def __init__(self, path: Path, timeout: float = 10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("QMP connection closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def cmd(self, command: str, /, **args) -> object:
        self.file.write(json.dumps({"execute": command, "arguments": args}).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {command} failed: {reply['error'].get('desc')}")
        return reply.get("return")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def daemon_argv(root: Path) -> list[str]:
    return [
        "/usr/bin/qemu-storage-daemon",
        "--chardev",
        f"socket,id=qmp0,path={qmp_sock(root)},server=on,wait=off",
        "--monitor",
        "chardev=qmp0",
        "--nbd-server",
        f"addr.type=inet,addr.host={netns.STORAGE_ADDR},addr.port={NBD_PORT}",
    ]


def start_daemon(root: Path) -> dict:
    """Start qemu-storage-daemon (inside the storage host, via its holder); wait for QMP."""
    sd = storage_dir(root)
    (sd / "disks").mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        qmp_sock(root).unlink()
    rec = hosts.spawn(root, NAME, daemon_argv(root), sd / "qsd.log")
    deadline = time.monotonic() + 20
    while True:
        try:
            with QMP(qmp_sock(root), timeout=2) as q:
                q.cmd("query-block-exports")
            return rec
        except (OSError, ConnectionError, ValueError):
            if not alive(rec):
                raise RuntimeError(f"qemu-storage-daemon died; see {sd / 'qsd.log'}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"qemu-storage-daemon QMP not answering; see {sd / 'qsd.log'}") from None
            time.sleep(0.05)


def stop_daemon(rec: dict | None) -> bool:
    return kill_record(rec)


def disk_path(root: Path, name: str) -> Path:
    return storage_dir(root) / "disks" / f"{name}.qcow2"


def create_disk(path: Path, size_mb: int) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mb}M"], check=True)


def export(root: Path, name: str) -> None:
    """Export the VM's disk (created if missing) as NBD export `name`; idempotent."""
    with QMP(qmp_sock(root)) as q:
        if any(e.get("id") == name for e in q.cmd("query-block-exports") or []):
            return
        nodes = {n.get("node-name") for n in q.cmd("query-named-block-nodes", flat=True) or []}
        if name not in nodes:
            q.cmd(
                "blockdev-add",
                **{
                    "driver": "qcow2",
                    "node-name": name,
                    "file": {"driver": "file", "filename": str(disk_path(root, name))},
                },
            )
        q.cmd("block-export-add", type="nbd", id=name, **{"node-name": name}, name=name, writable=True)


def unexport(root: Path, name: str) -> None:
    with QMP(qmp_sock(root)) as q:
        if any(e.get("id") == name for e in q.cmd("query-block-exports") or []):
            # "hard" drops connected clients (the VM is gone by now)
            q.cmd("block-export-del", id=name, mode="hard")
            deadline = time.monotonic() + 10
            while any(e.get("id") == name for e in q.cmd("query-block-exports") or []):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"NBD export {name} not removed")
                time.sleep(0.02)
        nodes = {n.get("node-name") for n in q.cmd("query-named-block-nodes", flat=True) or []}
        if name in nodes:
            q.cmd("blockdev-del", **{"node-name": name})


def exports(root: Path) -> list[str]:
    with QMP(qmp_sock(root)) as q:
        return sorted(e["id"] for e in q.cmd("query-block-exports") or [])


# ---------------------------------------------------------------------------------------------
# The hosts' local image pools


def local_pool_xml() -> str:
    return (f"<pool type='dir'><name>{LOCAL_POOL}</name>"
            f"<target><path>{LOCAL_POOL_DIR}</path></target></pool>")


def local_pool_outside(host_dir: Path) -> Path:
    """The host's LOCAL_POOL_DIR as seen from the root namespace (below its private /var/lib/libvirt)."""
    return host_dir / "lib-libvirt" / Path(LOCAL_POOL_DIR).relative_to("/var/lib/libvirt")


def ensure_local_pool(conn, host_dir: Path) -> str:
    """Define, autostart and start the host's `local` pool through its libvirtd; idempotent.
    Returns what was done: "defined", "started" or "present"."""
    import libvirt

    local_pool_outside(host_dir).mkdir(parents=True, exist_ok=True)
    done = "present"
    try:
        pool = conn.storagePoolLookupByName(LOCAL_POOL)
    except libvirt.libvirtError:
        pool = conn.storagePoolDefineXML(local_pool_xml(), 0)
        done = "defined"
    if not pool.autostart():
        pool.setAutostart(1)
    if not pool.isActive():
        pool.create(0)
        done = "started" if done == "present" else done
    return done


def vm_volume(vm: str, volume: str) -> bool:
    """Whether a `local` pool volume is one of lab VM `vm`'s disks: VM.EXT or VM-ROLE.EXT (ROLE without '-',
    so VM `t1` does not claim `t1-2-data.qcow2` of VM `t1-2`)."""
    return re.fullmatch(rf"{re.escape(vm)}(-[A-Za-z0-9_]+)?\.[A-Za-z0-9]+", volume) is not None


def remove_local_volumes(conn, vm: str) -> list[str]:
    """Delete lab VM `vm`'s volumes (vm_volume) from the host's `local` pool."""
    import libvirt

    try:
        pool = conn.storagePoolLookupByName(LOCAL_POOL)
        if not pool.isActive():
            return []
        pool.refresh(0)
    except libvirt.libvirtError:
        return []
    removed = []
    for vol in pool.listAllVolumes(0):
        if vm_volume(vm, vol.name()):
            vol.delete(0)
            removed.append(vol.name())
    return removed
