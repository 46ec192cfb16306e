"""Canary analysis, decided purely from the inference statistics devices report.

Devices count, per loaded model version, requests, errors inside the model, a latency
histogram and a histogram of the primary output's top class since the version was
loaded. Each device's figures are judged as that device's rates, and a cohort (the
candidate's devices, or the stable version's) is summarised so that no single device
decides for the others, whatever it reports:

- error rate and p99 latency: the median over the cohort's devices of each device's
  own error rate and p99 (the p99 interpolated within the histogram's buckets as
  Prometheus' `histogram_quantile` does). One device reporting a million errors, or a
  perfect record over 2^62 requests, moves the median by one place, not to its value;
- drift: the population stability index (PSI) of the candidate's top-class
  distribution against the baseline's, each distribution the mean of its devices'
  class *shares* (every device weighs the same), sum over classes of
  (c - b) * ln(c / b) with each share floored at 1e-4, at most `maxDrift` (0.1 is
  commonly read as a small shift, 0.25 as a large one);
- requests toward `minRequests`: the cohort's attempts with each device's count capped
  at the (lower) median device's, devices without traffic included, so one device
  cannot claim the minimum for all, and nothing is judged before more than half the
  cohort has answered requests;
- field accuracy: the share of labelled answers (rows whose true label came back as
  feedback) that were right, pooled over the devices with labels, each device's
  labelled count capped at the (lower) median of theirs, so that no device weighs more
  than a typical one. Devices without labels do not count here: feedback may come from
  some sites only. `minLabelled` counts labelled answers so capped.

Nothing is judged before the candidate has answered `minRequests` requests so counted.
With one device in a cohort, that device is the cohort; with two, the median is their
mean: cohorts of three or more are what make one device's word count once.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.operator.resources import RolloutAnalysis

PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class TrafficStats:
    """What one device reported for one model version."""

    requests: int = 0
    errors: int = 0
    latency_bounds_s: tuple[float, ...] = ()
    latency_counts: tuple[int, ...] = ()  # one more than the bounds: the last is +Inf
    top_class_counts: tuple[int, ...] = ()
    labelled: int = 0
    correct: int = 0

    @property
    def attempts(self) -> int:
        return self.requests + self.errors


@dataclass(frozen=True)
class CohortStats:
    """A cohort's traffic for one version, summarised robustly (see the module doc)."""

    devices: int = 0  # devices that answered at least one request
    requests: int = 0  # attempts, each device capped at the median device's
    error_rate: float = 0.0
    p99_s: float | None = None
    class_shares: tuple[float, ...] = ()
    labelled: int = 0  # labelled answers, each device capped at the median device's
    accuracy: float | None = None  # None: nothing labelled


def cohort(stats: Iterable[TrafficStats]) -> CohortStats:
    """The robust summary of the cohort's devices' statistics, one entry per device.
    Devices without traffic lower the requests cap (see the module doc) but have no
    rates to weigh."""
    members = list(stats)
    active = [s for s in members if s.attempts > 0]
    if not active:
        return CohortStats(**_field_accuracy(members))
    cap = statistics.median_low(s.attempts for s in members)
    latencies = [p for p in (quantile_s(s, 0.99) for s in active) if p is not None]
    shares = [_shares(s.top_class_counts) for s in active if sum(s.top_class_counts) > 0]
    return CohortStats(
        devices=len(active),
        requests=sum(min(s.attempts, cap) for s in active),
        error_rate=statistics.median(error_rate(s) for s in active),
        p99_s=statistics.median(latencies) if latencies else None,
        class_shares=_mean_shares(shares),
        **_field_accuracy(members),
    )


def _field_accuracy(members: list[TrafficStats]) -> dict[str, Any]:
    labelled = [s for s in members if s.labelled > 0]
    if not labelled:
        return {}
    cap = statistics.median_low(s.labelled for s in labelled)
    weights = [min(s.labelled, cap) for s in labelled]
    right = sum(weight * min(s.correct, s.labelled) / s.labelled
                for weight, s in zip(weights, labelled, strict=True))
    return {"labelled": sum(weights), "accuracy": right / sum(weights)}


def _shares(counts: tuple[int, ...]) -> tuple[float, ...]:
    observed = sum(counts)
    return tuple(c / observed for c in counts)


def _mean_shares(shares: list[tuple[float, ...]]) -> tuple[float, ...]:
    if not shares:
        return ()
    size = max(len(s) for s in shares)
    return tuple(sum(s[i] for s in shares if i < len(s)) / len(shares) for i in range(size))


def error_rate(stats: TrafficStats) -> float:
    return stats.errors / stats.attempts if stats.attempts else 0.0


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


def population_stability_index(baseline: Sequence[float],
                               candidate: Sequence[float]) -> float | None:
    """PSI of two histograms (counts or shares) over the same bins; None when either is
    empty."""
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
    labelled: int = 0
    accuracy: float | None = None
    stable_accuracy: float | None = None


def analyze(analysis: RolloutAnalysis, candidate: CohortStats,
            baseline: CohortStats) -> Verdict:
    """Judges the candidate version's traffic against the thresholds."""
    rate = candidate.error_rate
    p99_ms = None if candidate.p99_s is None else candidate.p99_s * 1000
    drift = population_stability_index(baseline.class_shares, candidate.class_shares)
    attempts = candidate.requests
    measured = (f"{attempts} requests from {candidate.devices} devices, median error rate "
                f"{rate:.3f} (max {analysis.max_error_rate})"
                + (f", median p99 {p99_ms:.1f} ms" if p99_ms is not None else "")
                + (f" (max {analysis.max_p99_latency_ms} ms)"
                   if analysis.max_p99_latency_ms is not None else "")
                + (f", drift PSI {drift:.3f}" if drift is not None else "")
                + (f" (max {analysis.max_drift})"
                   if analysis.max_drift is not None and drift is not None else "")
                + (", drift not measured (no classes from both versions)"
                   if analysis.max_drift is not None and drift is None else ""))
    judges_accuracy = (analysis.min_accuracy is not None
                       or analysis.max_accuracy_drop is not None)
    # The stable version's accuracy counts only on as many labels as the candidate needs.
    stable_accuracy = (baseline.accuracy if baseline.labelled >= analysis.min_labelled
                       else None)
    if judges_accuracy:
        measured += _accuracy_measured(analysis, candidate, baseline, stable_accuracy)

    def verdict(outcome: Literal["Pass", "Wait", "Fail"], message: str) -> Verdict:
        return Verdict(outcome, message, attempts, rate, p99_ms, drift, candidate.labelled,
                       candidate.accuracy, stable_accuracy)

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
    # Field accuracy is judged on enough labels; the other gates never wait for them.
    labels_wanting = judges_accuracy and candidate.labelled < analysis.min_labelled
    accuracy = candidate.accuracy
    if (not labels_wanting and analysis.min_accuracy is not None and accuracy is not None
            and accuracy < analysis.min_accuracy):
        breaches.append("field accuracy")
    if (not labels_wanting and analysis.max_accuracy_drop is not None
            and accuracy is not None and stable_accuracy is not None
            and stable_accuracy - accuracy > analysis.max_accuracy_drop):
        breaches.append("field accuracy drop")
    if breaches:
        return verdict("Fail", f"{' and '.join(breaches)} above the threshold: {measured}")
    if labels_wanting:
        return verdict("Wait", f"{candidate.labelled} of the {analysis.min_labelled} "
                               "labelled answers needed before judging field accuracy")
    return verdict("Pass", f"within the thresholds: {measured}")


def _accuracy_measured(analysis: RolloutAnalysis, candidate: CohortStats,
                       baseline: CohortStats, stable_accuracy: float | None) -> str:
    if candidate.accuracy is None:
        return ", field accuracy not measured yet (no labelled answers)"
    text = f", field accuracy {candidate.accuracy:.3f} on {candidate.labelled} labelled"
    if analysis.min_accuracy is not None:
        text += f" (min {analysis.min_accuracy})"
    if analysis.max_accuracy_drop is not None:
        text += (f", stable {stable_accuracy:.3f} (max drop {analysis.max_accuracy_drop})"
                 if stable_accuracy is not None else
                 f", drop not measured (the stable version has {baseline.labelled} of "
                 f"{analysis.min_labelled} labelled)")
    return text
