"""The bounded, sequenced on-disk journal the edge keeps records in until the cloud
acknowledges them (metric batches are one user: test_metrics_buffer.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from edgefleet.edge_runtime.journal import Journal

SUFFIX = ".rec"


def on_disk(directory: Path) -> dict[int, bytes]:
    return {int(path.name.removesuffix(SUFFIX)): path.read_bytes()
            for path in directory.glob(f"*{SUFFIX}")}


def test_records_are_files_named_by_sequence_and_read_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", max_bytes=2**20, suffix=SUFFIX)
    first, second = journal.append(b"one"), journal.append(b"two")
    assert (first, second) == (1, 2)
    assert (tmp_path / "journal" / f"{first:012d}{SUFFIX}").read_bytes() == b"one"
    assert journal.sequences() == [first, second]
    assert (journal.read(second), journal.records, journal.stored_bytes) == (b"two", 2, 6)


def test_an_encoded_record_is_made_for_the_sequence_it_gets(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX)
    journal.append(b"first")
    sequence = journal.append_encoded(lambda sequence: f"I am {sequence}".encode())
    assert journal.read(sequence) == b"I am 2"


def test_sequences_grow_across_a_reopen_and_are_never_reused_even_when_the_counter_lags(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX)
    journal.append(b"a")
    second = journal.append(b"b")
    journal.acknowledge(second)
    # Nothing left on disk: the counter alone carries the sequence on.
    third = Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX).append(b"c")
    assert third == second + 1
    (tmp_path / "next-sequence").write_text(str(second))  # as after a crash between writes
    assert Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX).append(b"d") == third + 1
    (tmp_path / "next-sequence").write_text("torn")
    assert Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX).append(b"e") == third + 2


def test_past_its_bound_the_oldest_records_go_first_and_the_owner_hears_of_each(
    tmp_path: Path,
) -> None:
    dropped: list[tuple[int, bytes]] = []
    journal = Journal(tmp_path, max_bytes=25, suffix=SUFFIX,
                      on_drop=lambda sequence, data: dropped.append((sequence, data)))
    for index in range(5):
        journal.append(f"record {index}".encode())  # 8 bytes each
    assert dropped == [(1, b"record 0"), (2, b"record 1")]
    assert journal.sequences() == [3, 4, 5] and journal.stored_bytes == 24
    assert sorted(on_disk(tmp_path)) == [3, 4, 5]


def test_the_newest_record_always_stays_even_when_larger_than_the_bound(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, max_bytes=10, suffix=SUFFIX)
    journal.append(b"small")
    big = journal.append(b"x" * 100)
    assert journal.sequences() == [big] and journal.stored_bytes == 100
    assert journal.read(big) == b"x" * 100


def test_acknowledge_forgets_every_record_up_to_the_sequence(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX)
    for data in (b"a", b"bb", b"ccc", b"dddd"):
        journal.append(data)
    journal.acknowledge(2)
    assert journal.sequences() == [3, 4] and journal.stored_bytes == 7
    assert sorted(on_disk(tmp_path)) == [3, 4]
    assert journal.read(1) is None  # gone: whoever still asks gets nothing, not an error
    journal.acknowledge(2)  # again, as after a resent acknowledgement
    journal.acknowledge(99)
    assert (journal.records, journal.stored_bytes, on_disk(tmp_path)) == (0, 0, {})


def test_pending_starts_after_a_sequence_and_stops_at_a_limit(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX)
    for data in (b"a", b"b", b"c", b"d"):
        journal.append(data)
    assert journal.pending() == [(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d")]
    assert journal.pending(after=2) == [(3, b"c"), (4, b"d")]
    assert journal.pending(after=1, limit=2) == [(2, b"b"), (3, b"c")]
    assert journal.pending(after=4) == []


def test_a_smaller_budget_applies_at_once_and_a_larger_one_keeps_more(tmp_path: Path) -> None:
    dropped: list[int] = []
    journal = Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX,
                      on_drop=lambda sequence, _data: dropped.append(sequence))
    for _ in range(4):
        journal.append(b"0123456789")
    journal.set_max_bytes(25)
    assert dropped == [1, 2] and journal.sequences() == [3, 4]
    journal.set_max_bytes(0)  # all but the newest
    assert dropped == [1, 2, 3] and journal.sequences() == [4]
    journal.set_max_bytes(30)
    for _ in range(2):
        journal.append(b"0123456789")
    assert journal.sequences() == [4, 5, 6] and dropped == [1, 2, 3]


def test_a_reopened_journal_knows_its_stored_bytes_and_bounds_the_records_from_before(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX)
    for data in (b"a" * 10, b"b" * 20, b"c" * 30):
        journal.append(data)
    dropped: list[tuple[int, bytes]] = []
    reopened = Journal(tmp_path, max_bytes=70, suffix=SUFFIX,
                       on_drop=lambda sequence, data: dropped.append((sequence, data)))
    assert (reopened.records, reopened.stored_bytes) == (3, 60)
    reopened.append(b"d" * 15)
    assert dropped == [(1, b"a" * 10)] and reopened.stored_bytes == 65


def test_leftover_temporary_files_are_not_records_and_are_cleared(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX)
    journal.append(b"kept")
    # A crash mid-write leaves the temporary files store.write_atomically makes.
    (tmp_path / f".{2:012d}{SUFFIX}.tmp").write_bytes(b"torn record")
    (tmp_path / ".next-sequence.tmp").write_bytes(b"9")
    (tmp_path / "notes.txt").write_text("not the journal's")
    reopened = Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX)
    assert (reopened.sequences(), reopened.stored_bytes) == ([1], 4)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"{1:012d}{SUFFIX}", "next-sequence", "notes.txt"]
    assert reopened.append(b"next") == 2


def test_a_record_set_aside_leaves_the_journal_but_stays_on_disk(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX)
    bad, good = journal.append(b"garbage"), journal.append(b"fine")
    journal.set_aside(bad, "does not decode")
    assert journal.pending() == [(good, b"fine")] and journal.stored_bytes == 4
    assert (tmp_path / f"{bad:012d}.unreadable").read_bytes() == b"garbage"
    journal.set_aside(bad, "again")  # already gone: nothing to do
    assert Journal(tmp_path, max_bytes=2**20, suffix=SUFFIX).sequences() == [good]


def test_a_writer_and_an_uploader_in_two_threads_leave_memory_and_disk_agreeing(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, max_bytes=2_000, suffix=SUFFIX)
    written = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for index in range(300):
                journal.append(f"{index:020d}".encode())
        except BaseException as error:
            errors.append(error)
        finally:
            written.set()

    def upload() -> None:
        try:
            while not written.is_set():
                for sequence, _data in journal.pending(limit=10):
                    if sequence % 3 == 0 and sequence <= 250:  # the last ones stay
                        journal.acknowledge(sequence)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write), threading.Thread(target=upload)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = on_disk(tmp_path)
    assert journal.sequences() == sorted(stored) and 300 in stored
    assert journal.stored_bytes == sum(len(data) for data in stored.values()) <= 2_000


def test_pending_stops_at_a_byte_bound_but_always_gives_the_first(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 10_000, ".rec")
    for size in (300, 300, 300):
        journal.append(b"x" * size)
    assert [seq for seq, _ in journal.pending(max_bytes=650)] == [1, 2]
    assert [seq for seq, _ in journal.pending(after=1, max_bytes=100)] == [2]
