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


def test_stdlib_operator_module_is_not_shadowed_from_the_repository_root() -> None:
    code = "import operator, edgefleet.operator; print(operator.__file__)"
    repo_root = Path(__file__).parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=repo_root)
    stdlib_operator = Path(result.stdout.strip())
    assert stdlib_operator.name == "operator.py"
    assert repo_root not in stdlib_operator.parents


def test_console_scripts_answer() -> None:
    result = subprocess.run([SCRIPTS / "edgefleet-edge", "--version"], capture_output=True,
                            text=True, check=True)
    assert result.stdout.startswith("edgefleet-edge ")
    result = subprocess.run([SCRIPTS / "edgefleet-operator", "--help"], capture_output=True,
                            text=True, check=True)
    assert "--grpc-port" in result.stdout and "--metrics-port" in result.stdout
