"""Canary analysis, decided purely from the inference statistics devices report.

Devices count, per loaded model version, requests, errors inside the model, a latency
histogram and a histogram of the primary output's top class since the version was
loaded. The rollout sums them over the cohort (the candidate) and over the devices
still on the stable version (the baseline), and `analyze` judges the candidate against
`spec.rollout.analysis`:

- error rate: errors / (requests + errors), at most `maxErrorRate`;
- p99 latency: interpolated within the histogram's buckets as Prometheus'
  `histogram_quantile` does, at most `maxP99LatencyMs`;
- drift: the population stability index (PSI) of the candidate's top-class
  distribution against the baseline's, sum over classes of (c - b) * ln(c / b) with
  each share floored at 1e-4, at most `maxDrift` (0.1 is commonly read as a small
  shift, 0.25 as a large one).

Nothing is judged before the candidate has answered `minRequests` requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from edgefleet.operator.resources import RolloutAnalysis

PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class TrafficStats:
    """What devices reported for one model version, summed over devices."""

    requests: int = 0
    errors: int = 0
    latency_bounds_s: tuple[float, ...] = ()
    latency_counts: tuple[int, ...] = ()  # one more than the bounds: the last is +Inf
    top_class_counts: tuple[int, ...] = ()

    def __add__(self, other: TrafficStats) -> TrafficStats:
        bounds, counts = self.latency_bounds_s, self.latency_counts
        if not bounds:
            bounds, counts = other.latency_bounds_s, other.latency_counts
        elif other.latency_bounds_s == bounds:
            counts = tuple(a + b for a, b in zip(counts, other.latency_counts, strict=True))
        # else: a device with other bucket bounds (another runtime release) adds no latency
        return TrafficStats(self.requests + other.requests, self.errors + other.errors,
                            bounds, counts, _add(self.top_class_counts, other.top_class_counts))


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    return tuple(x + (shorter[i] if i < len(shorter) else 0) for i, x in enumerate(longer))


def total(stats: Iterable[TrafficStats]) -> TrafficStats:
    summed = TrafficStats()
    for item in stats:
        summed = summed + item
    return summed


def error_rate(stats: TrafficStats) -> float:
    attempts = stats.requests + stats.errors
    return stats.errors / attempts if attempts else 0.0


def quantile_s(stats: TrafficStats, q: float) -> float | None:
    """The q-quantile of the latency histogram, linear within a bucket; a quantile in
    the overflow bucket is reported as the highest bound. None without data."""
    observed = sum(stats.latency_counts)
    if not observed or not stats.latency_bounds_s:
        return None
    rank, seen, lower = q * observed, 0, 0.0
    for bound, count in zip(stats.latency_bounds_s, stats.latency_counts, strict=False):
        if count and seen + count >= rank:
            return lower + (bound - lower) * (rank - seen) / count
        seen, lower = seen + count, bound
    return stats.latency_bounds_s[-1]


def population_stability_index(baseline: tuple[int, ...],
                               candidate: tuple[int, ...]) -> float | None:
    """PSI of two histograms over the same bins; None when either is empty."""
    size = max(len(baseline), len(candidate))
    base_total, cand_total = sum(baseline), sum(candidate)
    if not base_total or not cand_total:
        return None
    psi = 0.0
    for i in range(size):
        b = max((baseline[i] if i < len(baseline) else 0) / base_total, PSI_FLOOR)
        c = max((candidate[i] if i < len(candidate) else 0) / cand_total, PSI_FLOOR)
        psi += (c - b) * math.log(c / b)
    return psi


@dataclass(frozen=True)
class Verdict:
    outcome: Literal["Pass", "Wait", "Fail"]
    message: str
    requests: int
    error_rate: float
    p99_latency_ms: float | None
    drift: float | None


def analyze(analysis: RolloutAnalysis, candidate: TrafficStats,
            baseline: TrafficStats) -> Verdict:
    """Judges the candidate version's traffic against the thresholds."""
    rate = error_rate(candidate)
    p99_s = quantile_s(candidate, 0.99)
    p99_ms = None if p99_s is None else p99_s * 1000
    drift = population_stability_index(baseline.top_class_counts, candidate.top_class_counts)
    attempts = candidate.requests + candidate.errors
    measured = (f"{attempts} requests, error rate {rate:.3f} (max {analysis.max_error_rate})"
                + (f", p99 {p99_ms:.1f} ms" if p99_ms is not None else "")
                + (f" (max {analysis.max_p99_latency_ms} ms)"
                   if analysis.max_p99_latency_ms is not None else "")
                + (f", drift PSI {drift:.3f}" if drift is not None else "")
                + (f" (max {analysis.max_drift})"
                   if analysis.max_drift is not None and drift is not None else "")
                + (", drift not measured (no classes from both versions)"
                   if analysis.max_drift is not None and drift is None else ""))

    def verdict(outcome: Literal["Pass", "Wait", "Fail"], message: str) -> Verdict:
        return Verdict(outcome, message, attempts, rate, p99_ms, drift)

    if attempts < analysis.min_requests:
        return verdict("Wait", f"{attempts} of the {analysis.min_requests} requests needed "
                               "before judging")
    breaches = []
    if rate > analysis.max_error_rate:
        breaches.append("error rate")
    if (analysis.max_p99_latency_ms is not None and p99_ms is not None
            and p99_ms > analysis.max_p99_latency_ms):
        breaches.append("p99 latency")
    if analysis.max_drift is not None and drift is not None and drift > analysis.max_drift:
        breaches.append("drift")
    if breaches:
        return verdict("Fail", f"{' and '.join(breaches)} above the threshold: {measured}")
    return verdict("Pass", f"within the thresholds: {measured}")
