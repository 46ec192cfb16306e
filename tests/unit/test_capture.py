"""Data collection on the device: which requests are kept, feedback that labels them,
and the bounded journal they wait in (real files; the loaded version is a stand-in
without a session, which the collector never touches)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.capture import (
    Collector,
    capture_reason,
    decode_record,
    npy_bytes,
    top_probability,
)
from edgefleet.edge_runtime.config import CapturePolicy, RuntimeConfig
from edgefleet.edge_runtime.engine import InferRequest, ModelVersion
from edgefleet.edge_runtime.errors import ErrorCode, InferenceError
from edgefleet.edge_runtime.stats import classes_of


def loaded(name: str = "digits", version: str = "1") -> ModelVersion:
    return ModelVersion(name=name, version=version, digest="sha256:" + "0" * 64,
                        session=None, inputs=[], outputs=[],  # type: ignore[arg-type]
                        runtime=RuntimeConfig(), metrics=None)  # type: ignore[arg-type]


def answer(collector: Collector, model: ModelVersion, request_id: str,
           scores: np.ndarray) -> None:
    x = np.arange(scores.size, dtype=np.float32).reshape(scores.shape)
    request = InferRequest(model.name, None, {"x": x}, {"x": "FP32"}, id=request_id)
    collector.observe(model, request_id, request, {"y": scores}, classes_of(scores))


def records(collector: Collector, model: str = "digits") -> list[dict[str, Any]]:
    collector.flush()
    return [meta for _, data in collector.journal(model).pending()
            for meta, _ in decode_record(data)]


def dropped(model: str, reason: str) -> float:
    return telemetry.CAPTURE_DROPPED.labels(model, reason)._value.get()


CONFIDENT = np.array([[0.05, 0.9, 0.05]], dtype=np.float32)
UNSURE = np.array([[0.4, 0.35, 0.25]], dtype=np.float32)


def test_probabilities_are_read_as_they_are_and_logits_through_a_softmax() -> None:
    assert top_probability({"p": CONFIDENT})[0] == pytest.approx(0.9)
    logits = top_probability({"y": np.array([[2.0, 0.0]], dtype=np.float32)})
    assert logits[0] == pytest.approx(np.exp(2) / (np.exp(2) + 1))
    # An integer label first, probabilities second (as converted classifiers answer).
    assert top_probability({"label": np.array([1]), "p": UNSURE})[0] == pytest.approx(0.4)
    assert top_probability({"y": np.ones((1, 1), dtype=np.float32)}) is None


def test_low_confidence_is_kept_first_and_the_rest_by_chance() -> None:
    policy = CapturePolicy(sample_rate=0.25, low_confidence_below=0.5)
    assert capture_reason(policy, {"p": UNSURE}, draw=0.99) == "lowConfidence"
    assert capture_reason(policy, {"p": CONFIDENT}, draw=0.2) == "sampled"
    assert capture_reason(policy, {"p": CONFIDENT}, draw=0.3) is None
    assert capture_reason(CapturePolicy(), {"p": UNSURE}, draw=0.0) is None


def test_kept_samples_hold_inputs_outputs_and_their_metadata(tmp_path: Path) -> None:
    collector = Collector(tmp_path, window=10)
    collector.configure({"digits": CapturePolicy(low_confidence_below=0.5,
                                                 include_outputs=True)})
    model = loaded()
    answer(collector, model, "sure", CONFIDENT)
    answer(collector, model, "unsure", UNSURE)
    collector.flush()
    ((_, data),) = collector.journal("digits").pending()
    ((meta, tensors),) = decode_record(data)
    assert meta | {"timeMs": 0} == {
        "kind": "sample", "id": "unsure", "model": "digits", "version": "1", "timeMs": 0,
        "reason": "lowConfidence", "inputs": ["x"], "datatypes": {"x": "FP32"},
        "outputs": ["y"]}
    np.testing.assert_array_equal(tensors["input_0"], np.arange(3, dtype=np.float32)[None])
    np.testing.assert_array_equal(tensors["output_0"], UNSURE)


def test_feedback_counts_right_and_wrong_rows_once_and_is_kept_as_a_label(
        tmp_path: Path) -> None:
    collector = Collector(tmp_path, window=10)
    collector.configure({"digits": CapturePolicy()})
    model = loaded()
    answer(collector, model, "r1", np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32))
    result = collector.feedback("digits", "r1", ["1", "1"])
    assert (result.version, result.labelled, result.correct) == ("1", 2, 1)
    assert (model.stats.labelled, model.stats.correct) == (2, 1)
    with pytest.raises(InferenceError) as again:
        collector.feedback("digits", "r1", ["1", "1"])
    assert again.value.code is ErrorCode.NOT_FOUND and "taken already" in again.value.message
    (label,) = records(collector)
    assert label | {"timeMs": 0} == {"kind": "label", "id": "r1", "model": "digits",
                                     "version": "1", "timeMs": 0, "labels": ["1", "1"],
                                     "predictions": ["1", "0"]}


def test_feedback_is_refused_with_the_reason(tmp_path: Path) -> None:
    collector = Collector(tmp_path, window=2)
    collector.configure({"digits": CapturePolicy()})
    model = loaded()
    for request_id in ("a", "b", "c"):
        answer(collector, model, request_id, CONFIDENT)
    cases = [(("other", "b", ["1"]), ErrorCode.NOT_FOUND, "sets no dataCollection"),
             (("digits", "a", ["1"]), ErrorCode.NOT_FOUND, "among its last 2"),
             (("digits", "b", ["1", "2"]), ErrorCode.INVALID_ARGUMENT, "had 1 rows; got 2"),
             (("digits", "c", ["x" * 300]), ErrorCode.INVALID_ARGUMENT, "longer than 256"),
             (("digits", "", ["1"]), ErrorCode.INVALID_ARGUMENT, "needs the request's id")]
    for args, code, reason in cases:
        with pytest.raises(InferenceError) as refused:
            collector.feedback(*args)
        assert refused.value.code is code and reason in refused.value.message
    assert collector.feedback("digits", "b", ["1"]).correct == 1  # refusals took nothing


def test_the_disk_budget_drops_the_oldest_records_and_counts_them(tmp_path: Path) -> None:
    collector = Collector(tmp_path, window=10)
    collector.configure({"digits": CapturePolicy(sample_rate=1, max_bytes_per_device=4096)})
    before = dropped("digits", "budget")
    model = loaded()
    for i in range(20):
        answer(collector, model, f"r{i}", CONFIDENT)
        collector.flush()  # a record each
    kept = [meta["id"] for meta in records(collector)]
    assert kept == [f"r{i}" for i in range(20 - len(kept), 20)] and 0 < len(kept) < 20
    assert collector.journal("digits").stored_bytes <= 4096
    assert dropped("digits", "budget") - before == 20 - len(kept)


def test_records_survive_a_restart(tmp_path: Path) -> None:
    first = Collector(tmp_path, window=10)
    first.configure({"digits": CapturePolicy(sample_rate=1)})
    answer(first, loaded(), "r1", CONFIDENT)
    first.flush()
    first.close()
    again = Collector(tmp_path, window=10)
    assert again.models_with_records() == ["digits"]
    assert [meta["id"] for meta in records(again)] == ["r1"]


def test_a_model_name_that_is_no_edgemodel_name_never_becomes_a_directory(
        tmp_path: Path) -> None:
    collector = Collector(tmp_path / "capture", window=10)
    collector.configure({"../escape": CapturePolicy(sample_rate=1)})
    answer(collector, loaded("../escape"), "r1", CONFIDENT)
    collector.flush()
    assert not (tmp_path / "escape").exists() and not (tmp_path / "capture").exists()


def test_entries_queued_together_are_written_as_one_record(tmp_path: Path) -> None:
    collector = Collector(tmp_path, window=10)
    collector.configure({"digits": CapturePolicy(sample_rate=1)})
    model = loaded()
    for i in range(5):
        answer(collector, model, f"r{i}", CONFIDENT)
    collector.flush()
    ((_, data),) = collector.journal("digits").pending()
    assert [meta["id"] for meta, _ in decode_record(data)] == [f"r{i}" for i in range(5)]


@pytest.mark.parametrize("array", [
    np.zeros((2, 3), np.float32), np.array("héllo"), np.zeros((0, 4), np.int8),
    np.float16(1).reshape(()), np.array([b"ab", b"c"]), np.arange(6).reshape(2, 3).T,
])
def test_arrays_are_written_as_numpy_writes_them(array: np.ndarray) -> None:
    written = io.BytesIO()
    np.save(written, array)
    if array.flags.c_contiguous:
        assert npy_bytes(array) == written.getvalue()
    read = np.load(io.BytesIO(npy_bytes(array)))
    np.testing.assert_array_equal(read, array)
    assert read.dtype == array.dtype
