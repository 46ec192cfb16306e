"""The device's store: verified blobs, resumable partial downloads, atomic state; digests
that are not digests and state files it did not write."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edgefleet.edge_runtime.config import CapturePolicy
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.store import DeviceState, Store, StoredModel
from edgefleet.protocol.digests import InvalidDigestError


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def test_a_complete_download_is_verified_and_moved_into_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"model bytes" * 1000
    digest = digest_of(data)
    with open(store.partial_path(digest), "ab") as partial:
        partial.write(data[:100])
    assert store.partial_size(digest) == 100  # a resumed download asks from here
    with open(store.partial_path(digest), "ab") as partial:
        partial.write(data[100:])
    path = store.complete(digest)
    assert path.read_bytes() == data and store.has(digest)
    assert not store.partial_path(digest).exists()


def test_a_corrupt_download_is_refused_and_thrown_away(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = digest_of(b"the real thing")
    store.partial_path(digest).write_bytes(b"something else")
    with pytest.raises(InferenceError, match="expected sha256:"):
        store.complete(digest)
    assert not store.has(digest) and store.partial_size(digest) == 0


def test_state_survives_a_restart_and_a_missing_file_is_a_fresh_start(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.load_state() == DeviceState()
    model = StoredModel("digits", "2", "sha256:" + "a" * 64, 10, max_batch_size=8,
                        capture=CapturePolicy(sample_rate=0.5, include_outputs=True))
    store.save_state(DeviceState("rev1", [model], [model]))
    assert Store(tmp_path).load_state() == DeviceState("rev1", [model], [model])
    assert not list(tmp_path.glob(".*.tmp"))  # written through a renamed temporary file


def test_garbage_collection_spares_referenced_and_recent_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    kept, old, recent = (digest_of(b"kept"), digest_of(b"old"), digest_of(b"recent"))
    for digest in (kept, old, recent):
        store.blob_path(digest).write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    for digest in (kept, old):
        os.utime(store.blob_path(digest), (an_hour_ago, an_hour_ago))
    removed = store.collect_garbage({kept}, grace_s=600)
    assert removed == [old.removeprefix("sha256:")]
    assert store.has(kept) and store.has(recent) and not store.has(old)


@pytest.mark.parametrize("digest", [
    "sha256:../../x", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 64,
    "sha256:" + "a" * 64 + "/../x", "",
])
def test_a_value_that_is_not_a_digest_never_becomes_a_path(tmp_path: Path, digest: str) -> None:
    store = Store(tmp_path / "data")
    for make_path in (store.blob_path, store.partial_path, store.partial_size, store.has):
        with pytest.raises(InvalidDigestError, match="64 lowercase hex digits"):
            make_path(digest)
    with pytest.raises(ValidationError, match="digest"):
        StoredModel("digits", "1", digest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def saved_state(tmp_path: Path) -> dict[str, Any]:
    store = Store(tmp_path)
    model = StoredModel("digits", "2", digest_of(b"model"), 10, max_batch_size=8)
    store.save_state(DeviceState("rev1", [model], [model]))
    return dict(json.loads(store.state_path.read_text()))


def with_model_field(document: dict[str, Any], key: str, value: object) -> dict[str, Any]:
    return {**document, "desired": [{**document["desired"][0], key: value}]}


@pytest.mark.parametrize(("content", "reason"), [
    (lambda doc: {**doc, "owner": "someone else"}, "owner: Extra inputs are not permitted"),
    (lambda doc: [doc], "document: Input should be an object"),
    (lambda doc: "{not json", "Invalid JSON"),
    (lambda doc: {**doc, "version": 2}, "version: Input should be 1"),
    (lambda doc: {**doc, "revision": 7}, "revision: Input should be a valid string"),
    (lambda doc: {**doc, "desired": {"digits": 1}}, "desired: Input should be a valid array"),
    (lambda doc: with_model_field(doc, "size_bytes", "10"),
     "desired.0.size_bytes: Input should be a valid integer"),
    (lambda doc: with_model_field(doc, "weight", True), "desired.0.weight"),
    (lambda doc: with_model_field(doc, "extra", 1), "desired.0.extra"),
    (lambda doc: with_model_field(doc, "digest", "sha256:../../etc/passwd"),
     "desired.0.digest: Value error, digest 'sha256:../../etc/passwd' is not"),
    (lambda doc: with_model_field(doc, "max_batch_size", 100_000),
     "less than or equal to 1024"),
    (lambda doc: {k: v for k, v in doc.items() if k != "lastKnownGood"},
     "lastKnownGood: Field required"),
])
def test_a_foreign_state_file_is_set_aside_and_the_device_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
    content: Callable[[dict[str, Any]], object], reason: str,
) -> None:
    made = content(saved_state(tmp_path))
    written = made if isinstance(made, str) else json.dumps(made)
    (tmp_path / "state.json").write_text(written)
    with caplog.at_level(logging.ERROR, logger="edgefleet.edge_runtime.store"):
        assert Store(tmp_path).load_state() == DeviceState()
    aside = list(tmp_path.glob("state.json.invalid-*"))
    assert len(aside) == 1 and aside[0].read_text() == written  # kept, not lost
    assert not (tmp_path / "state.json").exists()
    assert reason in caplog.text and aside[0].name in caplog.text
    # What the device writes next is read back as before.
    Store(tmp_path).save_state(DeviceState("rev2"))
    assert Store(tmp_path).load_state() == DeviceState("rev2")


def test_a_state_file_that_cannot_be_read_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    assert Store(tmp_path).load_state() == DeviceState()
    assert [p.name.startswith("state.json.invalid-") for p in tmp_path.glob("state.json*")] \
        == [True]


def test_starts_are_counted_apart_from_the_state_an_older_runtime_reads(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert [store.count_start() for _ in range(3)] == [0, 1, 2]
    store.save_state(DeviceState(revision="r1"))
    assert set(json.loads(store.state_path.read_text())) == {
        "version", "revision", "desired", "lastKnownGood"}  # no new key: older runtimes read it
    store.starts_path.write_text("not a number")
    assert store.count_start() == 0  # a count that cannot be read starts over
