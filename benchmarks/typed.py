"""Benchmark 11: ``Encrypted[T]`` fields cost what ``EncryptedStr`` fields cost.

Two pairs per flavour, run side by side: a model with two typed secrets (``Encrypted[int]``,
``Optional[Encrypted[date]]``) against its plain twin (``int``, ``Optional[date]``), and the
``EncryptedStr`` model of benchmarks 1 and 3 against its plain twin. The figure that matters is
the typed pair's ratio over the str pair's: 1.00 when a typed field costs what a string field
costs relative to the same model without encryption.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from . import BENCHMARKS
from .harness import BenchmarkError, Comparison, Section, Settings, compare, fmt_ratio, table
from .models import (
    FLAVOURS,
    TYPED_FIELDS,
    TYPED_FLAVOURS,
    Flavour,
    delete_keys,
    secret_values,
    stored,
    typed_values,
)
from .roundtrip import round_trip_op

__all__ = ["GOAL", "run"]

# The typed pair's ratio over the str pair's.
GOAL = 1.05


def _check_typed(flavour: Flavour, instance: Any) -> None:
    raw = stored(flavour, flavour.encrypted, instance.pk)
    back = flavour.encrypted.get(instance.pk)
    for name in TYPED_FIELDS:
        if not str(raw.get(name)).startswith("REFv2:"):
            raise BenchmarkError(
                f"{flavour.encrypted.__name__}.{name} is not stored as an envelope"
            )
        if getattr(back, name) != getattr(instance, name):
            raise BenchmarkError(f"{flavour.encrypted.__name__}.{name} did not read back")


async def _round_trips(flavour: Flavour, values: dict[str, Any], settings: Settings) -> Comparison:
    enc, plain = flavour.encrypted(**values), flavour.plain(**values)
    try:
        enc.save()
        plain.save()
        if flavour in TYPED_FLAVOURS:
            _check_typed(flavour, enc)
        return await compare(
            flavour.name,
            round_trip_op(flavour, flavour.encrypted, enc),
            round_trip_op(flavour, flavour.plain, plain),
            rounds=settings.roundtrip_rounds,
            batch=settings.roundtrip_batch,
        )
    finally:
        delete_keys([flavour.encrypted.make_primary_key(enc.pk)])
        delete_keys([flavour.plain.make_primary_key(plain.pk)])


def _find_all(model: Any, n: int, values: Any) -> float:
    instances = [model(**values(i)) for i in range(n)]
    keys = [model.make_primary_key(m.pk) for m in instances]
    try:
        model.add(instances)
        del instances
        gc.collect()
        start = time.perf_counter()
        found = model.find().all()
        elapsed = time.perf_counter() - start
        # Other sections of the run may have left a record of the str model behind.
        if not set(keys) <= {model.make_primary_key(r.pk) for r in found}:
            raise BenchmarkError(f"{model.__name__}: find().all() missed records it was given")
    finally:
        delete_keys(keys)
    return elapsed


def _finds(flavour: Flavour, values: Any, n: int, rounds: int) -> Comparison:
    find = Comparison(flavour.name)
    for i in range(rounds):
        for encrypted in [True, False] if i % 2 == 0 else [False, True]:
            model = flavour.encrypted if encrypted else flavour.plain
            (find.encrypted if encrypted else find.plain).append(_find_all(model, n, values))
    return find


async def run(settings: Settings) -> Section:
    section = Section("typed", BENCHMARKS["typed"].title)
    n, rounds = settings.bulk_records, settings.bulk_rounds
    rows: list[list[str]] = []
    str_flavours = {f.name: f for f in FLAVOURS}
    for typed in TYPED_FLAVOURS:
        text = str_flavours[typed.name]
        trip_typed = await _round_trips(typed, typed_values(0), settings)
        trip_str = await _round_trips(text, secret_values(0), settings)
        find_typed = _finds(typed, typed_values, n, rounds)
        find_str = _finds(text, secret_values, n, rounds)
        for what, t, s in [
            ("round trip", trip_typed, trip_str),
            (f"`find().all()` of {n:,}", find_typed, find_str),
        ]:
            relative = Comparison(f"{typed.name}: {what}", goal=GOAL)
            relative.encrypted, relative.plain = [t.ratio], [s.ratio]
            section.goals.append((f"Typed vs str, {typed.name}, {what}", relative))
            rows.append(
                [
                    relative.label,
                    fmt_ratio(t.ratio),
                    fmt_ratio(s.ratio),
                    fmt_ratio(relative.ratio),
                    f"≤ {GOAL:.2f}",
                ]
            )
    section.body += [
        "Each typed model (`salary: Encrypted[int]`, `born: Optional[Encrypted[date]]`) against "
        "its plain twin (`int`, `Optional[date]`), and the `EncryptedStr` model of benchmarks 1 "
        "and 3 against its plain twin, in the same run. Round trips: "
        f"{settings.roundtrip_rounds} interleaved rounds of {settings.roundtrip_batch}; "
        f"`find().all()`: {rounds} interleaved rounds over {n:,} records. The last column is the "
        "typed ratio over the str ratio: 1.00 when a typed secret costs what a string secret "
        "costs.",
        "",
        *table(
            ["operation", "typed / plain", "str / plain", "typed ratio / str ratio", "goal"], rows
        ),
    ]
    return section
