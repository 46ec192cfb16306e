"""Both command lines, as their users meet them: bad configuration in one line and exit
status 2 (a port in use included), --version, help with defaults and environment
variables, and logs as logfmt or JSON lines (real processes; the formatters alone)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgefleet.operator.settings import OperatorSettings
from edgefleet.protocol.cli import JsonFormatter, LogfmtFormatter, describe_settings_error

SCRIPTS = Path(sys.executable).parent
OPERATOR, EDGE = str(SCRIPTS / "edgefleet-operator"), str(SCRIPTS / "edgefleet-edge")
MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"


def run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def free_ports(count: int) -> list[str]:
    ports = []
    for _ in range(count):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(str(probe.getsockname()[1]))
    return ports


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("command", [
    (OPERATOR, "--no-such-flag"),
    (OPERATOR, "--grpc-port", "abc"),
    (OPERATOR, "--grpc-port", "50051", "--enrolment-port", "50051"),
    (EDGE, "run", "--grpc-port", "abc"),
])
def test_bad_configuration_is_one_line_and_exit_2(command: tuple[str, ...]) -> None:
    result = run(*command)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(("edgefleet-operator: ", "edgefleet-edge "))
    assert "Traceback" not in line


def test_settings_errors_name_the_flag_and_what_was_given() -> None:
    with pytest.raises(ValidationError) as caught:
        OperatorSettings(grpc_port="abc", retraining_namespaces=["../x"])  # type: ignore[arg-type]
    described = describe_settings_error(caught.value)
    assert "--grpc-port: Input should be a valid integer" in described
    assert "(got 'abc')" in described
    assert "--retraining-namespaces: '../x' is neither a namespace nor *" in described


def test_a_port_in_use_is_named_by_its_flag(taken_port: int, tmp_path: Path) -> None:
    edge = run(EDGE, "serve", "--model-repository", str(MODELS), "--grpc-port", str(taken_port))
    assert edge.returncode == 2
    assert edge.stderr == (f"edgefleet-edge serve: --grpc-port {taken_port}: 127.0.0.1:"
                           f"{taken_port} is in use by another process; choose another port "
                           "with --grpc-port\n")
    operator = run(OPERATOR, "--listen-host", "127.0.0.1", "--metrics-port", str(taken_port))
    assert operator.returncode == 2
    assert operator.stderr.startswith(f"edgefleet-operator: --metrics-port {taken_port}: ")
    assert operator.stderr.count("\n") == 1


def test_no_kubernetes_credentials_is_one_line(tmp_path: Path) -> None:
    metrics, grpc, enrolment = free_ports(3)
    result = subprocess.run([OPERATOR, "--listen-host", "127.0.0.1", "--metrics-port", metrics,
                             "--grpc-port", grpc, "--enrolment-port", enrolment],
                            capture_output=True, text=True, timeout=60,
                            env={"KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.startswith("edgefleet-operator: no Kubernetes credentials: ")
    assert result.stderr.count("\n") == 1


def test_version_and_help() -> None:
    assert run(OPERATOR, "--version").stdout.startswith("edgefleet-operator 0.")
    assert run(EDGE, "--version").stdout.startswith("edgefleet-edge 0.")
    for command in ((OPERATOR, "--help"), (EDGE, "run", "--help"), (EDGE, "serve", "--help")):
        result = run(*command)
        assert result.returncode == 0
        assert "default factory" not in result.stdout
        assert "[env: EDGEFLEET_" in result.stdout
    operator_help = run(OPERATOR, "--help").stdout
    assert "(default: 50051) [env: EDGEFLEET_GRPC_PORT]" in " ".join(operator_help.split())


def test_the_runtime_logs_json_lines_for_log_shippers(tmp_path: Path) -> None:
    ports = free_ports(3)
    process = subprocess.Popen(
        [EDGE, "serve", "--model-repository", str(MODELS), "--log-format", "json",
         "--grpc-port", ports[0], "--http-port", ports[1], "--metrics-port", ports[2]],
        stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(json.loads(line))  # every line is JSON
            if "serving" in lines[-1]["msg"]:
                break
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert {"time", "level", "logger", "msg"} <= set(lines[-1])
    assert lines[-1]["level"] == "info" and lines[-1]["time"].endswith("Z")


def record(message: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("edgefleet.operator", logging.WARNING, __file__, 1, message,
                             None, info)


def test_text_logs_are_logfmt() -> None:
    line = LogfmtFormatter().format(record('device connected device=fleet/cam-1 said "hi"'))
    time, rest = line.split(" ", 1)
    assert time.startswith("time=") and time.endswith("Z")
    assert rest == ('level=warning logger=edgefleet.operator '
                    'msg="device connected device=fleet/cam-1 said \\"hi\\""')
    assert LogfmtFormatter().format(record("ready")).endswith(" msg=ready")
    failed = LogfmtFormatter().format(record("failed", exc=True))
    assert "\n" not in failed and 'exc="Traceback' in failed and "ValueError: boom" in failed


def test_json_logs_are_one_object_a_line() -> None:
    document = json.loads(JsonFormatter().format(record("a\nb", exc=True)))
    assert document["msg"] == "a\nb" and document["level"] == "warning"
    assert "ValueError: boom" in document["exc"]


def test_operator_metrics_carry_its_build_and_no_created_series() -> None:
    code = ("from prometheus_client import REGISTRY, generate_latest; "
            "from edgefleet.operator import metrics; "
            "metrics.RECONCILES.labels('EdgeModel', 'updated').inc(); "
            "metrics.describe_process('9.9.9'); print(generate_latest(REGISTRY).decode())")
    exposed = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True,
                             text=True, check=True).stdout
    assert 'edgefleet_operator_build_info{python="' in exposed
    assert 'version="9.9.9"} 1.0' in exposed
    assert "edgefleet_operator_reconciles_total{" in exposed
    assert "_created" not in exposed


def test_the_operator_prints_the_crds_helm_does_not_upgrade() -> None:
    printed = run(OPERATOR, "crds").stdout
    committed = [(MODELS.parents[1] / "crds" / name).read_text()
                 for name in ("edgemodels.yaml", "edgedevices.yaml")]
    assert printed == "---\n".join(committed)
