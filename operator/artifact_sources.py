"""Where the operator may read model artifacts from, and reading them.

A namespace tenant names the source (`spec.source.uri`); the cluster admin decides what
that may reach, and the operator reads with its own file permissions and from inside the
cluster network, so every source is checked before a byte is read:

- `file://` only below the directories in `--artifact-file-roots` (none by default),
  after '..' and symlinks are resolved, and opened one component at a time without
  following symlinks, so that a link swapped in after the check cannot lead out.
- `http(s)://` only to public addresses unless `--artifact-allow-private-networks`: the
  address is checked when the socket for it is made, for every connection (redirects
  included), so neither an IP literal nor a DNS answer that changes between lookups
  (rebinding) reaches loopback, link-local (cloud metadata), private or other
  non-public ranges. Redirects stay within the source's scheme, host and port.
- `dataset:MODEL/_retraining/N/model.onnx`, a retraining Job's output, only in the
  model's own namespace of the operator's dataset (retraining.py).

A refusal is an ArtifactError with reason SourceNotAllowed. Messages show the URI
redacted (no userinfo, no query) and say nothing about what lies outside the allowed
places, so they are no oracle for which files exist or which addresses answer.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import posixpath
import re
import socket
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from yarl import URL

from edgefleet.operator.confined_files import open_beneath
from edgefleet.operator.dataset import DatasetError, ObjectStore
from edgefleet.operator.resources import DATASET_SOURCE
from edgefleet.operator.urls import redact_uri

CHUNK = 1 << 20
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
NOT_ALLOWED = "SourceNotAllowed"
UNREACHABLE = "Unreachable"
# IPv6 ranges that carry an IPv4 address a gateway would forward to (RFC 6052 NAT64).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What aiohttp hands a socket factory: getaddrinfo's (family, type, proto, name, address).
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


class ArtifactError(Exception):
    """Why an artifact could not be made ready; `reason` is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SourcePolicy:
    """What the cluster admin lets tenants' artifact sources reach."""

    file_roots: tuple[Path, ...] = ()
    allow_private_networks: bool = False
    dataset: ObjectStore | None = None  # where dataset: sources are (retraining outputs)


def read_source(uri: str, policy: SourcePolicy, timeout: aiohttp.ClientTimeout,
                namespace: str) -> AsyncIterator[bytes]:
    """The artifact's bytes in chunks, from wherever `uri` names, if the policy allows;
    `namespace` is the model's."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme == "file":
        return _file_chunks(uri, policy.file_roots)
    if scheme in ("http", "https"):
        return _http_chunks(uri, policy.allow_private_networks, timeout)
    if scheme == "dataset":
        return _dataset_chunks(uri, policy.dataset, namespace)
    raise ArtifactError("UnsupportedScheme", f"{redact_uri(uri)}: scheme {scheme!r} is not "
                        "file, http, https or dataset")


# ---------------------------------------------------------------- dataset:


async def _dataset_chunks(uri: str, store: ObjectStore | None,
                          namespace: str) -> AsyncIterator[bytes]:
    """A retraining Job's model in the operator's dataset, in the model's own namespace
    there: a tenant names only its own Jobs' outputs."""
    named = re.fullmatch(DATASET_SOURCE, uri)
    if named is None:
        raise ArtifactError(NOT_ALLOWED, f"{uri[:200]!r} does not name a retraining Job's "
                            "output: dataset:MODEL/_retraining/N/model.onnx")
    if store is None:
        raise ArtifactError(NOT_ALLOWED, f"{uri}: this operator has no dataset")
    key = f"{namespace}/{named['model']}/_retraining/{named['job']}/model.onnx"
    try:
        source = await asyncio.to_thread(store.open, key)
    except DatasetError as error:
        raise ArtifactError(UNREACHABLE, f"{uri}: {error}") from None
    if source is None:
        raise ArtifactError(UNREACHABLE, f"{uri} was not found in the dataset")
    with source:
        while chunk := await asyncio.to_thread(source.read, CHUNK):
            yield chunk


# ---------------------------------------------------------------- file://


async def _file_chunks(uri: str, roots: Sequence[Path]) -> AsyncIterator[bytes]:
    with await asyncio.to_thread(open_below_roots, uri, roots) as source:
        while chunk := await asyncio.to_thread(source.read, CHUNK):
            yield chunk


def open_below_roots(uri: str, roots: Sequence[Path]) -> BinaryIO:
    """The regular file a file:// URI names, opened only if it lies below one of `roots`
    once '..' and symlinks are resolved. Blocking: call it in a thread."""
    shown = redact_uri(uri)
    if not roots:
        raise ArtifactError(NOT_ALLOWED, f"{shown}: file:// sources are not allowed on this "
                            "operator (it has no --artifact-file-roots)")
    not_allowed = ArtifactError(NOT_ALLOWED, f"{shown} is not below a directory the "
                                "operator may read artifacts from (--artifact-file-roots)")
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ArtifactError(NOT_ALLOWED, f"{shown}: a file:// source names no host")
    # '..' is resolved as in any URL, without asking the disk about what lies outside.
    lexical = posixpath.normpath(urllib.parse.unquote(parts.path))
    if not posixpath.isabs(lexical):  # "file://" alone would name the working directory
        raise not_allowed
    try:
        resolved = Path(os.path.realpath(lexical))
        for root in roots:
            real_root = Path(os.path.realpath(root))
            if resolved != real_root and resolved.is_relative_to(real_root):
                return _open_beneath(real_root, resolved.relative_to(real_root).parts, shown,
                                     not_allowed)
    except ValueError:  # a NUL byte in the path
        raise not_allowed from None
    raise not_allowed


def _open_beneath(root: Path, parts: tuple[str, ...], shown: str,
                  not_allowed: ArtifactError) -> BinaryIO:
    """Opens root/parts one component at a time, following no symlink: the path was
    resolved a moment ago, so a symlink now means that something changed under us."""
    try:
        return open_beneath(root, parts)
    except (FileNotFoundError, NotADirectoryError):
        raise ArtifactError(UNREACHABLE, f"{shown} was not found") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise not_allowed from None
        separator = " " if error.errno == errno.EINVAL else ": "
        raise ArtifactError(UNREACHABLE, f"{shown}{separator}{error.strerror}") from None


# ---------------------------------------------------------------- http(s)://


def is_public_address(address: str) -> bool:
    """Whether an IP address is one the operator may fetch from without
    --artifact-allow-private-networks: globally routable and not multicast, and so is
    any IPv4 address it carries (IPv4-mapped, 6to4, Teredo, NAT64, IPv4-compatible)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            candidates.append(ip.ipv4_mapped)
        if ip.sixtofour:
            candidates.append(ip.sixtofour)
        if ip.teredo:
            candidates.extend(ip.teredo)
        if ip in _NAT64 or int(ip) >> 32 == 0:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return all(c.is_global and not c.is_multicast for c in candidates)


def same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


async def _http_chunks(uri: str, allow_private: bool,
                       timeout: aiohttp.ClientTimeout) -> AsyncIterator[bytes]:
    refused: list[str] = []

    def checked_socket(addr_info: AddrInfo) -> socket.socket:
        """Makes the socket for one address aiohttp is about to connect to: the last
        moment before traffic, after every DNS answer."""
        family, kind, proto, _, address = addr_info
        if not allow_private and not is_public_address(str(address[0])):
            refused.append(str(address[0]))
            raise OSError(errno.EACCES, "not a public address")
        return socket.socket(family, kind, proto)

    try:
        origin = url = URL(uri, encoded=True)
    except ValueError:
        raise ArtifactError(UNREACHABLE, f"{redact_uri(uri)} is not a valid URL") from None
    connector = aiohttp.TCPConnector(socket_factory=checked_socket)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for _ in range(MAX_REDIRECTS + 1):
            shown = redact_uri(str(url))
            try:
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in REDIRECT_STATUSES:
                        url = _redirect_target(origin, url, response.headers.get("Location"))
                        continue
                    if response.status != 200:
                        raise ArtifactError(UNREACHABLE, f"{shown} answered HTTP "
                                            f"{response.status}")
                    async for chunk in response.content.iter_chunked(CHUNK):
                        yield chunk
                    return
            except aiohttp.ClientConnectorError as error:
                if refused:
                    raise ArtifactError(NOT_ALLOWED, (
                        f"{shown}: {url.host} resolves to an address in a loopback, "
                        "link-local, private or other non-public range, which the operator "
                        "does not fetch from (--artifact-allow-private-networks)")) from None
                raise ArtifactError(UNREACHABLE, f"{shown}: cannot connect "
                                    f"({error.os_error.strerror or 'no answer'})") from None
            except TimeoutError:
                raise ArtifactError(UNREACHABLE, f"{shown}: timed out") from None
            except aiohttp.ClientError as error:
                # Not str(error): aiohttp's messages quote the whole URL, query included.
                raise ArtifactError(UNREACHABLE, f"{shown}: {type(error).__name__}") from None
    raise ArtifactError(UNREACHABLE, f"{redact_uri(uri)}: more than {MAX_REDIRECTS} redirects")


def _redirect_target(origin: URL, current: URL, location: str | None) -> URL:
    shown = redact_uri(str(current))
    if not location:
        raise ArtifactError(UNREACHABLE, f"{shown} redirected without a Location")
    try:
        target = current.join(URL(location))
    except ValueError:
        raise ArtifactError(UNREACHABLE, f"{shown} redirected to an invalid URL") from None
    if not same_origin(origin, target):
        raise ArtifactError(NOT_ALLOWED, (
            f"{shown} redirected to {redact_uri(str(target))}: redirects may not leave the "
            "source's scheme, host and port"))
    return target
