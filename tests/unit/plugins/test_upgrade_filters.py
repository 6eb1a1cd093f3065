"""The rolling_upgrade role's decisions: kernel packages per distribution, reboot only when needed, skip hosts
already done."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.hvfleet.drain.plugins.filter.upgrade import (
    FilterModule,
    kernel_packages,
    kernel_version,
    reboot_needed,
    upgrade_done,
)


@pytest.mark.parametrize(("facts", "packages"), [
    ({"pkg_mgr": "apt", "distribution": "Debian", "architecture": "x86_64"}, ["linux-image-amd64"]),
    ({"pkg_mgr": "apt", "distribution": "Debian", "architecture": "aarch64"}, ["linux-image-arm64"]),
    ({"pkg_mgr": "apt", "distribution": "Ubuntu", "architecture": "x86_64"}, ["linux-image-generic"]),
    ({"pkg_mgr": "dnf", "distribution": "RedHat", "architecture": "x86_64"}, ["kernel"]),
    ({"pkg_mgr": "dnf5", "distribution": "Fedora", "architecture": "aarch64"}, ["kernel"]),
    ({"pkg_mgr": "zypper", "distribution": "SLES", "architecture": "x86_64"}, []),
])
def test_kernel_packages_follow_the_package_manager(facts, packages):
    assert kernel_packages(facts) == packages


def test_kernel_packages_of_an_unknown_debian_architecture_ask_for_the_setting():
    with pytest.raises(AnsibleFilterError, match="set rolling_upgrade_packages"):
        kernel_packages({"pkg_mgr": "apt", "distribution": "Debian", "architecture": "riscv64"})


@pytest.mark.parametrize(("newer", "older"), [
    ("6.1.0-18-amd64", "6.1.0-9-amd64"),  # numerically, not as text
    ("6.10.1-1-amd64", "6.9.12-1-amd64"),
    ("5.14.0-427.13.1.el9_4.x86_64", "5.14.0-362.8.1.el9_3.x86_64"),
    ("5.14.0-427.13.1.el9_4.x86_64", "5.14.0-427.el9.x86_64"),
    ("6.11.4-301.fc41.x86_64", "6.10.12-200.fc40.x86_64"),
])
def test_kernel_versions_compare_numerically(newer, older):
    assert kernel_version(newer) > kernel_version(older)


@pytest.mark.parametrize(("a", "b"), [
    ("6.1.0-18-amd64", "6.1.0-18-cloud-amd64"),
    ("5.14.0-427.el9.x86_64", "5.14.0-427.el9.x86_64+debug"),
])
def test_the_flavour_never_makes_a_kernel_newer(a, b):
    assert kernel_version(a) == kernel_version(b)


def test_reboot_needed_when_a_newer_kernel_is_installed():
    installed = ["/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-18-amd64", "/boot/vmlinuz-6.1.0-17-amd64"]
    result = reboot_needed("6.1.0-17-amd64", installed)
    assert result == {"needed": True, "reason": "kernel 6.1.0-18-amd64 is installed but 6.1.0-17-amd64 runs",
                      "running": "6.1.0-17-amd64", "newest": "6.1.0-18-amd64"}


def test_no_reboot_when_the_newest_kernel_runs():
    installed = ["/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-18-amd64",
                 "/boot/vmlinuz-0-rescue-0123456789abcdef0123456789abcdef"]
    result = reboot_needed("6.1.0-18-amd64", installed)
    assert not result["needed"]
    assert result["reason"] == "it runs 6.1.0-18-amd64, the newest kernel installed"
    # a running kernel newer than every installed one (its package removed) needs no reboot either
    assert not reboot_needed("6.1.0-19-amd64", installed)["needed"]
    assert not reboot_needed("6.1.0-19-amd64", [])["needed"]


def test_reboot_needed_when_the_distribution_says_so():
    running = "5.14.0-427.el9.x86_64"
    assert reboot_needed(running, [running], needs_restarting_rc=1) == {
        "needed": True, "reason": "needs-restarting -r says so", "running": running, "newest": running}
    assert not reboot_needed(running, [running], needs_restarting_rc=0)["needed"]
    assert not reboot_needed(running, [running], needs_restarting_rc=2)["needed"]  # no such command: no hint
    assert reboot_needed("6.1.0-18-amd64", reboot_required=True)["reason"] == (
        "the system asks for it (/var/run/reboot-required)")


def test_reboot_asked_by_the_step_or_forced():
    running = "6.1.0-18-amd64"
    assert reboot_needed(running, [running], always=True)["reason"] == "rolling_upgrade_reboot is always"
    assert reboot_needed(running, [running], asked=True, custom_step=True)["needed"]
    assert not reboot_needed(running, [running], asked="false", custom_step=True)["needed"]
    # a custom step that does not say gets its reboot (the role cannot tell what it changed); the built-in not
    unsaid = reboot_needed(running, [running], custom_step=True)
    assert unsaid["needed"] and "custom one that does not say" in unsaid["reason"]
    assert not reboot_needed(running, [running])["needed"]


NO_REBOOT = {"needed": False, "reason": "it runs 6.1.0-18-amd64, the newest kernel installed"}


def test_a_host_in_service_with_nothing_to_do_is_done():
    assert upgrade_done(False, marker={"state": "done"}, pending=False, reboot=NO_REBOOT) == {
        "done": True, "reason": "in service, nothing to upgrade; it runs 6.1.0-18-amd64, the newest kernel installed"}
    assert upgrade_done(False, marker=None, pending=False, reboot=NO_REBOOT)["done"]


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"cordoned": True}, "it is cordoned"),
    ({"marker": {"state": "started", "reason": "CHG-1", "at": "2025-06-01T22:00:00Z"}},
     "an earlier run started on it (CHG-1, 2025-06-01T22:00:00Z) and did not finish"),
    ({"pending": None}, "the upgrade step is a custom one without rolling_upgrade_pending_tasks: it always runs"),
    ({"pending": True}, "the upgrade step has work to do"),
    ({"reboot": {"needed": True, "reason": "kernel X is installed but Y runs"}},
     "it needs a reboot: kernel X is installed but Y runs"),
])
def test_a_host_is_not_done_while_anything_is_left(kwargs, reason):
    state = {"cordoned": False, "marker": {"state": "done"}, "pending": False, "reboot": NO_REBOOT, **kwargs}
    result = upgrade_done(state.pop("cordoned"), **state)
    assert not result["done"]
    assert result["reason"].startswith(reason)


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {"kernel_packages", "reboot_needed", "upgrade_done"}
