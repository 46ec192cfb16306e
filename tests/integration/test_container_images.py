"""The Dockerfiles' build steps, replayed without a container engine: each build
stage's COPY and RUN lines run against a scratch root, and the virtual environment they
produce must start its command; the edge one must lack kopf and the Kubernetes client.
So the images cannot silently rot where no engine is at hand."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.integration.test_packaging import locked_pins

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


def build_stage(dockerfile: Path) -> list[list[str]]:
    """The instructions of the first (build) stage, as words."""
    stage: list[list[str]] = []
    froms = 0
    for line in dockerfile.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        froms += words[0] == "FROM"
        if froms == 2:
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


def base_images(dockerfile: Path) -> list[str]:
    """Every stage's base, with the ARGs declared before the first FROM expanded."""
    args: dict[str, str] = {}
    bases = []
    for line in dockerfile.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["ARG"] and "=" in words[1]:
            name, value = words[1].split("=", 1)
            args[name] = value
        elif words[:1] == ["FROM"]:
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[1]))
    return bases


@pytest.mark.parametrize("side", ["operator", "edge"])
def test_each_image_builds_on_a_base_pinned_by_digest(side: str) -> None:
    dockerfile = REPO_ROOT / "docker" / f"{side}.Dockerfile"
    bases = base_images(dockerfile)
    assert len(bases) == 2  # the build stage and the final one, on the same base
    for base in bases:
        assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base), base
    assert len(set(bases)) == 1
    # The other image is pinned to the same bytes: one refresh moves both.
    other = "edge" if side == "operator" else "operator"
    assert set(base_images(REPO_ROOT / "docker" / f"{other}.Dockerfile")) == set(bases)
    assert "docker buildx imagetools inspect" in dockerfile.read_text()


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
    # Exactly the lock's packages at the lock's versions, and nothing else but the project.
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json",
                             "--disable-pip-version-check"], capture_output=True, text=True,
                            check=True, cwd=tmp_path).stdout
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed)}
    assert installed.pop("edgefleet") and installed.pop("pip")
    lock = locked_pins(REPO_ROOT / "docker" / f"requirements-{side}.lock")
    assert installed == {name: version for name, (version, _) in lock.items()}
    imports = {}
    for module in ("kopf", "kubernetes", "onnxruntime", "grpc"):
        imports[module] = subprocess.run([str(venv / "bin" / "python"), "-c",
                                          f"import {module}"], capture_output=True,
                                         cwd=tmp_path).returncode == 0
    if side == "edge":
        assert imports == {"kopf": False, "kubernetes": False, "onnxruntime": True,
                           "grpc": True}
    else:
        # The operator builds variants (in child processes): ONNX Runtime is there too.
        assert imports["kopf"] and imports["kubernetes"] and imports["grpc"]
        assert imports["onnxruntime"]
