"""Benchmark 4: rotation and migration throughput, and peak memory.

``ops.migrate`` encrypts N planted plaintext records; ``ops.rotate`` then re-wraps all of them
under a new key. The naive loop the design note implies, ``for pk in Model.all_pks():
Model.get(pk).save()``, rotates the same data set (bounded to a sample of it: it is the slow
side) in the same run, alternating with ``rotate`` over several rounds, each round moving
everything to a fresh key. Peak memory is traced (``tracemalloc``) in separate passes, so that
tracing does not slow the timed ones: ``rotate`` over a tenth of the records and over all of
them (flat memory: the two peaks match), and the naive loop over its sample.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any, Optional

import redis_om

from redis_encrypted_fields import (
    EncryptedModel,
    EncryptedStr,
    KeyRing,
    MasterKey,
    ops,
    set_keyring,
)

from . import BENCHMARKS
from .harness import BenchmarkError, Comparison, Section, Settings, fmt_time, table
from .models import RUN_PREFIX, client, delete_keys

__all__ = ["GOAL", "run"]

GOAL = 10.0  # rotate at least 10x faster per record than the naive loop

# ruff: noqa: UP045  (Optional: see models.py)


class RotationRecord(EncryptedModel, redis_om.HashModel, index=True):
    name: str
    connection_url: EncryptedStr
    admin_password: Optional[EncryptedStr] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "rotation"


class SmallRotationRecord(RotationRecord):
    """The same shape under another prefix: a data set a tenth the size, for the memory curve."""

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "rotation-small"


def _sizes(settings: Settings) -> tuple[int, int, int]:
    """Records, naive-loop sample, rounds."""
    return (600, 100, 1) if settings.quick else (100_000, 4_000, 5)


def _plant(n: int, model: type[RotationRecord] = RotationRecord) -> list[str]:
    with client() as c:
        return plant(c, model.make_primary_key(""), n)


def plant(c: Any, prefix: str, n: int) -> list[str]:
    """``n`` plaintext records with two secrets under ``prefix``, written through ``c`` (a
    standalone or a cluster client); their keys."""
    keys = []
    pipe = c.pipeline(transaction=False)
    for i in range(n):
        pk = f"r{i:07d}"
        key = f"{prefix}{pk}"
        keys.append(key)
        pipe.hset(
            key,
            mapping={
                "pk": pk,
                "name": f"instance-{i}",
                "connection_url": f"redis://app:pw-{i}@db-{i % 97}.internal:6379/0",
                "admin_password": f"admin-password-{i}",
            },
        )
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()
    return keys


def _naive(sample: int) -> int:
    done = 0
    for pk in RotationRecord.all_pks():
        RotationRecord.get(pk).save()
        done += 1
        if done == sample:
            break
    return done


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak(fn: Callable[[], object]) -> int:
    """Peak Python memory (tracemalloc) of ``fn()``."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _check(keys: list[str], ring: KeyRing) -> None:
    report = ops.status(RotationRecord, keyring=ring)
    want = f"key:{ring.current.key_id.hex()}"
    for name, counts in report.states.items():
        if set(counts) - {want, "empty"}:
            raise BenchmarkError(f"{name}: not every value is under the current key: {counts}")
    sample = RotationRecord.get("r0000007")
    if sample.connection_url != "redis://app:pw-7@db-7.internal:6379/0":
        raise BenchmarkError("a rotated record did not decrypt to its value")


async def run(settings: Settings) -> Section:
    n, sample, rounds = _sizes(settings)
    section = Section("rotation", BENCHMARKS["rotation"].title)
    tenth = n // 10
    keys = _plant(n)
    ring = KeyRing(MasterKey.generate())
    try:
        set_keyring(ring)
        migrate_s = _timed(lambda: _expect(ops.migrate(RotationRecord, batch_size=1000), n))
        rotate_per: list[float] = []
        naive_per: list[float] = []
        for _ in range(rounds):
            ring = KeyRing(MasterKey.generate(), ring.keys)
            set_keyring(ring)
            rotate_per.append(
                _timed(lambda: _expect(ops.rotate(RotationRecord, batch_size=1000), n)) / n
            )
            ring = KeyRing(MasterKey.generate(), ring.keys)
            set_keyring(ring)
            naive_per.append(_timed(lambda: _naive(sample)) / sample)
            # The naive loop rotated only its sample: bring the rest along before the next round.
            ops.rotate(RotationRecord, batch_size=1000)
        _check(keys, ring)
        ring = KeyRing(MasterKey.generate(), ring.keys)
        set_keyring(ring)
        peak_all = peak(lambda: ops.rotate(RotationRecord, batch_size=1000))
        ring = KeyRing(MasterKey.generate(), ring.keys)
        set_keyring(ring)
        peak_naive = peak(lambda: _naive(sample))
        # The same data set a tenth the size, alone in the database as the full one was.
        delete_keys(keys)
        keys = _plant(tenth, SmallRotationRecord)
        ops.migrate(SmallRotationRecord, batch_size=1000)
        ring = KeyRing(MasterKey.generate(), ring.keys)
        set_keyring(ring)
        peak_tenth = peak(lambda: ops.rotate(SmallRotationRecord, batch_size=1000))
    finally:
        set_keyring(None)
        delete_keys(keys)
    rotate_s, naive_s = statistics.median(rotate_per), statistics.median(naive_per)
    speedup = naive_s / rotate_s
    met = speedup >= GOAL
    rows = [
        [
            "`ops.migrate` (plaintext → v2)",
            f"{n:,}",
            f"{n / migrate_s:,.0f}",
            fmt_time(migrate_s / n),
            "-",
        ],
        ["`ops.rotate` (re-wrap)", f"{n:,}", f"{1 / rotate_s:,.0f}", fmt_time(rotate_s), "-"],
        ["naive `get().save()` loop", f"{sample:,}", f"{1 / naive_s:,.0f}", fmt_time(naive_s), "-"],
    ]
    mem_rows = [
        [f"`ops.rotate`, {tenth:,} records", f"{peak_tenth / 2**20:.2f} MiB"],
        [f"`ops.rotate`, {n:,} records", f"{peak_all / 2**20:.2f} MiB"],
        [f"naive loop, {sample:,} records", f"{peak_naive / 2**20:.2f} MiB"],
    ]
    section.body += [
        f"{n:,} hash records with two encrypted fields; batch size 1,000; median of {rounds} "
        "alternating rounds (each moves every record to a fresh master key). The naive loop runs "
        f"on a {sample:,}-record sample (per-record cost does not depend on the total).",
        "",
        *table(["operation", "records", "records/s", "per record", ""], rows),
        "",
        f"**rotate vs naive loop: {speedup:.1f}x faster per record** (goal ≥ {GOAL:.0f}x: "
        f"{'met' if met else '**not met**'}).",
        "",
        "Peak Python memory (tracemalloc) of a whole run:",
        "",
        *table(["run", "peak"], mem_rows),
        "",
        f"Memory of `rotate` does not grow with the record count: "
        f"{peak_all / max(peak_tenth, 1):.2f}x the peak for ten times the records.",
    ]
    # As a ratio for the summary table: rotate / naive per record, goal at most 1/GOAL.
    figure = Comparison("`rotate` / naive loop, per record", rotate_per, naive_per, 1 / GOAL)
    section.goals.append(("Rotation: `rotate` / naive loop per record", figure))
    return section


def _expect(report: ops.Report, n: int) -> ops.Report:
    if not report.ok or report.records != n:
        raise BenchmarkError(f"{report.summary()} (expected {n} records)")
    return report
