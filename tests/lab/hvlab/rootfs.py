"""The root file system of a second-generation lab host: Debian 13 ("trixie", libvirt 11, QEMU 10).

A generation-2 host runs its libvirtd, its sshd and its guests' QEMU chrooted into a Debian 13 root
(see hosts.py); everything else about the host (namespaces, addresses, NBD storage, shaping,
faults) is the same as for a generation-1 host, which runs the machine's own Debian 12 binaries.

`ensure_root()` builds the root once with mmdebstrap from Debian packages and caches it under
/var/cache/hvfleet-lab/roots/<key>/, where <key> hashes the suite, the package list and the way
the root is assembled. mmdebstrap keeps its own apt configuration inside the root it builds: the
trixie source never touches the machine's apt sources. Layout of the cache root:
    <key>/rootfs/, <key>/root.json      one complete root per key (root.json: suite, versions)
    .build-*/                           builds in progress (renamed into place when complete)
    .lock                               one builder at a time (flock), as for the guest image

Hosts never write into the cached root: each mounts it as the lower layer of an overlay whose
upper layer is in the host's own directory under LAB_ROOT (gone with the host).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE_ROOT = "/var/cache/hvfleet-lab/roots"
SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What a generation-2 host needs inside its root: the daemons, QEMU, the Python the collection's
# modules run under on the host (with libvirt-python and jsonschema), and sshd for Ansible.
PACKAGES = (
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-daemon-driver-secret",  # the drain keeps its capacity ledger in libvirt secrets
    "libvirt-daemon-driver-storage",  # storage pools (local disks; NVRAM and TPM state carried by volume streams)
    "libvirt-clients",
    "qemu-system-x86",
    "ovmf",  # UEFI guests (OVMF firmware and its NVRAM template)
    "swtpm",  # emulated TPMs
    "swtpm-tools",  # swtpm_setup, which libvirt runs to create a TPM's state
    "python3-libvirt",
    "python3-jsonschema",
    "openssh-server",
    "iproute2",
)
# Bump when the way the root is assembled changes (it is part of the cache key).
ROOT_FORMAT = "3"
GENERATIONS = {1: "Debian 12 (the machine's own libvirt and QEMU)", 2: f"Debian 13 {SUITE} root (libvirt 11, QEMU 10)"}


class RootError(RuntimeError):
    """The generation-2 root cannot be built; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class HostRoot:
    path: str  # the root file system (lower layer of each host's overlay)
    suite: str
    libvirt_version: str
    qemu_version: str


def cache_key(suite: str, packages: tuple[str, ...], mirror: str) -> str:
    """Hash of everything a root is made of; any change gives a different key."""
    h = hashlib.sha256(f"hvlab-root-{ROOT_FORMAT}\0{suite}\0{mirror}\0".encode())
    for pkg in sorted(packages):
        h.update(pkg.encode() + b"\0")
    return f"{suite}-{h.hexdigest()[:16]}"


def mirror_from_sources(text: str) -> str | None:
    """The first Debian archive URI in apt sources text (deb822 or one-line format), or None."""
    for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
        uri = match.group(1).rstrip("/")
        if uri.startswith(("http://", "https://")) and "security" not in uri and uri.endswith("/debian"):
            return uri
    return None


def default_mirror() -> str:
    """HVLAB_DEBIAN_MIRROR, else the Debian mirror the machine's apt already uses (read only)."""
    if os.environ.get("HVLAB_DEBIAN_MIRROR"):
        return os.environ["HVLAB_DEBIAN_MIRROR"].rstrip("/")
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.suffix in (".list", ".sources") or path.name == "sources.list":
            with contextlib.suppress(OSError):
                texts.append(path.read_text())
    return mirror_from_sources("\n".join(texts)) or DEFAULT_MIRROR


def dpkg_version(status_text: str, package: str) -> str | None:
    """Version of an installed package in a dpkg status file's text."""
    for stanza in status_text.split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", stanza, re.MULTILINE) and "install ok installed" in stanza:
            match = re.search(r"^Version: (\S+)$", stanza, re.MULTILINE)
            if match:
                return match.group(1)
    return None


def _root_from(keydir: Path) -> HostRoot | None:
    try:
        meta = json.loads((keydir / "root.json").read_text())
        if not (keydir / "rootfs" / "usr" / "bin" / "python3").exists():
            return None
        return HostRoot(str(keydir / "rootfs"), meta["suite"], meta["libvirt_version"], meta["qemu_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_root(
    cache_root: str = DEFAULT_CACHE_ROOT, mirror: str | None = None, packages: tuple[str, ...] = PACKAGES
) -> HostRoot:
    """Return the cached Debian 13 root with `packages`, building it first if needed (root, network to the
    mirror). The default packages make a lab host; controller.py asks for a controller's."""
    root = Path(cache_root)
    mirror = mirror or default_mirror()
    key = cache_key(SUITE, packages, mirror)
    found = _root_from(root / key)
    if found:
        return found
    if shutil.which("mmdebstrap") is None:
        raise RootError("mmdebstrap is not installed: run scripts/setup (or: apt-get install mmdebstrap)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RootError(f"cannot create the root cache {root}: {exc} (run as root)") from exc
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait, then find it built
        found = _root_from(root / key)
        if found:
            return found
        return _build(root, key, mirror, packages)


def _build(root: Path, key: str, mirror: str, packages: tuple[str, ...]) -> HostRoot:
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        target = build / "rootfs"
        cmd = [
            "mmdebstrap",
            "--quiet",
            "--variant=apt",
            "--include=" + ",".join(packages),
            # each host has its own sshd host key (hosts.py): none is shared through the cache
            '--customize-hook=rm -f "$1/etc/ssh/ssh_host_"*',
            SUITE,
            str(target),
            f"deb {mirror} {SUITE} main",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            tail = "\n  ".join((res.stderr or res.stdout).strip().splitlines()[-8:])
            raise RootError(
                f"mmdebstrap of Debian {SUITE} from {mirror} failed ({res.returncode}):\n  {tail}\n"
                "(set HVLAB_DEBIAN_MIRROR to a reachable Debian mirror if this one is not)"
            )
        status = (target / "var" / "lib" / "dpkg" / "status").read_text()
        meta = {
            "suite": SUITE,
            "mirror": mirror,
            "packages": list(packages),
            "format": ROOT_FORMAT,
            "libvirt_version": dpkg_version(status, "libvirt-daemon") or "?",
            "qemu_version": dpkg_version(status, "qemu-system-x86") or "?",
        }
        (build / "root.json").write_text(json.dumps(meta, indent=1) + "\n")
        build.chmod(0o755)
        os.rename(build, root / key)  # atomic: the root appears complete or not at all
    finally:
        shutil.rmtree(build, ignore_errors=True)
    found = _root_from(root / key)
    if found is None:
        raise RootError(f"root build finished but {root / key} is incomplete; remove it and run again")
    return found


if __name__ == "__main__":
    print(ensure_root())
