"""What a device keeps on disk, so that it serves through restarts and cloud outages:
verified model blobs (content-addressed), partial downloads (resumable), and its state
(the last desired state and the last-known-good set of models).

Every write that matters is atomic: written to a temporary file, fsynced, renamed, and
the directory fsynced, so a crash leaves the old file or the new one, never a torn one.

Digests come from the gateway and from state.json: a file name is only ever made from a
valid one (`edgefleet.protocol.digests.hex_part`), so no value can name a path outside
the store. A state file that is not exactly what this module writes is set aside.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from edgefleet.edge_runtime.config import BatchingConfig, CapturePolicy, RuntimeConfig
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.protocol.digests import hex_part, is_digest

logger = logging.getLogger(__name__)
STATE_VERSION = 1
# Strict: a value of another type is refused, not coerced (`"8"` is no batch size), and
# so is any field this code does not know.
_EXACT = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True, config=_EXACT)
class StoredModel:
    """A model assignment as the device keeps it. Validated when made, from the
    gateway's message or from state.json alike: the digest is one the store can name a
    file after, and the runtime settings are ones ONNX Runtime can be given."""

    name: Annotated[str, Field(min_length=1)]
    version: Annotated[str, Field(min_length=1)]
    digest: str
    size_bytes: int = Field(default=0, ge=0)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    max_batch_size: int = 1
    max_delay_micros: int = 0
    # Share of the model's unpinned requests (an A/B test lists two versions).
    weight: int = Field(default=100, ge=0)
    # The EdgeModel variant these bytes are ("" the source): only reported back.
    variant: str = Field(default="", max_length=63)
    execution_providers: list[str] = Field(default_factory=list)
    # What to keep of its requests (None: nothing, and no feedback).
    capture: CapturePolicy | None = None

    def runtime(self) -> RuntimeConfig:
        batching = (BatchingConfig(max_batch_size=self.max_batch_size,
                                   max_delay_micros=self.max_delay_micros)
                    if self.max_batch_size > 1 else None)
        return RuntimeConfig(intra_op_threads=self.intra_op_threads,
                             inter_op_threads=self.inter_op_threads, batching=batching,
                             execution_providers=self.execution_providers)

    @field_validator("digest")
    @classmethod
    def _names_a_blob(cls, digest: str) -> str:
        hex_part(digest)  # InvalidDigestError (a ValueError) names the value
        return digest

    @model_validator(mode="after")
    def _loadable(self) -> StoredModel:
        self.runtime()  # the bounds live in RuntimeConfig, once
        return self


STORED_MODEL = TypeAdapter(StoredModel)


@dataclasses.dataclass
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


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replaces `path` whole or not at all, across a crash. `mode` (e.g. 0o600 for a
    private key) holds from the temporary file's creation on."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with open(fd, "wb") as out:
        if mode is not None:
            os.fchmod(fd, mode)  # a stale temporary file keeps its mode through O_TRUNC
        out.write(data)
        out.flush()
        os.fsync(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.partial = root / "partial"
        self.state_path = root / "state.json"
        # Apart from state.json, which a runtime rolled back to an older version reads
        # strictly (an unknown key would set the whole file aside).
        self.starts_path = root / "starts"
        try:
            for directory in (self.blobs, self.partial):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InferenceError.unavailable(f"data dir {root}: {error.strerror}") from None

    # ------------------------------------------------------------ blobs

    def blob_path(self, digest: str) -> Path:
        """Raises InvalidDigestError for anything but a valid digest."""
        return self.blobs / hex_part(digest)

    def has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def partial_path(self, digest: str) -> Path:
        return self.partial / f"{hex_part(digest)}.partial"

    def partial_size(self, digest: str) -> int:
        """Bytes already downloaded (0 when there is no readable partial file)."""
        try:
            return self.partial_path(digest).stat().st_size
        except OSError:
            return 0

    def count_start(self) -> int:
        """Counts this start of the runtime on the data dir; returns the starts before it
        (0 for a fresh data dir, or a count that cannot be read)."""
        try:
            before = max(0, int(self.starts_path.read_text()))
        except (OSError, ValueError):
            before = 0
        write_atomically(self.starts_path, f"{before + 1}\n".encode())
        return before

    def free_bytes(self) -> int:
        """Bytes free for the runtime on the data dir's filesystem."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

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
        keep = {hex_part(digest) for digest in referenced if is_digest(digest)}
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
        """The saved state; a fresh one when there is none, or when the file is not
        what save_state writes (then it is renamed aside, with the reason logged, so
        that nothing is lost and the runtime still starts)."""
        try:
            text = self.state_path.read_bytes()
        except FileNotFoundError:
            return DeviceState()
        except OSError as error:
            return self._set_aside(f"unreadable: {error.strerror}")
        try:
            document = _StateDocument.model_validate_json(text)
        except ValidationError as error:
            return self._set_aside(problems(error))
        return DeviceState(document.revision, document.desired, document.last_known_good)

    def _set_aside(self, reason: str) -> DeviceState:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.state_path.with_name(f"{self.state_path.name}.invalid-{stamp}")
        try:
            os.replace(self.state_path, aside)
        except OSError as error:  # still start: save_state replaces the file later
            logger.error("state file %s is invalid (%s) and cannot be moved aside: %s; "
                         "starting afresh", self.state_path, reason, error.strerror)
        else:
            logger.error("state file %s is invalid (%s); moved it to %s and starting afresh",
                         self.state_path, reason, aside.name)
        return DeviceState()

    def save_state(self, state: DeviceState) -> None:
        document: dict[str, Any] = {
            "version": STATE_VERSION, "revision": state.revision,
            "desired": [STORED_MODEL.dump_python(m, mode="json") for m in state.desired],
            "lastKnownGood": [STORED_MODEL.dump_python(m, mode="json")
                              for m in state.last_known_good],
        }
        write_atomically(self.state_path, json.dumps(document, indent=1).encode())


class _StateDocument(BaseModel):
    """state.json exactly as save_state writes it."""

    model_config = _EXACT
    version: Literal[1]  # STATE_VERSION
    revision: str
    desired: list[StoredModel]
    last_known_good: list[StoredModel] = Field(alias="lastKnownGood")


def problems(error: ValidationError) -> str:
    """Each problem of a validation with its place: `desired.0.digest: Value error, ...`."""
    return "; ".join(f"{'.'.join(map(str, item['loc'])) or 'document'}: {item['msg']}"
                     for item in error.errors()[:5])
