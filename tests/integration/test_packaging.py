"""The distribution builds as a wheel that maps the top-level folders into edgefleet.*,
and the images' lock files pin, with hashes, what pyproject.toml asks for."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
# The images' interpreter (docker/*.Dockerfile), for the locks' environment markers.
IMAGE_PYTHON = {"python_version": "3.11", "python_full_version": "3.11.16",
                "sys_platform": "linux", "platform_system": "Linux",
                "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def locked_pins(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of the entries of a lock file that apply in the
    images' interpreter, on any machine architecture."""
    text = re.sub(r"#[^\n]*", "", lock.read_text()).replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        requirement_text, *hashes = line.split("--hash=")
        requirement = Requirement(requirement_text.strip())
        if requirement.marker and not requirement.marker.evaluate(IMAGE_PYTHON):
            continue
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{lock.name}: {requirement} is not pinned"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{lock.name}: {name} pinned twice"
        pins[name] = (specifier.version, [h.strip() for h in hashes])
    return pins


@pytest.mark.parametrize("side", ["operator", "edge"])
def test_each_image_lock_pins_what_pyproject_asks_with_hashes(side: str) -> None:
    """docker/lock.sh writes the locks; a dependency changed in pyproject.toml without
    re-running it fails here, not in an image build."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    lock = REPO_ROOT / "docker" / f"requirements-{side}.lock"
    pins = locked_pins(lock)
    assert "sh docker/lock.sh" in "".join(lock.read_text().splitlines(keepends=True)[:3])
    extras = project["project"]["optional-dependencies"]
    sides = {"operator": ["operator", "optimize"], "edge": ["edge"]}[side]
    wanted = [*project["project"]["dependencies"],
              *(line for extra in sides for line in extras[extra]),
              *project["build-system"]["requires"]]  # install.sh builds with the locked backend
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock.name} lacks {requirement}: run docker/lock.sh"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, pyproject.toml asks {requirement}: "
            "run docker/lock.sh")
    for name, (version, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), (
            f"{lock.name}: {name}=={version} without sha256 hashes")
    # The edge stays without the cloud's dependencies (the operator's image builds
    # variants, so it has ONNX Runtime).
    if side == "edge":
        assert not {"kopf", "kubernetes", "onnx"} & pins.keys()


def test_wheel_installs_edgefleet_namespace_with_both_sides(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "-w", str(tmp_path / "dist"), str(REPO_ROOT)], check=True)
    (wheel,) = (tmp_path / "dist").glob("edgefleet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgefleet/operator/planner.py" in names
    assert "edgefleet/edge_runtime/__main__.py" in names
    assert "edgefleet/trainer/retrain.py" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not any(name.startswith(("operator/", "tests/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "edgefleet-operator = edgefleet.operator.__main__:main" in scripts
    assert "edgefleet-retrain = edgefleet.trainer.__main__:main" in scripts

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                    "--target", str(target), str(wheel)], check=True)
    # The installed copy, not the editable one, answers the import (-S: no .pth files;
    # run outside the repository, whose operator/ folder would shadow the stdlib module).
    code = ("import edgefleet.operator.planner as p, edgefleet.edge_runtime as e; "
            "print(p.__file__); print(e.__file__)")
    result = subprocess.run([sys.executable, "-S", "-c",
                             f"import sys; sys.path[:0] = [{str(target)!r}] + "
                             f"{[p for p in sys.path if 'site-packages' in p]!r}; {code}"],
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    assert all(line.startswith(str(target)) for line in result.stdout.split())
