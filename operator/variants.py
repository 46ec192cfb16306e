"""Per-device variants of a model, as pure decisions: which variant a device fits, what
the model's status says of each variant, and when a built variant is withheld.

A variant is built from one version's verified source (variant_builder.py runs the
build); its entry in `status.variants` is keyed by the variant's name, the version and
the source's digest, so a rollout moves each version together with its own variants:
devices outside the cohort keep the stable version's builds, devices in it get the
target's. The first variant of the spec a device fits decides what it gets; when that
variant is not Ready (building, withheld, failed), the device gets the source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from edgefleet.operator.resources import (
    ArtifactStatus,
    Capabilities,
    Validation,
    Variant,
    VariantStatus,
)
from edgefleet.operator.selectors import selector_matches

VARIANTS_READY = "VariantsReady"
MAX_MESSAGE = 1024  # of one variant's; the condition joins several


@dataclass(frozen=True)
class BuildOutcome:
    """Where one variant's build stands (variant_builder.py), before any verdict."""

    state: Literal["Building", "Built", "Failed"]
    digest: str = ""
    size: int = 0
    build_seconds: float | None = None
    built_at: datetime | None = None
    # The validation's scores (None without spec.validation) and one-row latencies.
    score: float | None = None
    source_score: float | None = None
    latency_ms: float | None = None
    source_latency_ms: float | None = None
    reason: str = ""  # why it failed, a condition reason
    message: str = ""


BUILDING = BuildOutcome("Building")


def fits(variant: Variant, labels: Mapping[str, str], capabilities: Capabilities | None
         ) -> bool:
    """Whether a device with these labels and reported capabilities gets the variant. A
    device that reported no capabilities fits no variant that requires any."""
    if variant.selector is not None and not selector_matches(variant.selector, labels):
        return False
    required = variant.capabilities
    if required is None:
        return True
    if capabilities is None:
        return False
    if not set(required.execution_providers) <= set(capabilities.execution_providers):
        return False
    if required.architectures and capabilities.arch not in required.architectures:
        return False
    if required.min_memory_bytes is not None and (
            capabilities.memory_bytes < required.min_memory_bytes):
        return False
    return required.min_cpus is None or capabilities.cpus >= required.min_cpus


@dataclass(frozen=True)
class Choice:
    variant: Variant
    status: VariantStatus
    digest: str
    size: int


def choose(variants: Sequence[Variant], statuses: Iterable[VariantStatus],
           artifact: ArtifactStatus, labels: Mapping[str, str],
           capabilities: Capabilities | None) -> Choice | None:
    """The variant of `artifact`'s version the device gets; None: the source."""
    for variant in variants:
        if fits(variant, labels, capabilities):
            for entry in statuses:
                if (entry.name == variant.name and entry.version == artifact.version
                        and entry.source_digest == artifact.digest and entry.phase == "Ready"
                        and entry.digest and entry.bytes is not None):
                    return Choice(variant, entry, entry.digest, entry.bytes)
            return None
    return None


def judge(name: str, version: str, source_digest: str, outcome: BuildOutcome,
          validation: Validation | None) -> VariantStatus:
    """The status entry of one build: a variant that scores worse than the source by
    more than validation.maxDrop is Withheld, with the numbers."""
    entry = VariantStatus(name=name, version=version, source_digest=source_digest,
                          phase="Building")
    if outcome.state == "Building":
        return entry
    if outcome.state == "Failed":
        return entry.model_copy(update={"phase": "Failed", "message": _bounded(
            f"{outcome.reason}: {outcome.message}")})
    entry = entry.model_copy(update={
        "digest": outcome.digest, "bytes": outcome.size,
        "build_seconds": outcome.build_seconds, "built_at": outcome.built_at,
        "accuracy": outcome.score, "source_accuracy": outcome.source_score,
        "latency_ms": outcome.latency_ms, "source_latency_ms": outcome.source_latency_ms})
    if validation is None:
        return entry.model_copy(update={"phase": "Ready",
                                        "message": "built; spec.validation scores nothing"})
    if outcome.score is None or outcome.source_score is None:
        return entry.model_copy(update={"phase": "Failed",
                                        "message": "built, but it was not scored"})
    drop = (outcome.score - outcome.source_score if validation.metric == "meanSquaredError"
            else outcome.source_score - outcome.score)
    scores = (f"{validation.metric} {outcome.score:.4g} against the source's "
              f"{outcome.source_score:.4g}")
    if drop > validation.max_drop:
        return entry.model_copy(update={"phase": "Withheld", "message": _bounded(
            f"{scores}: {drop:.4g} worse, more than maxDrop {validation.max_drop:g}; devices "
            "that match it keep the source")})
    return entry.model_copy(update={"phase": "Ready", "message": _bounded(scores)})


def fresh(variants: Sequence[Variant], version: str, source_digest: str,
          outcomes: Mapping[str, BuildOutcome], validation: Validation | None,
          previous: Iterable[VariantStatus]) -> list[VariantStatus]:
    """The entries of the spec's version, one per variant of the spec. A rebuild of a
    variant that was Ready keeps the Ready entry until it finishes: builds are
    deterministic, and devices keep what they have."""
    before = {(e.name, e.version, e.source_digest): e for e in previous}
    entries = []
    for variant in variants:
        entry = judge(variant.name, version, source_digest,
                      outcomes.get(variant.name, BUILDING), validation)
        kept = before.get((variant.name, version, source_digest))
        if entry.phase == "Building" and kept is not None and kept.phase == "Ready":
            entry = kept
        entries.append(entry)
    return entries


def carried(variants: Sequence[Variant], previous: Iterable[VariantStatus],
            serving: Iterable[ArtifactStatus | None],
            fresh_for: tuple[str, str] | None) -> list[VariantStatus]:
    """The previous entries of the other versions devices still serve (`serving`: the
    stable version, a rollout's target; not `fresh_for`, the spec's (version, source
    digest) judged anew), for the variants the spec still names."""
    names = {variant.name for variant in variants}
    served = {(a.version, a.digest) for a in serving if a} - {fresh_for}
    return [e for e in previous if (e.version, e.source_digest) in served and e.name in names]


def settled(entries: Iterable[VariantStatus], version: str, source_digest: str) -> bool:
    """Whether every variant of this version is past building: a rollout of the version
    starts only then, so that it moves every variant together."""
    return all(e.phase != "Building" for e in entries
               if (e.version, e.source_digest) == (version, source_digest))


def condition(entries: Sequence[VariantStatus], version: str
              ) -> tuple[Literal["True", "False"], str, str]:
    """The VariantsReady condition for the spec's version."""
    mine = [e for e in entries if e.version == version]
    building = [e.name for e in mine if e.phase == "Building"]
    if building:
        return "False", "Building", f"building {', '.join(building)} of {version}"
    troubled = [e for e in mine if e.phase in ("Withheld", "Failed")]
    if troubled:
        reason = ("VariantBuildFailed" if any(e.phase == "Failed" for e in troubled)
                  else "VariantWithheld")
        return "False", reason, "; ".join(f"{e.name} {e.phase.lower()}: {e.message}"
                                          for e in troubled)
    if not mine:
        return "False", "Pending", f"waiting for version {version}'s verified source"
    return "True", "AllVariantsReady", "; ".join(
        f"{e.name}: {e.bytes} bytes" + (f", {e.message}" if e.accuracy is not None else "")
        for e in mine)


def transitions(previous: Iterable[VariantStatus], current: Iterable[VariantStatus]
                ) -> list[tuple[str, str]]:
    """(reason, message) of a Warning for each variant that became Withheld or Failed,
    and of a Normal event for each that became Ready: posted once, after the write."""
    before = {(e.name, e.version, e.source_digest): e.phase for e in previous}
    changes = []
    for entry in current:
        was = before.get((entry.name, entry.version, entry.source_digest))
        if was == entry.phase or entry.phase == "Building":
            continue
        what = f"variant {entry.name} of {entry.version}"
        if entry.phase == "Ready":
            changes.append(("VariantReady", f"{what} is ready: {entry.bytes} bytes; "
                                            f"{entry.message}"))
        else:
            changes.append((f"Variant{entry.phase}", f"{what} {entry.phase.lower()}: "
                                                     f"{entry.message}"))
    return changes


def _bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 1] + "…"
