"""Writes docs/reference.md, the field reference of every CustomResourceDefinition in
crds/, from the committed YAML: each field's path, type, whether it is required, its
default, its constraints and its description.

    python hack/fieldref.py [--check] [--crds DIR] [--out FILE]

The CRDs are generated from operator/resources.py (`make crds`), so the reference follows
them: `make docs` rewrites it, and `--check` fails with one line when the committed page
differs from what the CRDs give. The output depends on nothing but the CRD files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CRD_DIR = ROOT / "crds"
OUT_FILE = ROOT / "docs" / "reference.md"

Schema = dict[str, Any]

# Kubernetes' own fields of every object; the reference describes what EdgeFleet adds.
STANDARD_FIELDS = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class Field:
    """One row of the reference: a field of a kind, reached from the object's root."""

    path: str
    type: str
    required: bool
    default: str
    constraints: str
    description: str


def _escape(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped everywhere (code spans included, as
    GitHub reads tables), and outside code spans what would turn into HTML or emphasis."""
    parts = text.split("`")
    for index in range(0, len(parts), 2):
        parts[index] = (parts[index].replace("\\", "\\\\").replace("<", "&lt;")
                        .replace("*", "\\*"))
    return "`".join(parts).replace("|", "\\|")


def _code(text: str) -> str:
    """A code span that holds `text` whatever backticks it contains."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _type_name(schema: Schema) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = schema.get("type", "")
    if kind == "array":
        return "[]" + _type_name(schema.get("items") or {})
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map[string]" + _type_name(schema["additionalProperties"])
    if schema.get("format"):
        return f"{kind} ({schema['format']})"
    return kind or "any"


def _bounds(schema: Schema) -> list[str]:
    """The constraints a schema node puts on its own value."""
    found = []
    if "enum" in schema:
        found.append("one of " + ", ".join(_code(json.dumps(v)) for v in schema["enum"]))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None:
        found.append(f"{'>' if schema.get('exclusiveMinimum') else '≥'} {low}")
    if high is not None:
        found.append(f"{'<' if schema.get('exclusiveMaximum') else '≤'} {high}")
    for keyword, noun in (("Length", "characters"), ("Items", "items"),
                          ("Properties", "entries")):
        least, most = schema.get(f"min{keyword}"), schema.get(f"max{keyword}")
        if least is not None and most is not None:
            found.append(f"{least}\N{EN DASH}{most} {noun}")
        elif least is not None:
            found.append(f"at least {least} {noun}")
        elif most is not None:
            found.append(f"at most {most} {noun}")
    if "pattern" in schema:
        found.append("pattern " + _code(schema["pattern"]))
    if schema.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(_code(k) for k in schema.get("x-kubernetes-list-map-keys", []))
        found.append(f"a list-map keyed by {keys}")
    for rule in schema.get("x-kubernetes-validations", []):
        found.append("rule: " + (_one_line(rule["message"]) if "message" in rule
                                 else _code(_one_line(rule["rule"]))))
    return found


def _constraints(schema: Schema) -> str:
    found = _bounds(schema)
    # Scalars inside a list or a map have no row of their own: their bounds go here.
    for keyword, noun in (("items", "each item"), ("additionalProperties", "each value")):
        child = schema.get(keyword)
        if isinstance(child, dict) and "properties" not in child:
            inner = _bounds(child)
            if inner:
                found.append(f"{noun}: " + ", ".join(inner))
    return "; ".join(found)


def _default(schema: Schema) -> str:
    if "default" not in schema:
        return ""
    return _code(json.dumps(schema["default"], sort_keys=True, ensure_ascii=False))


def fields(schema: Schema, path: str = "", required: bool = False) -> Iterator[Field]:
    """Every field below `schema`, depth first in the CRD's own order. List items and map
    values that are objects contribute their fields as `path[].name` and
    `path.<key>.name`."""
    if path:
        yield Field(path=path, type=_type_name(schema), required=required,
                    default=_default(schema), constraints=_constraints(schema),
                    description=_one_line(schema.get("description", "")))
    needed = set(schema.get("required", []))
    for name, child in (schema.get("properties") or {}).items():
        if not path and name in STANDARD_FIELDS:
            continue
        yield from fields(child, f"{path}.{name}" if path else name, name in needed)
    items = schema.get("items")
    if isinstance(items, dict) and "properties" in items:
        yield from _children(items, f"{path}[]")
    values = schema.get("additionalProperties")
    if isinstance(values, dict) and "properties" in values:
        yield from _children(values, f"{path}.<key>")


def _children(schema: Schema, path: str) -> Iterator[Field]:
    needed = set(schema.get("required", []))
    for name, child in (schema.get("properties") or {}).items():
        yield from fields(child, f"{path}.{name}", name in needed)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading of plain words."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _kind_section(crd: Schema) -> list[str]:
    names = crd["spec"]["names"]
    kind = names["kind"]
    lines = []
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        scope = crd["spec"]["scope"].lower()
        facts = [f"`{crd['metadata']['name']}`, version `{version['name']}`"
                 + (" (served, stored)" if version.get("served") and version.get("storage")
                    else ""), scope]
        if names.get("shortNames"):
            short = names["shortNames"]
            facts.append(("short name " if len(short) == 1 else "short names ")
                         + ", ".join(f"`{n}`" for n in short))
        if names.get("categories"):
            categories = names["categories"]
            facts.append(("category " if len(categories) == 1 else "categories ")
                         + ", ".join(f"`{c}`" for c in categories))
        if "status" in version.get("subresources", {}):
            facts.append("status subresource")
        title = kind if len(crd["spec"]["versions"]) == 1 else f"{kind} {version['name']}"
        lines += [f"## {title}", "", _escape(_one_line(schema.get("description", ""))), "",
                  "; ".join(facts) + ".", ""]
        columns = version.get("additionalPrinterColumns", [])
        if columns:
            lines += [f"Columns of `kubectl get {names['plural']}`:", "",
                      "| column | from | description |", "|---|---|---|"]
            for column in columns:
                note = _one_line(column.get("description", ""))
                if column.get("priority"):
                    note = (note + "; " if note else "") + "with `-o wide` only"
                lines.append(f"| {column['name']} | {_escape(_code(column['jsonPath']))} | "
                             f"{_escape(note)} |")
            lines.append("")
        for top in ("spec", "status"):
            part = (schema.get("properties") or {}).get(top)
            if part is None:
                continue
            lines += [f"### {title} {top}", "",
                      "| field | type | required | default | constraints | description |",
                      "|---|---|---|---|---|---|"]
            for field in fields(part, top, top in schema.get("required", [])):
                lines.append(f"| {_code(field.path)} | {_escape(field.type)} | "
                             f"{'yes' if field.required else ''} | {_escape(field.default)} | "
                             f"{_escape(field.constraints)} | {_escape(field.description)} |")
            lines.append("")
    return lines


def render(crd_dir: Path) -> str:
    """The reference page for every CRD file in `crd_dir`, kinds in alphabetical order."""
    crds = [yaml.safe_load(path.read_text()) for path in sorted(crd_dir.glob("*.yaml"))]
    crds.sort(key=lambda crd: crd["spec"]["names"]["kind"])
    lines = [
        "# Field reference",
        "",
        "<!-- Generated by `make docs` (hack/fieldref.py) from crds/; do not edit by hand. -->",
        "",
        "Every field of EdgeFleet's custom resources, from the CustomResourceDefinitions in",
        "[`crds/`](../crds/): its type, whether it is required, its default, what the API",
        "server checks, and its description (the one `kubectl explain` prints). `apiVersion`,",
        "`kind` and `metadata` are Kubernetes' own. A path `a[].b` is the field `b` of each",
        "item of the list `a`. The concepts behind the fields are in",
        "[concepts.md](concepts.md); rollout fields in [rollouts.md](rollouts.md).",
        "",
    ]
    for crd in crds:
        kind = crd["spec"]["names"]["kind"]
        lines.append(f"- [{kind}](#{_anchor(kind)}): "
                     + ", ".join(f"[{top}](#{_anchor(f'{kind} {top}')})"
                                 for top in ("spec", "status")))
    lines.append("")
    for crd in crds:
        lines += _kind_section(crd)
    return "\n".join(lines).rstrip("\n") + "\n"


def _shown(path: Path) -> str:
    """A path as a person typed it: relative to the working directory where it can be."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="fail if the committed reference differs from the CRDs")
    parser.add_argument("--crds", type=Path, default=CRD_DIR, help="folder of CRD YAML files")
    parser.add_argument("--out", type=Path, default=OUT_FILE, help="the reference page")
    args = parser.parse_args(argv)
    generated = render(args.crds)
    if args.check:
        committed = args.out.read_text() if args.out.exists() else None
        if committed != generated:
            print(f"{_shown(args.out)} is stale: it differs from what {_shown(args.crds)} "
                  "gives; run `make docs`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
