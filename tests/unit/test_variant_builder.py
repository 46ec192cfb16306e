"""The operator's variant builds against the real worker process: bounded in time and
memory, datasets reached only where artifacts may be, results recorded once."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.operator.artifact_sources import SourcePolicy
from edgefleet.operator.artifacts import ArtifactCache
from edgefleet.operator.resources import Validation, Variant
from edgefleet.operator.variant_builder import BuildRequest, VariantBuilder
from edgefleet.operator.variants import BuildOutcome


def linear_model() -> bytes:
    weights = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def build(tmp_path: Path, variant: Variant, validation: Validation | None = None, *,
          timeout_s: float = 120, memory_bytes: int = 4 * 2**30,
          roots: tuple[Path, ...] | None = None) -> tuple[BuildOutcome, VariantBuilder]:
    """One build to its end, with the real worker, as the operator runs it."""
    source = tmp_path / "source.onnx"
    source.write_bytes(linear_model())
    cache = ArtifactCache(tmp_path / "cache", 2**30, 2**30,
                          SourcePolicy(file_roots=(tmp_path,) if roots is None else roots))

    async def run() -> tuple[BuildOutcome, VariantBuilder]:
        builder = VariantBuilder(cache, tmp_path / "cache", concurrency=1,
                                 timeout_s=timeout_s, memory_bytes=memory_bytes)
        artifact = await cache.ensure("fleet", source.as_uri(),
                                      hashlib.sha256(source.read_bytes()).hexdigest())
        request = BuildRequest("fleet", artifact, variant, validation)
        done = asyncio.Event()
        while (outcome := builder.outcome(request, done.set)).state == "Building":
            await done.wait()
            done.clear()
        return outcome, builder

    return asyncio.run(run())


INT8 = Variant.model_validate({"name": "int8", "optimize": {"quantization": "dynamicInt8"}})


def test_a_build_is_recorded_once_and_its_bytes_land_in_the_namespace_cache(
    tmp_path: Path,
) -> None:
    outcome, _ = build(tmp_path, INT8)
    assert outcome.state == "Built" and outcome.size > 0, outcome
    blob = tmp_path / "cache" / "blobs" / "fleet" / outcome.digest.removeprefix("sha256:")
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == outcome.digest[7:]
    onnx.checker.check_model(onnx.load_from_string(blob.read_bytes()))
    again, builder = build(tmp_path, INT8)  # a new builder, as after a restart
    assert again == outcome and not builder._running


def test_a_build_past_its_time_is_stopped_and_said_so(tmp_path: Path) -> None:
    outcome, _ = build(tmp_path, INT8, timeout_s=0.2)
    assert (outcome.state, outcome.reason) == ("Failed", "BuildTimedOut"), outcome
    workers = [p for p in Path("/proc").glob("[0-9]*/cmdline")
               if b"edgefleet.operator.variant_worker" in p.read_bytes()]
    assert workers == []


def test_a_build_past_its_memory_fails_and_the_operator_goes_on(tmp_path: Path) -> None:
    outcome, _ = build(tmp_path, INT8, memory_bytes=64 * 2**20)
    assert (outcome.state, outcome.reason) == ("Failed", "BuildFailed"), outcome


def test_a_dataset_outside_the_artifact_roots_is_never_read(tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.npz"
    buffer = io.BytesIO()
    np.savez(buffer, inputs=np.zeros((4, 8), np.float32), labels=np.zeros(4, np.int64))
    outside.write_bytes(buffer.getvalue())
    validation = Validation.model_validate({
        "dataset": {"uri": outside.as_uri(),
                    "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()},
        "maxDrop": 0.1})
    outcome, _ = build(tmp_path, INT8, validation, roots=(tmp_path,))
    assert (outcome.state, outcome.reason) == ("Failed", "SourceNotAllowed"), outcome
