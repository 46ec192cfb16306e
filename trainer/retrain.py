"""Trains a new version of a classifier on the labelled samples devices sent back.

Reads the model's part of the dataset (operator/dataset.py describes the layout): every
shard's manifest, the samples' first input and the feedback labels, joined by device and
request id. Fits a scikit-learn multi-layer perceptron on the base training data (if
given) and on most of the labelled field rows, scores it on the field rows held out, and
scores the version that served those rows on the same rows (from the predictions the
labels carry). Writes what the operator reads, evaluation.json last, since its presence
says the output is complete:

    model.onnx       the new model (skl2onnx): input named as the samples' first input,
                     outputs `label` [n] int64 and `probabilities` [n, classes]
    model.sha256     its SHA-256, as sha256sum writes it
    evaluation.json  {"metric": "accuracy", "value", "samples", "baseValue"}

Labels are class indices (feedback "3" or 3); other labels are counted and left out.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.operator.dataset import ObjectStore

log = logging.getLogger("edgefleet.retrain")
MIN_LABELLED_ROWS = 10


class TrainingError(Exception):
    """The dataset cannot train a model; the message says why."""


@dataclass
class FieldData:
    """Labelled rows from the field, and what the serving version answered for each."""

    inputs: np.ndarray  # (n, features) float32
    labels: np.ndarray  # (n,) int64
    predictions: np.ndarray  # (n,) int64; -1 where the version's answer was no index
    input_name: str
    samples: int  # samples read, labelled or not
    unlabelled: int  # samples no label joined
    skipped_labels: int  # labels that are no class index, or joined no sample
    malformed: int  # entries not as a runtime writes them


def shards(store: ObjectStore) -> Iterator[tuple[dict[str, Any], np.lib.npyio.NpzFile]]:
    """Each complete shard (one with its manifest) of the model: manifest and arrays."""
    for key, _ in sorted(store.keys("")):
        top = key.split("/", 1)[0]
        if not key.endswith(".json") or top in ("_devices", "_retraining"):
            continue
        data = store.get(key.removesuffix(".json") + ".npz")
        manifest = store.get(key)
        if data is None or manifest is None:
            continue  # expired while listed
        yield json.loads(manifest), np.load(io.BytesIO(data), allow_pickle=False)


def class_index(label: str) -> int | None:
    try:
        index = int(label)
    except ValueError:
        return None
    return index if index >= 0 else None


def read_field_data(store: ObjectStore) -> FieldData:
    """The labelled rows of every complete shard. Entries came from devices: one that is
    not as a runtime writes it is counted and left out, never trusted."""
    rows: dict[tuple[str, str], np.ndarray] = {}  # (device, id) -> the sample's input rows
    labels: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    input_name, malformed = "", 0
    for manifest, arrays in shards(store):
        device = str(manifest.get("device"))
        for entry in manifest.get("entries", []):
            try:
                key = (device, str(entry["id"]))
                if entry["kind"] == "sample":
                    prefix = f"{int(entry['sequence']):012d}/{int(entry['index'])}/"
                    array = arrays[prefix + "input_0"]
                    rows[key] = array.reshape(array.shape[0], -1).astype(np.float32)
                    names = entry.get("inputs")
                    if not input_name and isinstance(names, list) and names:
                        input_name = str(names[0])
                elif entry["kind"] == "label":
                    labels[key] = ([str(x) for x in entry["labels"]],
                                   [str(x) for x in entry.get("predictions", [])])
            except (KeyError, ValueError, TypeError, IndexError):
                malformed += 1
    inputs, truths, predicted = [], [], []
    skipped = 0
    width = next(iter(rows.values())).shape[1] if rows else 0  # the first sample's
    for key, (row_labels, row_predictions) in labels.items():
        sample = rows.get(key)
        if sample is None or len(row_labels) != len(sample) or sample.shape[1] != width:
            skipped += len(row_labels)
            continue
        if len(row_predictions) != len(row_labels):
            row_predictions = [""] * len(row_labels)  # what the version answered: unknown
        for row, label, prediction in zip(sample, row_labels, row_predictions, strict=True):
            index = class_index(label)
            if index is None:
                skipped += 1
                continue
            inputs.append(row)
            truths.append(index)
            guess = class_index(prediction)
            predicted.append(-1 if guess is None else guess)
    return FieldData(
        inputs=np.array(inputs, dtype=np.float32).reshape(len(inputs), width),
        labels=np.array(truths, dtype=np.int64), predictions=np.array(predicted, np.int64),
        input_name=input_name, samples=len(rows),
        unlabelled=sum(1 for key in rows if key not in labels), skipped_labels=skipped,
        malformed=malformed)


@dataclass(frozen=True)
class Trained:
    onnx: bytes
    accuracy: float
    base_accuracy: float
    held_out: int


def train(field: FieldData, base_inputs: np.ndarray | None, base_labels: np.ndarray | None,
          hidden_units: int, holdout: float, seed: int) -> Trained:
    """Fits on the base data and the field rows not held out; scores on the held out."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    count = len(field.labels)
    if count < MIN_LABELLED_ROWS:
        raise TrainingError(f"{count} labelled rows joined their samples; at least "
                            f"{MIN_LABELLED_ROWS} are needed")
    order = np.random.default_rng(seed).permutation(count)
    held = order[:max(1, int(count * holdout))]
    kept = order[len(held):]
    train_x, train_y = field.inputs[kept], field.labels[kept]
    if base_inputs is not None and base_labels is not None:
        if base_inputs.reshape(len(base_inputs), -1).shape[1] != field.inputs.shape[1]:
            raise TrainingError(f"the base data has {base_inputs.shape[1:]} features per row, "
                                f"the field's samples {field.inputs.shape[1]}")
        train_x = np.concatenate([base_inputs.reshape(len(base_inputs), -1)
                                  .astype(np.float32), train_x])
        train_y = np.concatenate([base_labels.astype(np.int64), train_y])
    if len(np.unique(train_y)) < 2:
        raise TrainingError("the training rows hold fewer than two classes")
    classifier = MLPClassifier(hidden_layer_sizes=(hidden_units,), max_iter=300,
                               random_state=seed)
    classifier.fit(train_x, train_y)
    accuracy = float(classifier.score(field.inputs[held], field.labels[held]))
    base_accuracy = float(np.mean(field.predictions[held] == field.labels[held]))
    model = to_onnx(classifier,
                    initial_types=[(field.input_name or "input",
                                    FloatTensorType([None, field.inputs.shape[1]]))],
                    options={id(classifier): {"zipmap": False}}, target_opset=17)
    return Trained(model.SerializeToString(), accuracy, base_accuracy, len(held))


def write_output(store: ObjectStore, trained: Trained) -> str:
    """Writes the output, evaluation.json last; returns the model's sha256."""
    digest = hashlib.sha256(trained.onnx).hexdigest()
    store.put("model.onnx", trained.onnx)
    store.put("model.sha256", f"{digest}  model.onnx\n".encode())
    store.put("evaluation.json", json.dumps({
        "metric": "accuracy", "value": trained.accuracy, "samples": trained.held_out,
        "baseValue": trained.base_accuracy}).encode())
    return digest
