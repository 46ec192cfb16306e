"""The artifact cache on real files: blobs per namespace, verification that tells no
digest, models that name other files refused before they enter, paths built only from
checked values."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
import testmodels
from onnx import TensorProto, helper

from edgefleet.operator.artifact_sources import ArtifactError, SourcePolicy
from edgefleet.operator.artifacts import ArtifactCache
from edgefleet.protocol.digests import InvalidDigestError


@pytest.fixture
def published(tmp_path: Path) -> Path:
    (tmp_path / "published").mkdir()
    return tmp_path / "published"


@pytest.fixture
def cache(tmp_path: Path, published: Path) -> ArtifactCache:
    return ArtifactCache(tmp_path / "cache", max_cache_bytes=2**30, max_artifact_bytes=2**20,
                         policy=SourcePolicy(file_roots=(published,)))


def publish(root: Path, name: str, content: bytes) -> tuple[str, str]:
    (root / name).write_bytes(content)
    return (root / name).as_uri(), hashlib.sha256(content).hexdigest()


def refusal(cache: ArtifactCache, namespace: str, uri: str, sha256: str) -> ArtifactError:
    with pytest.raises(ArtifactError) as caught:
        asyncio.run(cache.ensure(namespace, uri, sha256))
    return caught.value


def test_a_tenant_gets_no_blob_another_tenant_fetched(cache: ArtifactCache,
                                                      published: Path) -> None:
    uri, sha = publish(published, "model.onnx", testmodels.scaled(1.0))
    fetched = asyncio.run(cache.ensure("tenant-a", uri, sha))
    assert cache.get("tenant-a", fetched.digest) == fetched
    assert cache.get("tenant-b", fetched.digest) is None
    # Tenant B knows the digest and names a source it cannot read: no bytes for it.
    error = refusal(cache, "tenant-b", (published / "bogus.onnx").as_uri(), sha)
    assert error.message.endswith("bogus.onnx was not found")
    assert cache.get("tenant-b", fetched.digest) is None


def test_a_tenant_that_fetches_the_same_bytes_itself_gets_them(cache: ArtifactCache,
                                                               published: Path) -> None:
    uri, sha = publish(published, "model.onnx", testmodels.scaled(1.0))
    a = asyncio.run(cache.ensure("tenant-a", uri, sha))
    b = asyncio.run(cache.ensure("tenant-b", uri, sha.upper()))
    assert a.digest == b.digest and a.path != b.path
    assert b.path.read_bytes() == a.path.read_bytes()


def test_a_digest_mismatch_tells_no_digest(cache: ArtifactCache, published: Path,
                                           tmp_path: Path) -> None:
    content = testmodels.scaled(1.0)
    uri, real = publish(published, "model.onnx", content)
    error = refusal(cache, "tenant-a", uri, "f" * 64)
    assert error.reason == "DigestMismatch"
    assert error.message == f"{uri} does not match the digest in the spec"
    assert real not in error.message
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_a_model_with_external_data_is_refused_before_it_enters_the_cache(
    cache: ArtifactCache, published: Path, tmp_path: Path,
) -> None:
    weights = helper.make_tensor("W", TensorProto.FLOAT, [1], [0.0])
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    entry = weights.external_data.add()
    entry.key, entry.value = "location", "etc/hostname"
    graph = helper.make_graph([helper.make_node("Identity", ["W"], ["y"])], "main", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [weights])
    uri, sha = publish(published, "unsafe.onnx", helper.make_model(graph).SerializeToString())
    error = refusal(cache, "tenant-a", uri, sha)
    assert error.reason == "UnsafeModel"
    assert "external data at 'etc/hostname'" in error.message
    assert cache.get("tenant-a", f"sha256:{sha}") is None
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_a_file_that_is_not_onnx_passes_on_for_the_devices_to_refuse(
    cache: ArtifactCache, published: Path,
) -> None:
    uri, sha = publish(published, "text.onnx", b"this is not an ONNX model")
    assert asyncio.run(cache.ensure("tenant-a", uri, sha)).size == 25


@pytest.mark.parametrize("digest", ["sha256:../../etc/passwd", "sha256:" + "A" * 64,
                                    "a" * 64, "sha256:" + "a" * 63 + "/"])
def test_a_digest_not_in_the_one_format_never_becomes_a_path(cache: ArtifactCache,
                                                              digest: str) -> None:
    with pytest.raises(InvalidDigestError):
        cache.get("tenant-a", digest)


@pytest.mark.parametrize("namespace", ["..", "a/b", "", "UPPER", "x" * 64])
def test_a_namespace_that_is_not_a_dns_label_never_becomes_a_path(cache: ArtifactCache,
                                                                   namespace: str) -> None:
    with pytest.raises(ValueError, match="is not a DNS label"):
        cache.get(namespace, "sha256:" + "a" * 64)


def test_eviction_spans_namespaces_and_keeps_the_newest(tmp_path: Path,
                                                        published: Path) -> None:
    content = testmodels.scaled(1.0)
    cache = ArtifactCache(tmp_path / "cache", max_cache_bytes=2**20,
                          max_artifact_bytes=2**20,
                          policy=SourcePolicy(file_roots=(published,)))
    uri, sha = publish(published, "model.onnx", content)
    big = b"x" * (2**20 - len(content) // 2)
    big_uri, big_sha = publish(published, "big.onnx", big)
    asyncio.run(cache.ensure("tenant-a", uri, sha))
    asyncio.run(cache.ensure("tenant-b", big_uri, big_sha))
    assert cache.get("tenant-a", f"sha256:{sha}") is None
    assert cache.get("tenant-b", f"sha256:{big_sha}") is not None
