"""The distribution builds as a wheel that maps the top-level folders into edgefleet.*."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_edgefleet_namespace_with_both_sides(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "-w", str(tmp_path / "dist"), str(REPO_ROOT)], check=True)
    (wheel,) = (tmp_path / "dist").glob("edgefleet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgefleet/operator/planner.py" in names
    assert "edgefleet/edge_runtime/__main__.py" in names
    assert not any(name.startswith(("operator/", "tests/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "edgefleet-operator = edgefleet.operator.__main__:main" in scripts

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
