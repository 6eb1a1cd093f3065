"""The steadier dirty rate: a longer sample only for guests whose decision depends on the rate."""

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import dirty_rate as D
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import forecast as F
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import FactsError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import VmInfo

MIB = F.MIB
LINK = 37.5e6  # the benchmark's 300 Mbit/s


class Dom:
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


def vm(name, memory, resident):
    return VmInfo(name, memory, 1, True, True, resident_mib=resident)


def test_an_idle_guest_decides_the_same_at_half_and_twice_its_rate():
    assert not D.vm_depends_on_rate(vm("idle", 256, 222), 2 * MIB, [LINK, LINK / 2])


def test_a_guest_near_the_link_rate_depends_on_it():
    # the benchmark's moderate guest (8 MiB/s) at half of 300 Mbit/s: pre-copy either way, but in ~10 s
    # at 4 MiB/s and ~53 s at 16 MiB/s
    assert D.vm_depends_on_rate(vm("warm", 256, 258), 8 * MIB, [LINK, LINK / 2])
    slow = F.forecast(256 * MIB, 4 * MIB, LINK / 2, transferable_ratio=130 / 256, dirty_working_set=130 * MIB)
    fast = F.forecast(256 * MIB, 16 * MIB, LINK / 2, transferable_ratio=130 / 256, dirty_working_set=130 * MIB)
    assert D.decision(slow) == D.decision(fast)
    assert fast.predicted_duration_s > 4 * slow.predicted_duration_s


def test_a_mode_that_flips_with_the_rate_is_open():
    def predict(rate):
        return F.forecast(1024 * MIB, rate, 50 * MIB, dirty_working_set=1024 * MIB)

    assert D.decision(predict(20 * MIB)) != D.decision(predict(80 * MIB))
    assert D.depends_on_rate(predict, 40 * MIB)


def test_a_guest_far_above_the_link_decides_the_same():
    assert not D.vm_depends_on_rate(vm("hot", 384, 393), 100 * MIB, [LINK, LINK / 2])


def test_depends_on_rate_compares_the_decisions_not_the_durations():
    calls = []

    def predict(rate):
        calls.append(rate)
        return F.forecast(1024 * MIB, rate, 1000 * MIB)  # one pre-copy pass, durations within 1 %

    assert not D.depends_on_rate(predict, 2 * MIB)
    assert calls == [1 * MIB, 4 * MIB]
    assert D.decision(None) is None


def test_combined_weights_each_sample_by_its_length():
    assert D.combined([(20.0, 1.0), (8.0, 3.0)]) == pytest.approx(11.0)
    assert D.combined([(5.0, 0.0)]) is None
    assert D.combined([]) is None


def test_steady_rates_resamples_only_the_open_guests_and_combines():
    doms = [Dom("idle"), Dom("warm"), Dom("hot")]
    first = {"idle": 1.0, "warm": 20.0, "hot": 100.0}
    asked = []

    def measure(chosen, seconds):
        asked.append(([d.name() for d in chosen], seconds))
        return {"warm": 8.0}

    rates = D.steady_rates(doms, first, lambda name, rate: name == "warm", measure)
    assert asked == [(["warm"], D.LONG_SAMPLE_S)]
    assert rates == {"idle": D.Reading(1.0, 1.0), "warm": D.Reading(pytest.approx((20.0 + 8.0 * 3) / 4), 4.0),
                     "hot": D.Reading(100.0, 1.0)}


def test_steady_rates_costs_nothing_when_no_decision_is_open():
    def measure(chosen, seconds):
        raise AssertionError("no second sample expected")

    assert D.steady_rates([Dom("a")], {"a": 5.0}, lambda name, rate: False, measure) == {"a": D.Reading(5.0, 1.0)}


def test_a_failed_second_sample_keeps_the_first_reading():
    def measure(chosen, seconds):
        return {"warm": FactsError("gone", "check that the domain still runs.")}

    assert D.steady_rates([Dom("warm")], {"warm": 20.0}, lambda name, rate: True, measure) == {
        "warm": D.Reading(20.0, 1.0)}


def test_no_second_sample_when_its_length_is_zero():
    def measure(chosen, seconds):
        raise AssertionError("no second sample expected")

    assert D.steady_rates([Dom("warm")], {"warm": 20.0}, lambda name, rate: True, measure, long_s=0) == {
        "warm": D.Reading(20.0, 1.0)}


@pytest.mark.parametrize("mib_s, seconds, expected", [
    (8, 1, 0.5),  # 4 changed sample pages: known to half
    (8, 4, 0.25),  # 16 pages
    (800, 1, 0.05),  # 400 pages: a fast writer is read precisely in a second
    (0, 4, 1.0),  # nothing changed: below one page, no better than the page itself
])
def test_a_reading_is_as_precise_as_the_sample_pages_it_counted(mib_s, seconds, expected):
    assert D.relative_error(D.Reading(mib_s * 1024 ** 2, seconds)) == pytest.approx(expected)
