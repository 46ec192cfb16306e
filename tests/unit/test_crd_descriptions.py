"""`kubectl explain` reads like the documentation: every field of both committed CRDs
carries a description, and status conditions are list-maps keyed by `type`."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
CRD_FILES = ("edgemodels.yaml", "edgedevices.yaml")
Schema = dict[str, Any]


def _schema(file_name: str) -> Schema:
    crd = yaml.safe_load((CRD_DIR / file_name).read_text())
    schema: Schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _described_nodes(node: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    """The nodes below `node` that need a description, with their paths: every node reached
    through `properties`, and the items of lists and values of maps (`items`,
    `additionalProperties`) that are objects with properties of their own."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from _described_nodes(child, f"{path}.{name}")
    for keyword, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        child = node.get(keyword)
        if isinstance(child, dict):
            if "properties" in child:
                yield f"{path}{suffix}", child
            yield from _described_nodes(child, f"{path}{suffix}")


def _undescribed(schema: Schema, root: str) -> list[str]:
    # metadata is the API server's: it refuses any schema there but name and generateName.
    nodes = [(root, schema), *_described_nodes(schema, root)]
    return [path for path, node in nodes if path != f"{root}.metadata"
            and (not isinstance(node.get("description"), str) or not node["description"].strip())]


@pytest.mark.parametrize("file_name", CRD_FILES)
def test_every_field_has_a_description(file_name: str) -> None:
    missing = _undescribed(_schema(file_name), file_name)
    assert not missing, (f"{len(missing)} schema nodes lack a description (give the field a "
                         f"Field(description=...) or its model a docstring in "
                         f"operator/resources.py, then run `make crds`): {', '.join(missing)}")


@pytest.mark.parametrize("file_name", CRD_FILES)
def test_status_conditions_are_a_list_map_keyed_by_type(file_name: str) -> None:
    conditions = _schema(file_name)["properties"]["status"]["properties"]["conditions"]
    assert conditions["type"] == "array"
    assert conditions.get("x-kubernetes-list-type") == "map"
    assert conditions.get("x-kubernetes-list-map-keys") == ["type"]
    # The API server accepts a map key only if every item must have it.
    assert "type" in conditions["items"]["required"]


def test_a_missing_description_is_named() -> None:
    schema = copy.deepcopy(_schema("edgemodels.yaml"))
    status = schema["properties"]["status"]
    del status["properties"]["conditions"]["items"]["properties"]["reason"]["description"]
    status["properties"]["phase"]["description"] = " "
    assert _undescribed(schema, "EdgeModel") == ["EdgeModel.status.phase",
                                                 "EdgeModel.status.conditions[].reason"]
