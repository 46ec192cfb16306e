"""The documentation holds together: the field reference is what the CRDs give, every
relative link in the README and docs/ reaches a file and a heading, and the README stays
a five-minute read that gives the two commands."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fieldref
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose_lines(text: str) -> Iterator[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text lower-cased, punctuation
    other than hyphens and underscores dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link reads as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, numbered as GitHub numbers repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def relative_links(path: Path) -> Iterator[str]:
    """The targets of the links and images of a Markdown file that stay in the repository."""
    for line in _prose_lines(path.read_text()):
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            target = match.group(1)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                yield target


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
        elif anchor and linked.suffix != ".md":
            broken.append(f"{target}: an anchor into a file that is not Markdown")
    return broken


# The field reference


def test_committed_reference_is_what_the_crds_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert fieldref.main(["--check"]) == 0, capsys.readouterr().err


def test_check_fails_with_one_line_when_a_crd_changes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crds = tmp_path / "crds"
    shutil.copytree(fieldref.CRD_DIR, crds)
    reference = tmp_path / "reference.md"
    assert fieldref.main(["--crds", str(crds), "--out", str(reference)]) == 0
    assert fieldref.main(["--check", "--crds", str(crds), "--out", str(reference)]) == 0

    crd = crds / "edgemodels.yaml"
    text = crd.read_text()
    assert "maxP99LatencyMs:" in text
    crd.write_text(text.replace("maxP99LatencyMs:", "maxP99LatencyMillis:", 1))
    capsys.readouterr()
    assert fieldref.main(["--check", "--crds", str(crds), "--out", str(reference)]) == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "stale" in message and "make docs" in message


def test_check_fails_when_the_reference_is_missing(tmp_path: Path) -> None:
    assert fieldref.main(["--check", "--out", str(tmp_path / "reference.md")]) == 1


def test_generation_is_deterministic() -> None:
    assert fieldref.render(fieldref.CRD_DIR) == fieldref.render(fieldref.CRD_DIR)


def _paths(schema: dict[str, Any], path: str) -> Iterator[str]:
    for name, child in schema.get("properties", {}).items():
        yield f"{path}.{name}"
        yield from _paths(child, f"{path}.{name}")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _paths(items, f"{path}[]")


@pytest.mark.parametrize("crd_file", sorted(fieldref.CRD_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_reference_has_a_row_for_every_field(crd_file: Path) -> None:
    reference = (ROOT / "docs" / "reference.md").read_text()
    crd = yaml.safe_load(crd_file.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert f"## {crd['spec']['names']['kind']}" in reference
    for top in ("spec", "status"):
        for path in _paths(schema["properties"][top], top):
            assert f"| `{path}` |" in reference, path


def test_a_row_gives_type_default_bounds_and_description() -> None:
    rows = [line for line in (ROOT / "docs" / "reference.md").read_text().splitlines()
            if line.startswith("| `spec.rollout.steps[].percent` |")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", rows[0].strip().strip("|"))]
    path, kind, required, default, constraints, description = cells
    assert (path, kind, required, default) == (
        "`spec.rollout.steps[].percent`", "integer", "yes", "")
    assert constraints == "≥ 0; ≤ 100"
    assert description


# Links and the README


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(path: Path) -> None:
    assert broken_links(path) == []


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_are_closed_and_not_empty(path: Path) -> None:
    lines = path.read_text().splitlines()
    fences = [number for number, line in enumerate(lines) if FENCE.match(line)]
    assert len(fences) % 2 == 0, f"a code block of {path.name} is never closed"
    empty = [opening + 1 for opening, closing in zip(fences[::2], fences[1::2], strict=True)
             if closing == opening + 1]
    assert empty == [], f"empty code blocks at lines {empty}"


def test_link_checker_sees_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A page\n\n## From `kubectl apply` to every device\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#from-kubectl-apply-to-every-device) [ok](#b)\n\n# B\n\n"
                    "```\n[not a link](nowhere.md)\n```\n"
                    "[gone](a.md#nowhere) [missing](c.md) `[code](nowhere.md)`\n")
    assert broken_links(page) == [
        "a.md#nowhere: no heading with anchor #nowhere in a.md", "c.md: no such file"]


def test_repeated_headings_are_numbered_as_github_numbers_them(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    page.write_text("## What is tested\n\n## What is tested\n\n## 1. The CRDs\n")
    assert anchors(page) == {"what-is-tested", "what-is-tested-1", "1-the-crds"}


def test_readme_is_a_five_minute_read_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 250
    commands = [line.split("#")[0].strip() for line in _code_lines(text)]
    assert "make demo" in commands and "make test" in commands
    assert "docs/concepts.md" in text and "LICENSE" in text


def _code_lines(text: str) -> Iterator[str]:
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif fenced:
            yield line
