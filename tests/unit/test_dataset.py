"""The cloud's dataset: records checked as hostile, shards numpy reads, and writes that
store nothing twice (real files)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edgefleet.edge_runtime.capture import encode_record
from edgefleet.operator.dataset import (
    DatasetWriter,
    DeviceMarker,
    DirectoryStore,
    RecordError,
    build_shard,
    marker_key,
    read_record,
)


def record(request_id: str = "r1", version: str = "1", kind: str = "sample",
           model: str = "digits") -> bytes:
    return encode_record([({"kind": kind, "id": request_id, "model": model,
                            "version": version, "timeMs": 1, "reason": "sampled"},
                           {"input_0": np.arange(4, dtype=np.float32)})])


def test_a_runtime_record_reads_back_and_shards_are_numpy_archives() -> None:
    first, second = read_record(7, record("a"), "digits"), read_record(9, record("b"), "digits")
    (entry,) = first.entries
    assert (entry.kind, entry.version, entry.meta["id"]) == ("sample", "1", "a")
    with np.load(io.BytesIO(build_shard([first, second], "1"))) as shard:
        assert sorted(shard.files) == ["000000000007/0/input_0", "000000000007/0/meta",
                                       "000000000009/0/input_0", "000000000009/0/meta"]
        assert json.loads(str(shard["000000000009/0/meta"]))["id"] == "b"
        np.testing.assert_array_equal(shard["000000000007/0/input_0"], np.arange(4))


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def meta_npy(meta: object) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(json.dumps(meta)))
    return buffer.getvalue()


GOOD_META = {"kind": "sample", "id": "r1", "model": "digits", "version": "1"}


@pytest.mark.parametrize(("data", "reason"), [
    (b"not a zip", "not an .npz"),
    (record(model="other"), "is not 'digits'"),
    (record(version="../../etc"), "is not a version"),
    (record(version="a" * 65), "is not a version"),
    (record(kind="weights"), "neither sample nor label"),
    (record(request_id=""), "meta.id"),
    (zipped({"0/meta.npy": meta_npy(GOOD_META), "0/../x.npy": b""}),
     "not one a runtime writes"),
    (zipped({"0/input_0.npy": b""}), "entry 0 has no meta"),
    (zipped({}), "a record holds entries"),
    (zipped({"0/meta.npy": meta_npy(GOOD_META)}, zipfile.ZIP_DEFLATED), "is compressed"),
    (zipped({"0/meta.npy": meta_npy(["a list"])}), "not a JSON object"),
    (zipped({"0/meta.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}  "}),
     "unicode string"),
    (b"x" * (5 << 20), "at most"),
])
def test_records_that_a_runtime_would_not_write_are_refused_with_the_reason(
        data: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as refused:
        read_record(1, data, "digits")
    assert reason in str(refused.value)


def test_a_batch_sent_again_is_stored_once_and_versions_go_to_their_folders(
        tmp_path: Path) -> None:
    writer = DatasetWriter(DirectoryStore(tmp_path))
    batch = [read_record(s, record(f"r{s}", version="1" if s < 3 else "2"), "digits")
             for s in (1, 2, 3)]
    marker = asyncio.run(writer.write("ns", "cam-1", "digits", batch))
    again = asyncio.run(writer.write("ns", "cam-1", "digits", batch))  # the ack was lost
    assert (marker.stored, marker.samples, again.samples) == (3, 3, 3)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*")) == [
        "ns/digits/1/cam-1/000000000001.json", "ns/digits/1/cam-1/000000000001.npz",
        "ns/digits/2/cam-1/000000000003.json", "ns/digits/2/cam-1/000000000003.npz",
        "ns/digits/_devices/cam-1.json"]
    more = [*batch, read_record(4, record("r4", version="2"), "digits")]
    assert asyncio.run(writer.write("ns", "cam-1", "digits", more)).stored == 4
    manifest = json.loads((tmp_path / "ns/digits/2/cam-1/000000000004.json").read_text())
    assert [e["id"] for e in manifest["entries"]] == ["r4"]


def test_shards_a_crash_left_pending_are_deleted_before_the_records_come_again(
        tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    # A writer died after the shard, before the marker said it was stored.
    store.put(marker_key("ns", "digits", "cam-1"),
              DeviceMarker(stored=0, pending=["ns/digits/1/cam-1/000000000001"]).to_json())
    store.put("ns/digits/1/cam-1/000000000001.npz", build_shard(
        [read_record(1, record("r1"), "digits"), read_record(2, record("r2"), "digits")], "1"))
    # The device dropped record 1 meanwhile (its disk budget) and sends 2 and 3.
    writer = DatasetWriter(store)
    batch = [read_record(s, record(f"r{s}"), "digits") for s in (2, 3)]
    assert asyncio.run(writer.write("ns", "cam-1", "digits", batch)).stored == 3
    assert not (tmp_path / "ns/digits/1/cam-1/000000000001.npz").exists()
    manifest = json.loads((tmp_path / "ns/digits/1/cam-1/000000000002.json").read_text())
    assert [e["id"] for e in manifest["entries"]] == ["r2", "r3"]


def test_a_key_never_leaves_the_store_root(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "root")
    for key in ("../x", "a//b", "a/./b", ""):
        with pytest.raises(ValueError, match="not a dataset key"):
            store.put(key, b"x")


def test_shards_past_retention_are_deleted_and_markers_stay(tmp_path: Path) -> None:
    writer = DatasetWriter(DirectoryStore(tmp_path))
    for sequence in (1, 2):
        asyncio.run(writer.write("ns", "cam-1", "digits",
                                 [read_record(sequence, record(f"r{sequence}"), "digits")]))
    old = tmp_path / "ns/digits/1/cam-1/000000000001"
    for path in (old.with_suffix(".npz"), old.with_suffix(".json")):
        os.utime(path, (1_000_000, 1_000_000))  # 1970: long past any retention
    cutoff = datetime.now(UTC) - timedelta(days=30)
    assert asyncio.run(writer.expire("ns", "digits", cutoff)) == 1
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*")) == [
        "ns/digits/1/cam-1/000000000002.json", "ns/digits/1/cam-1/000000000002.npz",
        "ns/digits/_devices/cam-1.json"]
    assert asyncio.run(writer.expire("ns", "other", cutoff)) == 0
