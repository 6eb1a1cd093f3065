"""The molecule scenario extensions/molecule/drain: drain hv1 of the lab with the drain_host role, for real.

It brings the lab up and down itself (its create / destroy), so it leaves no lab behind; the next test
that needs the lab rebuilds it.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(2400)
def test_molecule_drain_scenario():
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", ANSIBLE_FORCE_COLOR="0",
               PY_COLORS="0", NO_COLOR="1")
    env.pop("ANSIBLE_CONFIG", None)  # molecule writes its own
    t0 = time.monotonic()
    res = subprocess.run([str(bindir / "molecule"), "test", "-s", "drain"], cwd=REPO / "extensions", env=env,
                         capture_output=True, text=True, timeout=2300, check=False)
    took = time.monotonic() - t0
    print(res.stdout[-20000:], res.stderr[-5000:], sep="\n")
    print(f"LAB-TIMING molecule test -s drain: {took:.1f}s")
    assert res.returncode == 0, "molecule test -s drain failed"
    out = res.stdout + res.stderr
    # the progress callback printed the guests as they moved, and idempotence held
    for guest in ("mol-idle", "mol-dirty", "mol-hot"):
        assert f"{guest} -> hv" in out and "moved in" in out, guest
    assert "Idempotence completed successfully" in out or "idempotence: Executed: Successful" in out
