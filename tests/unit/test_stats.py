"""The edge runtime's per-version statistics for rollout analysis."""

from __future__ import annotations

import numpy as np

from edgefleet.edge_runtime.stats import LATENCY_BOUNDS_S, TOP_CLASS_BINS, VersionStats, classes_of


def test_latency_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    stats = VersionStats()
    stats.answered(LATENCY_BOUNDS_S[0], classes_of(np.zeros((1, 1), np.float32)))
    stats.answered(LATENCY_BOUNDS_S[0] * 1.01, classes_of(np.zeros((1, 1), np.float32)))
    stats.answered(60.0, classes_of(np.zeros((1, 1), np.float32)))
    assert stats.latency_counts[:2] == [1, 1] and stats.latency_counts[-1] == 1
    assert stats.requests == 3 and not stats.classifies  # one score per row: no classes


def test_top_classes_are_counted_per_row_and_high_indices_share_the_last_bin() -> None:
    stats = VersionStats()
    scores = np.zeros((3, 40), np.float32)
    scores[0, 2] = scores[1, 2] = scores[2, 39] = 1.0
    stats.answered(0.001, classes_of(scores))
    assert stats.classifies and stats.top_class_counts[2] == 2
    assert stats.top_class_counts[TOP_CLASS_BINS - 1] == 1 and stats.top_class_counts.sum() == 3


def test_failures_count_apart_from_answers() -> None:
    stats = VersionStats()
    stats.failed()
    assert (stats.requests, stats.errors) == (0, 1)


def test_integer_labels_count_as_classes_and_negative_ones_do_not() -> None:
    stats = VersionStats()
    stats.answered(0.001, classes_of(np.array([3, 3, 7], dtype=np.int64)))
    assert stats.classifies and stats.top_class_counts[3] == 2 and stats.top_class_counts[7] == 1
    other = VersionStats()
    other.answered(0.001, classes_of(np.array([-1, 2], dtype=np.int64)))
    assert not other.classifies and other.requests == 1
