"""The operator's artifact cache: each model file is fetched once per digest (file://,
http://, https://), its sha256 verified while it streams in, and kept in a
content-addressed directory with a size bound; the gateway serves chunks from it.

Writes are atomic (temporary file, fsync, rename), so a crash never leaves a blob that
claims a digest it does not have.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

logger = logging.getLogger(__name__)
CHUNK = 1 << 20


class ArtifactError(Exception):
    """Why an artifact could not be made ready; `reason` is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Artifact:
    digest: str  # "sha256:<hex>"
    path: Path
    size: int


class ArtifactCache:
    def __init__(self, root: Path, max_cache_bytes: int, max_artifact_bytes: int,
                 http_timeout_s: float = 30.0) -> None:
        self.root = root
        self.max_cache_bytes = max_cache_bytes
        self.max_artifact_bytes = max_artifact_bytes
        self._timeout = aiohttp.ClientTimeout(total=None, connect=http_timeout_s,
                                              sock_read=http_timeout_s)
        self._fetching: dict[str, asyncio.Lock] = {}
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        return self.root / "sha256" / digest.removeprefix("sha256:")

    def get(self, digest: str) -> Artifact | None:
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return Artifact(digest, path, size)

    async def ensure(self, uri: str, sha256: str) -> Artifact:
        """The verified artifact; fetched if the cache lacks it, once however many ask."""
        digest = f"sha256:{sha256.lower()}"
        lock = self._fetching.setdefault(digest, asyncio.Lock())
        async with lock:
            cached = self.get(digest)
            if cached:
                os.utime(cached.path)  # recently used: evicted last
                return cached
            artifact = await self._fetch(uri, digest)
        await asyncio.to_thread(self._evict, keep=artifact.path)
        return artifact

    async def _fetch(self, uri: str, digest: str) -> Artifact:
        hasher = hashlib.sha256()
        size = 0
        handle, tmp_name = tempfile.mkstemp(dir=self.root / "tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(handle, "wb") as out:
                async for chunk in self._stream(uri):
                    size += len(chunk)
                    if size > self.max_artifact_bytes:
                        raise ArtifactError("TooLarge", f"{uri} is larger than the limit of "
                                            f"{self.max_artifact_bytes} bytes")
                    hasher.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(out.flush)
                await asyncio.to_thread(os.fsync, out.fileno())
            actual = f"sha256:{hasher.hexdigest()}"
            if actual != digest:
                raise ArtifactError("DigestMismatch", f"{uri} has {actual}, the spec says "
                                    f"{digest}")
            final = self.blob_path(digest)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.info("artifact fetched uri=%s digest=%s bytes=%d", uri, digest, size)
        return Artifact(digest, final, size)

    async def _stream(self, uri: str) -> AsyncIterator[bytes]:
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme == "file":
            path = Path(urllib.parse.unquote(parsed.path))
            try:
                with open(path, "rb") as source:
                    while chunk := await asyncio.to_thread(source.read, CHUNK):
                        yield chunk
            except OSError as error:
                raise ArtifactError("Unreachable", f"{uri}: {error.strerror}") from None
        elif parsed.scheme in ("http", "https"):
            try:
                async with aiohttp.ClientSession(timeout=self._timeout) as session, \
                        session.get(uri) as response:
                    if response.status != 200:
                        raise ArtifactError("Unreachable", f"{uri} answered HTTP "
                                            f"{response.status}")
                    async for chunk in response.content.iter_chunked(CHUNK):
                        yield chunk
            except (aiohttp.ClientError, TimeoutError) as error:
                raise ArtifactError("Unreachable", f"{uri}: {error or type(error).__name__}"
                                    ) from None
        else:
            raise ArtifactError("UnsupportedScheme", f"{uri}: scheme {parsed.scheme!r} is not "
                                "file, http or https")

    def _evict(self, keep: Path) -> None:
        """Deletes the least recently used blobs until the cache fits its bound."""
        blobs = sorted((p.stat().st_mtime, p.stat().st_size, p)
                       for p in (self.root / "sha256").iterdir())
        total = sum(size for _, size, _ in blobs)
        for _, size, path in blobs:
            if total <= self.max_cache_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size
                logger.info("artifact evicted path=%s bytes=%d", path, size)
