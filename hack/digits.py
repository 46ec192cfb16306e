"""The demo's model: a digit classifier trained on scikit-learn's bundled handwritten
digits (8x8 pixels, 1,797 images), converted to ONNX with skl2onnx, and an int8
variant made with ONNX Runtime's dynamic quantization.

    python hack/digits.py OUT_DIR    # writes digits-fp32.onnx and digits-int8.onnx
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Digits:
    fp32: Path
    int8: Path
    test_pixels: np.ndarray  # (n, 64) float32 in [0, 1]
    test_labels: np.ndarray  # (n,) int64
    accuracy: float  # of the trained classifier on the test images, in scikit-learn


def build(out: Path) -> Digits:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    pixels, labels = load_digits(return_X_y=True)
    pixels = (pixels / 16).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        pixels, labels, test_size=0.2, random_state=0, stratify=labels)
    classifier = MLPClassifier(hidden_layer_sizes=(128,), max_iter=300, random_state=0)
    classifier.fit(train_x, train_y)
    # Tensors, not skl2onnx's default list of maps: "label" [n] int64 and
    # "probabilities" [n, 10], served by the Open Inference Protocol as they are.
    onnx_model = to_onnx(classifier, initial_types=[("pixels", FloatTensorType([None, 64]))],
                         options={id(classifier): {"zipmap": False}}, target_opset=17)
    out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out / "digits-fp32.onnx", out / "digits-int8.onnx"
    fp32.write_bytes(onnx_model.SerializeToString())
    logging.getLogger("root").setLevel(logging.ERROR)  # quantization's advice to preprocess
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return Digits(fp32, int8, test_x, test_y.astype(np.int64),
                  float(classifier.score(test_x, test_y)))


if __name__ == "__main__":
    built = build(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(f"{built.fp32} ({built.fp32.stat().st_size} bytes), {built.int8} "
          f"({built.int8.stat().st_size} bytes); test accuracy {built.accuracy:.3f}")
