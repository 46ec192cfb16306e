"""A bounded, sequenced journal of opaque records on disk: what a device holds for the
cloud until the cloud says it has it (metric batches; captured samples and labels),
kept through restarts and outages, at most `max_bytes` of it.

The journal owns its directory. One file per record, `<sequence:012d><suffix>`, written
atomically; the next sequence number is kept beside them in `next-sequence`, so
sequences grow across restarts and are never reused (the cloud acknowledges by them).
Past `max_bytes` the oldest records go, the newest always stays, and the owner hears of
each dropped record first (`on_drop`), to count what it lost.

Record sizes are kept in memory, listed once at start, so that an append costs the same
with ten thousand records stored as with one. A writer and an uploader may call it from
two threads: a lock guards that state; a record read while another thread acknowledges
or drops it is simply gone.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from edgefleet.edge_runtime.store import write_atomically

SEQUENCE_FILE = "next-sequence"
logger = logging.getLogger(__name__)


class Journal:
    """`on_drop(sequence, data)` runs under the journal's lock, before the record is
    deleted: it must not call back into the journal."""

    def __init__(self, directory: Path, max_bytes: int, suffix: str,
                 on_drop: Callable[[int, bytes], None] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        self._max_bytes = max_bytes
        self._suffix = suffix
        self._on_drop = on_drop
        self._sequence_file = directory / SEQUENCE_FILE
        self._lock = threading.Lock()
        # Oldest first, as appended: the oldest is popped in O(1), which a plain dict
        # does not promise once its front has been deleted from many times.
        self._sizes: OrderedDict[int, int] = OrderedDict()
        self._stored_bytes = 0
        found = {}
        for path in directory.iterdir():
            sequence = self._sequence_of(path.name)
            if sequence is not None:
                found[sequence] = path.stat().st_size
            elif self._is_leftover(path.name):  # a crash mid-write: never renamed
                path.unlink(missing_ok=True)
        for sequence in sorted(found):
            self._sizes[sequence] = found[sequence]
            self._stored_bytes += found[sequence]
        try:
            recorded = int(self._sequence_file.read_text())
        except (FileNotFoundError, ValueError):
            recorded = 1
        # A crash between a record and the counter leaves the counter behind: never reuse.
        self._next = max(recorded, max(found) + 1 if found else 1)

    def _sequence_of(self, name: str) -> int | None:
        stem = name.removesuffix(self._suffix)
        if stem == name or not (stem.isascii() and stem.isdigit()):
            return None
        return int(stem)

    def _is_leftover(self, name: str) -> bool:
        """A temporary file of store.write_atomically's for a record or the counter."""
        if not (name.startswith(".") and name.endswith(".tmp")):
            return False
        target = name[1:-len(".tmp")]
        return target == SEQUENCE_FILE or self._sequence_of(target) is not None

    def _path(self, sequence: int) -> Path:
        return self._dir / f"{sequence:012d}{self._suffix}"

    @property
    def stored_bytes(self) -> int:
        with self._lock:
            return self._stored_bytes

    @property
    def records(self) -> int:
        with self._lock:
            return len(self._sizes)

    def append(self, data: bytes) -> int:
        """Stores a record; returns its sequence."""
        return self.append_encoded(lambda _sequence: data)

    def append_encoded(self, encode: Callable[[int], bytes]) -> int:
        """Stores the record `encode` makes for the sequence it is given (a record that
        carries its own sequence); returns that sequence."""
        with self._lock:
            sequence = self._next
            data = encode(sequence)
            write_atomically(self._path(sequence), data)
            self._next = sequence + 1
            write_atomically(self._sequence_file, str(self._next).encode())
            self._sizes[sequence] = len(data)
            self._stored_bytes += len(data)
            self._enforce_bound()
            return sequence

    def set_max_bytes(self, max_bytes: int) -> None:
        """A new budget, applied at once."""
        with self._lock:
            self._max_bytes = max_bytes
            self._enforce_bound()

    def sequences(self) -> list[int]:
        """The stored records' sequences, oldest first."""
        with self._lock:
            return list(self._sizes)

    def read(self, sequence: int) -> bytes | None:
        """A stored record; None if it went meanwhile (acknowledged, dropped for the
        bound, or set aside)."""
        try:
            return self._path(sequence).read_bytes()
        except FileNotFoundError:
            return None

    def pending(self, after: int = 0, limit: int | None = None,
                max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        """The stored records with a sequence above `after`, oldest first, at most
        `limit` of them and, but for the first, at most `max_bytes` together (only
        those are read)."""
        with self._lock:
            sizes = dict(self._sizes)
        sequences = list(sizes)
        records: list[tuple[int, bytes]] = []
        total = 0
        for sequence in sequences[bisect.bisect_right(sequences, after):]:
            if limit is not None and len(records) >= limit:
                break
            total += sizes[sequence]
            if max_bytes is not None and records and total > max_bytes:
                break
            data = self.read(sequence)
            if data is not None:
                records.append((sequence, data))
        return records

    def acknowledge(self, sequence: int) -> None:
        """The cloud holds every record up to `sequence`: forget them."""
        with self._lock:
            while self._sizes and next(iter(self._sizes)) <= sequence:
                self._forget_oldest()

    def set_aside(self, sequence: int, why: str) -> None:
        """Moves a record its owner cannot read out of the journal (it would fail every
        session), keeping it for a person to look at."""
        path = self._path(sequence)
        with self._lock:
            with contextlib.suppress(FileNotFoundError):  # acknowledged or dropped meanwhile
                path.rename(self._dir / f"{sequence:012d}.unreadable")
                logger.error("%s is unreadable (%s); set aside", path, why)
            self._stored_bytes -= self._sizes.pop(sequence, 0)

    def _enforce_bound(self) -> None:
        while self._stored_bytes > self._max_bytes and len(self._sizes) > 1:
            if self._on_drop is not None:
                sequence = next(iter(self._sizes))
                data = self.read(sequence)
                if data is not None:
                    self._on_drop(sequence, data)
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        sequence, size = self._sizes.popitem(last=False)
        self._stored_bytes -= size
        self._path(sequence).unlink(missing_ok=True)
