"""The agent acts only on assignments the operator signed for this device and this
desired state: anything else is reported Failed, never stored or downloaded, and what
serves keeps serving. No gateway is needed: the desired states are applied directly."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from edgefleet.edge_runtime.agent import CloudAgent
from edgefleet.edge_runtime.capture import Collector
from edgefleet.edge_runtime.engine import Engine
from edgefleet.edge_runtime.identity import IdentityFiles
from edgefleet.edge_runtime.settings import RunSettings
from edgefleet.edge_runtime.store import Store
from edgefleet.protocol import signing
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

NS, DEVICE = "fleet", "cam-1"
MODEL = Path(__file__).parents[2] / "examples" / "models" / "scaled" / "1" / "model.onnx"
DIGEST = "sha256:" + hashlib.sha256(MODEL.read_bytes()).hexdigest()
OTHER_DIGEST = "sha256:" + "ab" * 32
State = pb.ModelState.State


def refused_count(reason: str) -> float:
    return REGISTRY.get_sample_value("edgefleet_edge_assignments_refused_total",
                                     {"reason": reason}) or 0


class Device:
    """An agent whose store already holds the model's blob (so a download would only be
    tried for an assignment it acts on: there is no gateway to download from)."""

    def __init__(self, tmp_path: Path, *, pinned: bool = True, **extra: Any) -> None:
        self.key = Ed25519PrivateKey.generate()
        if pinned:
            IdentityFiles(tmp_path).save_signing_key(self.key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        (tmp_path / "token").write_text("t")
        self.settings = RunSettings(cloud="127.0.0.1:1", namespace=NS, device=DEVICE,
                                    data_dir=tmp_path, token_file=tmp_path / "token", **extra)
        self.store = Store(tmp_path)
        shutil.copyfile(MODEL, self.store.blob_path(DIGEST))

    def signed(self, revision: str, version: str, digest: str = DIGEST,
               device: str = DEVICE) -> pb.ModelAssignment:
        assignment = pb.ModelAssignment(name="scaled", version=version, digest=digest,
                                        size_bytes=MODEL.stat().st_size, weight=100)
        assignment.signature = signing.sign(self.key, NS, device, revision, assignment)
        return assignment

    def apply(self, *desired: pb.DesiredState) -> tuple[CloudAgent, dict[str, float]]:
        """Applies the desired states in turn; the agent and the routes it left."""
        async def run() -> tuple[CloudAgent, dict[str, float]]:
            engine = Engine(threads=1)
            agent = CloudAgent(self.settings, engine, self.store,
                               Collector(self.settings.data_dir / "capture", 10))
            try:
                for state in desired:
                    await agent._apply(state)
                return agent, engine.routes("scaled") if engine.models() else {}
            finally:
                await engine.close()
        return asyncio.run(run())


def test_a_signed_assignment_is_applied(tmp_path: Path) -> None:
    device = Device(tmp_path)
    agent, routes = device.apply(pb.DesiredState(revision="r1",
                                                 models=[device.signed("r1", "1")]))
    assert agent.models[("scaled", "1")].state == State.READY
    assert routes == {"1": 100}


@pytest.mark.parametrize("change, reason", [
    ("unsigned", "Unsigned"),
    ("digest changed", "BadSignature"),
    ("weight changed", "BadSignature"),
    ("signed for another device", "BadSignature"),
    ("signed for another revision", "BadSignature"),
    ("signed by another key", "BadSignature"),
])
def test_an_assignment_without_a_valid_signature_is_refused_and_the_model_keeps_serving(
    tmp_path: Path, change: str, reason: str,
) -> None:
    device = Device(tmp_path)
    serving = pb.DesiredState(revision="r1", models=[device.signed("r1", "1")])
    bad = device.signed("r2", "2", digest=OTHER_DIGEST)
    if change == "unsigned":
        bad.ClearField("signature")
    elif change == "digest changed":
        bad.digest = "sha256:" + "cd" * 32
    elif change == "weight changed":
        bad.weight = 50
    elif change == "signed for another device":
        bad = device.signed("r2", "2", digest=OTHER_DIGEST, device="cam-2")
    elif change == "signed for another revision":
        bad = device.signed("r1", "2", digest=OTHER_DIGEST)
    else:
        bad.signature = signing.sign(Ed25519PrivateKey.generate(), NS, DEVICE, "r2", bad)
    before = refused_count(reason)

    agent, routes = device.apply(serving, pb.DesiredState(revision="r2", models=[bad]))

    state = agent.models[("scaled", "2")]
    assert state.state == State.FAILED and state.digest == ""
    assert state.message.startswith(f"refused the assignment from the gateway: {reason}")
    assert refused_count(reason) == before + 1
    # Nothing of it was stored or fetched, and version 1 serves as before.
    assert not any(device.store.partial.iterdir())
    assert not device.store.has(bad.digest)
    assert agent.models[("scaled", "1")].state == State.READY
    assert routes == {"1": 100}


def test_without_a_pinned_key_every_assignment_is_refused(tmp_path: Path) -> None:
    device = Device(tmp_path, pinned=False)
    agent, routes = device.apply(pb.DesiredState(revision="r1",
                                                 models=[device.signed("r1", "1")]))
    state = agent.models[("scaled", "1")]
    assert state.state == State.FAILED and "no signing key is pinned" in state.message
    assert routes == {}


def test_plaintext_mode_without_a_pinned_key_applies_unsigned_assignments(
    tmp_path: Path,
) -> None:
    device = Device(tmp_path, pinned=False, insecure_plaintext=True)
    unsigned = device.signed("r1", "1")
    unsigned.ClearField("signature")
    agent, routes = device.apply(pb.DesiredState(revision="r1", models=[unsigned]))
    assert agent.models[("scaled", "1")].state == State.READY
    assert routes == {"1": 100}


def test_plaintext_mode_with_a_pinned_key_still_checks_it(tmp_path: Path) -> None:
    device = Device(tmp_path, insecure_plaintext=True)
    unsigned = device.signed("r1", "1")
    unsigned.ClearField("signature")
    agent, _ = device.apply(pb.DesiredState(revision="r1", models=[unsigned]))
    assert agent.models[("scaled", "1")].state == State.FAILED


def test_a_refused_assignment_of_the_serving_version_leaves_it_last_known_good(
    tmp_path: Path,
) -> None:
    """The very version that serves, assigned again without a valid signature: it is
    reported Failed, serves on, and stays what a restart without the cloud serves."""
    device = Device(tmp_path)
    tampered = device.signed("r2", "1")
    tampered.digest = OTHER_DIGEST
    agent, routes = device.apply(
        pb.DesiredState(revision="r1", models=[device.signed("r1", "1")]),
        pb.DesiredState(revision="r2", models=[tampered]))
    assert agent.models[("scaled", "1")].state == State.FAILED
    assert routes == {"1": 100}
    assert [(m.name, m.version, m.digest) for m in device.store.load_state().last_known_good] \
        == [("scaled", "1", DIGEST)]
