"""Which variant each device gets, and what the status says of each (operator/variants.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from edgefleet.operator import variants
from edgefleet.operator.resources import (
    ArtifactStatus,
    Capabilities,
    EdgeModelStatus,
    Validation,
    Variant,
    VariantStatus,
)
from edgefleet.operator.variants import BuildOutcome

SOURCE_1 = "sha256:" + "1" * 64
SOURCE_2 = "sha256:" + "2" * 64
BUILT = "sha256:" + "b" * 64
CPU = Capabilities(arch="x86_64", cpus=4, memory_bytes=2**32,
                   execution_providers=["CPUExecutionProvider"])


def variant(name: str, **fields: Any) -> Variant:
    return Variant.model_validate({"name": name, "optimize": {"quantization": "dynamicInt8"},
                                   **fields})


def ready(name: str, version: str = "1", source: str = SOURCE_1) -> VariantStatus:
    return VariantStatus(name=name, version=version, source_digest=source, phase="Ready",
                         digest=BUILT, bytes=10)


def artifact(version: str = "1", digest: str = SOURCE_1) -> ArtifactStatus:
    return ArtifactStatus(version=version, digest=digest, size_bytes=40)


@pytest.mark.parametrize(("required", "fits"), [
    ({}, True),
    ({"executionProviders": ["CPUExecutionProvider"]}, True),
    ({"executionProviders": ["CUDAExecutionProvider"]}, False),
    ({"architectures": ["aarch64", "x86_64"]}, True),
    ({"architectures": ["aarch64"]}, False),
    ({"minMemoryBytes": 2**32}, True),
    ({"minMemoryBytes": 2**32 + 1}, False),
    ({"minCpus": 8}, False),
])
def test_a_device_fits_a_variant_by_what_it_reported(required: dict[str, Any],
                                                     fits: bool) -> None:
    assert variants.fits(variant("v", capabilities=required), {}, CPU) is fits


def test_a_device_that_reported_nothing_fits_no_variant_that_requires_something() -> None:
    assert variants.fits(variant("v", capabilities={"minCpus": 1}), {}, None) is False
    assert variants.fits(variant("v"), {}, None) is True


def test_the_first_variant_a_device_fits_decides_and_one_not_ready_means_the_source() -> None:
    small = variant("int8", selector={"matchLabels": {"tier": "small"}})
    anyone = variant("fp16")
    withheld = ready("int8").model_copy(update={"phase": "Withheld"})
    statuses = [withheld, ready("fp16")]
    assert variants.choose([small, anyone], statuses, artifact(), {"tier": "small"}, CPU) is None
    choice = variants.choose([small, anyone], statuses, artifact(), {"tier": "big"}, CPU)
    assert choice is not None and (choice.variant.name, choice.digest) == ("fp16", BUILT)


def test_a_variant_is_chosen_only_for_the_version_and_source_it_was_built_from() -> None:
    statuses = [ready("int8", version="1", source=SOURCE_1)]
    assert variants.choose([variant("int8")], statuses, artifact("2", SOURCE_2), {}, CPU) is None
    assert variants.choose([variant("int8")], statuses, artifact("1", SOURCE_2), {}, CPU) is None
    assert variants.choose([variant("int8")], statuses, artifact(), {}, CPU) is not None


def scored(score: float, source_score: float) -> BuildOutcome:
    return BuildOutcome("Built", digest=BUILT, size=10, score=score, source_score=source_score,
                        built_at=datetime(2026, 12, 1, tzinfo=UTC))


def validation(metric: str, max_drop: float) -> Validation:
    return Validation.model_validate({"dataset": {"uri": "file:///d.npz", "sha256": "c" * 64},
                                      "metric": metric, "maxDrop": max_drop})


def test_a_variant_that_scores_worse_than_max_drop_is_withheld_with_its_numbers() -> None:
    entry = variants.judge("int8", "1", SOURCE_1, scored(0.90, 0.97),
                           validation("accuracy", 0.05))
    assert entry.phase == "Withheld"
    assert "accuracy 0.9 against the source's 0.97" in entry.message
    assert "0.07 worse, more than maxDrop 0.05" in entry.message
    passed = variants.judge("int8", "1", SOURCE_1, scored(0.95, 0.97),
                            validation("accuracy", 0.05))
    assert (passed.phase, passed.accuracy, passed.source_accuracy) == ("Ready", 0.95, 0.97)


def test_for_mean_squared_error_more_is_worse() -> None:
    assert variants.judge("int8", "1", SOURCE_1, scored(0.3, 0.1),
                          validation("meanSquaredError", 0.1)).phase == "Withheld"
    assert variants.judge("int8", "1", SOURCE_1, scored(0.15, 0.1),
                          validation("meanSquaredError", 0.1)).phase == "Ready"


def test_a_failed_build_is_failed_with_its_reason() -> None:
    entry = variants.judge("int8", "1", SOURCE_1,
                           BuildOutcome("Failed", reason="InvalidDataset", message="no labels"),
                           None)
    assert (entry.phase, entry.message) == ("Failed", "InvalidDataset: no labels")


def test_status_keeps_the_variants_of_versions_still_served_and_ready_ones_while_rebuilt(
) -> None:
    previous = EdgeModelStatus(variants=[ready("int8", "1", SOURCE_1), ready("gone", "1"),
                                         ready("int8", "0", "sha256:" + "0" * 64)])
    spec = [variant("int8")]
    entries = (variants.fresh(spec, "2", SOURCE_2, {}, None, previous.variants)
               + variants.carried(spec, previous.variants, [artifact("1", SOURCE_1)],
                                  ("2", SOURCE_2)))
    assert [(e.version, e.name, e.phase) for e in entries] == [("2", "int8", "Building"),
                                                                ("1", "int8", "Ready")]
    assert not variants.settled(entries, "2", SOURCE_2)
    assert variants.settled(entries, "1", SOURCE_1)
    # The spec's own version rebuilt (its blob was lost): what devices have stays Ready.
    again = (variants.fresh(spec, "1", SOURCE_1, {}, None, previous.variants)
             + variants.carried(spec, previous.variants, [artifact("1", SOURCE_1)],
                                ("1", SOURCE_1)))
    assert [(e.version, e.phase) for e in again] == [("1", "Ready")]


def test_transitions_name_each_variant_that_became_ready_or_was_withheld_once() -> None:
    building = ready("int8").model_copy(update={"phase": "Building"})
    withheld = ready("int8").model_copy(update={"phase": "Withheld", "message": "worse"})
    assert variants.transitions([building], [withheld]) == [
        ("VariantWithheld", "variant int8 of 1 withheld: worse")]
    assert variants.transitions([withheld], [withheld]) == []
    assert variants.condition([withheld], "1") == ("False", "VariantWithheld",
                                                   "int8 withheld: worse")
