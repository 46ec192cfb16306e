"""What an artifact source may reach: file:// below the configured roots only, http(s)
to public addresses only, redirects within the source's origin. Real files, symlinks and
FIFOs in a temporary directory; real HTTP servers on loopback addresses."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from edgefleet.operator.artifact_sources import (
    ArtifactError,
    SourcePolicy,
    _open_beneath,
    is_public_address,
    open_below_roots,
    read_source,
    same_origin,
)

TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5, sock_read=5)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1",
    "169.254.169.254",  # cloud metadata
    "0.0.0.0", "224.0.0.1", "255.255.255.255",
    "::1", "::", "fe80::1%eth0", "fc00::1", "fd00:ec2::254", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "2002:a9fe:a9fe::1",  # 6to4 around 169.254.169.254
    "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
    "::7f00:1",  # IPv4-compatible 127.0.0.1
])
def test_loopback_link_local_private_and_multicast_addresses_are_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_global_unicast_addresses_are_public(address: str) -> None:
    assert is_public_address(address)


def test_origin_is_scheme_host_and_port() -> None:
    base = URL("http://models.example/a.onnx")
    assert same_origin(base, URL("http://models.example:80/b/c.onnx?x=1"))
    assert not same_origin(base, URL("https://models.example/a.onnx"))
    assert not same_origin(base, URL("http://models.example:8080/a.onnx"))
    assert not same_origin(base, URL("http://169.254.169.254/a.onnx"))


# ---------------------------------------------------------------- file://


@dataclass
class Tree:
    root: Path  # the allowed root
    outside: Path  # a secret beside it

    def uri(self, path: str) -> str:
        return f"file://{path}"


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "artifacts"
    (root / "models").mkdir(parents=True)
    (root / "models" / "ok.onnx").write_bytes(b"model")
    outside = tmp_path / "secret"
    outside.write_text("the operator's own file")
    return Tree(root, outside)


def refusal(uri: str, roots: list[Path]) -> ArtifactError:
    with pytest.raises(ArtifactError) as caught:
        open_below_roots(uri, roots).close()
    return caught.value


def test_a_file_below_a_root_is_read(tree: Tree) -> None:
    with open_below_roots(tree.uri(f"{tree.root}/models/ok.onnx"), [tree.root]) as opened:
        assert opened.read() == b"model"


def test_no_roots_refuses_every_file_source(tree: Tree) -> None:
    error = refusal(tree.uri(f"{tree.root}/models/ok.onnx"), [])
    assert error.reason == "SourceNotAllowed"
    assert "no --artifact-file-roots" in error.message


@pytest.mark.parametrize("path", [
    "{outside}",
    "{root}/../secret",
    "{root}/models/%2e%2e/%2e%2e/secret",
    "{root}/link-out",
    "{root}/models/../link-out",
    "/etc/passwd",
    "/var/run/secrets/kubernetes.io/serviceaccount/token",
    "{root}/a%00b",
    "",
])
def test_a_path_outside_the_roots_is_refused_alike_whether_it_exists_or_not(
    tree: Tree, path: str,
) -> None:
    (tree.root / "link-out").symlink_to(tree.outside)
    uri = tree.uri(path.format(root=tree.root, outside=tree.outside))
    missing = tree.uri(f"{tree.outside}-missing")
    error, for_missing = refusal(uri, [tree.root]), refusal(missing, [tree.root])
    assert error.reason == for_missing.reason == "SourceNotAllowed"
    assert error.message.replace(uri, "URI") == for_missing.message.replace(missing, "URI")


def test_a_symlink_inside_the_root_to_a_file_inside_it_is_followed(tree: Tree) -> None:
    (tree.root / "latest.onnx").symlink_to(tree.root / "models" / "ok.onnx")
    with open_below_roots(tree.uri(f"{tree.root}/latest.onnx"), [tree.root]) as opened:
        assert opened.read() == b"model"


def test_a_missing_file_below_a_root_is_not_found(tree: Tree) -> None:
    error = refusal(tree.uri(f"{tree.root}/models/nothing.onnx"), [tree.root])
    assert (error.reason, error.message) == (
        "Unreachable", f"file://{tree.root}/models/nothing.onnx was not found")


def test_a_fifo_or_directory_below_a_root_is_refused_without_hanging(tree: Tree) -> None:
    os.mkfifo(tree.root / "pipe")
    for name in ("pipe", "models"):
        error = refusal(tree.uri(f"{tree.root}/{name}"), [tree.root])
        assert error.message.endswith("is not a regular file")


def test_a_file_uri_with_a_host_is_refused(tree: Tree) -> None:
    error = refusal(f"file://fileserver{tree.root}/models/ok.onnx", [tree.root])
    assert error.reason == "SourceNotAllowed"


def test_a_symlink_swapped_in_after_the_check_is_not_followed(tree: Tree) -> None:
    # What open_below_roots resolved were a directory and a file; by the time it opens
    # them, symlinks out of the root stand there instead.
    (tree.root / "models-swapped").symlink_to(tree.outside.parent)
    (tree.root / "file-swapped").symlink_to(tree.outside)
    not_allowed = ArtifactError("SourceNotAllowed", "not allowed")
    for parts in (("models-swapped", "secret"), ("file-swapped",)):
        with pytest.raises(ArtifactError) as caught:
            _open_beneath(tree.root, parts, "shown", not_allowed).close()
        assert caught.value.reason in ("SourceNotAllowed", "Unreachable"), caught.value


# ---------------------------------------------------------------- http(s)://


@dataclass
class Server:
    """A loopback HTTP server that counts the connections it accepts."""

    host: str
    port: int = 0
    connections: int = 0
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        request = await reader.readuntil(b"\r\n\r\n")
        path = request.split(b" ")[1].decode().split("?")[0]
        status, headers, body = self.routes.get(path, (404, {}, b""))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{head}"
                     f"Connection: close\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()


async def fetch(uri: str, policy: SourcePolicy, *servers: Server) -> bytes | ArtifactError:
    started = []
    for server in servers:
        started.append(await asyncio.start_server(server.handle, server.host, server.port))
        server.port = started[-1].sockets[0].getsockname()[1]
    try:
        return b"".join([chunk async for chunk in read_source(uri.format(
            *(s.port for s in servers)), policy, TIMEOUT, "fleet")])
    except ArtifactError as error:
        return error
    finally:
        for each in started:
            each.close()


@pytest.fixture
def server() -> Iterator[Server]:
    yield Server("127.0.0.1", routes={"/model.onnx": (200, {}, b"model")})


PRIVATE_OK = SourcePolicy(allow_private_networks=True)


def test_a_loopback_source_is_refused_by_default_before_any_connection(server: Server) -> None:
    for uri in ("http://127.0.0.1:{0}/model.onnx", "http://localhost:{0}/model.onnx",
                "http://[::ffff:127.0.0.1]:{0}/model.onnx"):
        error = asyncio.run(fetch(uri, SourcePolicy(), server))
        assert isinstance(error, ArtifactError) and error.reason == "SourceNotAllowed", error
        assert "--artifact-allow-private-networks" in error.message
    assert server.connections == 0


def test_a_loopback_source_is_read_when_private_networks_are_allowed(server: Server) -> None:
    assert asyncio.run(fetch("http://127.0.0.1:{0}/model.onnx", PRIVATE_OK, server)) == b"model"


def test_a_redirect_within_the_origin_is_followed(server: Server) -> None:
    server.routes["/old"] = (302, {"Location": "/model.onnx"}, b"")
    assert asyncio.run(fetch("http://127.0.0.1:{0}/old", PRIVATE_OK, server)) == b"model"


@pytest.mark.parametrize("location", [
    "http://127.0.0.2:{port}/model.onnx",  # another host, even a private one allowed
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "https://127.0.0.1:{port}/model.onnx",  # another scheme
    "http://127.0.0.1:1/model.onnx",  # another port
])
def test_a_redirect_out_of_the_origin_is_refused_without_following_it(
    server: Server, location: str,
) -> None:
    elsewhere = Server("127.0.0.2", routes=server.routes)

    async def run() -> bytes | ArtifactError:
        listener = await asyncio.start_server(elsewhere.handle, "127.0.0.2", 0)
        elsewhere.port = listener.sockets[0].getsockname()[1]
        server.routes["/go"] = (307, {"Location": location.format(port=elsewhere.port)}, b"")
        try:
            return await fetch("http://127.0.0.1:{0}/go", PRIVATE_OK, server)
        finally:
            listener.close()

    error = asyncio.run(run())
    assert isinstance(error, ArtifactError) and error.reason == "SourceNotAllowed", error
    assert "redirects may not leave the source's scheme, host and port" in error.message
    assert elsewhere.connections == 0


def test_a_redirect_loop_ends(server: Server) -> None:
    server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    error = asyncio.run(fetch("http://127.0.0.1:{0}/loop", PRIVATE_OK, server))
    assert isinstance(error, ArtifactError) and "more than 5 redirects" in error.message


def test_messages_show_the_uri_without_credentials_or_query(server: Server) -> None:
    uri = "http://user:hunter2@127.0.0.1:{0}/missing.onnx?X-Amz-Signature=s3cr3t"
    for policy in (SourcePolicy(), PRIVATE_OK):
        error = asyncio.run(fetch(uri, policy, server))
        assert isinstance(error, ArtifactError)
        assert "hunter2" not in error.message and "s3cr3t" not in error.message
        assert "<redacted>@127.0.0.1" in error.message
    assert error.message.endswith("missing.onnx?<redacted> answered HTTP 404")
