"""The demo's model: digit classifiers trained on scikit-learn's bundled handwritten
digits (8x8 pixels, 1,797 images) and converted to ONNX with skl2onnx, two versions
(1.2.0 with 128 hidden units, 1.3.0 with 256), the held-out images as a validation
set in the layout EdgeModel spec.validation reads (.npz: `pixels`, `labels`), and the
training images in the same layout (what a retraining Job trains on beside the field's
data). Variants of them (int8) are the operator's to build, from the EdgeModel.

    python hack/digits.py OUT_DIR    # writes digits-1.2.0.onnx, digits-1.3.0.onnx,
                                     # digits-validation.npz, digits-train.npz
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Digits:
    versions: dict[str, Path]  # version -> ONNX file
    validation: Path  # the held-out images and their labels, .npz
    train: Path  # the training images and their labels, .npz
    test_pixels: np.ndarray  # (n, 64) float32 in [0, 1]
    test_labels: np.ndarray  # (n,) int64
    train_pixels: np.ndarray
    train_labels: np.ndarray
    accuracy: dict[str, float]  # of each version on the held-out images, in scikit-learn


HIDDEN_UNITS = {"1.2.0": 128, "1.3.0": 256}


def build(out: Path) -> Digits:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    pixels, labels = load_digits(return_X_y=True)
    pixels = (pixels / 16).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        pixels, labels, test_size=0.2, random_state=0, stratify=labels)
    out.mkdir(parents=True, exist_ok=True)
    versions, accuracy = {}, {}
    for version, hidden in HIDDEN_UNITS.items():
        classifier = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=300, random_state=0)
        classifier.fit(train_x, train_y)
        # Tensors, not skl2onnx's default list of maps: "label" [n] int64 and
        # "probabilities" [n, 10], served by the Open Inference Protocol as they are.
        onnx_model = to_onnx(classifier,
                             initial_types=[("pixels", FloatTensorType([None, 64]))],
                             options={id(classifier): {"zipmap": False}}, target_opset=17)
        versions[version] = out / f"digits-{version}.onnx"
        versions[version].write_bytes(onnx_model.SerializeToString())
        accuracy[version] = float(classifier.score(test_x, test_y))
    validation = out / "digits-validation.npz"
    np.savez(validation, pixels=test_x, labels=test_y.astype(np.int64))
    train = out / "digits-train.npz"
    np.savez(train, pixels=train_x, labels=train_y.astype(np.int64))
    return Digits(versions, validation, train, test_x, test_y.astype(np.int64), train_x,
                  train_y.astype(np.int64), accuracy)


def sideways(pixels: np.ndarray) -> np.ndarray:
    """What a camera mounted a quarter turn round sees: each 8x8 image rotated."""
    return np.rot90(pixels.reshape(-1, 8, 8), k=1, axes=(1, 2)).reshape(-1, 64).copy()


if __name__ == "__main__":
    built = build(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    for version, path in built.versions.items():
        print(f"{path} ({path.stat().st_size} bytes): held-out accuracy "
              f"{built.accuracy[version]:.3f}")
    print(f"{built.validation}: {len(built.test_labels)} images with their labels")
