"""Dynamic batching: requests to one model version that wait in a queue up to
`maxDelayMicros` are concatenated along the batch dimension (when their other
dimensions agree), run once, and split back. One batch runs at a time per version;
requests arriving meanwhile queue up for the next one.

`take_batch`, `concatenate` and `split` are pure; `Batcher` is the queue and its worker.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from edgefleet.edge_runtime.errors import InferenceError

Tensors = dict[str, np.ndarray]
Signature = tuple[tuple[str, tuple[int, ...], str], ...]


def signature(inputs: Tensors) -> Signature:
    """What must agree for two requests to share a batch: names, dtypes and every
    dimension but the first."""
    return tuple(sorted((name, array.shape[1:], array.dtype.str)
                        for name, array in inputs.items()))


@dataclass
class Pending:
    inputs: Tensors
    rows: int
    future: asyncio.Future[tuple[Tensors, float, float]]
    enqueued_at: float = field(default_factory=time.perf_counter)
    key: Signature = ()

    def __post_init__(self) -> None:
        self.key = signature(self.inputs)


def take_batch(queue: deque[Pending], max_rows: int) -> list[Pending]:
    """Removes the oldest request and every later one that fits with it (same
    signature, total rows within max_rows); the rest keep their order."""
    first = queue.popleft()
    batch, rows, kept = [first], first.rows, deque[Pending]()
    while queue:
        candidate = queue.popleft()
        if candidate.key == first.key and rows + candidate.rows <= max_rows:
            batch.append(candidate)
            rows += candidate.rows
        else:
            kept.append(candidate)
    queue.extend(kept)
    return batch


def concatenate(batch: list[Pending]) -> Tensors:
    if len(batch) == 1:
        return batch[0].inputs
    return {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}


def split(outputs: Tensors, batch: list[Pending]) -> list[Tensors]:
    """Cuts each output along its first dimension back into the requests' shares."""
    total = sum(p.rows for p in batch)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise InferenceError.internal(
                f"output {name!r} has shape {list(array.shape)}, not {total} rows: the "
                "model does not keep rows independent and must not be batched")
    bounds = np.cumsum([p.rows for p in batch])[:-1]
    parts = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: pieces[i] for name, pieces in parts.items()} for i in range(len(batch))]


RunBatch = Callable[[Tensors], Awaitable[tuple[Tensors, float]]]


class Batcher:
    """One queue and one worker per batched model version."""

    def __init__(self, run: RunBatch, max_batch_size: int, max_delay_s: float,
                 on_batch: Callable[[int], None]) -> None:
        self._run = run
        self._max_rows = max_batch_size
        self._max_delay_s = max_delay_s
        self._on_batch = on_batch
        self._queue: deque[Pending] = deque()
        self._arrived = asyncio.Event()
        self._last_batch_requests = 1
        self._worker = asyncio.create_task(self._work(), name="batcher")

    async def submit(self, inputs: Tensors, rows: int) -> tuple[Tensors, float, float]:
        """Returns the request's outputs, its queue time and the batch's compute time."""
        pending = Pending(inputs, rows, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._arrived.set()
        return await pending.future

    async def close(self) -> None:
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        for pending in self._queue:
            pending.future.set_exception(InferenceError.unavailable("model version unloaded"))

    async def _work(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._queue:
                # Waiting only pays when requests overlap: a lone client is never
                # delayed; under load (the last batch held several) the batch may fill.
                if len(self._queue) > 1 or self._last_batch_requests > 1:
                    await self._gather()
                batch = take_batch(self._queue, self._max_rows)
                self._last_batch_requests = len(batch)
                await self._run_batch(batch)

    async def _gather(self) -> None:
        """Waits, from the oldest request's arrival, up to the delay for the batch to fill."""
        deadline = self._queue[0].enqueued_at + self._max_delay_s
        while sum(p.rows for p in self._queue) < self._max_rows:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _run_batch(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        self._on_batch(sum(p.rows for p in batch))
        try:
            outputs, compute_s = await self._run(concatenate(batch))
            shares = split(outputs, batch)
        except Exception as error:  # every request of the batch gets the same answer
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        for pending, share in zip(batch, shares, strict=True):
            if not pending.future.done():  # its caller may have gone away
                pending.future.set_result((share, started - pending.enqueued_at, compute_s))
