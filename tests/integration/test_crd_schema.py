"""The real API server judges the shared examples as the pydantic models do, and the
CRDs give kubectl its columns, short names and category."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import Kube
from tests.helpers import Example, load_examples

pytestmark = pytest.mark.integration


def dry_run(kube: Kube, namespace: str, example: Example) -> tuple[int, str]:
    """Whether the API server would take the example. Status is a subresource, which
    create ignores: an example with one is created, then its status is tried."""
    body = {key: value for key, value in example.body.items() if key != "status"}
    result = kube.kubectl("apply", *([] if "status" in example.body else ["--dry-run=server"]),
                          "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False)
    if result.returncode != 0 or "status" not in example.body:
        return result.returncode, result.stderr
    result = kube.kubectl("patch", example.kind.lower(), example.body["metadata"]["name"],
                          "-n", namespace, "--subresource=status", "--type=merge",
                          "--dry-run=server", "-p", json.dumps({"status": example.body["status"]}),
                          check=False)
    return result.returncode, result.stderr


@pytest.mark.parametrize("example", load_examples("valid"), ids=lambda e: e.name)
def test_api_server_accepts_valid_example(kube: Kube, namespace: str, example: Example) -> None:
    code, stderr = dry_run(kube, namespace, example)
    assert code == 0, stderr


@pytest.mark.parametrize("example", load_examples("invalid"), ids=lambda e: e.name)
def test_api_server_rejects_invalid_example_naming_the_field(
    kube: Kube, namespace: str, example: Example
) -> None:
    code, stderr = dry_run(kube, namespace, example)
    assert code != 0
    assert f"{example.error_at}" in stderr, stderr


def test_kubectl_shows_columns_short_names_and_category(kube: Kube, namespace: str) -> None:
    for example in load_examples("valid"):
        if example.name in ("minimal", "device"):
            kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(example.body))
    models = kube.kubectl("get", "em", "-n", namespace).stdout.splitlines()
    assert models[0].split() == ["NAME", "VERSION", "STABLE", "STEP", "UPDATED", "READY",
                                 "PHASE", "AGE"]
    devices = kube.kubectl("get", "ed", "-n", namespace).stdout.splitlines()
    assert devices[0].split() == ["NAME", "PHASE", "HEALTH", "MODELS", "LAST-SEEN",
                                  "CERT-EXPIRES", "RUNTIME", "AGE"]
    wide = kube.kubectl("get", "ed", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert "DISK-FREE" in wide[0].split()
    everything = kube.kubectl("get", "edgefleet", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(everything) == ["edgedevice.edgefleet.io/device",
                                  "edgemodel.edgefleet.io/minimal"]


def test_kubectl_explain_describes_every_field(kube: Kube, namespace: str) -> None:
    from edgefleet.operator.resources import RolloutAnalysis

    explained = kube.kubectl("explain", "edgemodels.spec.rollout.analysis").stdout
    flat = " ".join(explained.split())
    for name, field in RolloutAnalysis.model_fields.items():
        alias = field.alias or name
        assert f"  {alias}\t<" in explained, explained
        assert field.description and " ".join(field.description.split()) in flat, alias
    device = " ".join(kube.kubectl("explain", "edgedevices").stdout.split())
    assert "DESCRIPTION: A device that runs the EdgeFleet edge runtime" in device
