"""Benchmark 1: one model's ``save()`` + ``get()``, encrypted versus plain, in four flavours.

The same instance is saved and read back on every operation, so each save seals both secrets
under fresh data keys and each get opens them: the full cost a redis-om user pays per record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from . import BENCHMARKS
from .floor import measure
from .harness import (
    COMPARISON_HEADER,
    BenchmarkError,
    Comparison,
    Section,
    Settings,
    compare,
    fmt_time,
    table,
)
from .models import FLAVOURS, SECRET_FIELDS, Flavour, delete_keys, secret_values, stored

__all__ = ["GOAL", "round_trip_op", "run"]

GOAL = 1.10


def round_trip_op(flavour: Flavour, model: Any, instance: Any) -> Callable[[], Any]:
    """One operation: ``instance.save()`` then ``model.get(pk)``, awaited for async flavours."""
    if flavour.is_async:

        async def round_trip_async() -> None:
            await instance.save()
            await model.get(instance.pk)

        return round_trip_async

    def round_trip() -> None:
        instance.save()
        model.get(instance.pk)

    return round_trip


async def _maybe_await(value: Any) -> Any:
    if isinstance(value, Awaitable):
        return await value
    return value


async def check_round_trip(flavour: Flavour, model: Any, instance: Any, encrypted: bool) -> None:
    """The benchmark measures real work: envelopes at rest (or plaintext), secrets read back."""
    values = secret_values(0)
    await _maybe_await(instance.save())
    back = await _maybe_await(model.get(instance.pk))
    raw = stored(flavour, model, instance.pk)
    for name in SECRET_FIELDS:
        if str(getattr(back, name)) != values[name]:
            raise BenchmarkError(f"{model.__name__}.{name} did not read back its value")
        at_rest = str(raw.get(name))
        if encrypted and not (at_rest.startswith("REFv2:") and values[name] not in at_rest):
            raise BenchmarkError(f"{model.__name__}.{name} is not stored as an envelope")
        if not encrypted and at_rest != values[name]:
            raise BenchmarkError(f"{model.__name__}.{name} is not stored as plaintext")


async def run(settings: Settings) -> Section:
    section = Section("roundtrip", BENCHMARKS["roundtrip"].title)
    comparisons: list[Comparison] = []
    floor = await measure(settings.floor_rounds, settings.floor_batch)
    for flavour in FLAVOURS:
        enc = flavour.encrypted(**secret_values(0))
        plain = flavour.plain(**secret_values(0))
        try:
            await check_round_trip(flavour, flavour.encrypted, enc, encrypted=True)
            await check_round_trip(flavour, flavour.plain, plain, encrypted=False)
            comparison = await compare(
                flavour.name,
                round_trip_op(flavour, flavour.encrypted, enc),
                round_trip_op(flavour, flavour.plain, plain),
                rounds=settings.roundtrip_rounds,
                batch=settings.roundtrip_batch,
                goal=GOAL,
            )
            comparison.floor = 2 * (floor.seal + floor.open)
        finally:
            delete_keys([flavour.encrypted.make_primary_key(enc.pk)])
            delete_keys([flavour.plain.make_primary_key(plain.pk)])
        comparisons.append(comparison)
        section.goals.append((f"Round trip, {flavour.name}", comparison))
    section.body += [
        "One record with two secret fields; one operation is `save()` then `get(pk)` of the same "
        "instance (HashModel: HTTL + HSET + HGETALL; JsonModel: JSON.SET + JSON.GET). "
        f"{settings.roundtrip_rounds} interleaved rounds of {settings.roundtrip_batch} operations "
        "per variant; figures are per operation. Floor ratio: the best ratio possible, plain "
        "plus the inline AES-GCM work of sealing and opening two secrets "
        f"({fmt_time(2 * (floor.seal + floor.open))}), over plain.",
        "",
        *table(COMPARISON_HEADER, [c.row() for c in comparisons]),
    ]
    return section
