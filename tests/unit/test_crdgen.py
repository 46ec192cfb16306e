"""The committed CRDs are exactly what the models generate, and they are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet.operator import crdgen

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def test_committed_crds_are_current() -> None:
    assert crdgen.main(["--check", str(CRD_DIR)]) == 0, "run `make crds` and commit the result"


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    crdgen.main([str(tmp_path)])
    path = tmp_path / crdgen.KINDS[0].file_name
    path.write_text(path.read_text().replace("maxLength: 64", "maxLength: 65"))
    assert crdgen.main(["--check", str(tmp_path)]) == 1


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found.extend(_walk(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_walk(value, f"{path}[{index}]"))
    return found


@pytest.mark.parametrize("kind", crdgen.KINDS, ids=lambda k: k.kind)
def test_schema_has_no_keywords_the_api_server_rejects(kind: crdgen.ResourceKind) -> None:
    schema = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    forbidden = {"$ref", "$defs", "title", "patternProperties", "propertyNames", "const"}
    for path, node in _walk(schema):
        assert not forbidden & node.keys(), path
        assert node.get("additionalProperties") is not False, path


def test_sha256_and_percent_bounds_reach_the_crd() -> None:
    spec = crdgen.structural_schema(crdgen.KINDS[0].spec)
    assert spec["properties"]["source"]["properties"]["sha256"]["pattern"] == "^[0-9a-fA-F]{64}$"
    percent = spec["properties"]["rollout"]["properties"]["steps"]["items"]["properties"]["percent"]
    assert (percent["minimum"], percent["maximum"]) == (0, 100)
    assert spec["properties"]["rollout"]["properties"]["maxUnavailable"][
        "x-kubernetes-int-or-string"] is True
