"""A drain that ends not_empty (VMs left by on_unmigratable: leave): the summary counts them and the
closing message names them, says the host must not be rebooted and gives each one's fix (drain/report.py)."""

from ansible_collections.hvfleet.drain.plugins.module_utils.drain import report
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult

LEFT = [{"vm": "odd", "policy": "pinned", "live_blockers": ["ivshmem-plain"],
         "why": "cannot live-migrate (ivshmem-plain); it keeps running on hv1",
         "fix": "hv1 must not be rebooted while 'odd' runs on it: shut 'odd' down for the maintenance"},
        {"vm": "pci", "policy": "pinned", "live_blockers": ["hostdev"], "why": "cannot live-migrate (hostdev)",
         "fix": "shut 'pci' down."}]


def result_of(state, left=None, vms=None):
    result = DrainResult(action="drain", host="hv1", state=state)
    result.left = [dict(one) for one in (LEFT if left is None else left)]
    result.vms = vms if vms is not None else [{"vm": "plain", "ok": True, "kind": "live"}]
    result.summary = report.summary(result, 0)
    return result


def close(result):
    return report.closing_message(result, "hv1", cancelled=False, stopped_after=None, max_failures=1,
                                  window_closed=False)


def test_the_summary_counts_the_vms_left_on_the_host():
    assert report.summary(result_of("not_empty"), 0)["left"] == 2
    assert report.summary(result_of("drained", left=[]), 0)["left"] == 0


def test_not_empty_names_the_vms_left_says_it_must_not_be_rebooted_and_gives_each_fix():
    message = close(result_of("not_empty"))
    assert message.startswith("drain of hv1: 1 moved, 0 failed, 0 blocked, 0 not started, 2 left on hv1; ")
    assert "hv1 is NOT empty: 2 VM(s) left running on it by policy (on_unmigratable: leave): odd, pci" in message
    assert "a rolling upgrade will refuse to upgrade and reboot hv1" in message and "do not reboot hv1" in message
    assert "odd: cannot live-migrate (ivshmem-plain); it keeps running on hv1; fix: hv1 must not be rebooted" in message
    assert "pci: cannot live-migrate (hostdev); fix: shut 'pci' down" in message
    assert message.endswith("fix: shut 'pci' down; hv1 stays cordoned")
    assert "is empty" not in message.replace("NOT empty", "")


def test_a_failed_drain_with_vms_left_still_says_the_host_is_not_empty():
    failed = [{"vm": "broken", "ok": False, "message": "did not converge", "recovery": "raise the deadline"}]
    message = close(result_of("failed", vms=failed))
    assert "broken: did not converge Recovery: raise the deadline" in message
    assert "hv1 is NOT empty" in message and "fix: shut 'pci' down" in message


def test_without_vms_left_the_messages_do_not_change():
    drained = close(result_of("drained", left=[]))
    assert drained == "drain of hv1: 1 moved, 0 failed, 0 blocked, 0 not started; hv1 is empty and stays cordoned."
    assert report.left_lines(result_of("failed", left=[]), "hv1") == []
