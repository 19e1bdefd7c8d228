"""Audit metrics through OpenTelemetry's API (the ``otel`` extra), exported by whatever SDK the
application set up; nothing without it.

- ``redis_encrypted_fields.operations`` (counter): events by ``operation``, ``outcome``,
  ``model``, ``field``, ``key_id``. Counted in-process and observed by the SDK when it collects
  (an asynchronous counter): an SDK ``Counter.add`` with five attributes costs microseconds.
  A seal or open is only queued when it happens, and counted in a batch when the SDK collects
  (or when ``DRAIN_AT`` are queued): counting a batch in C costs a fraction of one call each.
- ``redis_encrypted_fields.kms.requests`` (counter): KMS calls by ``operation`` (``kms_decrypt``,
  ...), ``outcome``, ``kms_key_id``.
- ``redis_encrypted_fields.anomalies`` (counter): anomaly alerts by ``rule``.
- ``redis_encrypted_fields.crypto.duration`` (histogram, seconds): seal and open time by
  ``operation`` (``encrypt``, ``decrypt``, ``rewrap``), one value in ``timing_sample`` (32 by
  default; 1 records every one): its counts are a sample, the operations counter counts all.
  Recorded with the batch: each collection holds the times of the operations it counts.
- ``redis_encrypted_fields.audit.dropped`` (counter): events the stream's full buffer dropped.
"""

from __future__ import annotations

import importlib
import operator
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

from ..version import __version__
from .events import ANOMALY, AuditEvent

__all__ = ["DEFAULT_TIMING_SAMPLE", "METER_NAME", "Metrics", "otel_available"]

METER_NAME = "redis_encrypted_fields"
DEFAULT_TIMING_SAMPLE = 32  # the histogram records one seal or open time in this many
_Key = tuple[str, str, str | None, str | None, str | None]
_NAMES = ("operation", "outcome", "model", "field", "key_id")
# An event's counted attributes, as a tuple (AuditEvent's fields 0-3 and 5), picked in C.
_KEY: Callable[[AuditEvent], _Key] = operator.itemgetter(0, 1, 2, 3, 5)
DRAIN_AT = 1024  # seals and opens held before they are counted, when the SDK collects seldom


def otel_available() -> bool:
    """Whether OpenTelemetry's API is installed."""
    try:
        importlib.import_module("opentelemetry.metrics")
    except ImportError:
        return False
    return True


class Metrics:
    """An audit consumer that counts events on an OpenTelemetry meter of ``meter_provider``
    (the global one by default). ``dropped``: a count of dropped events to export (the
    stream's)."""

    def __init__(
        self,
        meter_provider: Any = None,
        dropped: Callable[[], int] | None = None,
        timing_sample: int = DEFAULT_TIMING_SAMPLE,
    ) -> None:
        api = importlib.import_module("opentelemetry.metrics")  # the otel extra: only if used
        self._observation = api.Observation
        provider = meter_provider if meter_provider is not None else api.get_meter_provider()
        meter = provider.get_meter(METER_NAME, __version__)
        self._counts: Counter[_Key] = Counter()
        self._pending: deque[AuditEvent] = deque()  # seals and opens not counted yet
        self._timed: deque[tuple[str, float]] = deque()  # their sampled times, not recorded yet
        self._lock = threading.Lock()
        self._dropped = dropped
        meter.create_observable_counter(
            "redis_encrypted_fields.operations",
            callbacks=[self._observe_operations],
            unit="{operation}",
            description="Audited operations on encrypted fields and master keys",
        )
        self._kms = meter.create_counter(
            "redis_encrypted_fields.kms.requests", unit="{request}", description="KMS calls"
        )
        self._anomalies = meter.create_counter(
            "redis_encrypted_fields.anomalies", unit="{alert}", description="Audit anomaly alerts"
        )
        self._duration = meter.create_histogram(
            "redis_encrypted_fields.crypto.duration",
            unit="s",
            description="Time to seal or open one value",
        )
        if dropped is not None:
            meter.create_observable_counter(
                "redis_encrypted_fields.audit.dropped",
                callbacks=[self._observe_dropped],
                unit="{event}",
                description="Audit events dropped by the stream writer's full buffer",
            )
        # One attribute dict per operation, built once: the histogram is recorded per value.
        self._by_operation: dict[str, dict[str, str]] = {}
        self.timing_sample = max(1, timing_sample)
        self._tick = self.timing_sample  # times to skip, this one included, before one is kept

    def __call__(self, event: AuditEvent, duration: float | None = None) -> None:
        operation = event.operation
        if event.outcome == ANOMALY:
            self._anomalies.add(1, {"rule": event.reason or ""})
            return
        if operation.startswith("kms_"):
            call = {"operation": operation, "outcome": event.outcome}
            if event.kms_key_id:
                call["kms_key_id"] = event.kms_key_id
            self._kms.add(1, call)
            return
        # A seal or open: counted later, in batches (when the SDK collects, or every
        # DRAIN_AT events), where counting costs a fraction of what it costs one at a time;
        # its time kept if it is the one in timing_sample to record.
        pending = self._pending
        pending.append(event)
        if duration is not None:
            self._tick -= 1
            if self._tick <= 0:
                self._tick = self.timing_sample
                self._timed.append((operation, duration))
        if len(pending) >= DRAIN_AT:
            self.drain()

    def drain(self) -> None:
        """Count the seals and opens not counted yet, and record the sampled times."""
        with self._lock:
            take = self._pending.popleft
            self._counts.update(map(_KEY, [take() for _ in range(len(self._pending))]))
            take_time = self._timed.popleft
            timed = [take_time() for _ in range(len(self._timed))]
        record, by_operation = self._duration.record, self._by_operation
        for operation, took in timed:
            attributes = by_operation.get(operation)
            if attributes is None:
                attributes = by_operation[operation] = {"operation": operation}
            record(took, attributes)

    def _observe_operations(self, options: Any) -> Iterator[Any]:
        # The SDK calls this before it reads its instruments: times recorded now are in this
        # collection.
        self.drain()
        with self._lock:
            counts = list(self._counts.items())
        for key, count in counts:
            # An attribute that is None is left out: OpenTelemetry takes none.
            yield self._observation(
                count, {n: v for n, v in zip(_NAMES, key, strict=True) if v is not None}
            )

    def _observe_dropped(self, options: Any) -> Iterator[Any]:
        if self._dropped is not None:
            yield self._observation(self._dropped())

    def __repr__(self) -> str:
        return "Metrics()"
