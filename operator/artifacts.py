"""The operator's artifact cache: each model file is fetched from its source (see
artifact_sources.py for what a source may reach), its sha256 verified while it streams
in, checked to name no other file (edgefleet.protocol.onnx_refs), and kept in a
content-addressed directory with a size bound; the gateway serves chunks from it.

Blobs are kept per namespace: a tenant gets bytes only from a fetch of its own that
verified them, never because another tenant's model had the same digest (knowing a
digest is not owning the file). Paths are built only from checked values: a namespace
that is a DNS label and a digest in the one format (edgefleet.protocol.digests).

Writes are atomic (temporary file, fsync, rename), so a crash never leaves a blob that
claims a digest it does not have, nor one that was not checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from edgefleet.operator.artifact_sources import ArtifactError, SourcePolicy, read_source
from edgefleet.operator.urls import redact_uri
from edgefleet.protocol.digests import hex_part
from edgefleet.protocol.onnx_refs import MalformedModelError, external_references, summarize

logger = logging.getLogger(__name__)
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Artifact:
    digest: str  # "sha256:<hex>"
    path: Path
    size: int


class ArtifactCache:
    def __init__(self, root: Path, max_cache_bytes: int, max_artifact_bytes: int,
                 policy: SourcePolicy, http_timeout_s: float = 30.0) -> None:
        self.root = root
        self.max_cache_bytes = max_cache_bytes
        self.max_artifact_bytes = max_artifact_bytes
        self.policy = policy
        self._timeout = aiohttp.ClientTimeout(total=None, connect=http_timeout_s,
                                              sock_read=http_timeout_s)
        self._fetching: dict[tuple[str, str], asyncio.Lock] = {}
        # Blobs live in blobs/<namespace>/: a namespace named "tmp" cannot collide.
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)

    def blob_path(self, namespace: str, digest: str) -> Path:
        """Where a namespace's blob lives; raises ValueError for a namespace that is not a
        DNS label or a digest not in the one format, so neither becomes a path."""
        if not NAMESPACE_PATTERN.fullmatch(namespace):
            raise ValueError(f"namespace {namespace[:80]!r} is not a DNS label")
        return self.root / "blobs" / namespace / hex_part(digest)

    def get(self, namespace: str, digest: str) -> Artifact | None:
        """The blob `namespace` fetched and verified itself, if the cache holds it."""
        path = self.blob_path(namespace, digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return Artifact(digest, path, size)

    async def ensure(self, namespace: str, uri: str, sha256: str) -> Artifact:
        """The namespace's verified artifact; fetched if it lacks it, once however many
        ask. `sha256` is the spec's: 64 hex digits in either case."""
        digest = f"sha256:{sha256.lower()}"
        path = self.blob_path(namespace, digest)  # checks both before anything is fetched
        lock = self._fetching.setdefault((namespace, digest), asyncio.Lock())
        async with lock:
            cached = self.get(namespace, digest)
            if cached:
                os.utime(cached.path)  # recently used: evicted last
                return cached
            artifact = await self._fetch(namespace, uri, digest, path)
        await asyncio.to_thread(self._evict, keep=artifact.path)
        return artifact

    async def _fetch(self, namespace: str, uri: str, digest: str, final: Path) -> Artifact:
        shown = redact_uri(uri)
        hasher = hashlib.sha256()
        size = 0
        handle, tmp_name = tempfile.mkstemp(dir=self.root / "tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(handle, "wb") as out:
                async for chunk in read_source(uri, self.policy, self._timeout, namespace):
                    size += len(chunk)
                    if size > self.max_artifact_bytes:
                        raise ArtifactError("TooLarge", f"{shown} is larger than the limit of "
                                            f"{self.max_artifact_bytes} bytes")
                    hasher.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(out.flush)
                await asyncio.to_thread(os.fsync, out.fileno())
            # Never the digest computed: it would tell a tenant the digest of a file it
            # may not read, and with it, let it claim that file.
            if hasher.hexdigest() != hex_part(digest):
                raise ArtifactError("DigestMismatch",
                                    f"{shown} does not match the digest in the spec")
            await asyncio.to_thread(_refuse_path_references, tmp, shown)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.info("artifact fetched namespace=%s uri=%s bytes=%d", final.parent.name, shown,
                    size)
        return Artifact(digest, final, size)

    def adopt(self, namespace: str, built: Path, digest: str) -> Artifact:
        """Moves a file the operator built (a variant) into the namespace's blobs, once its
        bytes hash to `digest`: the builder's word for it is checked, not trusted."""
        final = self.blob_path(namespace, digest)
        with open(built, "rb") as data:
            actual = hashlib.file_digest(data, "sha256").hexdigest()
        if actual != hex_part(digest):
            raise ArtifactError("DigestMismatch", f"the built file hashes to sha256:{actual}, "
                                f"not {digest}")
        final.parent.mkdir(exist_ok=True)
        os.replace(built, final)
        self._evict(keep=final)
        return Artifact(digest, final, final.stat().st_size)

    def _evict(self, keep: Path) -> None:
        """Deletes the least recently used blobs, of any namespace, until the cache fits
        its bound."""
        blobs = sorted((p.stat().st_mtime, p.stat().st_size, p)
                       for p in (self.root / "blobs").glob("*/*"))
        total = sum(size for _, size, _ in blobs)
        for _, size, path in blobs:
            if total <= self.max_cache_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size
                logger.info("artifact evicted namespace=%s bytes=%d", path.parent.name, size)


def _refuse_path_references(path: Path, shown: str) -> None:
    """Raises UnsafeModel for an ONNX model that names other files (external data): ONNX
    Runtime would read them on the device, relative to its working directory. A file
    that is not protobuf at all names nothing to any ONNX parser; it goes on, and the
    devices fail to load it as they would any broken model."""
    try:
        references = external_references(path)
    except MalformedModelError:
        return
    if references:
        raise ArtifactError("UnsafeModel", (
            f"{shown} is an ONNX model that names other files, which devices would read: "
            f"{summarize(references)}"))
