# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The decisions of the rolling_upgrade role, as filters: which kernel packages to upgrade, whether a host
needs its reboot, and whether a host is already done (so that a rerun skips it).

Pure functions over what the role reads on the host (facts, /boot, the distribution's reboot hints, the
cordon, the role's marker file); no Ansible state, so each rule is unit-tested.
"""

from __future__ import annotations

import os
import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

# Debian's name for the architecture in its kernel metapackage (linux-image-<arch>).
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64el", "s390x": "s390x", "i386": "686",
               "i686": "686", "armv7l": "armmp"}


def kernel_packages(facts):
    """The packages that bring a newer kernel, from the host's facts (pkg_mgr, distribution, architecture)."""
    pkg_mgr = facts.get("pkg_mgr")
    if pkg_mgr in ("dnf", "dnf5"):
        return ["kernel"]
    if pkg_mgr != "apt":
        return []
    if facts.get("distribution") == "Ubuntu":
        return ["linux-image-generic"]
    arch = DEBIAN_ARCH.get(facts.get("architecture"))
    if arch is None:
        raise AnsibleFilterError(
            f"no Debian kernel package known for the architecture {facts.get('architecture')!r}; "
            "set rolling_upgrade_packages (for example [linux-image-arm64]).")
    return [f"linux-image-{arch}"]


def kernel_version(release):
    """The numeric version of a kernel release, to compare releases: its leading numbers, up to the first word.

    6.1.0-18-amd64 -> (6, 1, 0, 18); 5.14.0-427.13.1.el9_4.x86_64 -> (5, 14, 0, 427, 13, 1); so the flavour
    (amd64, cloud-amd64, +debug) never makes one release newer than another.
    """
    numbers = []
    for part in re.findall(r"\d+|[A-Za-z]+", release):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def _release(path):
    name = os.path.basename(str(path))
    return name[len("vmlinuz-"):] if name.startswith("vmlinuz-") else name


def reboot_needed(running, installed=(), reboot_required=False, needs_restarting_rc=None, always=False, asked=None,
                  custom_step=False):
    """Whether the host needs a reboot, and why: {needed, reason, running, newest}.

    running: the running kernel release (uname -r); installed: the installed kernels (/boot/vmlinuz-* paths or
    releases; rescue images are ignored); reboot_required: /var/run/reboot-required exists (Debian, Ubuntu);
    needs_restarting_rc: the exit code of `needs-restarting -r` (1: reboot needed; anything else: no hint);
    always: rolling_upgrade_reboot is always; asked: rolling_upgrade_reboot_needed as a custom upgrade step set
    it (None: not set); custom_step: the upgrade step is a custom task file (which, when it does not say, gets
    its reboot: the role cannot tell what it changed).
    """
    releases = [_release(p) for p in installed or () if "rescue" not in _release(p)]
    newest = max(releases, key=kernel_version, default=None)
    reasons = []
    if always:
        reasons.append("rolling_upgrade_reboot is always")
    if asked is not None and boolean(asked, strict=False):
        reasons.append("the upgrade step asked for it (rolling_upgrade_reboot_needed)")
    elif asked is None and custom_step:
        reasons.append("the upgrade step is a custom one that does not say whether it needs one "
                       "(rolling_upgrade_reboot_needed)")
    if newest is not None and kernel_version(newest) > kernel_version(running):
        reasons.append(f"kernel {newest} is installed but {running} runs")
    if boolean(reboot_required, strict=False):
        reasons.append("the system asks for it (/var/run/reboot-required)")
    if needs_restarting_rc is not None and int(needs_restarting_rc) == 1:
        reasons.append("needs-restarting -r says so")
    reason = "; ".join(reasons) or f"it runs {running}, the newest kernel installed"
    return {"needed": bool(reasons), "reason": reason, "running": running, "newest": newest}


def upgrade_done(cordoned, marker=None, pending=None, reboot=None):
    """Whether a host is already done, so that the role leaves it alone: {done, reason}.

    cordoned: the host is cordoned; marker: the role's marker file on the host (a dict with `state` started or
    done), None when there is none; pending: the upgrade step has work (None: unknown - a custom step without
    rolling_upgrade_pending_tasks, which always runs); reboot: reboot_needed() of the host as it is.
    """
    def todo(reason):
        return {"done": False, "reason": reason}

    if boolean(cordoned, strict=False):
        return todo("it is cordoned (in maintenance, or an earlier run stopped on it)")
    if isinstance(marker, dict) and marker.get("state") == "started":
        return todo(f"an earlier run started on it ({marker.get('reason', '')}, {marker.get('at', '?')}) and did "
                    "not finish")
    if pending is None:
        return todo("the upgrade step is a custom one without rolling_upgrade_pending_tasks: it always runs")
    if boolean(pending, strict=False):
        return todo("the upgrade step has work to do")
    if reboot is not None and reboot.get("needed"):
        return todo(f"it needs a reboot: {reboot['reason']}")
    running = f"; {reboot['reason']}" if reboot is not None else ""
    return {"done": True, "reason": f"in service, nothing to upgrade{running}"}


class FilterModule:
    def filters(self):
        return {"kernel_packages": kernel_packages, "reboot_needed": reboot_needed, "upgrade_done": upgrade_done}
