"""Inference statistics per loaded model version for the cloud's rollout analysis:
counted since the version was loaded and sent in every heartbeat (see VersionStats in
protos/edgefleet/v1/fleet.proto). Prometheus metrics tell the same story to a local
scraper; these travel over the device's own session, through any NAT."""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

import numpy as np

# Bucket bounds of every request-latency histogram of the runtime, in seconds.
LATENCY_BOUNDS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5)
# Top-class bins: indices at or past the last bin share it.
TOP_CLASS_BINS = 32


class VersionStats:
    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency_counts = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.top_class_counts = np.zeros(TOP_CLASS_BINS, dtype=np.int64)
        self.classifies = False  # whether the primary output was ever class scores
        # Answered rows whose true label came back as feedback, and those it got right.
        self.labelled = 0
        self.correct = 0

    def answered(self, seconds: float, classes: np.ndarray | None) -> None:
        """Counts an answered request and the class of each of its rows (see
        `classes_of`; None when the model does not classify)."""
        self.requests += 1
        self.latency_counts[bisect.bisect_left(LATENCY_BOUNDS_S, seconds)] += 1
        if classes is None:
            return
        self.top_class_counts += np.bincount(np.minimum(classes, TOP_CLASS_BINS - 1),
                                             minlength=TOP_CLASS_BINS)
        self.classifies = True

    def failed(self) -> None:
        """Counts a request that failed inside the model."""
        self.errors += 1


def classes_of(primary: np.ndarray) -> np.ndarray | None:
    """The class of each row of a model's primary (first) output: the top class of a
    vector of scores per row, or the label itself when the output is one non-negative
    integer label per row (as scikit-learn's converted classifiers give); None when it
    is neither."""
    if primary.ndim >= 2 and primary.shape[-1] > 1 and primary.dtype.kind in "fiu":
        return primary.reshape(-1, primary.shape[-1]).argmax(axis=1)
    if primary.ndim == 1 and primary.dtype.kind in "iu" and primary.size and primary.min() >= 0:
        return primary
    return None


@dataclass
class Duration:
    """How many, and how long they took all together (nanoseconds)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, int(seconds * 1e9))


@dataclass
class ServingStatistics:
    """One loaded version's figures for the inference protocol's statistics extension
    (Triton's names and meanings), counted since it loaded: what perf_analyzer and
    similar tools read to split a request's time between server and network."""

    success: Duration = field(default_factory=Duration)  # decode to response, answered
    fail: Duration = field(default_factory=Duration)  # failed once the version was chosen
    queue: Duration = field(default_factory=Duration)  # waiting for a batch or a thread
    compute_input: Duration = field(default_factory=Duration)  # inputs checked, converted
    compute_infer: Duration = field(default_factory=Duration)  # ONNX Runtime's run
    compute_output: Duration = field(default_factory=Duration)  # outputs converted
    inference_count: int = 0  # rows answered: a batch of n rows counts n
    execution_count: int = 0  # model runs: one batched run counts one
    last_inference_ms: int = 0  # ms since the epoch; 0 before the first

    def answered(self, rows: int) -> None:
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
