"""Faults and link conditions that later tests inflict on the lab: a bandwidth cap (`tc tbf`), a cut
link, a stopped libvirtd, a killed QEMU, a restarted storage daemon. Each is undone by its partner
(or by `up`, which repairs whatever is recorded but dead). The state file records each condition so
`status` shows it and the inventory can carry the link speed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import hosts, netns, storage
from .state import alive, proc_start_time

if TYPE_CHECKING:  # pragma: no cover
    from .lab import Lab


def shape(lab: Lab, host: str, mbit: float) -> None:
    netns.shape(lab._host_rec(host)["name"], mbit)
    lab._update_host(host, link_mbit=mbit)


def unshape(lab: Lab, host: str) -> None:
    netns.unshape(lab._host_rec(host)["name"])
    lab._update_host(host, link_mbit=None)


def cut_link(lab: Lab, host: str) -> None:
    lab._host_rec(host)
    lab._update_host(host, link_cut=True)
    netns.cut_link(host)


def restore_link(lab: Lab, host: str) -> None:
    lab._host_rec(host)
    netns.restore_link(host)
    lab._update_host(host, link_cut=False)


def stop_libvirtd(lab: Lab, host: str) -> None:
    rec = lab._host_rec(host)
    hosts.stop(rec.get("libvirtd"))


def start_libvirtd(lab: Lab, host: str, timeout: float = 60) -> None:
    rec = lab._host_rec(host)
    if alive(rec.get("libvirtd")):
        return
    lab._update_host(host, libvirtd=None)
    new = hosts.start_libvirtd(lab.root, host, rec.get("rootfs"))
    lab._update_host(host, libvirtd=new)
    hosts.wait_ready(lab.root, host, new, "libvirtd", lambda: hosts.libvirt_ready(rec["addr"]), timeout)


def qemu_pid(lab: Lab, host: str, vm: str) -> int | None:
    """Pid of the VM's QEMU on `host`, from libvirt's pid file, verified against /proc."""
    pidfile = hosts.hostdir(lab.root, host) / "run-libvirt" / "qemu" / f"{vm}.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if not cmdline or b"qemu" not in os.path.basename(cmdline[0]):
        return None
    if not any(arg.startswith(f"guest={vm},".encode()) or arg == f"guest={vm}".encode() for arg in cmdline):
        return None
    return pid if proc_start_time(pid) is not None else None


def kill_qemu(lab: Lab, vm: str, timeout: float = 10) -> int:
    """SIGKILL the QEMU of a running VM (wherever it runs); returns the pid killed."""
    for host in lab.hosts():
        pid = qemu_pid(lab, host, vm)
        if pid:
            start = proc_start_time(pid)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while proc_start_time(pid) == start:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"QEMU {pid} of {vm} did not die")
                time.sleep(0.02)
            return pid
    raise LookupError(f"no running QEMU for VM {vm!r} on any lab host")


def restart_storage(lab: Lab) -> None:
    """Stop qemu-storage-daemon and start it again with the recorded exports."""
    st = lab.state.load().data["storage"] or {}
    storage.stop_daemon(st.get("qsd"))
    lab._start_storage_daemon()
