"""Which versions of a standalone repository serve, and what the repository cannot."""

from __future__ import annotations

import json
from pathlib import Path

from edgefleet.edge_runtime.repository import scan


def add(root: Path, model: str, version: str, config: dict[str, object] | None = None) -> None:
    (root / model / version).mkdir(parents=True, exist_ok=True)
    (root / model / version / "model.onnx").write_bytes(b"onnx")
    if config is not None:
        (root / model / "config.json").write_text(json.dumps(config))


def test_newest_numeric_version_serves_by_default(tmp_path: Path) -> None:
    for version in ("2", "10", "9"):
        add(tmp_path, "digits", version)
    entries, problems = scan(tmp_path)
    assert problems == {}
    assert entries["digits"].weights() == {"10": 1.0}


def test_config_chooses_default_version_or_weights(tmp_path: Path) -> None:
    add(tmp_path, "a", "1")
    add(tmp_path, "a", "2", {"defaultVersion": "1"})
    add(tmp_path, "b", "1")
    add(tmp_path, "b", "2", {"versionWeights": {"1": 80, "2": 20}})
    entries, _ = scan(tmp_path)
    assert entries["a"].weights() == {"1": 1.0}
    assert entries["b"].weights() == {"1": 80, "2": 20}


def test_problems_are_reported_and_other_models_still_serve(tmp_path: Path) -> None:
    add(tmp_path, "good", "1")
    add(tmp_path, "typo", "1", {"runtime": {"intraOpThreds": 2}})
    add(tmp_path, "ghost", "1", {"defaultVersion": "7"})
    (tmp_path / "empty").mkdir()
    entries, problems = scan(tmp_path)
    assert list(entries) == ["good"]
    assert sorted(problems) == ["empty", "ghost", "typo"]
    assert "intraOpThreds" in problems["typo"]
    assert "['7']" in problems["ghost"]
    assert "no <version>/model.onnx" in problems["empty"]
