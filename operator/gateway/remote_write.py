"""Devices' metric batches into a cloud Prometheus, by its remote-write protocol
(version 1: a snappy-compressed WriteRequest over HTTP POST).

Each sample keeps the time the device took it, and gets the device's identity as
labels (`device`, `instance`, `job`), which replace any the device sent. What a device
sends is checked like any input: names Prometheus would refuse, `__` labels and
samples from the future are dropped and logged, never forwarded.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict

import aiohttp
import cramjam

from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from edgefleet.protocol.prometheus import remote_write_pb2 as prompb

logger = logging.getLogger(__name__)
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
IDENTITY_LABELS = ("device", "instance", "job")
MAX_SAMPLES = 20_000  # per batch; a device exposes a few hundred
MAX_FUTURE_MS = 10 * 60 * 1000  # clocks drift; a sample ten minutes ahead is wrong


class RemoteWriteError(Exception):
    """Prometheus did not take the batch and may later: the device sends it again."""


def write_request(namespace: str, device: str,
                  batch: pb.MetricsBatch) -> tuple[prompb.WriteRequest, int]:
    """The batch as a WriteRequest, and how many of its samples were dropped."""
    identity = {"device": device, "instance": f"{namespace}/{device}", "job": "edgefleet-edge"}
    if batch.timestamp_ms > time.time() * 1000 + MAX_FUTURE_MS:
        return prompb.WriteRequest(), len(batch.samples)
    series: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
    dropped = max(0, len(batch.samples) - MAX_SAMPLES)
    for sample in batch.samples[:MAX_SAMPLES]:
        labels = dict(sample.labels)
        if (not METRIC_NAME.match(sample.name)
                or not all(LABEL_NAME.match(name) and not name.startswith("__")
                           for name in labels)):
            dropped += 1
            continue
        labels.update(identity, __name__=sample.name)
        series[tuple(sorted(labels.items()))] = sample.value
    request = prompb.WriteRequest()
    for labels, value in series.items():
        timeseries = request.timeseries.add()
        for name, label_value in labels:
            timeseries.labels.add(name=name, value=label_value)
        timeseries.samples.add(value=value, timestamp=batch.timestamp_ms)
    return request, dropped


class RemoteWriter:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def write(self, namespace: str, device: str, batch: pb.MetricsBatch) -> None:
        """Returns once Prometheus holds the batch, or refused it for good (a 4xx: e.g.
        samples older than it accepts; logged). Raises RemoteWriteError otherwise."""
        request, dropped = write_request(namespace, device, batch)
        if dropped:
            logger.warning("device=%s/%s: dropped %d malformed metric samples of batch %d",
                           namespace, device, dropped, batch.sequence)
        if not request.timeseries:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
        headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                   "X-Prometheus-Remote-Write-Version": "0.1.0"}
        try:
            async with self._session.post(self._url, data=body, headers=headers) as reply:
                if reply.status < 300:
                    return
                detail = (await reply.read())[:300].decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise RemoteWriteError(f"{self._url}: {error}") from error
        if reply.status == 400:  # the samples themselves (too old, out of order): for good
            logger.warning("device=%s/%s: Prometheus refused metrics batch %d for good "
                           "(%d %s)", namespace, device, batch.sequence, reply.status, detail)
            return
        # 401/403/404 (credentials, a wrong URL), 429, 5xx: the device keeps the batch.
        raise RemoteWriteError(f"{self._url}: {reply.status} {detail}")

    async def close(self) -> None:
        if self._session:
            await self._session.close()
