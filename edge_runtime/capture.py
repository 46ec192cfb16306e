"""What the runtime keeps of the requests it answers, for retraining, and the feedback
that labels them (EdgeModel spec.dataCollection, sent in each model's assignment).

For a model with a policy, every answered request is remembered for feedback (the most
recent `window` of them: id, version and the class of each row), and some are kept as
samples: a share at random (`sampleRate`) and every one whose top class is less sure
than `lowConfidenceBelow`. Feedback names a remembered request by its id and gives the
true label of each row; it is taken once per request, counts right and wrong answers
for the version that gave them (sent in heartbeats, judged by canaries) and is kept as a
label record that joins its sample in the dataset.

Samples and labels (entries) go into a bounded journal per model (journal.Journal,
under `<data-dir>/capture/<model>/`). Each journal record is an `.npz` file that numpy
and data tools read, holding one or more entries under their index: `<i>/meta` (JSON:
kind, id, model, version, time, reason, tensor names and datatypes) and the tensors as
`<i>/input_<k>` / `<i>/output_<k>`. The journal keeps them across restarts until the
cloud acknowledges them, dropping the oldest past the budget.

Inference never waits for the disk: the loop only picks and queues; one writer thread
encodes and writes, gathering what arrives within LINGER_S into one synced write, so
that its cost under load is per batch, not per request. When it falls behind, what
does not fit the queue is dropped and counted (reason "busy").
"""

from __future__ import annotations

import functools
import io
import json
import logging
import queue
import random
import re
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.batching import Tensors
from edgefleet.edge_runtime.config import CapturePolicy
from edgefleet.edge_runtime.engine import InferRequest, ModelVersion
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.journal import Journal
from edgefleet.edge_runtime.stats import VersionStats

logger = logging.getLogger(__name__)
SUFFIX = ".npz"
# Request ids longer than this are answered but not remembered for feedback.
MAX_ID_CHARS = 128
MAX_LABEL_CHARS = 256
QUEUE_RECORDS = 256
# How long the writer waits after a first entry for more to write with it.
LINGER_S = 0.05
# A record travels whole in one session message (the gateway takes at most 1 MiB): a
# request larger alone is not kept, and counted (reason "tooLarge").
MAX_RECORD_BYTES = 900 << 10
# Model names become directory names: only what an EdgeModel name can be.
MODEL_DIR_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
Reason = Literal["sampled", "lowConfidence"]


def top_probability(outputs: Tensors) -> np.ndarray | None:
    """Each row's probability of its top class, from the first output that holds a
    vector of scores per row: taken as probabilities when each row already is one (in
    0..1, summing to 1), through a softmax otherwise (logits). None when no output does."""
    for array in outputs.values():
        if array.ndim >= 2 and array.shape[-1] > 1 and array.dtype.kind == "f":
            rows = array.reshape(-1, array.shape[-1]).astype(np.float64)
            if not (rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3)):
                rows = np.exp(rows - rows.max(axis=1, keepdims=True))
                rows /= rows.sum(axis=1, keepdims=True)
            return rows.max(axis=1)
    return None


def capture_reason(policy: CapturePolicy, outputs: Tensors, draw: float) -> Reason | None:
    """Why a request is kept as a sample, if it is: low confidence first, then chance."""
    if policy.low_confidence_below > 0:
        confidence = top_probability(outputs)
        if confidence is not None and confidence.size and (
                confidence.min() < policy.low_confidence_below):
            return "lowConfidence"
    if draw < policy.sample_rate:
        return "sampled"
    return None


@dataclass(frozen=True)
class Answer:
    """A remembered answer, for feedback (the statistics, not the loaded version: an
    unloaded session is not kept alive by answers waiting for labels)."""

    model: str
    version: str
    stats: VersionStats
    predictions: tuple[str, ...]  # the class of each row, as text


@dataclass(frozen=True)
class FeedbackResult:
    model: str
    version: str
    id: str
    labelled: int
    correct: int


@dataclass(frozen=True)
class _Entry:
    model: str
    meta: dict[str, Any]
    tensors: dict[str, np.ndarray]


Entry = tuple[Mapping[str, Any], Mapping[str, np.ndarray]]  # a sample's or label's meta, tensors


@functools.lru_cache(maxsize=1024)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """An .npy (version 1.0) header, as numpy writes it: the samples of one model have
    few shapes, so each is made once."""
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"  # the data starts 64-byte aligned
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def npy_bytes(array: np.ndarray) -> bytes:
    """The array as an .npy file (numpy.save's bytes, without its per-call overhead)."""
    if array.dtype == object:  # BYTES: fixed-width byte strings, never pickled
        array = np.array(array.tolist(), dtype=np.bytes_)
    if not array.flags.c_contiguous:  # (ascontiguousarray would make a 0-d array 1-d)
        array = np.ascontiguousarray(array)
    return _npy_header(array.dtype.str, array.shape) + array.tobytes()


def encode_record(entries: Sequence[Entry], between: Callable[[], None] | None = None) -> bytes:
    """One `.npz` record of one or more entries, each under its index: `<i>/meta` (JSON
    text) and `<i>/<tensor>`, as numpy.savez lays them out (numpy.load reads it, no
    pickle). `between` runs after each entry (the writer thread lets the serving loop
    have the interpreter there)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, (meta, tensors) in enumerate(entries):
            archive.writestr(f"{index}/meta.npy", npy_bytes(
                np.array(json.dumps(meta, separators=(",", ":")))))
            for key, value in tensors.items():
                archive.writestr(f"{index}/{key}.npy", npy_bytes(value))
            if between is not None:
                between()
    return buffer.getvalue()


def decode_record(data: bytes) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """The entries of a record, in order; raises ValueError for one that is not."""
    entries: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            for key in archive.files:
                index, _, name = key.partition("/")
                meta, tensors = entries.setdefault(int(index), ({}, {}))
                if name == "meta":
                    meta.update(json.loads(str(archive[key])))
                else:
                    tensors[name] = archive[key]
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"not a capture record: {error}") from None
    return [entries[index] for index in sorted(entries)]


def entries_in(data: bytes) -> int:
    """How many entries a record holds, from its zip directory alone."""
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError):
        return 0
    return sum(1 for name in names if name.endswith("/meta.npy"))


def estimated_bytes(entry: Entry) -> int:
    """About what an entry adds to a record: its arrays and a header each."""
    meta, tensors = entry
    return 256 * (1 + len(tensors)) + 4 * len(json.dumps(meta)) + sum(
        array.nbytes for array in tensors.values())


class Collector:
    """Samples, feedback and the per-model journals of one runtime."""

    def __init__(self, directory: Path, window: int) -> None:
        self.directory = directory
        self._window = window
        self._policies: dict[str, CapturePolicy] = {}
        self._journals: dict[str, Journal] = {}
        self._journals_lock = threading.Lock()
        self._recent: OrderedDict[str, Answer] = OrderedDict()
        self._queue: queue.Queue[_Entry | None] = queue.Queue(maxsize=QUEUE_RECORDS)
        self._writer = threading.Thread(target=self._write_forever, name="capture-writer",
                                        daemon=True)
        self._writer.start()

    # ------------------------------------------------------------ policies

    def configure(self, policies: Mapping[str, CapturePolicy]) -> None:
        """The policy of each model that has one; models left out keep nothing more
        (what they kept stays in their journal until uploaded)."""
        for name, policy in policies.items():
            if not MODEL_DIR_PATTERN.match(name):
                logger.error("model=%r: not a name the runtime keeps samples under; data "
                             "collection stays off for it", name[:80])
                continue
            try:
                journal = self.journal(name)
            except OSError as error:  # the device's storage: serving goes on
                logger.error("model=%s: cannot open %s for kept samples: %s", name,
                             self.directory / name, error)
                continue
            journal.set_max_bytes(policy.max_bytes_per_device)
            telemetry.CAPTURE_STORED_BYTES.labels(name).set(journal.stored_bytes)
        self._policies = {name: policy for name, policy in policies.items()
                          if MODEL_DIR_PATTERN.match(name)}

    def policy(self, model: str) -> CapturePolicy:
        """The model's policy; the defaults for one that has none any more (its records
        still go up)."""
        return self._policies.get(model) or CapturePolicy()

    def journal(self, model: str) -> Journal:
        """The model's journal, opened on first use (it may hold records from before a
        restart, for a model no longer assigned)."""
        with self._journals_lock:  # the loop and the writer thread both open them
            journal = self._journals.get(model)
            if journal is None:
                policy = self.policy(model)
                journal = Journal(self.directory / model, policy.max_bytes_per_device, SUFFIX,
                                  on_drop=lambda _seq, data: self._dropped(
                                      model, "budget", entries_in(data)))
                self._journals[model] = journal
            return journal

    def models_with_records(self) -> list[str]:
        """Models whose journal exists on disk, opened or not."""
        if not self.directory.is_dir():
            return []
        return sorted(path.name for path in self.directory.iterdir()
                      if path.is_dir() and MODEL_DIR_PATTERN.match(path.name))

    # ------------------------------------------------------------ on the loop

    def observe(self, model: ModelVersion, request_id: str, request: InferRequest,
                outputs: Tensors, classes: np.ndarray | None) -> None:
        """The engine's observer: remembers the answer and queues a sample when kept."""
        policy = self._policies.get(model.name)
        if policy is None:
            return
        if classes is not None and len(request_id) <= MAX_ID_CHARS:
            self._recent[request_id] = Answer(model.name, model.version, model.stats,
                                              tuple(str(c) for c in classes.tolist()))
            self._recent.move_to_end(request_id)
            if len(self._recent) > self._window:
                self._recent.popitem(last=False)
        reason = capture_reason(policy, outputs, random.random())
        if reason is None:
            return
        tensors = {f"input_{i}": array for i, array in enumerate(request.inputs.values())}
        meta: dict[str, Any] = {
            "kind": "sample", "id": request_id, "model": model.name, "version": model.version,
            "timeMs": int(time.time() * 1000), "reason": reason,
            "inputs": list(request.inputs), "datatypes": dict(request.datatypes)}
        if policy.include_outputs:
            meta["outputs"] = list(outputs)
            tensors.update({f"output_{i}": array for i, array in enumerate(outputs.values())})
        telemetry.CAPTURED.labels(model.name, reason).inc()
        self._enqueue(_Entry(model.name, meta, tensors))

    def feedback(self, model: str, request_id: str, labels: list[str]) -> FeedbackResult:
        """Takes the true labels of a remembered request's rows, once."""
        if model not in self._policies:
            raise InferenceError.not_found(
                f"model {model!r} takes no feedback: its EdgeModel sets no dataCollection")
        if not request_id:
            raise InferenceError.invalid("feedback needs the request's id")
        answer = self._recent.get(request_id)
        if answer is None or answer.model != model:
            raise InferenceError.not_found(
                f"model {model!r} answered no request {request_id[:MAX_ID_CHARS]!r} among "
                f"its last {self._window} (or feedback for it was taken already)")
        if len(labels) != len(answer.predictions):
            raise InferenceError.invalid(
                f"label: request {request_id!r} had {len(answer.predictions)} rows; got "
                f"{len(labels)} labels")
        if any(len(label) > MAX_LABEL_CHARS for label in labels):
            raise InferenceError.invalid(f"label: longer than {MAX_LABEL_CHARS} characters")
        del self._recent[request_id]
        correct = sum(label == predicted
                      for label, predicted in zip(labels, answer.predictions, strict=True))
        answer.stats.labelled += len(labels)
        answer.stats.correct += correct
        telemetry.FEEDBACK.labels(model, answer.version, "correct").inc(correct)
        telemetry.FEEDBACK.labels(model, answer.version, "wrong").inc(len(labels) - correct)
        self._enqueue(_Entry(model, {
            "kind": "label", "id": request_id, "model": model, "version": answer.version,
            "timeMs": int(time.time() * 1000), "labels": labels,
            "predictions": list(answer.predictions)}, {}))
        return FeedbackResult(model, answer.version, request_id, len(labels), correct)

    def _enqueue(self, record: _Entry) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._dropped(record.model, "busy")

    def _dropped(self, model: str, reason: str, count: int = 1) -> None:
        telemetry.CAPTURE_DROPPED.labels(model, reason).inc(count)

    # ------------------------------------------------------------ the writer

    def _write_forever(self) -> None:
        """Takes what is queued LINGER_S after the first entry, and writes each model's
        entries as few records as fit: one synced write serves many requests under
        load, and a quiet runtime writes each entry within LINGER_S."""
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                return
            # Asleep, not waiting on the queue: the serving loop's puts wake nothing.
            time.sleep(LINGER_S)
            taken, closing = [first], False
            while len(taken) < QUEUE_RECORDS:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    closing = True
                    break
                taken.append(entry)
            by_model: dict[str, list[_Entry]] = {}
            for entry in taken:
                by_model.setdefault(entry.model, []).append(entry)
            for model, entries in by_model.items():
                self._write(model, entries)
            for _ in range(len(taken) + closing):
                self._queue.task_done()
            if closing:
                return

    def _write(self, model: str, entries: list[_Entry]) -> None:
        """Appends the entries as records of at most MAX_RECORD_BYTES (by estimate);
        an entry too large alone is dropped."""
        records: list[list[Entry]] = [[]]
        size = 0
        for entry in entries:
            pair = (entry.meta, entry.tensors)
            estimate = estimated_bytes(pair)
            if estimate > MAX_RECORD_BYTES:
                self._dropped(model, "tooLarge")
                continue
            if records[-1] and size + estimate > MAX_RECORD_BYTES:
                records.append([])
                size = 0
            records[-1].append(pair)
            size += estimate
        try:
            journal = self.journal(model)
            for record in records:
                if record:
                    # sleep(0) gives up the interpreter lock between entries: the
                    # serving loop never waits behind a whole record's encoding.
                    journal.append(encode_record(record, between=lambda: time.sleep(0)))
            telemetry.CAPTURE_STORED_BYTES.labels(model).set(journal.stored_bytes)
        except OSError as error:  # the device's storage: serving goes on
            logger.error("model=%s: cannot keep %d entries: %s", model, len(entries), error)
            self._dropped(model, "storage", len(entries))

    def flush(self) -> None:
        """Waits until every queued record is written (tests, shutdown)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=10)
