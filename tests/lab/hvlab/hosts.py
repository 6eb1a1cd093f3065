"""One lab host = a network namespace (netns.py) + a holder process owning a private mount and UTS
namespace (holder.py) + its own libvirtd and sshd, started inside it by the holder.

The host's private directories live under LAB_ROOT/hosts/<name>/ and are bind-mounted (inside the
host's mount namespace only) over the paths libvirt, sshd and the collection use, so several
libvirtd run side by side, each believing it is alone on its machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from . import netns, tls
from .state import alive, kill_record, proc_record

HOLDER = Path(__file__).resolve().parent / "holder.py"
SYSTEM_PYTHON = "/usr/bin/python3"
LIBVIRT_TCP_PORT = 16509
LIBVIRT_TLS_PORT = 16514

# private dir (under LAB_ROOT/hosts/<name>/) -> path it is mounted over inside the host
GUEST_IMAGE_CACHE = "/var/cache/hvfleet-lab/image"  # image.DEFAULT_CACHE_ROOT

PRIVATE_DIRS = {
    "run-libvirt": "/run/libvirt",
    "run-sshd": "/run/sshd",
    "lib-libvirt": "/var/lib/libvirt",
    "log-libvirt": "/var/log/libvirt",
    "cache-libvirt": "/var/cache/libvirt",
    "etc-libvirt": "/etc/libvirt",
    "pki": "/etc/pki",
    "lib-hvfleet": "/var/lib/hvfleet",
    # swtpm's logs, one per VM name: a migrated VM's TPM on the destination would append to the source's
    "log-swtpm": "/var/log/swtpm",
}


def host_uuid(name: str) -> str:
    """Stable, distinct libvirt host UUID per host name (libvirt refuses to migrate to 'itself')."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://hvfleet.github.io/lab/host/{name}"))


def libvirtd_conf(name: str, addr: str) -> str:
    return f"""# hvfleet lab libvirtd for {name}. LAB ONLY: unauthenticated TCP is never a production setting.
listen_tcp = 1
listen_tls = 1
listen_addr = "{addr}"
tcp_port = "{LIBVIRT_TCP_PORT}"
tls_port = "{LIBVIRT_TLS_PORT}"
auth_tcp = "none"  # LAB ONLY
auth_tls = "none"  # the TLS client certificate (signed by the lab CA) is the authentication
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
host_uuid = "{host_uuid(name)}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
keepalive_interval = 5
keepalive_count = 5
max_clients = 64
"""


def qemu_conf() -> str:
    """qemu.conf of a lab host. swtpm (emulated TPMs) runs as qemu.conf's default swtpm_user 'tss', which
    swtpm-tools creates on Debian 12 and 13; libvirt makes its state (/var/lib/libvirt/swtpm) and log
    directories that user's."""
    return """# hvfleet lab: settings that work without systemd/virtlogd, as root, under TCG.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
stdio_handler = "file"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
default_tls_x509_cert_dir = "/etc/pki/qemu"
default_tls_x509_verify = 1
migrate_tls_x509_cert_dir = "/etc/pki/qemu"
migrate_tls_x509_verify = 1
"""


def sshd_config(addr: str, hostdir: Path, authorized_keys: Path) -> str:
    return f"""# hvfleet lab sshd (key-only root login on the lab address)
ListenAddress {addr}:22
HostKey {hostdir}/sshd/ssh_host_ed25519_key
PidFile {hostdir}/sshd/sshd.pid
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# LAB_ROOT sits under /var/tmp (world-writable), which StrictModes would reject.
StrictModes no
Subsystem sftp internal-sftp
AcceptEnv LANG LC_*
LogLevel INFO
"""


def ensure_ssh_key(root: Path) -> Path:
    key = root / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hvfleet-lab", "-f", str(key)],
            check=True,
            capture_output=True,
        )
    return key


def hostdir(root: Path, name: str) -> Path:
    return root / "hosts" / name


def prepare_dirs(root: Path, name: str, addr: str, note_dir, gen_root: str | None = None) -> list[tuple[str, str]]:
    """Create and seed the host's private dirs; return the (source, target) bind list.

    `note_dir(path)` is called before creating a mountpoint outside LAB_ROOT (so `down` can
    remove it again); existing system directories are never touched. With `gen_root` (the cached
    Debian 13 root of a generation-2 host) the targets are paths inside that root: the holder
    creates them in the host's overlay, and the host's libvirt configuration starts from the
    root's /etc/libvirt rather than the machine's.
    """
    hd = hostdir(root, name)
    binds = []
    for sub, target in PRIVATE_DIRS.items():
        src = hd / sub
        if sub == "etc-libvirt" and not src.exists():
            shutil.copytree(os.path.join(gen_root, "etc/libvirt") if gen_root else "/etc/libvirt", src, symlinks=True)
            # no default NAT network (it would want dnsmasq and a virbr0 in every host)
            for p in (src / "qemu" / "networks").rglob("default.xml"):
                p.unlink()
        src.mkdir(parents=True, exist_ok=True)
        if not gen_root and not os.path.isdir(target):
            note_dir(target)
            os.makedirs(target, exist_ok=True)
        binds.append((str(src), target))
    if gen_root:
        # what the host's daemons and guests reach by absolute path: LAB_ROOT (configs, logs, keys,
        # consoles) and the guest image cache; both at the same path as outside
        image_cache = Path(GUEST_IMAGE_CACHE)
        image_cache.mkdir(parents=True, exist_ok=True)
        binds += [(str(root), str(root)), (str(image_cache), str(image_cache))]
    (hd / "lib-libvirt" / "images").mkdir(exist_ok=True)
    (hd / "etc-libvirt" / "libvirtd.conf").write_text(libvirtd_conf(name, addr))
    (hd / "etc-libvirt" / "qemu.conf").write_text(qemu_conf())
    tls.install_host_pki(root / "pki", name, addr, hd / "pki")
    sshd = hd / "sshd"
    sshd.mkdir(exist_ok=True)
    if not (sshd / "ssh_host_ed25519_key").exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshd / "ssh_host_ed25519_key")],
            check=True,
            capture_output=True,
        )
    (sshd / "sshd_config").write_text(sshd_config(addr, hd, ensure_ssh_key(root).with_suffix(".pub")))
    (hd / "logs").mkdir(exist_ok=True)
    return binds


# ---------------------------------------------------------------------------------------------
# The holder


def root_mounts(root: Path, name: str, gen_root: str) -> dict:
    """The overlay a generation-2 host runs in: the cached root below, the host's own dirs above."""
    hd = hostdir(root, name)
    layout = {
        "lower": gen_root,
        "upper": str(hd / "root-upper"),
        "work": str(hd / "root-work"),
        "mnt": rootfs(root, name),
    }
    for key in ("upper", "work", "mnt"):
        os.makedirs(layout[key], exist_ok=True)
    return layout


def rootfs(root: Path, name: str) -> str:
    """Where a generation-2 host's root is mounted (inside the host's mount namespace only)."""
    return str(hostdir(root, name) / "rootfs")


def start_holder(
    root: Path, name: str, binds: list[tuple[str, str]], hostname: str, on_started=None, gen_root: str | None = None
) -> dict:
    """Start the holder inside the host's network namespace; returns its process record once its
    mounts are in place and its socket answers. `on_started(record)` is called as soon as it runs."""
    hd = hostdir(root, name)
    hd.mkdir(parents=True, exist_ok=True)
    (hd / "logs").mkdir(exist_ok=True)
    sock = hd / "holder.sock"
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    cfg = {"hostname": hostname, "binds": binds, "sock": str(sock)}
    if gen_root:
        cfg["root"] = root_mounts(root, name, gen_root)
    cmd = [
        "ip",
        "netns",
        "exec",
        netns.netns_name(name),
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        SYSTEM_PYTHON,
        str(HOLDER),
        json.dumps(cfg),
    ]
    with open(hd / "logs" / "holder.log", "ab") as log:
        # ip netns exec and unshare exec (no fork): the pid we get is the holder's pid.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    if on_started:  # record the pid before waiting: a run killed now still knows what to stop
        on_started(proc_record(proc.pid))
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"holder for {name} exited ({proc.returncode}); see {hd / 'logs' / 'holder.log'}")
        with contextlib.suppress(OSError, ValueError):
            if holder_call(sock, {"op": "ping"}, timeout=1).get("pid") == proc.pid:
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"holder for {name} did not come up; see {hd / 'logs' / 'holder.log'}")
        time.sleep(0.02)
    # The holder outlives this process; the subprocess module must not try to wait for it.
    proc.returncode = 0
    return proc_record(proc.pid)


def holder_call(sock: Path, req: dict, timeout: float = 10) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def in_root(argv: list[str], chroot: str | None) -> list[str]:
    """argv run inside a generation-2 host's root (`chroot` execs, so the pid stays the daemon's)."""
    return ["/usr/sbin/chroot", chroot, *argv] if chroot else argv


def spawn(root: Path, name: str, argv: list[str], log: Path, chroot: str | None = None) -> dict:
    """Start a daemon inside the host (as a child of its holder); returns its process record."""
    argv = in_root(argv, chroot)
    reply = holder_call(hostdir(root, name) / "holder.sock", {"op": "spawn", "argv": argv, "log": str(log)})
    if not reply.get("ok"):
        raise RuntimeError(f"cannot start {argv[0]} in {name}: {reply.get('error')}")
    return proc_record(reply["pid"])


def nsenter_argv(holder: dict, argv: list[str], chroot: str | None = None) -> list[str]:
    """Command line that runs argv inside a lab host (its network, mount and UTS namespaces, and
    the root of a generation-2 host)."""
    return ["nsenter", "-t", str(holder["pid"]), "--mount", "--uts", "--net", "--", *in_root(argv, chroot)]


# ---------------------------------------------------------------------------------------------
# Daemons


def start_libvirtd(root: Path, name: str, chroot: str | None = None) -> dict:
    log = hostdir(root, name) / "logs" / "libvirtd.out"
    argv = [
        "/usr/sbin/libvirtd",
        "--listen",
        "--config",
        "/etc/libvirt/libvirtd.conf",
        "--pid-file",
        "/run/libvirt/libvirtd.pid",
    ]
    return spawn(root, name, argv, log, chroot)


def start_sshd(root: Path, name: str, chroot: str | None = None) -> dict:
    hd = hostdir(root, name)
    argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(hd / "sshd" / "sshd_config")]
    return spawn(root, name, argv, hd / "logs" / "sshd.log", chroot)


def libvirt_uri(addr: str) -> str:
    return f"qemu+tcp://{addr}/system"


def tls_uri(root: Path, addr: str) -> str:
    return f"qemu+tls://{addr}/system?pkipath={root / 'pki' / 'controller'}"


def _quiet_libvirt():
    import libvirt

    libvirt.registerErrorHandler(lambda *_: None, None)
    return libvirt


def tcp_open(addr: str, port: int, timeout: float = 1) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=timeout):
            return True
    except OSError:
        return False


def libvirt_ready(addr: str) -> bool:
    """libvirtd answers an API call over TCP (checked for a listening port first: libvirt's own
    connect has no timeout and would hang on an unreachable address)."""
    if not tcp_open(addr, LIBVIRT_TCP_PORT):
        return False
    libvirt = _quiet_libvirt()
    try:
        conn = libvirt.open(libvirt_uri(addr))
    except libvirt.libvirtError:
        return False
    try:
        conn.getHostname()
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def port_open(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=1) as s:
            s.settimeout(1)
            return s.recv(4).startswith(b"SSH")
    except OSError:
        return False


def wait_ready(root: Path, name: str, rec: dict, what: str, check, timeout: float = 60) -> None:
    """Poll `check()` until it is true; fail early (with the log tail) if the daemon died."""
    deadline = time.monotonic() + timeout
    while not check():
        if not alive(rec):
            raise RuntimeError(f"{what} on {name} died during start-up:\n{log_tail(root, name, what)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} on {name} not ready after {timeout:.0f}s:\n{log_tail(root, name, what)}")
        time.sleep(0.05)


def log_tail(root: Path, name: str, what: str, lines: int = 15) -> str:
    hd = hostdir(root, name)
    files = {
        "libvirtd": [hd / "logs" / "libvirtd.out", hd / "log-libvirt" / "libvirtd.log"],
        "sshd": [hd / "logs" / "sshd.log"],
    }.get(what, [])
    out = []
    for f in files:
        with contextlib.suppress(OSError):
            out.append(f"--- {f}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(out)


PIDFILES = {"libvirtd": "run-libvirt/libvirtd.pid", "sshd": "sshd/sshd.pid"}


def stop_unrecorded(root: Path, name: str, what: str, netns_inode: int | None) -> int | None:
    """Stop a daemon a killed run started but had no time to record: found by the pid file the
    daemon itself wrote in the host's private dirs, checked to be that program inside this host's
    network namespace. Returns the pid stopped, if any."""
    try:
        pid = int((hostdir(root, name) / PIDFILES[what]).read_text().split()[0])
        exe = os.readlink(f"/proc/{pid}/exe")
        ns = os.stat(f"/proc/{pid}/ns/net").st_ino
    except (OSError, ValueError, IndexError):
        return None
    if os.path.basename(exe) != what or not netns_inode or ns != netns_inode:
        return None
    rec = proc_record(pid)
    kill_record(rec)
    return pid


def stop(rec: dict | None) -> bool:
    return kill_record(rec)


def processes_in_netns(inode: int | None) -> list[int]:
    """Pids of processes whose network namespace is the one (by inode) the lab created."""
    if not inode:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                found.append(int(entry))
    return found


if __name__ == "__main__":  # pragma: no cover - debugging aid
    print(libvirtd_conf(sys.argv[1], netns.host_addr(sys.argv[1])))
