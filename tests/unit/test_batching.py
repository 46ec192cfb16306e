"""The batching policy: who shares a batch, how results are split back, and the queue."""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np
import pytest

from edgefleet.edge_runtime.batching import (
    Batcher,
    Pending,
    Tensors,
    concatenate,
    split,
    take_batch,
)
from edgefleet.edge_runtime.errors import InferenceError


def pending(rows: int, width: int = 4, dtype: str = "float32") -> Pending:
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
    finally:
        loop.close()
    return Pending({"x": np.zeros((rows, width), dtype=dtype)}, rows, future)


def test_batch_takes_compatible_requests_up_to_the_row_limit_in_order() -> None:
    first, other_shape, second, too_big, third = (
        pending(2), pending(1, width=5), pending(3), pending(4), pending(1))
    queue = deque([first, other_shape, second, too_big, third])
    assert take_batch(queue, max_rows=6) == [first, second, third]
    assert list(queue) == [other_shape, too_big]


def test_different_dtypes_never_share_a_batch() -> None:
    queue = deque([pending(1), pending(1, dtype="float64")])
    assert len(take_batch(queue, max_rows=8)) == 1


def test_split_returns_each_request_its_rows() -> None:
    batch = [pending(1), pending(3)]
    batch[0].inputs["x"][:] = 1
    joined = concatenate(batch)
    assert joined["x"].shape == (4, 4)
    shares = split({"y": joined["x"] * 2}, batch)
    assert [s["y"].shape for s in shares] == [(1, 4), (3, 4)]
    assert np.all(shares[0]["y"] == 2) and np.all(shares[1]["y"] == 0)


def test_output_that_mixes_rows_cannot_be_split() -> None:
    with pytest.raises(InferenceError, match="does not keep rows independent"):
        split({"total": np.zeros(1)}, [pending(2), pending(2)])


def test_queued_requests_run_as_one_batch_and_get_their_own_rows() -> None:
    runs: list[int] = []

    async def run(feeds: Tensors) -> tuple[Tensors, float]:
        runs.append(feeds["x"].shape[0])
        return {"y": feeds["x"] + 1}, 0.001

    async def scenario() -> list[Tensors]:
        sizes: list[int] = []
        batcher = Batcher(run, max_batch_size=8, max_delay_s=0.05, on_batch=sizes.append)
        requests = [{"x": np.full((1, 2), i, dtype=np.int64)} for i in range(5)]
        results = await asyncio.gather(*(batcher.submit(r, 1) for r in requests))
        await batcher.close()
        assert sizes == runs
        return [outputs for outputs, _, _ in results]

    outputs = asyncio.run(scenario())
    assert runs == [5]
    assert [int(o["y"][0, 0]) for o in outputs] == [1, 2, 3, 4, 5]


def test_a_lone_request_does_not_wait_for_the_batch_delay() -> None:
    async def run(feeds: Tensors) -> tuple[Tensors, float]:
        return {"y": feeds["x"]}, 0.0

    async def scenario() -> None:
        # An hour of allowed delay: finishing at all proves it did not wait for it.
        batcher = Batcher(run, max_batch_size=8, max_delay_s=3600, on_batch=lambda _: None)
        for _ in range(3):  # one request at a time, as a single client sends them
            await asyncio.wait_for(batcher.submit({"x": np.zeros((1, 2))}, 1), timeout=60)
        await batcher.close()

    asyncio.run(scenario())
