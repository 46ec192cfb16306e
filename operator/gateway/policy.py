"""What a device may claim and what it may cost the fleet gateway: caps on every list and
string of each message kind, per-session budgets of bytes and messages, counts that
can be true, and how often a stranger may fail to authenticate.

Plain classes and functions with unit tests (tests/unit/test_gateway_policy.py); the
servicer in server.py only translates messages and delegates here. A refusal says the
message kind, the field, a reason from a small fixed set (it is a metric label) and,
for a person, the limit and the value.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from edgefleet.operator.dataset import Record, RecordError, read_record
from edgefleet.operator.device_health import EVENT_BURST, EVENTS_PER_SECOND
from edgefleet.operator.planner import Assignment
from edgefleet.operator.resources import (
    DNS_SUBDOMAIN_PATTERN,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    VARIANT_NAME_PATTERN,
)
from edgefleet.protocol.digests import is_digest
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

Reason = Literal["TooLarge", "Malformed", "Implausible", "NotAllowed", "Busy"]
Clock = Callable[[], float]
_NAME = re.compile(DNS_SUBDOMAIN_PATTERN)
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)
_VARIANT = re.compile(VARIANT_NAME_PATTERN)
_STATES = frozenset(value for value in pb.ModelState.State.values()
                    if value != pb.ModelState.STATE_UNSPECIFIED)
INT64_MAX = 2**63 - 1  # what a Kubernetes status can hold
MIN_CELSIUS, MAX_CELSIUS = -100.0, 200.0  # thermal zones no hardware outside reports
MAX_UPTIME_S = 100 * 365 * 86400.0


class Refusal(Exception):
    """One device message not taken: where, why, and what to tell the device."""

    def __init__(self, kind: str, field: str, reason: Reason, message: str,
                 sequence: int = 0) -> None:
        super().__init__(f"{field}: {message}")
        self.kind, self.field, self.reason, self.sequence = kind, field, reason, sequence
        self.detail = message

    def to_message(self) -> pb.CloudMessage:
        return pb.CloudMessage(refused=pb.Refused(
            kind=self.kind, field=self.field, reason=self.reason, message=str(self)[:1024],
            sequence=self.sequence))


@dataclass(frozen=True)
class GatewayLimits:
    """Every bound the gateway puts on one device. The defaults leave a real runtime
    room (one serving a model version sends 84 samples, 7.6 KB, per metrics batch and a
    heartbeat of about 1 KB) and keep the worst a device can do small."""

    # gRPC's receive limit: a metrics batch at its sample cap stays well below it.
    max_message_bytes: int = 1 * 2**20
    max_models: int = 64  # per hello, heartbeat or report (the status holds 64)
    max_stats: int = 64
    max_execution_providers: int = 16
    max_text_chars: int = 256  # versions, revisions, arch, runtime version
    max_state_message_chars: int = 2048
    max_latency_bounds: int = 32
    max_top_classes: int = 64
    max_samples: int = 5000  # per metrics batch
    max_data_records: int = 256  # per data batch (each is bounded by the message size)
    max_labels: int = 8  # per sample
    max_label_value_chars: int = 256  # a digest is 71, a model name at most 253
    max_future_ms: int = 10 * 60 * 1000  # clocks drift; ten minutes ahead is wrong
    # Per session: bytes and messages read, refilled at a rate; a device over them is
    # read more slowly (gRPC flow control holds it back), nothing is dropped.
    session_burst_bytes: int = 8 * 2**20
    session_bytes_per_second: float = 1 * 2**20
    session_burst_messages: int = 200
    session_messages_per_second: float = 50.0
    # Metrics batches waiting for Prometheus: per session and for the whole gateway.
    session_queue_bytes: int = 4 * 2**20
    gateway_queue_bytes: int = 64 * 2**20
    # What a queued batch costs beyond its encoded size (its Python objects), so that
    # many tiny batches are bounded too.
    queue_entry_bytes: int = 1024
    # Status writes per device, across its sessions: a burst (a reconnect is two, an
    # update one or two), then at most one a second.
    status_write_burst: int = 5
    status_writes_per_second: float = 1.0
    # A change of what a device holds is written once it has settled (no further change
    # for this long), so that Downloading, Verifying, Loading, Ready of a small model is
    # one write, and never later than the max delay after the first change not written.
    # A model on its way (Downloading...) is written at most every progress interval,
    # however quiet: thousands of devices fetching at once take a minute and more each,
    # and one write when they are Ready serves better than several; a large model's
    # progress shows every half minute.
    status_settle_seconds: float = 0.5
    status_max_delay_seconds: float = 5.0
    status_progress_seconds: float = 30.0
    # A failed status write is tried again after this, doubling up to the maximum.
    status_retry_seconds: float = 1.0
    status_max_retry_seconds: float = 30.0
    # The most requests one device answers per second (a 2-core device answers ~4,000
    # a second per core over bare gRPC: this is ten times that and more).
    max_requests_per_second: float = 50_000.0
    # Reports arrive late by up to this much (a heartbeat interval, a slow link).
    report_slack_seconds: float = 5.0
    # A first report in a session has no baseline: its counts may span an outage.
    max_unreported_seconds: float = 30 * 24 * 3600.0
    # Failed authentications per peer address before it is refused without a look:
    # enough for a site behind one NAT address whose devices all reconnect while the
    # gateway starts, far too few to guess a token.
    auth_failure_burst: int = 60
    auth_failures_per_second: float = 1.0
    max_tracked_peers: int = 10_000
    # At most one Event per device and reason in this interval, and so many a second
    # for the whole fleet (a gateway replica that dies turns thousands Offline at once).
    event_interval_seconds: float = 60.0
    events_per_second: float = EVENTS_PER_SECOND
    event_burst: int = EVENT_BURST
    # Enrolments the gateway takes, all devices together: a thousand devices provisioned
    # at once enrol within a minute; a stolen fleet token creates devices no faster.
    enrolments_per_second: float = 20.0
    enrolment_burst: int = 100
    max_enrolment_wait_seconds: float = 5.0
    max_proposed_labels: int = 32
    # A device renews its certificate at two thirds of its life; more often is a loop.
    renewal_interval_seconds: float = 1.0


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens, self._at = burst, clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now

    @property
    def full(self) -> bool:
        self._refill()
        return self._tokens >= self._burst

    def available(self, amount: float = 1.0) -> bool:
        self._refill()
        return self._tokens >= amount

    def take(self, amount: float = 1.0) -> None:
        self._refill()
        self._tokens = max(self._tokens - amount, -self._burst)

    def reserve(self, amount: float) -> float:
        """Takes `amount` now, going into debt; the seconds until the debt is paid,
        which is how long the caller should wait before it takes more."""
        self._refill()
        self._tokens -= amount
        return max(0.0, -self._tokens / self._rate)


class StatusSchedule:
    """When one session's next status write is due, on the caller's monotonic clock:
    at once for what must be told now (the session began); a change of what the device
    holds once no further change came for `status_settle_seconds`, and never later
    than `status_max_delay_seconds` after the first change not yet written, or, while a
    model is on its way to a state, `status_progress_seconds` after it; statistics
    that changed (`news`) `heartbeat_s` after the last write; and, while the device is
    heard from, its lastSeen alone `last_seen_s` after the last write. After a failed
    write nothing is due before the backoff has passed."""

    def __init__(self, limits: GatewayLimits, heartbeat_s: float,
                 last_seen_s: float | None = None) -> None:
        self._limits, self._heartbeat_s = limits, heartbeat_s
        self._last_seen_s = heartbeat_s if last_seen_s is None else last_seen_s
        self.urgent = False
        self.first_change: float | None = None  # the first change not yet written
        self.last_change: float | None = None
        self.passing = False  # the last change left a model on its way to a state
        self.heard_at = -math.inf  # the device's last message
        self.news_at = -math.inf  # the last change of its statistics
        self.written_at = -math.inf  # the start of the last write that succeeded
        self.retry_at: float | None = None
        self._backoff = limits.status_retry_seconds

    def at_once(self) -> None:
        self.urgent = True

    def changed(self, now: float, passing: bool = False) -> None:
        """What the device holds changed (and differs from what was written); `passing`:
        a model is on its way to a state (downloading, verifying, loading, removing)."""
        if self.first_change is None:
            self.first_change = now
        self.last_change, self.passing = now, passing

    def settled(self) -> None:
        """What the device holds is again what was written: nothing to write for it."""
        self.first_change = self.last_change = None

    def heard(self, now: float) -> None:
        self.heard_at = now

    def news(self) -> None:
        """The statistics changed (the device was heard just now)."""
        self.news_at = self.heard_at

    def due(self) -> float | None:
        """When the next write is due (past values: now); None while nothing is."""
        at: float | None = None
        if self.urgent:
            at = -math.inf
        elif self.first_change is not None and self.last_change is not None:
            if self.passing:
                at = self.first_change + self._limits.status_progress_seconds
            else:
                at = min(self.last_change + self._limits.status_settle_seconds,
                         self.first_change + self._limits.status_max_delay_seconds)
        if self.heard_at > self.written_at:
            beat = self.written_at + (self._heartbeat_s if self.news_at > self.written_at
                                      else self._last_seen_s)
            at = beat if at is None else min(at, beat)
        if at is not None and self.retry_at is not None:
            at = max(at, self.retry_at)
        return at

    def written(self, started: float) -> None:
        """A write that took the state as of `started` succeeded: what changed while it
        was on its way is still to be written."""
        self.urgent = False
        self.written_at = started
        if self.last_change is not None and self.last_change > started:
            self.first_change = self.last_change
        else:
            self.settled()
        self.retry_at, self._backoff = None, self._limits.status_retry_seconds

    def failed(self, now: float) -> None:
        """A write failed: what it held stays due, after a backoff that doubles."""
        self.retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self._limits.status_max_retry_seconds)


# ---------------------------------------------------------------- message caps


def _cap(kind: str, where: str, items: Sequence[object], limit: int) -> None:
    if len(items) > limit:
        raise Refusal(kind, where, "TooLarge", f"{len(items)} entries, at most {limit}")


def _text(kind: str, where: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise Refusal(kind, where, "TooLarge", f"{len(value)} characters, at most {limit}")


def _name(kind: str, where: str, value: str) -> None:
    if len(value) > 253 or not _NAME.match(value):
        raise Refusal(kind, where, "Malformed",
                      f"{value[:80]!r} is not a Kubernetes object name")


def enrolment_labels(proposed: Mapping[str, str], allowed: frozenset[str],
                     limits: GatewayLimits) -> dict[str, str]:
    """The labels a fleet-enrolled device gets: those it proposes whose keys the policy
    allows; a malformed label is refused, naming it."""
    _cap("enroll", "labels", list(proposed), limits.max_proposed_labels)
    for key, value in proposed.items():
        if len(key) > 317 or not _LABEL_KEY.match(key):
            raise Refusal("enroll", "labels", "Malformed", f"{key[:80]!r} is not a label key")
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise Refusal("enroll", f"labels[{key[:80]}]", "Malformed",
                          f"{value[:80]!r} is not a label value")
    return {key: value for key, value in proposed.items() if key in allowed}


def with_assigned_digests(models: Sequence[pb.ModelState],
                          assigned: Mapping[tuple[str, str], str]) -> list[pb.ModelState]:
    """The runtime reports an assignment it refused as FAILED with an empty digest (the
    value it refused goes only into the message). Such an entry gets the digest this
    gateway assigned for that version, so that the status, which needs one, can say the
    version failed; an entry for a version never assigned keeps it empty (refused)."""
    filled = []
    for model in models:
        digest = assigned.get((model.name, model.version))
        if not model.digest and model.state == pb.ModelState.FAILED and digest:
            copy = pb.ModelState()
            copy.CopyFrom(model)
            copy.digest = digest
            model = copy
        filled.append(model)
    return filled


def check_models(kind: str, models: Sequence[pb.ModelState], limits: GatewayLimits) -> None:
    _cap(kind, f"{kind}.models", models, limits.max_models)
    for i, model in enumerate(models):
        where = f"{kind}.models[{i}]"
        _name(kind, f"{where}.name", model.name)
        _text(kind, f"{where}.version", model.version, limits.max_text_chars)
        _text(kind, f"{where}.message", model.message, limits.max_state_message_chars)
        if not is_digest(model.digest):
            raise Refusal(kind, f"{where}.digest", "Malformed",
                          f"{model.digest[:80]!r} is not 'sha256:' and 64 lowercase hex")
        if model.state not in _STATES:
            raise Refusal(kind, f"{where}.state", "Malformed",
                          f"{model.state} is not a known model state")
        if model.bytes_total > INT64_MAX or (model.bytes_total
                                             and model.bytes_done > model.bytes_total):
            raise Refusal(kind, f"{where}.bytes_done", "Implausible",
                          f"{model.bytes_done} bytes done of {model.bytes_total}")
        if model.variant and not _VARIANT.fullmatch(model.variant):
            raise Refusal(kind, f"{where}.variant", "Malformed",
                          f"{model.variant[:80]!r} is not a variant name (a DNS label)")
        _cap(kind, f"{where}.execution_providers", model.execution_providers,
             limits.max_execution_providers)
        for j, provider in enumerate(model.execution_providers):
            _text(kind, f"{where}.execution_providers[{j}]", provider, limits.max_text_chars)


def check_stats(kind: str, stats: Sequence[pb.VersionStats], limits: GatewayLimits) -> None:
    """Shape and self-consistency of each entry; whether the counts can be true since
    the last report is StatsBaseline's question."""
    _cap(kind, f"{kind}.stats", stats, limits.max_stats)
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(stats):
        where = f"{kind}.stats[{i}]"
        _name(kind, f"{where}.model", item.model)
        _text(kind, f"{where}.version", item.version, limits.max_text_chars)
        if (item.model, item.version) in seen:
            raise Refusal(kind, where, "Malformed",
                          f"{item.model} {item.version[:80]!r} is listed twice")
        seen.add((item.model, item.version))
        _cap(kind, f"{where}.latency_bounds_seconds", item.latency_bounds_seconds,
             limits.max_latency_bounds)
        _cap(kind, f"{where}.top_class_counts", item.top_class_counts, limits.max_top_classes)
        bounds = list(item.latency_bounds_seconds)
        if not all(math.isfinite(b) and b > 0 for b in bounds) or bounds != sorted(set(bounds)):
            raise Refusal(kind, f"{where}.latency_bounds_seconds", "Malformed",
                          "bounds must be positive, finite and increasing")
        if item.latency_counts and len(item.latency_counts) != len(bounds) + 1:
            raise Refusal(kind, f"{where}.latency_counts", "Malformed",
                          f"{len(item.latency_counts)} counts for {len(bounds)} bounds "
                          "(one per bound and one above them)")
        counts = [item.requests, item.errors, item.labelled, *item.latency_counts,
                  *item.top_class_counts]
        if max(counts) > INT64_MAX:
            raise Refusal(kind, where, "Implausible",
                          f"a count of {max(counts)} is past 2^63-1")
        if item.errors > item.requests:
            raise Refusal(kind, f"{where}.errors", "Implausible",
                          f"{item.errors} errors of {item.requests} requests")
        if item.correct > item.labelled:
            raise Refusal(kind, f"{where}.correct", "Implausible",
                          f"{item.correct} right of {item.labelled} labelled")


def check_health(kind: str, health: pb.Health, limits: GatewayLimits) -> None:
    """Figures a device could truly read of itself: shares within 0..100, parts no larger
    than their wholes, temperatures a machine survives, short texts."""
    where = f"{kind}.health"
    figures = {descriptor.name: value for descriptor, value in health.ListFields()}
    for name in ("cpu_percent", "cpu_throttled_percent"):
        value = figures.get(name)
        if value is not None and not (math.isfinite(value) and 0 <= value <= 100):
            raise Refusal(kind, f"{where}.{name}", "Implausible", f"{value} is not 0..100")
    for part, whole in (("memory_available_bytes", "memory_total_bytes"),
                        ("disk_free_bytes", "disk_total_bytes")):
        value, total = figures.get(part, 0), figures.get(whole)
        if value > INT64_MAX or (total is not None and (total > INT64_MAX or value > total)):
            raise Refusal(kind, f"{where}.{part}", "Implausible", f"{value} of {total} bytes")
    celsius = figures.get("temperature_celsius")
    if celsius is not None and not (math.isfinite(celsius)
                                    and MIN_CELSIUS <= celsius <= MAX_CELSIUS):
        raise Refusal(kind, f"{where}.temperature_celsius", "Implausible",
                      f"{celsius} °C is not {MIN_CELSIUS}..{MAX_CELSIUS}")
    uptime = figures.get("uptime_seconds")
    if uptime is not None and not (math.isfinite(uptime) and 0 <= uptime <= MAX_UPTIME_S):
        raise Refusal(kind, f"{where}.uptime_seconds", "Implausible",
                      f"{uptime} s is not 0..{MAX_UPTIME_S:.0f}")
    _text(kind, f"{where}.os", figures.get("os", ""), limits.max_text_chars)
    _text(kind, f"{where}.kernel", figures.get("kernel", ""), limits.max_text_chars)


def check_hello(hello: pb.Hello, limits: GatewayLimits) -> None:
    caps = hello.capabilities
    _text("hello", "hello.capabilities.arch", caps.arch, limits.max_text_chars)
    _cap("hello", "hello.capabilities.execution_providers", caps.execution_providers,
         limits.max_execution_providers)
    for i, provider in enumerate(caps.execution_providers):
        _text("hello", f"hello.capabilities.execution_providers[{i}]", provider,
              limits.max_text_chars)
    if caps.memory_bytes > INT64_MAX:
        raise Refusal("hello", "hello.capabilities.memory_bytes", "Implausible",
                      f"{caps.memory_bytes} is past 2^63-1")
    _text("hello", "hello.applied_revision", hello.applied_revision, limits.max_text_chars)
    _text("hello", "hello.runtime_version", hello.runtime_version, limits.max_text_chars)
    _cap("hello", "hello.models", hello.models, limits.max_models)


def check_data_batch(batch: pb.DataBatch, assignments: Iterable[Assignment],
                     limits: GatewayLimits) -> list[Record]:
    """A batch of kept records, each checked (dataset.read_record): for a model the
    device is assigned with a data collection policy, in increasing sequence."""
    _name("data", "data.model", batch.model)
    if not any(a.name == batch.model and a.capture for a in assignments):
        raise Refusal("data", "data.model", "NotAllowed",
                      f"the device collects no data for model {batch.model!r}: no model of "
                      "that name is assigned to it with spec.dataCollection")
    _cap("data", "data.records", batch.records, limits.max_data_records)
    records, last = [], 0
    for i, item in enumerate(batch.records):
        if item.sequence <= last:
            raise Refusal("data", f"data.records[{i}].sequence", "Malformed",
                          f"{item.sequence} does not follow {last}")
        last = item.sequence
        try:
            records.append(read_record(item.sequence, item.data, batch.model))
        except RecordError as error:
            raise Refusal("data", f"data.records[{i}]", "Malformed", str(error)) from None
    return records


def check_metrics_batch(batch: pb.MetricsBatch, limits: GatewayLimits,
                        now_ms: float) -> None:
    """The batch as a whole; each sample is screened on its own (remote_write.py)."""
    def refuse(where: str, reason: Reason, message: str) -> Refusal:
        return Refusal("metrics", where, reason, message, batch.sequence)

    if batch.sequence == 0:
        raise refuse("metrics.sequence", "Malformed", "sequences start at 1")
    if len(batch.samples) > limits.max_samples:
        raise refuse("metrics.samples", "TooLarge",
                     f"{len(batch.samples)} samples, at most {limits.max_samples}")
    if batch.timestamp_ms > now_ms + limits.max_future_ms:
        raise refuse("metrics.timestamp_ms", "Malformed",
                     f"{batch.timestamp_ms} is more than {limits.max_future_ms} ms "
                     "in the future")


# ---------------------------------------------------------------- plausibility


@dataclass(frozen=True)
class Counts:
    requests: int
    errors: int
    at: float


@dataclass
class StatsBaseline:
    """The counts a session's last accepted report carried, per model version: the
    next may not go down, nor up faster than a device can answer."""

    limits: GatewayLimits
    last: dict[tuple[str, str], Counts] = field(default_factory=dict)
    started: float | None = None  # the first report's time

    def check(self, kind: str, stats: Iterable[pb.VersionStats], now: float) -> None:
        """Raises Refusal("Implausible") for counts that cannot be true; otherwise
        makes them the baseline. A version missing from a report may come back from
        zero (it was unloaded and loaded again), with no more requests than the
        session has lasted; only the first report may carry counts from before it."""
        first = self.started is None
        started = now if self.started is None else self.started
        current = {}
        for i, item in enumerate(stats):
            where = f"{kind}.stats[{i}]"
            key = (item.model, item.version)
            before = self.last.get(key)
            if before is not None and (item.requests < before.requests
                                       or item.errors < before.errors):
                raise Refusal(kind, where, "Implausible",
                              f"counts went down within a session: requests "
                              f"{before.requests} -> {item.requests}, errors "
                              f"{before.errors} -> {item.errors}")
            if before is not None:
                seconds = now - before.at
            elif first:
                seconds = self.limits.max_unreported_seconds
            else:
                seconds = now - started
            ceiling = self.limits.max_requests_per_second * (
                seconds + self.limits.report_slack_seconds)
            grown = item.requests - (before.requests if before else 0)
            if grown > ceiling:
                raise Refusal(kind, f"{where}.requests", "Implausible",
                              f"{grown} requests in {seconds:.0f} s; a device answers at "
                              f"most {self.limits.max_requests_per_second:.0f} a second")
            current[key] = Counts(item.requests, item.errors, now)
        self.last, self.started = current, started


# ---------------------------------------------------------------- budgets


class ByteBudget:
    """Bytes held for a purpose (metrics batches waiting for Prometheus), across every
    session of the gateway."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def try_hold(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size


class SessionBudget:
    """One session's allowance of bytes and messages read, and of metrics bytes
    queued, within the gateway's shared queue budget."""

    def __init__(self, limits: GatewayLimits, shared: ByteBudget,
                 clock: Clock = time.monotonic) -> None:
        self._bytes = TokenBucket(limits.session_bytes_per_second, limits.session_burst_bytes,
                                  clock)
        self._messages = TokenBucket(limits.session_messages_per_second,
                                     limits.session_burst_messages, clock)
        self._queue_limit = limits.session_queue_bytes
        self._shared = shared
        self.queued = 0

    def read(self, size: int) -> float:
        """Counts a message read; how long to wait before reading the next."""
        return max(self._bytes.reserve(size), self._messages.reserve(1))

    def try_queue(self, size: int) -> bool:
        if self.queued + size > self._queue_limit or not self._shared.try_hold(size):
            return False
        self.queued += size
        return True

    def dequeue(self, size: int) -> None:
        self.queued -= size
        self._shared.release(size)

    def close(self) -> None:
        """Returns what is still queued to the shared budget."""
        self._shared.release(self.queued)
        self.queued = 0


class PeerThrottle:
    """Failed authentications per peer address: a token bucket each, so a stranger
    guessing tokens or device names is answered without a look after a few tries.
    Buckets that have refilled are forgotten; past `max_tracked_peers` the oldest go."""

    def __init__(self, limits: GatewayLimits, clock: Clock = time.monotonic) -> None:
        self._limits, self._clock = limits, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allows(self, peer: str) -> bool:
        bucket = self._buckets.get(peer)
        return bucket is None or bucket.available()

    def failed(self, peer: str) -> None:
        bucket = self._buckets.pop(peer, None) or TokenBucket(
            self._limits.auth_failures_per_second, self._limits.auth_failure_burst,
            self._clock)
        bucket.take()
        self._buckets[peer] = bucket
        if len(self._buckets) > self._limits.max_tracked_peers:
            for key in [key for key, b in self._buckets.items() if b.full]:
                del self._buckets[key]
            while len(self._buckets) > self._limits.max_tracked_peers:
                self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def peer_address(peer: str) -> str:
    """gRPC's peer string without the port: 'ipv4:10.0.0.7:51234' -> 'ipv4:10.0.0.7'."""
    address, separator, port = peer.rpartition(":")
    return address if separator and port.isdigit() and address else peer


class Throttle:
    """At most one report per key in an interval, counting what it held back, so that
    what a device does wrong is told (Events, logs) without letting it flood them."""

    def __init__(self, interval_s: float, clock: Clock = time.monotonic) -> None:
        self._interval, self._clock = interval_s, clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._prune_at = 1024  # keys; doubles with what stays, so pruning costs O(1) each

    def due(self, key: str) -> int | None:
        """None while held back; otherwise how many were held back since the last."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        if len(self._last) >= self._prune_at:
            self._prune(now)
        return self._held.pop(key, 0)

    def _prune(self, now: float) -> None:
        """Forgets keys quiet for a whole interval with nothing held back (devices that
        stopped misbehaving, or were deleted): they would be told at once anyway."""
        for key in [k for k, at in self._last.items()
                    if now - at >= self._interval and k not in self._held]:
            del self._last[key]
        self._prune_at = max(1024, 2 * len(self._last))

    def __len__(self) -> int:
        return len(self._last)
