"""Benchmark 12: what the audit trail costs: off, and with the stream, metrics and anomaly rules.

Two comparisons of the encrypted round trip of benchmark 1 (``save()`` + ``get()``, two secrets),
interleaved in one process:

- audit off (as shipped: logger at WARNING, no hook, no stream, no metrics) against the same
  round trip with the library's audit switch and entry points replaced by functions that do
  nothing (what no audit code at all would cost);
- the stream (this run's own key on the benchmark's server), OpenTelemetry metrics (the SDK's
  ``MeterProvider`` with an in-memory reader), without and with the anomaly rules, against
  audit off: in steady state (long batches, the writer thread waking on its own as in a
  service) and in series (short batches, each flushed before the next: none of the writer's
  work overlaps the application's). Each timed batch with the trail on ends with the writer's
  flush, so the batch pays for its own entries being written rather than leaving them to the
  next batch.
"""

from __future__ import annotations

import gc
import importlib
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from redis_encrypted_fields import configure_audit
from redis_encrypted_fields.audit import events
from redis_encrypted_fields.crypto import stored
from redis_encrypted_fields.model import codec

from . import BENCHMARKS
from .harness import (
    COMPARISON_HEADER,
    BenchmarkError,
    Comparison,
    Section,
    Settings,
    fmt_time,
    table,
)
from .models import FLAVOURS, RUN_PREFIX, delete_keys, secret_values
from .roundtrip import check_round_trip, round_trip_op

__all__ = ["GOAL_OFF", "GOAL_ON", "run"]

GOAL_OFF = 1.02
GOAL_ON = 1.10
STREAM_KEY = f"{RUN_PREFIX}:audit"  # removed by ``cleanup`` with the run's other keys


def _never() -> bool:
    return False


def _nothing(*args: Any, **kwargs: Any) -> None:
    pass


# Every module that asks whether to audit, or builds events, on a record's read or write.
_PATCHED = ((codec, "audit_enabled"), (stored, "audit_enabled"), (stored, "track"))


def _no_audit_code(on: bool) -> None:
    """Replace (or restore) the audit switch and entry points of the hot path."""
    for module, name in _PATCHED:
        setattr(
            module,
            name,
            (_never if name == "audit_enabled" else _nothing) if on else getattr(events, name),
        )


class Paired(Comparison):
    """A comparison whose ratio is the median of its per-round ratios (each from two adjacent
    batches): the figure sought is a difference of a few percent, and pairing keeps the load
    bursts of a shared machine out of it. ``cpu``: the process's CPU seconds per operation
    (background threads included), per variant, as (first, second) lists."""

    __slots__ = ("cpu",)

    def __init__(self, label: str, goal: float | None) -> None:
        super().__init__(label, goal=goal)
        self.cpu: tuple[list[float], list[float]] = ([], [])

    @property
    def ratio(self) -> float:
        return statistics.median(self.round_ratios)

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(a / b for a, b in zip(*self.cpu, strict=True))


def _interleave(
    label: str,
    op: Callable[[], Any],
    variants: tuple[Callable[[], Any], Callable[[], Any]],
    after: tuple[Callable[[], Any], Callable[[], Any]],
    rounds: int,
    batch: int,
    goal: float | None,
) -> Paired:
    """``rounds`` batches of ``op`` under each variant (set up untimed; ``after`` timed), in
    alternating order; ``encrypted`` holds the first variant's figures, ``plain`` the second's."""
    result = Paired(label, goal)
    samples = (result.encrypted, result.plain)
    for i in range(rounds + 1):
        for v in (0, 1) if i % 2 == 0 else (1, 0):
            variants[v]()
            gc.collect()
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(batch):
                op()
            after[v]()
            if i:  # the first round warms up
                samples[v].append((time.perf_counter() - start) / batch)
                result.cpu[v].append((time.process_time() - cpu) / batch)
    return result


def _sdk_provider() -> Any:
    try:
        sdk = importlib.import_module("opentelemetry.sdk.metrics")
        export = importlib.import_module("opentelemetry.sdk.metrics.export")
    except ImportError:
        return None
    return sdk.MeterProvider(metric_readers=[export.InMemoryMetricReader()])


async def run(settings: Settings) -> Section:
    section = Section("audit", BENCHMARKS["audit"].title)
    rounds = 5 if settings.quick else 101
    batch = 10 if settings.quick else 50
    # Steady state: a batch long enough for the writer thread to wake on its own (at 500
    # buffered events, or every 0.2 s) several times, as in an application.
    steady_rounds = 3 if settings.quick else 31
    steady_batch = 20 if settings.quick else 500
    provider = _sdk_provider()
    if provider is None:
        raise BenchmarkError("the audit benchmark needs opentelemetry-sdk (the dev extra)")
    comparisons: list[Paired] = []
    for flavour in FLAVOURS[:2]:  # the sync ones: no event loop between the two variants
        model = flavour.encrypted
        instance = model(**secret_values(0))
        await check_round_trip(flavour, model, instance, encrypted=True)
        op = round_trip_op(flavour, model, instance)
        try:
            configure_audit(stream=False, metrics=False, anomalies=False)
            off = _interleave(
                f"Audit off, {flavour.name}",
                op,
                (lambda: _no_audit_code(False), lambda: _no_audit_code(True)),
                (_nothing, _nothing),
                rounds,
                batch,
                GOAL_OFF,
            )
            _no_audit_code(False)
            trail: list[Paired] = []
            # The goal is for the stream and metrics; the anomaly rules come on with
            # them by default, and are measured on top.
            for rules in (False, True):
                config = configure_audit(
                    stream=os.environ["REDIS_OM_URL"],
                    stream_key=STREAM_KEY,
                    meter_provider=provider,
                    anomalies=rules,
                )
                writer = config.stream
                assert writer is not None
                consumers = events._consumers

                def trail_on(consumers: Any = consumers) -> None:
                    events.set_consumers(consumers, listening=True)

                def trail_off() -> None:
                    events.set_consumers((), listening=False)

                def flushed(writer: Any = writer) -> None:
                    if not writer.flush(30.0):
                        raise BenchmarkError("the audit stream was not written")

                what = "stream + metrics + rules" if rules else "stream + metrics"
                before = writer.written
                for label, n, size, goal in (
                    ("steady state", steady_rounds, steady_batch, GOAL_ON),
                    ("in series", rounds, batch, None),
                ):
                    trail.append(
                        _interleave(
                            f"Audit {what}, {flavour.name}, {label}",
                            op,
                            (trail_on, trail_off),
                            (flushed, _nothing),
                            n,
                            size,
                            goal,
                        )
                    )
                expected = 4 * (steady_rounds * steady_batch + rounds * batch)
                if writer.written - before < expected:
                    raise BenchmarkError(f"only {writer.written} audit entries were written")
        finally:
            _no_audit_code(False)
            configure_audit(stream=False, metrics=False, anomalies=False)
            delete_keys([model.make_primary_key(instance.pk)])
        comparisons += [off, *trail]
        section.goals += [(c.label, c) for c in (off, *trail) if c.goal is not None]
    configure_audit()
    section.body += [
        "The encrypted round trip of benchmark 1 (one record, two secrets: two `encrypt` and two "
        "`decrypt` events per operation); figures per operation. 'Audit off' compares the "
        "library as shipped with its audit switch and entry points replaced by functions that "
        f"do nothing (in the 'plain' column), {rounds} interleaved rounds of {batch} operations "
        "per variant. 'Stream + metrics' compares the trail on (a Redis Stream on the same "
        "server, written by the background thread; OpenTelemetry SDK metrics) with audit off "
        "(in the 'plain' column); 'stream + metrics + rules' the same with the anomaly rules on "
        "too. Every timed batch with the trail on ends when all its entries are written: it "
        "pays for writing them.",
        "",
        f"- **Steady state** ({steady_rounds} rounds of {steady_batch} operations, "
        f"{4 * steady_batch} events, per variant): the writer thread wakes on its own (at 500 "
        "buffered events, or every 0.2 s) while the application works, as it does in a "
        "service; its Python work shares the interpreter with the round trips, and the "
        "Redis server appends while the application waits for its own replies. This is "
        "the figure the goal is for.",
        f"- **In series** ({rounds} rounds of {batch} operations): each batch flushes its "
        f"{4 * batch} events from the calling thread before the next starts, so none of the "
        "writer's work (encoding, Redis appending, reading the replies) overlaps the "
        "application's: an upper bound, shown without a goal.",
        "",
        *table(COMPARISON_HEADER, [c.row() for c in comparisons]),
        "",
        "Ratio: the median of the per-round ratios. The process's CPU time per operation "
        "(the writer thread's included), same rounds, median of the per-round ratios:",
        "",
        *table(
            ["case", "CPU (median)", "CPU of the other (median)", "ratio"],
            [
                [
                    c.label,
                    fmt_time(statistics.median(c.cpu[0])),
                    fmt_time(statistics.median(c.cpu[1])),
                    f"{c.cpu_ratio:.3f}",
                ]
                for c in comparisons
            ],
        ),
    ]
    return section
