"""bindep.txt: valid lines, rpm entries next to the dpkg ones, and scripts/setup still installs the dpkg ones."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LINE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9+._-]*) "
                  r"\[platform:(?P<platform>dpkg|rpm)(?: (?P<profile>compile|test))?\]$")


def entries():
    found = []
    for number, line in enumerate((REPO / "bindep.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"bindep.txt:{number}: {line!r} is not 'name [platform:dpkg|rpm (compile|test)]'"
        found.append((match["name"], match["platform"], match["profile"] or "runtime"))
    return found


def test_every_profile_has_rpm_entries_next_to_the_dpkg_ones():
    by_platform = {}
    for name, platform, profile in entries():
        by_platform.setdefault(platform, {}).setdefault(profile, set()).add(name)
    assert set(by_platform["rpm"]) == set(by_platform["dpkg"]) == {"runtime", "compile", "test"}
    assert {"python3-libvirt", "python3-jsonschema"} <= by_platform["rpm"]["runtime"]
    assert "libvirt-devel" in by_platform["rpm"]["compile"]


def test_scripts_setup_installs_exactly_the_dpkg_entries():
    setup = (REPO / "scripts" / "setup").read_text()
    program = re.search(r"awk '([^']+)' bindep\.txt", setup).group(1)
    selected = subprocess.run(["awk", program, "bindep.txt"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.split()
    assert selected == [name for name, platform, _profile in entries() if platform == "dpkg"]
    assert "libvirt-devel" not in selected and "libvirt-dev" in selected
