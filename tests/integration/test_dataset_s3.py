"""The dataset on an S3-compatible store: a real SeaweedFS S3 gateway on loopback
(tests/s3server.py), the dataset writer against it, and the operator storing what a
real edge runtime uploads into a bucket."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from edgefleet.edge_runtime.capture import encode_record
from edgefleet.operator.artifact_sources import ArtifactError, SourcePolicy, read_source
from edgefleet.operator.dataset import DatasetError, DatasetWriter, open_store, read_record
from edgefleet.trainer.retrain import read_field_data
from tests.conftest import Fleet, Kube, StartOperator
from tests.helpers import eventually
from tests.integration.test_field_data import collecting, infer, one_hot
from tests.integration.test_operator import status_of
from tests.s3server import S3Server, start_s3

pytestmark = pytest.mark.integration
BUCKET = "edgefleet-datasets"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3(tmp_path_factory.mktemp("s3"), BUCKET)
    yield server
    server.stop()


def objects(s3: S3Server, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def sample(request_id: str) -> bytes:
    return encode_record([({"kind": "sample", "id": request_id, "model": "digits",
                            "version": "1", "timeMs": 1, "reason": "sampled"},
                           {"input_0": np.arange(4, dtype=np.float32)})])


def test_the_s3_store_keeps_shards_once_expires_them_and_refuses_a_wrong_key(
        s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    store = open_store(f"s3://{BUCKET}/unit/", s3.endpoint)
    assert store.get("ns/none") is None
    writer = DatasetWriter(store)
    batch = [read_record(s, sample(f"r{s}"), "digits") for s in (1, 2)]
    for _ in range(2):  # the second time, as after a lost acknowledgement
        assert asyncio.run(writer.write("ns", "cam-1", "digits", batch)).stored == 2
    assert objects(s3, "unit/ns/digits/") == [
        "unit/ns/digits/1/cam-1/000000000001.json", "unit/ns/digits/1/cam-1/000000000001.npz",
        "unit/ns/digits/_devices/cam-1.json"]
    shard = store.get("ns/digits/1/cam-1/000000000001.npz")
    with np.load(io.BytesIO(shard or b"")) as arrays:
        assert json.loads(str(arrays["000000000002/0/meta"]))["id"] == "r2"

    # A retraining Job reads the model's samples where the operator says they are, and
    # its model is read back as a dataset: source, in its namespace only.
    where = store.locate("ns/digits/")
    assert where == f"s3://{BUCKET}/unit/ns/digits/"
    assert read_field_data(open_store(where, s3.endpoint)).samples == 2
    store.put("ns/digits/_retraining/1/model.onnx", b"the model")

    async def read(namespace: str) -> bytes:
        return b"".join([chunk async for chunk in read_source(
            "dataset:digits/_retraining/1/model.onnx", SourcePolicy(dataset=store),
            aiohttp.ClientTimeout(total=10), namespace)])
    assert asyncio.run(read("ns")) == b"the model"
    with pytest.raises(ArtifactError, match="not found"):
        asyncio.run(read("other"))
    store.delete("ns/digits/_retraining/1/model.onnx")
    tomorrow = datetime.now(UTC) + timedelta(days=1)  # every shard is older than that
    assert asyncio.run(writer.expire("ns", "digits", tomorrow)) == 1
    assert objects(s3, "unit/ns/digits/") == ["unit/ns/digits/_devices/cam-1.json"]

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(DatasetError, match=r"SignatureDoesNotMatch|AccessDenied"):
        open_store(f"s3://{BUCKET}/unit/", s3.endpoint).put("ns/x", b"x")


class S3Fleet(Fleet):
    """A fleet whose operator keeps the dataset in the S3 bucket."""

    endpoint = ""

    def operator_flags(self, *extra: str, role: str = "") -> tuple[str, ...]:
        return super().operator_flags("--dataset-uri", f"s3://{BUCKET}/fleet",
                                      "--dataset-s3-endpoint", self.endpoint, *extra,
                                      role=role)


@pytest.fixture
def s3_fleet(kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
             s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)  # the operator's environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    S3Fleet.endpoint = s3.endpoint
    started = S3Fleet(kube, namespace, start_operator, tmp_path)
    yield started
    started.stop()


def test_what_devices_keep_lands_in_the_bucket(s3_fleet: Fleet, s3: S3Server) -> None:
    fleet = s3_fleet
    edge = collecting(fleet, {"sampleRate": 1.0})
    ids = [infer(edge, one_hot(i), f"r{i}")["id"] for i in range(20)]
    prefix = f"fleet/{fleet.namespace}/digits/"
    data = eventually(lambda: (d := status_of(fleet.kube, "edgemodels", fleet.namespace,
                                              "digits").get("data")) and d["samples"] == 20
                      and d, timeout=60, what="20 samples stored in the bucket")
    assert data["devices"] == 1
    client = s3.client()
    stored = []
    for key in objects(s3, prefix):
        if key.endswith(".json") and "/_devices/" not in key:
            manifest = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            stored += [entry["id"] for entry in manifest["entries"]]
            shard = client.get_object(Bucket=BUCKET, Key=key.removesuffix(".json") + ".npz")
            with np.load(io.BytesIO(shard["Body"].read())) as arrays:
                assert len([name for name in arrays.files if name.endswith("/meta")]) == len(
                    manifest["entries"])
    assert sorted(stored) == sorted(ids)
