"""The cloud's dataset of what devices kept of their requests (EdgeModel
spec.dataCollection): samples and feedback labels, uploaded over the device's session,
kept in a local directory or in any S3-compatible bucket.

Layout, under the store's root (a directory, or a bucket and prefix):

    <namespace>/<model>/<version>/<device>/<first sequence>.npz   a shard
    <namespace>/<model>/<version>/<device>/<first sequence>.json  its manifest
    <namespace>/<model>/_devices/<device>.json                    what is stored of it

A device's record (one journal file) holds one or more entries, samples and labels,
each under its index. A shard holds the entries of one version from consecutive
records of one device: an uncompressed .npz (numpy's own format: `numpy.load(shard)`
reads it, no pickle) whose arrays are the entries' arrays under
`<sequence>/<index>/`: `<sequence>/<index>/meta` (JSON text: kind `sample` or `label`,
id, model, version, timeMs, reason, tensor names and datatypes; for labels the labels
and the version's predictions) and `<sequence>/<index>/input_<k>`, `.../output_<k>`.
The manifest lists the entries' meta as JSON, written after the shard, so that tools can
filter samples and join labels to them (by id) without opening shards; a shard without
its manifest is not yet complete.
Why .npz and not Parquet: a sample is a few tensors of any shape and datatype, which
numpy reads and writes as they are, while Parquet would flatten them into lists; and
the operator writes shards with the standard library alone (a zip of .npy files), so it
needs neither numpy nor pyarrow.

Nothing is stored twice. Sequences never repeat on a device, a shard is named by its
first sequence, and `_devices/<device>.json` says up to which sequence the device's
records are stored: a batch sent again (the acknowledgement was lost) is trimmed to
what is new, and before shards are written the marker records their names as pending,
so that shards a crash left without their marker update are deleted, not kept beside
the same records sent again.

Every record is hostile until checked (`read_record`): bounded, an uncompressed zip
of .npy members named as the runtime names them, meta that names this model and a
version that is a valid version, before any of it becomes part of a key.
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from edgefleet.operator.confined_files import open_beneath
from edgefleet.operator.resources import VERSION_PATTERN

MAX_RECORD_BYTES = 4 << 20
MAX_META_BYTES = 64 << 10
MAX_MEMBERS = 4096
MEMBER_PATTERN = re.compile(r"^(\d{1,3})/(meta|(input|output)_\d{1,2})\.npy$")
VERSION = re.compile(VERSION_PATTERN)
MAX_VERSION_CHARS = 64
MAX_ID_CHARS = 128
NPY_MAGIC = b"\x93NUMPY"


class DatasetError(Exception):
    """The store did not take an object (a network error, a refusal); try again."""


class RecordError(ValueError):
    """A record that is not what a runtime writes; the message says what and where."""


@dataclass(frozen=True)
class Entry:
    """One sample or label of a record: its index there and its checked meta."""

    index: int
    meta: dict[str, Any]
    members: tuple[str, ...]  # its arrays' names in the record

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def version(self) -> str:
        return str(self.meta["version"])


@dataclass(frozen=True)
class Record:
    sequence: int
    data: bytes
    entries: tuple[Entry, ...]


def read_npy_text(data: bytes) -> str:
    """The text of a 0-d unicode .npy array (numpy's format, read without numpy)."""
    if not data.startswith(NPY_MAGIC) or len(data) < 10:
        raise RecordError("meta is not an .npy array")
    major = data[6]
    if major == 1:
        length, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        length, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise RecordError(f"meta is an .npy of unknown version {major}")
    try:
        header = ast.literal_eval(data[start:start + length].decode("latin1"))
    except (ValueError, SyntaxError) as error:
        raise RecordError(f"meta's .npy header is malformed: {error}") from None
    descr = header.get("descr") if isinstance(header, dict) else None
    if not (isinstance(descr, str) and re.fullmatch(r"<U\d{1,6}", descr)
            and header.get("shape") == ()):
        raise RecordError("meta must be one little-endian unicode string")
    width = int(descr[2:])
    body = data[start + length:]
    if len(body) != 4 * width:
        raise RecordError("meta's .npy body does not match its header")
    return body.decode("utf-32-le").rstrip("\x00")


def read_record(sequence: int, data: bytes, model: str) -> Record:
    """A device's record, checked: raises RecordError saying what is wrong."""
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"{len(data)} bytes; at most {MAX_RECORD_BYTES}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as error:
        raise RecordError(f"not an .npz: {error}") from None
    if len(members) > MAX_MEMBERS:
        raise RecordError(f"{len(members)} arrays; at most {MAX_MEMBERS}")
    by_index: dict[int, list[str]] = {}
    for member in members:
        named = MEMBER_PATTERN.match(member.filename)
        if not named:
            raise RecordError(f"array {member.filename[:80]!r} is not one a runtime writes")
        # Stored, not deflated: what a member holds is what the record's size says.
        if member.compress_type != zipfile.ZIP_STORED or member.file_size > len(data):
            raise RecordError(f"array {member.filename!r} is compressed")
        by_index.setdefault(int(named.group(1)), []).append(member.filename)
    names = [member.filename for member in members]
    if len(set(names)) != len(names) or not by_index:
        raise RecordError("a record holds entries, and no array twice")
    entries = []
    for index in sorted(by_index):
        meta = _entry_meta(archive, f"{index}/meta.npy", model, names)
        entries.append(Entry(index, meta, tuple(by_index[index])))
    return Record(sequence, data, tuple(entries))


def _entry_meta(archive: zipfile.ZipFile, name: str, model: str,
                names: list[str]) -> dict[str, Any]:
    if name not in names:
        raise RecordError(f"entry {name.partition('/')[0]} has no meta")
    info = archive.getinfo(name)
    if info.file_size > MAX_META_BYTES:
        raise RecordError(f"{name} is {info.file_size} bytes; at most {MAX_META_BYTES}")
    try:
        meta = json.loads(read_npy_text(archive.read(info)))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecordError(f"{name} is not JSON: {error}") from None
    if not isinstance(meta, dict):
        raise RecordError(f"{name} is not a JSON object")
    kind, version, request_id = meta.get("kind"), meta.get("version"), meta.get("id")
    if kind not in ("sample", "label"):
        raise RecordError(f"meta.kind {str(kind)[:40]!r} is neither sample nor label")
    if meta.get("model") != model:
        raise RecordError(f"meta.model {str(meta.get('model'))[:80]!r} is not {model!r}")
    if not (isinstance(version, str) and len(version) <= MAX_VERSION_CHARS
            and VERSION.match(version)):
        raise RecordError(f"meta.version {str(version)[:80]!r} is not a version")
    if not (isinstance(request_id, str) and 0 < len(request_id) <= MAX_ID_CHARS):
        raise RecordError("meta.id must be a request id of 1 to 128 characters")
    return meta


def build_shard(records: Sequence[Record], version: str) -> bytes:
    """One .npz of the arrays of the records' entries of `version`, each under
    `<sequence>/<index>/`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as shard:
        for record in records:
            with zipfile.ZipFile(io.BytesIO(record.data)) as archive:
                for entry in record.entries:
                    if entry.version != version:
                        continue
                    for member in entry.members:
                        shard.writestr(f"{record.sequence:012d}/{member}",
                                       archive.read(member))
    return buffer.getvalue()


# ---------------------------------------------------------------- stores


class ObjectStore(Protocol):
    """Where the dataset's objects live; blocking calls (the writer runs them in
    threads). Keys are `/`-separated and made only of checked names."""

    def put(self, key: str, data: bytes) -> None:
        """Stores the object durably before returning."""

    def get(self, key: str) -> bytes | None:
        """The object; None when there is none."""

    def open(self, key: str) -> BinaryIO | None:
        """The object to read in parts; None when there is none."""

    def delete(self, key: str) -> None:
        """Deletes it; nothing when there is none."""

    def keys(self, prefix: str) -> list[tuple[str, datetime]]:
        """The keys under `prefix` (ending in `/`), each with when it was written."""

    def describe(self) -> str:
        """Where it is, for logs and status (no credentials)."""

    def locate(self, key: str) -> str:
        """Where a key is, as a program outside the operator names it (a path or an s3://
        URI)."""


class DirectoryStore:
    """A directory (a volume): each object a file, written atomically and synced."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"not a dataset key: {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(path)

    def get(self, key: str) -> bytes | None:
        found = self.open(key)
        if found is None:
            return None
        with found:
            return found.read()

    def open(self, key: str) -> BinaryIO | None:
        # No symlink is followed: a trainer that shares the directory could plant one to
        # have the operator read its own files.
        self._path(key)
        try:
            return open_beneath(Path(os.path.realpath(self.root)), key.split("/"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise DatasetError(f"{self.describe()}: {key}: {error.strerror}") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix: str) -> list[tuple[str, datetime]]:
        folder = self._path(prefix.rstrip("/")) if prefix else self.root
        if not folder.is_dir():
            return []
        found = []
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                found.append((path.relative_to(self.root).as_posix(), modified))
        return found

    def describe(self) -> str:
        return f"file://{self.root}"

    def locate(self, key: str) -> str:
        folder = "/" if key.endswith("/") else ""  # as S3 prefixes end
        return f"{self.root.absolute() / key}{folder}"


class S3Store:
    """A bucket of any S3-compatible store (boto3; credentials as boto3 finds them:
    AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or a pod's role). A PUT
    that answers is durable, as S3 promises."""

    def __init__(self, bucket: str, prefix: str, endpoint: str | None, region: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix, self.endpoint = bucket, prefix, endpoint
        # A session of its own: boto3's default one keeps the first credentials it found.
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint or None, region_name=region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"},
                          connect_timeout=10, read_timeout=60,
                          s3={"addressing_style": "path"}))

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise DatasetError(f"{self.describe()}: {method}: {error}") from None
        except BotoCoreError as error:
            raise DatasetError(f"{self.describe()}: {method}: {error}") from None

    def put(self, key: str, data: bytes) -> None:
        self._call("put_object", Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes | None:
        answer = self._call("get_object", Key=self._key(key))
        return None if answer is None else bytes(answer["Body"].read())

    def open(self, key: str) -> BinaryIO | None:
        answer = self._call("get_object", Key=self._key(key))
        return None if answer is None else answer["Body"]

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=self._key(key))

    def keys(self, prefix: str) -> list[tuple[str, datetime]]:
        found, token = [], None
        while True:
            page = self._call("list_objects_v2", Prefix=self._key(prefix),
                              **({"ContinuationToken": token} if token else {}))
            for item in (page or {}).get("Contents", []):
                found.append((str(item["Key"]).removeprefix(self.prefix),
                              item["LastModified"]))
            token = (page or {}).get("NextContinuationToken")
            if not token:
                return found

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def locate(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def open_store(uri: str, s3_endpoint: str = "", s3_region: str = "us-east-1") -> ObjectStore:
    """The store a `--dataset-uri` names: `s3://BUCKET[/PREFIX]`, or a directory (a
    path or `file://` URI)."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        return S3Store(bucket, f"{prefix}/" if prefix else "", s3_endpoint or None, s3_region)
    return DirectoryStore(Path(uri.removeprefix("file://")))


# ---------------------------------------------------------------- the writer


@dataclass
class DeviceMarker:
    """What is stored of one device's records for one model (`_devices/<device>.json`)."""

    stored: int = 0  # every record up to this sequence is stored
    samples: int = 0
    labels: int = 0
    bytes: int = 0
    last_upload: str | None = None
    pending: list[str] = field(default_factory=list)  # shard keys being written

    def to_json(self) -> bytes:
        return json.dumps({"stored": self.stored, "samples": self.samples,
                           "labels": self.labels, "bytes": self.bytes,
                           "lastUpload": self.last_upload, "pending": self.pending},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | None) -> DeviceMarker:
        """A marker as written; raises DatasetError for one that is not (it says up to
        where the device's records are stored: guessing could store some twice)."""
        if data is None:
            return cls()
        try:
            document = json.loads(data)
            return cls(stored=int(document["stored"]), samples=int(document["samples"]),
                       labels=int(document["labels"]), bytes=int(document["bytes"]),
                       last_upload=document.get("lastUpload"),
                       pending=[str(key) for key in document.get("pending", [])])
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"a device marker is malformed ({error}); a person must "
                               "repair or remove it") from None


def marker_key(namespace: str, model: str, device: str) -> str:
    return f"{namespace}/{model}/_devices/{device}.json"


def shard_key(namespace: str, model: str, version: str, device: str, first: int) -> str:
    return f"{namespace}/{model}/{version}/{device}/{first:012d}"


class DatasetWriter:
    """Stores devices' batches. One session at a time sends a device's records (the
    gateway's directory holds one per device), so markers need no locking across
    replicas; within this process, one lock per (namespace, model, device)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def marker(self, namespace: str, model: str, device: str) -> DeviceMarker:
        """The device's marker, with shards a crash left pending deleted."""
        key = marker_key(namespace, model, device)
        marker = DeviceMarker.from_json(await asyncio.to_thread(self.store.get, key))
        if marker.pending:
            for pending in marker.pending:
                await asyncio.to_thread(self.store.delete, f"{pending}.json")
                await asyncio.to_thread(self.store.delete, f"{pending}.npz")
            marker.pending = []
            await asyncio.to_thread(self.store.put, key, marker.to_json())
        return marker

    async def expire(self, namespace: str, model: str, before: datetime) -> int:
        """Deletes the model's shards written before `before` (its manifest first: a
        shard without one reads as incomplete); returns how many. The devices' markers
        stay: they count what was ever uploaded, and keep sequences from repeating."""
        listed = await asyncio.to_thread(self.store.keys, f"{namespace}/{model}/")
        expired = [key.removesuffix(".npz") for key, written in listed
                   if key.endswith(".npz") and written < before
                   and key.split("/")[2] != "_devices"]
        for shard in expired:
            await asyncio.to_thread(self.store.delete, f"{shard}.json")
            await asyncio.to_thread(self.store.delete, f"{shard}.npz")
        return len(expired)

    async def write(self, namespace: str, device: str, model: str,
                    records: Sequence[Record]) -> DeviceMarker:
        """Stores what of `records` (checked, sequences increasing) is new; returns the
        marker after it: every record up to `stored` is in the dataset."""
        lock = self._locks.setdefault((namespace, model, device), asyncio.Lock())
        async with lock:
            marker = await self.marker(namespace, model, device)
            new = [record for record in records if record.sequence > marker.stored]
            if not new:
                return marker
            # Each version's entries, and the first sequence holding one (its shard's name).
            firsts: dict[str, int] = {}
            for record in new:
                for entry in record.entries:
                    firsts.setdefault(entry.version, record.sequence)
            keys = {version: shard_key(namespace, model, version, device, first)
                    for version, first in firsts.items()}
            key = marker_key(namespace, model, device)
            marker.pending = list(keys.values())
            await asyncio.to_thread(self.store.put, key, marker.to_json())
            for version, shard in keys.items():
                await asyncio.to_thread(self.store.put, f"{shard}.npz",
                                        build_shard(new, version))
                manifest = {"device": device, "model": model, "version": version,
                            "entries": [{"sequence": r.sequence, "index": e.index, **e.meta}
                                        for r in new for e in r.entries
                                        if e.version == version]}
                await asyncio.to_thread(self.store.put, f"{shard}.json",
                                        json.dumps(manifest, separators=(",", ":")).encode())
            entries = [entry for record in new for entry in record.entries]
            marker.pending = []
            marker.stored = new[-1].sequence
            marker.samples += sum(1 for e in entries if e.kind == "sample")
            marker.labels += sum(1 for e in entries if e.kind == "label")
            marker.bytes += sum(len(r.data) for r in new)
            marker.last_upload = datetime.now(UTC).isoformat(timespec="seconds")
            await asyncio.to_thread(self.store.put, key, marker.to_json())
            return marker
