"""The controller side on Debian 13's Python: a venv inside a cached Debian 13 root, with the newest
ansible-core that Python admits, running the controller-side unit tests of this checkout.

    python3 tests/lab/hvlab/controller.py [--ansible-core SPEC] [-- pytest arguments]

As root. The root (`rootfs.ensure_root(packages=CONTROLLER_PACKAGES)`: Python, venv, git, CA
certificates) is built once with mmdebstrap and cached like the hosts' root; the venv lives in
/var/cache/hvfleet-lab/controller/venv-<key>/ (key: the root and the requirements), so a second run
only runs the tests. Each run happens in a private mount namespace: an overlay of the root (writes
thrown away), /proc, /sys, /dev and the checkout bound in at the same path, then chroot. Without
pytest arguments it runs the selection tox.ini's environments run (read from tox.ini).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hvlab import rootfs  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
CACHE = Path("/var/cache/hvfleet-lab/controller")
CONTROLLER_PACKAGES = ("python3", "python3-venv", "git", "ca-certificates")
VENV_MOUNT = "/opt/hvfleet-venv"


def tox_selection(tox_ini: Path) -> tuple[list[str], list[str]]:
    """(deps without the ansible-core pin, pytest arguments) of tox.ini's [testenv]."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(tox_ini)
    deps = [d.strip() for d in cfg["testenv"]["deps"].splitlines() if d.strip() and ":" not in d.split("==")[0]]
    commands = cfg["testenv"]["commands"]
    start = commands.index("{posargs:", commands.index("pytest")) + len("{posargs:")
    inner = commands[start : commands.index("}", start)]
    tests = [t for t in inner.replace("\\", " ").split() if t]
    return deps, tests


def venv_key(root: rootfs.HostRoot, ansible_core: str, deps: list[str]) -> str:
    return hashlib.sha256(f"{root.path}\0{ansible_core}\0{' '.join(sorted(deps))}".encode()).hexdigest()[:16]


def inner_script(venv: str, ansible_core: str, deps: list[str], pytest_args: list[str]) -> str:
    """What runs inside the chroot: build the venv once, then the tests from the checkout."""
    pip = f"{venv}/bin/python -m pip install -q --disable-pip-version-check"
    return f"""set -e
cd {shlex.quote(str(REPO))}
if [ ! -x {venv}/bin/python ] || [ ! -f {venv}/.complete ]; then
  rm -rf {venv}/* {venv}/.complete
  python3 -m venv --system-site-packages {venv}
  {pip} {shlex.quote(ansible_core)} {" ".join(shlex.quote(d) for d in deps)}
  touch {venv}/.complete
fi
{venv}/bin/python -c 'import sys, ansible; print("Python", sys.version.split()[0], "ansible-core", ansible.__version__)'
export PYTHONDONTWRITEBYTECODE=1
exec {venv}/bin/python -m pytest -p no:cacheprovider -q {" ".join(shlex.quote(a) for a in pytest_args)}
"""


def run(ansible_core: str, pytest_args: list[str]) -> int:
    deps, selection = tox_selection(REPO / "tox.ini")
    root = rootfs.ensure_root(cache_root=str(CACHE / "roots"), packages=CONTROLLER_PACKAGES)
    venv_dir = CACHE / f"venv-{venv_key(root, ansible_core, deps)}"
    venv_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hvlab-controller-") as tmp:
        mnt, upper, work = (Path(tmp) / d for d in ("mnt", "upper", "work"))
        for d in (mnt, upper, work):
            d.mkdir()

        def target(path: object) -> str:
            return shlex.quote(str(mnt) + str(path))

        setup = [
            f"mount -t overlay hvlab-ctl -o lowerdir={root.path},upperdir={upper},workdir={work} {mnt}",
            *(f"mount --rbind /{fs} {mnt}/{fs}" for fs in ("proc", "sys", "dev")),
            f"cp /etc/resolv.conf {mnt}/etc/resolv.conf",
            # the machine's CA certificates, so pip in the root trusts what pip on the machine trusts
            f"mount --bind -o ro /etc/ssl/certs {mnt}/etc/ssl/certs",
            f"mkdir -p {target(REPO)} {target(VENV_MOUNT)}",
            f"mount --bind {shlex.quote(str(REPO))} {target(REPO)}",
            f"mount --bind {shlex.quote(str(venv_dir))} {target(VENV_MOUNT)}",
        ]
        script = inner_script(VENV_MOUNT, ansible_core, deps, pytest_args or selection)
        outer = " && ".join(setup) + f" && exec chroot {mnt} /bin/sh -c {shlex.quote(script)}"
        # the mounts live in the private namespace only and go with it
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", outer],
                              check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--ansible-core", default="ansible-core", help="pip requirement (default: the newest)")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("controller.py: run as root (mount namespace, chroot)", file=sys.stderr)
        return 2
    return run(args.ansible_core, args.pytest_args)


if __name__ == "__main__":
    sys.exit(main())
