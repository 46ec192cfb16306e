"""The two sides install and import without each other's heavy dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(sys.executable).parent


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True)
    return set(result.stdout.split())


def test_edge_runtime_imports_neither_kopf_nor_kubernetes() -> None:
    loaded = _modules_after_import("edgefleet.edge_runtime.__main__")
    assert not {"kopf", "kubernetes", "edgefleet.operator"} & loaded


def test_operator_does_not_import_onnxruntime_or_the_edge_runtime() -> None:
    loaded = _modules_after_import("edgefleet.operator.handlers")
    assert not {"onnxruntime", "edgefleet.edge_runtime"} & loaded


def test_stdlib_operator_and_edgefleet_operator_coexist() -> None:
    import operator

    import edgefleet.operator

    assert Path(operator.__file__).parent.name.startswith("python3")
    assert operator.add(2, 3) == 5
    assert edgefleet.operator.__name__ == "edgefleet.operator"


def test_console_scripts_answer() -> None:
    result = subprocess.run([SCRIPTS / "edgefleet-edge", "--version"], capture_output=True,
                            text=True, check=True)
    assert result.stdout.startswith("edgefleet-edge ")
    result = subprocess.run([SCRIPTS / "edgefleet-operator", "--help"], capture_output=True,
                            text=True, check=True)
    assert "--grpc-port" in result.stdout and "--metrics-port" in result.stdout
