"""The device's store: verified blobs, resumable partial downloads, atomic state."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.store import DeviceState, Store, StoredModel


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
    model = StoredModel("digits", "2", "sha256:" + "a" * 64, 10, max_batch_size=8)
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
