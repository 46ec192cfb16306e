"""Devices' metric samples into a cloud Prometheus, by its remote-write protocol
(version 1: a snappy-compressed WriteRequest over HTTP POST).

What a device sends is screened like any input before it is queued: only the sample
names and labels the edge runtime itself emits (edgefleet.protocol.device_metrics),
label values of bounded length, counters that are not negative. Each sample keeps the
time the device took it and gets the device's identity as labels (`namespace`,
`device`, `instance`, `job`), which a device never sets. Refused samples are counted by
reason and reported to the device; the rest go on.
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import cramjam

from edgefleet.operator.gateway.policy import GatewayLimits, Reason, Refusal
from edgefleet.operator.urls import redact_uri
from edgefleet.protocol.device_metrics import (
    ALLOWED_SAMPLES,
    DEVICE_JOB,
    NON_NEGATIVE_SUFFIXES,
)
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from edgefleet.protocol.prometheus import remote_write_pb2 as prompb

logger = logging.getLogger(__name__)


@dataclass
class Screened:
    """A batch with the samples the gateway takes, and what it refused."""

    batch: pb.MetricsBatch
    refused: Counter[Reason] = field(default_factory=Counter)
    first_refusal: Refusal | None = None


def _sample_refusal(sample: pb.MetricSample,
                    limits: GatewayLimits) -> tuple[Reason, str] | None:
    allowed = ALLOWED_SAMPLES.get(sample.name)
    if allowed is None:
        return "NotAllowed", f"{sample.name[:80]!r} is not a metric the edge runtime emits"
    if len(sample.labels) > limits.max_labels:
        return "TooLarge", f"{len(sample.labels)} labels, at most {limits.max_labels}"
    for name, value in sample.labels.items():
        if name not in allowed:
            return "NotAllowed", (f"label {name[:80]!r} is not one of {sample.name}'s "
                                  f"({', '.join(sorted(allowed)) or 'none'})")
        if len(value) > limits.max_label_value_chars:
            return "TooLarge", (f"label {name[:80]!r} has {len(value)} characters, at most "
                                f"{limits.max_label_value_chars}")
    if sample.name.endswith(NON_NEGATIVE_SUFFIXES) and not sample.value >= 0:
        return "Malformed", f"{sample.name} is a count: {sample.value} is not one"
    if math.isinf(sample.value) and not sample.name.endswith("_bucket"):
        return "Malformed", f"{sample.name} is {sample.value}"
    return None


def screen_batch(batch: pb.MetricsBatch, limits: GatewayLimits) -> Screened:
    """The batch without the samples a device may not send (see the module doc)."""
    screened = Screened(pb.MetricsBatch(sequence=batch.sequence,
                                        timestamp_ms=batch.timestamp_ms))
    for i, sample in enumerate(batch.samples):
        where = f"metrics.samples[{i}]"
        refusal = _sample_refusal(sample, limits)
        if refusal is None:
            screened.batch.samples.append(sample)
            continue
        reason, message = refusal
        screened.refused[reason] += 1
        if screened.first_refusal is None:
            screened.first_refusal = Refusal("metrics", where, reason, message,
                                             batch.sequence)
    return screened


def write_request(namespace: str, device: str, batch: pb.MetricsBatch) -> prompb.WriteRequest:
    """A screened batch as a WriteRequest, with the device's identity as labels."""
    identity = {"namespace": namespace, "device": device, "instance": f"{namespace}/{device}",
                "job": DEVICE_JOB}
    series: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in batch.samples:
        labels = {**sample.labels, **identity, "__name__": sample.name}
        series[tuple(sorted(labels.items()))] = sample.value
    request = prompb.WriteRequest()
    for labels, value in series.items():
        timeseries = request.timeseries.add()
        for name, label_value in labels:
            timeseries.labels.add(name=name, value=label_value)
        timeseries.samples.add(value=value, timestamp=batch.timestamp_ms)
    return request


class RemoteWriteError(Exception):
    """Prometheus did not take the batch and may later: the device sends it again."""


class RemoteWriter:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self._url = url
        # The URL may carry credentials (userinfo, a token in the query): logs and
        # errors only ever show it redacted.
        self._shown_url = redact_uri(url)
        parts = urllib.parse.urlsplit(url)
        self._secrets = [s for s in (parts.username, parts.password, parts.query) if s]
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    async def write(self, namespace: str, device: str, batch: pb.MetricsBatch) -> None:
        """Returns once Prometheus holds the batch, or refused it for good (a 4xx: e.g.
        samples older than it accepts; logged). Raises RemoteWriteError otherwise."""
        request = write_request(namespace, device, batch)
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
            raise RemoteWriteError(f"{self._shown_url}: {self._redact(str(error))}") from error
        if reply.status == 400:  # the samples themselves (too old, out of order): for good
            logger.warning("device=%s/%s: Prometheus refused metrics batch %d for good "
                           "(%d %s)", namespace, device, batch.sequence, reply.status,
                           self._redact(detail))
            return
        # 401/403/404 (credentials, a wrong URL), 429, 5xx: the device keeps the batch.
        raise RemoteWriteError(f"{self._shown_url}: {reply.status} {self._redact(detail)}")

    async def close(self) -> None:
        if self._session:
            await self._session.close()
