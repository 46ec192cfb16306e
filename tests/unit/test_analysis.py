"""Canary analysis over recorded statistics: quantiles, drift and verdicts."""

from __future__ import annotations

import math

import pytest

from edgefleet.operator import analysis
from edgefleet.operator.analysis import TrafficStats
from edgefleet.operator.resources import RolloutAnalysis

BOUNDS = (0.001, 0.01, 0.1)
THRESHOLDS = RolloutAnalysis(min_requests=100, max_error_rate=0.02, max_p99_latency_ms=50,
                             max_drift=0.2)


def traffic(requests: int, errors: int = 0, latency: tuple[int, ...] = (),
            classes: tuple[int, ...] = (50, 50)) -> TrafficStats:
    return TrafficStats(requests, errors, BOUNDS, latency or (requests, 0, 0, 0), classes)


def test_quantiles_interpolate_within_buckets_like_prometheus() -> None:
    stats = traffic(100, latency=(50, 40, 10, 0))
    # rank 99 falls in the third bucket (0.01, 0.1]: 9 of its 10 observations in.
    assert analysis.quantile_s(stats, 0.99) == pytest.approx(0.01 + 0.09 * 0.9)
    assert analysis.quantile_s(stats, 0.5) == pytest.approx(0.001)
    overflow = traffic(10, latency=(0, 0, 0, 10))
    assert analysis.quantile_s(overflow, 0.99) == 0.1  # reported as the highest bound
    assert analysis.quantile_s(TrafficStats(), 0.99) is None


def test_population_stability_index_matches_its_formula() -> None:
    expected = 0.4 * math.log(0.9 / 0.5) + (-0.4) * math.log(0.1 / 0.5)
    psi = analysis.population_stability_index((50, 50), (90, 10))
    assert psi == pytest.approx(expected)
    assert analysis.population_stability_index((50, 50), (50, 50)) == 0
    assert analysis.population_stability_index((), (1, 2)) is None


def judge(candidate: list[TrafficStats], baseline: list[TrafficStats]) -> analysis.Verdict:
    return analysis.analyze(THRESHOLDS, analysis.cohort(candidate), analysis.cohort(baseline))


def test_a_cohort_is_summarised_by_its_median_device() -> None:
    summary = analysis.cohort([traffic(100, 1), traffic(100, 3), traffic(100, 50),
                               traffic(0), TrafficStats()])
    assert summary.devices == 3  # devices without traffic have no rates to weigh
    assert summary.error_rate == pytest.approx(3 / 103)
    assert summary.requests == 101 + 101 + 101  # each capped at the (lower) median's 101
    assert analysis.cohort([]) == analysis.CohortStats()


def test_class_shares_weigh_every_device_the_same() -> None:
    summary = analysis.cohort([traffic(10, classes=(10, 0)), traffic(1000, classes=(0, 1000))])
    assert summary.class_shares == (0.5, 0.5)


def test_nothing_is_judged_before_the_minimum_requests() -> None:
    verdict = judge([traffic(60, errors=30)], [traffic(1000)])
    assert verdict.outcome == "Wait" and "90 of the 100" in verdict.message


def test_an_error_rate_above_the_threshold_fails_quoting_numbers_and_threshold() -> None:
    verdict = judge([traffic(150, errors=50)], [traffic(1000)])
    assert verdict.outcome == "Fail" and verdict.error_rate == 0.25
    assert "error rate above the threshold" in verdict.message
    assert "median error rate 0.250 (max 0.02)" in verdict.message


def test_a_slow_version_fails_on_p99() -> None:
    slow = traffic(200, latency=(0, 0, 200, 0))
    verdict = judge([slow], [traffic(1000)])
    assert verdict.outcome == "Fail" and "p99 latency" in verdict.message
    assert verdict.p99_latency_ms is not None and verdict.p99_latency_ms > 50
    assert "(max 50.0 ms)" in verdict.message


def test_a_shifted_output_distribution_fails_on_drift() -> None:
    verdict = judge([traffic(200, classes=(190, 10))], [traffic(1000, classes=(500, 500))])
    assert verdict.outcome == "Fail" and "drift" in verdict.message


def test_a_healthy_candidate_passes_and_drift_needs_a_baseline() -> None:
    verdict = judge([traffic(200, errors=1, classes=(95, 105))],
                    [traffic(1000, classes=(500, 500))])
    assert verdict.outcome == "Pass" and verdict.drift is not None and verdict.drift < 0.01
    alone = judge([traffic(200)], [])
    assert alone.outcome == "Pass" and alone.drift is None
    assert alone.message.endswith("drift not measured (no classes from both versions)")


# One device must not decide a canary, whatever it reports (the figures are the ones an
# attacker used against the summed analysis).


def test_one_device_claiming_2_pow_62_requests_cannot_pass_a_failing_cohort() -> None:
    failing = [traffic(100, errors=100) for _ in range(4)]  # 50 % of attempts fail
    liar = traffic(2**62, classes=(2**61, 2**61))
    verdict = judge([*failing, liar], [traffic(1000)])
    assert verdict.outcome == "Fail" and verdict.error_rate == 0.5
    assert verdict.requests == 5 * 200  # the liar counts as many attempts as the median


def test_one_device_claiming_2_pow_62_requests_cannot_reach_min_requests_alone() -> None:
    verdict = judge([traffic(10), traffic(10), traffic(2**62)], [traffic(1000)])
    assert verdict.outcome == "Wait" and verdict.requests == 30


def test_one_device_alone_with_traffic_speaks_for_no_cohort() -> None:
    quiet = [TrafficStats() for _ in range(4)]
    verdict = judge([traffic(2**62), *quiet], [traffic(1000)])
    assert verdict.outcome == "Wait" and verdict.requests == 0
    half = judge([traffic(2**62), traffic(500), *quiet[:2]], [traffic(1000)])
    assert half.outcome == "Wait" and half.requests == 0  # two of four: not more than half


def test_one_device_reporting_a_million_errors_cannot_force_a_rollback() -> None:
    healthy = [traffic(100, classes=(50, 50)) for _ in range(4)]
    liar = TrafficStats(0, 10**6, BOUNDS, (0, 0, 0, 10**6), (0, 10**6))
    verdict = judge([*healthy, liar], [traffic(1000, classes=(500, 500))])
    assert verdict.outcome == "Pass", verdict.message
    assert verdict.error_rate == 0.0 and verdict.p99_latency_ms is not None
    assert verdict.p99_latency_ms < 50
    # Its class shares weigh one fifth: drift moves, but within bounds it stays honest.
    assert verdict.drift is not None and verdict.drift < 0.2


def test_most_devices_failing_still_fails_however_one_device_reports() -> None:
    failing = [traffic(100, errors=20, latency=(0, 0, 120, 0)) for _ in range(3)]
    verdict = judge([*failing, traffic(10**9), traffic(10**9)], [traffic(1000)])
    assert verdict.outcome == "Fail"
    assert "error rate" in verdict.message and "p99 latency" in verdict.message


def labelled(labelled: int, correct: int, requests: int = 200) -> TrafficStats:
    return TrafficStats(requests, 0, BOUNDS, (requests, 0, 0, 0), (50, 50), labelled, correct)


ACCURACY = RolloutAnalysis(min_requests=100, min_labelled=50, max_accuracy_drop=0.05,
                           min_accuracy=0.6)


def test_field_accuracy_weighs_no_device_above_the_median_labelled_one() -> None:
    # One device claims a million right answers; two others are right half the time.
    # Each weighs at most the median device's 60 labels.
    summary = analysis.cohort([labelled(10**6, 10**6), labelled(40, 20), labelled(60, 30)])
    assert summary.labelled == 60 + 40 + 60
    assert summary.accuracy == pytest.approx((60 + 20 + 30) / 160)
    assert analysis.cohort([labelled(0, 0)]).accuracy is None  # nothing labelled


def test_field_accuracy_is_judged_only_on_enough_labels() -> None:
    stable = analysis.cohort([labelled(100, 95)])
    waiting = analysis.analyze(ACCURACY, analysis.cohort([labelled(30, 0)]), stable)
    assert waiting.outcome == "Wait" and "30 of the 50 labelled answers" in waiting.message
    # An erring version is rolled back without waiting for labels.
    erring = TrafficStats(200, 100, BOUNDS, (300, 0, 0, 0), (50, 50), 10, 10)
    failing = analysis.analyze(ACCURACY, analysis.cohort([erring]), stable)
    assert failing.outcome == "Fail" and failing.message.startswith("error rate above")


def test_a_candidate_less_accurate_than_the_stable_version_fails() -> None:
    stable = analysis.cohort([labelled(100, 95)])
    verdict = analysis.analyze(ACCURACY, analysis.cohort([labelled(100, 85)]), stable)
    assert verdict.outcome == "Fail" and verdict.message.startswith(
        "field accuracy drop above the threshold")
    assert (verdict.accuracy, verdict.stable_accuracy) == (0.85, 0.95)
    assert "stable 0.950 (max drop 0.05)" in verdict.message
    below = analysis.analyze(ACCURACY, analysis.cohort([labelled(100, 50)]),
                             analysis.cohort([labelled(100, 52)]))
    assert below.outcome == "Fail" and "field accuracy" in below.message
    assert "(min 0.6)" in below.message


def test_the_drop_is_not_judged_while_the_stable_version_has_too_few_labels() -> None:
    verdict = analysis.analyze(ACCURACY, analysis.cohort([labelled(100, 80)]),
                               analysis.cohort([labelled(10, 10)]))
    assert verdict.outcome == "Pass" and verdict.stable_accuracy is None
    assert "drop not measured (the stable version has 10 of 50 labelled)" in verdict.message
