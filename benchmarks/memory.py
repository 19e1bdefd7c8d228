"""Benchmark 9: peak memory (RSS) of ``find().all()`` over 100,000 records, encrypted vs plain.

Peak resident memory is a per-process high-water mark, so each measurement runs in a child
process of its own: it imports the benchmark models, connects, then runs ``Model.find().all()``
over the records the parent loaded and reports its peak RSS (``ru_maxrss``) before and after.
Encrypted and plain children alternate over several rounds; figures are medians. The records
have the round trip's shape (benchmark 1), loaded once with ``add()``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
from typing import Any

from . import BENCHMARKS
from .harness import BenchmarkError, Comparison, Section, Settings, fmt_bytes, fmt_ratio, table
from .models import FLAVOURS, RUN_PREFIX, Flavour, delete_keys, secret_values

__all__ = ["GOAL", "run"]

GOAL = 1.10
# find() is the same code in both flavours of each storage; the sync ones are measured.
MEASURED = [f for f in FLAVOURS if not f.is_async]
_CHUNK = 2000


def _peak_rss() -> int:
    """This process's peak resident memory so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB


def _child(index: int, encrypted: bool) -> None:
    """One measurement: ``find().all()`` of every record of one model, in this process."""
    flavour = FLAVOURS[index]
    model = flavour.encrypted if encrypted else flavour.plain
    query = model.find()
    before = _peak_rss()
    records = asyncio.run(query.all()) if flavour.is_async else query.all()
    print(json.dumps({"records": len(records), "before": before, "peak": _peak_rss()}))


def _measure(flavour: Flavour, encrypted: bool) -> dict[str, int]:
    index = FLAVOURS.index(flavour)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--child", str(index), str(int(encrypted))],
        capture_output=True,
        text=True,
        env={**os.environ, "REF_BENCH_RUN_PREFIX": RUN_PREFIX},
        check=False,
    )
    if proc.returncode != 0:
        raise BenchmarkError(f"memory measurement failed: {proc.stderr[-2000:]}")
    result: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _load(model: Any, n: int) -> list[str]:
    keys = []
    for start in range(0, n, _CHUNK):
        chunk = [model(**secret_values(i)) for i in range(start, min(n, start + _CHUNK))]
        model.add(chunk)
        keys += [model.make_primary_key(m.pk) for m in chunk]
    return keys


async def run(settings: Settings) -> Section:
    section = Section("memory", BENCHMARKS["memory"].title)
    n, rounds = settings.memory_records, settings.memory_rounds
    rows = []
    for flavour in MEASURED:
        peaks = Comparison(f"{flavour.name}: peak RSS", goal=GOAL, fmt=fmt_bytes)
        growth = Comparison(f"{flavour.name}: growth", fmt=fmt_bytes)
        keys = _load(flavour.encrypted, n) + _load(flavour.plain, n)
        # Other sections of the run may have left a record of these models behind.
        expected = {m: m.find().count() for m in (flavour.encrypted, flavour.plain)}
        try:
            for i in range(rounds):
                for encrypted in (True, False) if i % 2 == 0 else (False, True):
                    result = _measure(flavour, encrypted)
                    want = expected[flavour.encrypted if encrypted else flavour.plain]
                    if result["records"] != want:
                        raise BenchmarkError(f"find().all() returned {result['records']} of {want}")
                    (peaks.encrypted if encrypted else peaks.plain).append(result["peak"])
                    grown = result["peak"] - result["before"]
                    (growth.encrypted if encrypted else growth.plain).append(grown)
        finally:
            delete_keys(keys)
        rows.append(
            [
                flavour.name,
                fmt_bytes(peaks.encrypted_median),
                fmt_bytes(peaks.plain_median),
                fmt_ratio(peaks.ratio),
                fmt_bytes(growth.encrypted_median),
                fmt_bytes(growth.plain_median),
                fmt_ratio(growth.ratio) if growth.plain_median else "-",
                f"≤ {GOAL:.2f}",
                "yes" if peaks.met else "**no**",
            ]
        )
        section.goals.append((f"Peak RSS, `find().all()` of {n:,} records, {flavour.name}", peaks))
    header = [
        "case",
        "encrypted peak RSS",
        "plain peak RSS",
        "ratio",
        "encrypted growth",
        "plain growth",
        "growth ratio",
        "goal",
        "met?",
    ]
    section.body += [
        f"`Model.find().all()` of {n:,} records (the round trip's shape, loaded with `add()`), "
        "each run in a fresh child process of its own, which reports its peak resident memory "
        "(`ru_maxrss`) once its imports and connection are done (before) and after the call "
        f"(peak); {rounds} alternating runs per variant, medians. Growth is peak minus before: "
        "what the records and their building took, without the interpreter and the libraries. "
        "The goal is on the whole peak, as a user's process sees it.",
        "",
        *table(header, rows),
    ]
    return section


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child(int(sys.argv[2]), sys.argv[3] == "1")
