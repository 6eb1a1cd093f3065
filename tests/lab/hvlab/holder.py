"""The process that *is* a lab host: it owns the host's mount + UTS namespace (it runs under
`ip netns exec NS unshare --mount --uts --propagation private`), sets the hostname, bind-mounts the
host's private directories, and then starts the host's daemons on request.

Why a process of our own rather than `sleep infinity`: PID 1 on these machines does not reap
orphans, so every libvirtd, sshd or QEMU (QEMU is daemonized by libvirtd) that dies would stay a
zombie. The holder is a child subreaper: the host's daemons are its descendants, it reaps them.
Daemons can be stopped and started again (fault helpers) while the namespace stays.

A generation-2 host (rootfs.py) gets `cfg["root"]`: the holder mounts an overlay of the cached
Debian 13 root (the host's own upper layer, so hosts never write into the cache), binds /proc,
/sys and /dev into it, puts a tmpfs on its /run, and mounts the host's binds *inside* that root;
the host's daemons are then started with `chroot` into it. The holder itself stays outside.

Protocol: one JSON line per connection on the unix socket given in the config.
    {"op": "ping"}                                   -> {"ok": true, "pid": ...}
    {"op": "spawn", "argv": [...], "log": "/path"}   -> {"ok": true, "pid": N}
Runs with the system Python, standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def _reap() -> None:
    while True:
        try:
            pid = os.waitpid(-1, os.WNOHANG)[0]
        except ChildProcessError:
            return
        if pid == 0:
            return


def _spawn(argv: list[str], log: str) -> int:
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawn(argv[0], argv, ENV, file_actions=actions, setsid=True)


def _mount_root(root: dict) -> None:
    """The host's view of a generation-2 root at root["mnt"] (in this mount namespace only)."""
    mnt = root["mnt"]
    opts = f"lowerdir={root['lower']},upperdir={root['upper']},workdir={root['work']}"
    subprocess.run(["mount", "-t", "overlay", "hvlab-root", "-o", opts, mnt], check=True)
    for fs in ("proc", "sys", "dev"):
        subprocess.run(["mount", "--rbind", f"/{fs}", os.path.join(mnt, fs)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "hvlab-run", os.path.join(mnt, "run")], check=True)


def _handle(conn: socket.socket) -> None:
    conn.settimeout(5)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
    try:
        req = json.loads(buf)
        if req["op"] == "ping":
            reply = {"ok": True, "pid": os.getpid()}
        elif req["op"] == "spawn":
            reply = {"ok": True, "pid": _spawn(req["argv"], req["log"])}
        else:
            reply = {"ok": False, "error": f"unknown op {req['op']!r}"}
    except Exception as exc:  # report every failure to the caller, keep serving
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    conn.sendall(json.dumps(reply).encode() + b"\n")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    os.chdir("/")
    if cfg.get("hostname"):
        socket.sethostname(cfg["hostname"])
    # Drop our copy of the other namespaces' /run/netns mounts: holding them would keep those
    # namespaces alive after `ip netns del` in the root namespace.
    with open("/proc/self/mountinfo") as f:
        if any(line.split()[4].startswith("/run/netns") for line in f):
            subprocess.run(["umount", "-l", "/run/netns"], check=False)
    root = cfg.get("root")
    if root:
        _mount_root(root)
    for src, dst in cfg.get("binds", []):
        if root:
            dst = os.path.join(root["mnt"], dst.lstrip("/"))
            os.makedirs(dst, exist_ok=True)
        subprocess.run(["mount", "--bind", src, dst], check=True)

    def _terminate(*_) -> None:
        _reap()  # daemons stopped just before us are zombies now: reap them before leaving
        sys.exit(0)

    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    signal.signal(signal.SIGTERM, _terminate)
    path = cfg["sock"]
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    print(f"holder {cfg.get('hostname')} ready, pid {os.getpid()}", flush=True)
    while True:
        ready = select.select([srv], [], [], 0.5)[0]
        _reap()
        if ready:
            conn = srv.accept()[0]
            with conn, contextlib.suppress(OSError):
                _handle(conn)


if __name__ == "__main__":
    main()
