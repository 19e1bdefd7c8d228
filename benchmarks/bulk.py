"""Benchmark 3: bulk. ``Model.add()`` of many records, then ``Model.find().all()`` of them.

``add()`` saves every record through one pipeline (one seal per secret per record);
``find().all()`` pages through FT.SEARCH results 1000 at a time and builds every record (one open
per secret per record). Each round does, for each variant in alternating order: build the
instances (not timed), time ``add()``, time ``find().all()``, check the result, delete the records.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from . import BENCHMARKS
from .floor import measure
from .harness import (
    COMPARISON_HEADER,
    BenchmarkError,
    Comparison,
    Section,
    Settings,
    fmt_time,
    table,
)
from .models import FLAVOURS, SECRET_FIELDS, Flavour, delete_keys, secret_values, stored

__all__ = ["GOAL", "run"]

GOAL = 1.15


async def _add_and_find(
    flavour: Flavour, model: Any, n: int, encrypted: bool
) -> tuple[float, float]:
    instances = [model(**secret_values(i)) for i in range(n)]
    keys = [model.make_primary_key(m.pk) for m in instances]
    try:
        gc.collect()
        start = time.perf_counter()
        if flavour.is_async:
            await model.add(instances)
        else:
            model.add(instances)
        add = time.perf_counter() - start
        del instances
        gc.collect()
        start = time.perf_counter()
        found = await model.find().all() if flavour.is_async else model.find().all()
        find = time.perf_counter() - start
        _check(flavour, model, found, n, encrypted)
    finally:
        delete_keys(keys)
    return add, find


def _check(flavour: Flavour, model: Any, found: list[Any], n: int, encrypted: bool) -> None:
    if len(found) != n:
        raise BenchmarkError(f"{model.__name__}: find().all() returned {len(found)} of {n}")
    for record in found[:: max(1, n // 20)]:
        i = int(record.name.rsplit("-", 1)[1])
        values = secret_values(i)
        raw = stored(flavour, model, record.pk)
        for name in SECRET_FIELDS:
            if str(getattr(record, name)) != values[name]:
                raise BenchmarkError(f"{model.__name__}.{name} did not read back its value")
            if encrypted != str(raw.get(name)).startswith("REFv2:"):
                raise BenchmarkError(f"{model.__name__}.{name}: unexpected form at rest")


async def run(settings: Settings) -> Section:
    n, rounds = settings.bulk_records, settings.bulk_rounds
    section = Section("bulk", BENCHMARKS["bulk"].title)
    rows: list[Comparison] = []
    floor = await measure(settings.floor_rounds, settings.floor_batch)
    for flavour in FLAVOURS:
        add = Comparison(f"{flavour.name}: `add()`", goal=GOAL, floor=n * 2 * floor.seal)
        find = Comparison(f"{flavour.name}: `find().all()`", goal=GOAL, floor=n * 2 * floor.open)
        for i in range(rounds):
            order = [True, False] if i % 2 == 0 else [False, True]
            for encrypted in order:
                model = flavour.encrypted if encrypted else flavour.plain
                add_time, find_time = await _add_and_find(flavour, model, n, encrypted)
                (add.encrypted if encrypted else add.plain).append(add_time)
                (find.encrypted if encrypted else find.plain).append(find_time)
        rows += [add, find]
        section.goals += [(f"Bulk add, {flavour.name}", add), (f"Bulk find, {flavour.name}", find)]
    section.body += [
        f"{rounds} interleaved rounds; figures are per whole operation on {n:,} records (same "
        "shape as the round trip, distinct values per record). Floor ratio: plain plus the "
        f"inline AES-GCM work ({fmt_time(floor.seal)} per secret sealed, "
        f"{fmt_time(floor.open)} per secret opened, two secrets a record), over plain.",
        "",
        *table(COMPARISON_HEADER, [c.row(unit=f"{n:,}") for c in rows]),
    ]
    return section
