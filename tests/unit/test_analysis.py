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


def test_statistics_add_up_across_devices() -> None:
    summed = analysis.total([traffic(10, 1, classes=(1, 2, 3)), traffic(5, classes=(4,))])
    assert (summed.requests, summed.errors) == (15, 1)
    assert summed.latency_counts == (15, 0, 0, 0) and summed.top_class_counts == (5, 2, 3)
    other_bounds = TrafficStats(3, 0, (0.5,), (3, 0))
    assert (traffic(10) + other_bounds).latency_counts == (10, 0, 0, 0)


def test_nothing_is_judged_before_the_minimum_requests() -> None:
    verdict = analysis.analyze(THRESHOLDS, traffic(60, errors=30), traffic(1000))
    assert verdict.outcome == "Wait" and "90 of the 100" in verdict.message


def test_an_error_rate_above_the_threshold_fails_quoting_numbers_and_threshold() -> None:
    verdict = analysis.analyze(THRESHOLDS, traffic(150, errors=50), traffic(1000))
    assert verdict.outcome == "Fail" and verdict.error_rate == 0.25
    assert "error rate above the threshold" in verdict.message
    assert "error rate 0.250 (max 0.02)" in verdict.message


def test_a_slow_version_fails_on_p99() -> None:
    slow = traffic(200, latency=(0, 0, 200, 0))
    verdict = analysis.analyze(THRESHOLDS, slow, traffic(1000))
    assert verdict.outcome == "Fail" and "p99 latency" in verdict.message
    assert verdict.p99_latency_ms is not None and verdict.p99_latency_ms > 50
    assert "(max 50.0 ms)" in verdict.message


def test_a_shifted_output_distribution_fails_on_drift() -> None:
    verdict = analysis.analyze(THRESHOLDS, traffic(200, classes=(190, 10)),
                               traffic(1000, classes=(500, 500)))
    assert verdict.outcome == "Fail" and "drift" in verdict.message


def test_a_healthy_candidate_passes_and_drift_needs_a_baseline() -> None:
    verdict = analysis.analyze(THRESHOLDS, traffic(200, errors=1, classes=(95, 105)),
                               traffic(1000, classes=(500, 500)))
    assert verdict.outcome == "Pass" and verdict.drift is not None and verdict.drift < 0.01
    alone = analysis.analyze(THRESHOLDS, traffic(200), TrafficStats())
    assert alone.outcome == "Pass" and alone.drift is None
    assert alone.message.endswith("drift not measured (no classes from both versions)")
