"""What a device keeps on disk, so that it serves through restarts and cloud outages:
verified model blobs (content-addressed), partial downloads (resumable), and its state
(the last desired state and the last-known-good set of models).

Every write that matters is atomic: written to a temporary file, fsynced, renamed, and
the directory fsynced, so a crash leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.edge_runtime.errors import InferenceError

STATE_VERSION = 1


@dataclass(frozen=True)
class StoredModel:
    """A model assignment as the device keeps it."""

    name: str
    version: str
    digest: str
    size_bytes: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    max_batch_size: int = 1
    max_delay_micros: int = 0
    # Share of the model's unpinned requests (an A/B test lists two versions).
    weight: int = 100


@dataclass
class DeviceState:
    revision: str = ""
    desired: list[StoredModel] = field(default_factory=list)
    # What served last: loaded again at start, with no cloud needed.
    last_known_good: list[StoredModel] = field(default_factory=list)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.partial = root / "partial"
        self.state_path = root / "state.json"
        try:
            for directory in (self.blobs, self.partial):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InferenceError.unavailable(f"data dir {root}: {error.strerror}") from None

    # ------------------------------------------------------------ blobs

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.removeprefix("sha256:")

    def has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def partial_path(self, digest: str) -> Path:
        return self.partial / f"{digest.removeprefix('sha256:')}.partial"

    def partial_size(self, digest: str) -> int:
        """Bytes already downloaded (0 when there is no readable partial file)."""
        try:
            return self.partial_path(digest).stat().st_size
        except OSError:
            return 0

    def complete(self, digest: str) -> Path:
        """Verifies the finished download and moves it into the store; a mismatch deletes
        it (the next attempt starts from zero) and raises."""
        partial = self.partial_path(digest)
        hasher = hashlib.sha256()
        with open(partial, "rb") as data:
            while chunk := data.read(1 << 20):
                hasher.update(chunk)
            os.fsync(data.fileno())
        actual = f"sha256:{hasher.hexdigest()}"
        if actual != digest:
            partial.unlink(missing_ok=True)
            raise InferenceError.invalid(f"downloaded artifact has {actual}, expected {digest}")
        final = self.blob_path(digest)
        os.replace(partial, final)
        _fsync_dir(self.blobs)
        return final

    def collect_garbage(self, referenced: set[str], grace_s: float) -> list[str]:
        """Deletes blobs and partial files no assignment references, once they have been
        untouched for the grace period."""
        removed = []
        keep = {digest.removeprefix("sha256:") for digest in referenced}
        cutoff = time.time() - grace_s
        for directory in (self.blobs, self.partial):
            try:
                paths = list(directory.iterdir())
            except OSError:  # unreadable storage: nothing to collect, nothing lost
                continue
            for path in paths:
                if path.name.split(".")[0] not in keep and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    removed.append(path.name)
        return removed

    # ------------------------------------------------------------ state

    def load_state(self) -> DeviceState:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return DeviceState()
        except (OSError, ValueError):
            # A torn file cannot happen (atomic writes); an unreadable one starts afresh.
            return DeviceState()

        def models(key: str) -> list[StoredModel]:
            return [StoredModel(**item) for item in raw.get(key, [])]

        return DeviceState(raw.get("revision", ""), models("desired"), models("lastKnownGood"))

    def save_state(self, state: DeviceState) -> None:
        document: dict[str, Any] = {
            "version": STATE_VERSION, "revision": state.revision,
            "desired": [asdict(m) for m in state.desired],
            "lastKnownGood": [asdict(m) for m in state.last_known_good],
        }
        write_atomically(self.state_path, json.dumps(document, indent=1).encode())
