"""Generates the CustomResourceDefinitions in `crds/` from the pydantic models.

    python -m edgefleet.operator.crdgen [--check] [OUT_DIR]

Pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references
inlined, optionals flattened, int-or-string marked, key patterns of maps turned into CEL
rules, and the keywords the API server does not accept dropped. `--check` fails when the
committed YAML differs from what the models generate (run by the tests).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from edgefleet.operator.resources import (
    GROUP,
    VERSION,
    EdgeDeviceSpec,
    EdgeDeviceStatus,
    EdgeModelSpec,
    EdgeModelStatus,
)

Schema = dict[str, Any]
# JSON Schema keywords with no place in a structural schema.
DROPPED_KEYWORDS = {"title", "$defs"}
# What every Kubernetes object's first fields mean, in the API server's own words.
API_CONVENTIONS = "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
API_VERSION_DESCRIPTION = (
    "APIVersion defines the versioned schema of this representation of an object. Servers "
    "should convert recognized schemas to the latest internal value, and may reject "
    f"unrecognized values. More info: {API_CONVENTIONS}#resources")
KIND_DESCRIPTION = (
    "Kind is a string value representing the REST resource this object represents. Servers "
    "may infer this from the endpoint the client submits requests to. Cannot be updated. In "
    f"CamelCase. More info: {API_CONVENTIONS}#types-kinds")


@dataclass(frozen=True)
class ResourceKind:
    kind: str
    plural: str
    short_name: str
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: list[dict[str, str | int]]

    @property
    def file_name(self) -> str:
        return f"{self.plural}.yaml"


KINDS = (
    ResourceKind(
        kind="EdgeModel", plural="edgemodels", short_name="em",
        description="A machine-learning model served on the EdgeDevices its selector matches: "
                    "its version and artifact, how new versions roll out, its per-device "
                    "variants, and what devices keep of its requests for retraining.",
        spec=EdgeModelSpec, status=EdgeModelStatus,
        printer_columns=[
            {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
            {"name": "Stable", "type": "string", "jsonPath": ".status.stableVersion"},
            {"name": "Step", "type": "string", "jsonPath": ".status.stepSummary",
             "description": "rollout step/steps"},
            {"name": "Updated", "type": "string", "jsonPath": ".status.updatedSummary",
             "description": "devices on the spec's version/targeted"},
            {"name": "Ready", "type": "string", "jsonPath": ".status.readySummary",
             "description": "devices serving their assigned version/targeted"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    ),
    ResourceKind(
        kind="EdgeDevice", plural="edgedevices", short_name="ed",
        description="A device that runs the EdgeFleet edge runtime: how it may enrol, and "
                    "what it serves, measures and reports over its session with a fleet "
                    "gateway.",
        spec=EdgeDeviceSpec, status=EdgeDeviceStatus,
        printer_columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Health", "type": "string", "jsonPath": ".status.healthSummary",
             "description": "the health conditions that are True, or Healthy"},
            {"name": "Models", "type": "integer", "jsonPath": ".status.modelCount"},
            {"name": "Last-Seen", "type": "date", "jsonPath": ".status.lastSeen"},
            # A string: kubectl prints a date column in the future as "<invalid>".
            {"name": "Cert-Expires", "type": "string", "jsonPath": ".status.identity.notAfter",
             "description": "when the device's client certificate expires"},
            {"name": "Runtime", "type": "string", "jsonPath": ".status.health.runtimeVersion",
             "description": "the edge runtime's version"},
            {"name": "Disk-Free", "type": "integer", "jsonPath": ".status.health.diskFreeBytes",
             "priority": 1, "description": "bytes free on the data directory's disk"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    ),
)


def _resolve(node: Any, defs: Schema) -> Any:
    """Inlines every $ref (structural schemas allow none)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve(merged, defs)
        return {key: _resolve(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    return node


def _int_or_string(variants: list[Schema]) -> Schema:
    """Structural int-or-string allows only bare `type` in its branches; the branches'
    bounds move into one CEL rule."""
    checks = {}
    for variant in variants:
        bounds = {k: v for k, v in variant.items() if k not in ("type", "title")}
        if variant["type"] == "integer" and set(bounds) <= {"minimum"}:
            checks["integer"] = f"self >= {bounds['minimum']}" if bounds else "true"
        elif variant["type"] == "string" and set(bounds) <= {"pattern"}:
            checks["string"] = f"self.matches(r'{bounds['pattern']}')" if bounds else "true"
        else:
            raise ValueError(f"cannot express int-or-string branch {variant}")
    return {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-validations": [{
            "rule": f"type(self) == int ? {checks['integer']} : {checks['string']}",
            "message": "must be a non-negative count or a percent such as '25%'",
        }],
    }


def _structural(node: Schema) -> Schema:
    """Rewrites one resolved JSON Schema node into its structural form."""
    node = {k: v for k, v in node.items() if k not in DROPPED_KEYWORDS}
    if isinstance(node.get("description"), str):  # a docstring's lines make one paragraph
        node["description"] = " ".join(node["description"].split())
    variants = node.pop("anyOf", None)
    if variants is not None:
        non_null = [v for v in variants if v.get("type") != "null"]
        types = {v.get("type") for v in non_null}
        if len(non_null) == 1:  # Optional[X]: absence is the Kubernetes way to say null
            return _structural({**non_null[0], **node})
        elif types == {"integer", "string"}:
            node.update(_int_or_string(non_null))
        else:
            raise ValueError(f"cannot express anyOf {variants} in a structural schema")
    if node.get("default", 0) is None:
        del node["default"]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]  # the API server prunes unknown fields itself
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, keyword in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node[keyword] = node[bound]
            node[bound] = True
    # A map with constrained keys: structural schemas cannot say it, CEL can.
    key_checks = []
    key_limits = node.pop("propertyNames", {})
    if "maxLength" in key_limits:
        key_checks.append(f"size(key) <= {key_limits['maxLength']}")
    pattern_properties = node.pop("patternProperties", None)
    if pattern_properties:
        ((pattern, value_schema),) = pattern_properties.items()
        node["additionalProperties"] = value_schema
        key_checks.append(f"key.matches(r'{pattern}')")
    if key_checks:
        node.setdefault("x-kubernetes-validations", []).append({
            "rule": f"self.all(key, {' && '.join(key_checks)})",
            "message": "every key must be a valid label key",
        })
    if "properties" in node:
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(node["additionalProperties"])
    if "items" in node:
        node["items"] = _structural(node["items"])
    return node


def structural_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of a pydantic model, as a CRD embeds it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(_resolve(raw, raw.get("$defs", {})))


def crd(kind: ResourceKind) -> Schema:
    """The whole CustomResourceDefinition object for one kind."""
    schema: Schema = {
        "description": kind.description,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": API_VERSION_DESCRIPTION, "type": "string"},
            "kind": {"description": KIND_DESCRIPTION, "type": "string"},
            # The API server allows nothing on metadata but name and generateName.
            "metadata": {"type": "object"},
            "spec": structural_schema(kind.spec),
            "status": structural_schema(kind.status),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": [kind.short_name],
                "categories": ["edgefleet"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": kind.printer_columns,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def render(kind: ResourceKind) -> str:
    header = "# Generated by `make crds` from operator/resources.py; do not edit by hand.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def all_crds() -> str:
    """Both CRDs as one YAML stream, for `kubectl apply -f -`."""
    return "---\n".join(render(kind) for kind in KINDS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the EdgeFleet CRDs")
    parser.add_argument("out_dir", nargs="?", type=Path, default=Path("crds"))
    parser.add_argument("--check", action="store_true",
                        help="fail if the files in OUT_DIR are not current")
    args = parser.parse_args(argv)
    stale = []
    for kind in KINDS:
        path = args.out_dir / kind.file_name
        text = render(kind)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print(f"stale CRDs: {', '.join(stale)}; run `make crds`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
