"""Fixtures for tests on the lab: one lab per session, brought up on first use, torn down at the end.

The session takes the lab's use lock (hvlab/use_lock.py) before its first lab test and keeps it to the
end, through the lab's teardown, so a benchmark or another session never uses the lab at the same
time. `lab` calls `up` before every test that asks for it: a healthy lab is reused in well under a second,
and a lab that a previous test took down (the smoke test does) is rebuilt. VMs a test creates with
`make_vm` are removed wherever they ended up.
"""

import itertools
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOSTS = 3

if os.geteuid() != 0:
    raise pytest.UsageError("the lab integration tests need root (namespaces, libvirtd): run scripts/test as root")

from hvlab import Lab, VMSpec, use_lock  # noqa: E402  (tests/conftest.py puts tests/lab on sys.path)
from lab_helpers import reset_hosts  # noqa: E402

_used = {"lab": False, "lock": None}


@pytest.fixture(scope="session", autouse=True)
def lab_use_lock():
    """Held until the process ends (not closed at teardown: the lab is taken down after the fixtures)."""
    _used["lock"] = use_lock.acquire()


@pytest.fixture
def lab():
    lab = Lab()
    lab.up(hosts_count=HOSTS)
    _used["lab"] = True
    return lab


def pytest_sessionfinish(session, exitstatus):
    if _used["lab"] and not os.environ.get("HVLAB_KEEP"):
        Lab().down()


_serial = itertools.count(1)


@pytest.fixture
def make_vm(lab, request):
    """Start a VM with a unique name on a lab host; it is removed after the test, wherever it runs."""
    made = []

    def make(host="hv1", **knobs):
        name = f"t{os.getpid() % 1000}-{next(_serial)}"
        lab.vm_start(VMSpec(name=name, **knobs), host=host)
        made.append(name)
        return name

    yield make
    for name in made:
        lab.vm_rm(name)


@pytest.fixture
def clean_lab(lab):
    """The lab with no drain journal, progress, maintenance state or upgrade marker on any host."""
    reset_hosts(lab)
    yield lab
    reset_hosts(lab)
