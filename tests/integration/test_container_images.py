"""The Dockerfiles' build steps, replayed without a container engine: each build
stage's COPY and RUN lines run against a scratch root, and the virtual environment they
produce must start its command; the edge one must lack kopf and the Kubernetes client.
So the images cannot silently rot where no engine is at hand."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


def build_stage(dockerfile: Path) -> list[list[str]]:
    """The instructions of the first (build) stage, as words."""
    stage: list[list[str]] = []
    for line in dockerfile.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "FROM" and stage:
            break
        stage.append(words)
    return stage


def final_stage(dockerfile: Path) -> str:
    return dockerfile.read_text().rsplit("\nFROM ", 1)[1]


def replay(stage: list[list[str]], root: Path) -> None:
    """Runs COPY and RUN under `root` in place of the image's /."""
    def inside(path: str) -> Path:
        return root / path.lstrip("/")

    for words in stage:
        if words[0] == "COPY":
            *sources, destination = words[1:]
            for source in sources:
                target = inside(destination)
                if destination.endswith("/"):
                    target = target / Path(source).name
                target.parent.mkdir(parents=True, exist_ok=True)
                if (REPO_ROOT / source).is_dir():
                    shutil.copytree(REPO_ROOT / source, target,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(REPO_ROOT / source, target)
        elif words[0] == "RUN":
            command = [str(inside(word)) if word.startswith("/") else word
                       for word in words[1:]]
            subprocess.run(command, check=True, cwd=root, timeout=900)


@pytest.mark.parametrize(("side", "command"), [("operator", "edgefleet-operator"),
                                               ("edge", "edgefleet-edge")])
def test_each_image_installs_a_working_command(side: str, command: str,
                                               tmp_path: Path) -> None:
    dockerfile = REPO_ROOT / "docker" / f"{side}.Dockerfile"
    final = final_stage(dockerfile)
    assert "COPY --from=build /opt/edgefleet /opt/edgefleet" in final
    assert "USER 65532:65532" in final and f'ENTRYPOINT ["{command}"]' in final

    replay(build_stage(dockerfile), tmp_path)
    venv = tmp_path / "opt" / "edgefleet"
    help_text = subprocess.run([str(venv / "bin" / command), "--help"], capture_output=True,
                               text=True, check=True, cwd=tmp_path).stdout
    assert "usage" in help_text.lower()
    imports = {}
    for module in ("kopf", "kubernetes", "onnxruntime", "grpc"):
        imports[module] = subprocess.run([str(venv / "bin" / "python"), "-c",
                                          f"import {module}"], capture_output=True,
                                         cwd=tmp_path).returncode == 0
    if side == "edge":
        assert imports == {"kopf": False, "kubernetes": False, "onnxruntime": True,
                           "grpc": True}
    else:
        assert imports["kopf"] and imports["kubernetes"] and imports["grpc"]
