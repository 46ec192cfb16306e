"""Engine policy that needs no session: provider fallback and where runs happen."""

from __future__ import annotations

import logging

import pytest

from edgefleet.edge_runtime.config import RuntimeConfig
from edgefleet.edge_runtime.engine import choose_providers, runs_inline


def test_missing_providers_fall_back_to_cpu_with_a_logged_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        chosen = choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"],
                                  ["CPUExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider is not available" in caplog.text


def test_available_providers_keep_their_order_and_cpu_comes_last() -> None:
    assert choose_providers(["OpenVINOExecutionProvider"],
                            ["OpenVINOExecutionProvider", "CPUExecutionProvider"]) == [
        "OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers([], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_cheap_runs_stay_on_the_loop_and_long_ones_only_when_alone() -> None:
    runtime = RuntimeConfig(inline_below_micros=150, inline_alone_below_micros=2000)
    assert runs_inline(100e-6, runtime, alone=False)
    assert not runs_inline(500e-6, runtime, alone=False)
    assert runs_inline(500e-6, runtime, alone=True)
    assert not runs_inline(3e-3, runtime, alone=True)


def test_zero_limits_send_every_run_to_the_pool() -> None:
    runtime = RuntimeConfig(inline_below_micros=0, inline_alone_below_micros=0)
    assert not runs_inline(1e-6, runtime, alone=True)
    # Turning the lone-request rule off keeps the always-inline threshold.
    assert runs_inline(100e-6, RuntimeConfig(inline_alone_below_micros=0), alone=True)
