"""Engine policy that needs no session: provider fallback and version routing."""

from __future__ import annotations

import logging

import pytest

from edgefleet.edge_runtime.engine import choose_providers


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
