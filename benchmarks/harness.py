"""Timing machinery shared by the benchmarks: interleaved A/B rounds, medians, ratios, sections.

Every comparison runs the encrypted and the plain variant of one operation in alternating order
(A B, B A, A B, ...) so that machine noise (two shared cores) hits both. A round times a batch of
operations per variant; the figure of a variant is the median over rounds of its per-operation
time, and the ratio is median(encrypted) / median(plain). The per-round ratios (each from two
adjacent batches) are shown too, as a measure of the noise.
"""

from __future__ import annotations

import gc
import inspect
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BenchmarkError",
    "Comparison",
    "Op",
    "Section",
    "Settings",
    "compare",
    "fmt_bytes",
    "fmt_ratio",
    "fmt_time",
    "table",
    "time_batch",
]

Op = Callable[[], Any] | Callable[[], Awaitable[Any]]


class BenchmarkError(RuntimeError):
    """A benchmark found a wrong result (the timing would be meaningless)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How much work each benchmark does. ``quick`` is a smoke run: figures are not meaningful."""

    quick: bool = False
    # Many short rounds: the two variants of a pair run within a few milliseconds of each other,
    # shorter than most bursts of other work on a shared machine.
    roundtrip_rounds: int = 201
    roundtrip_batch: int = 10
    envelope_rounds: int = 201
    envelope_batch: int = 200
    bulk_records: int = 10_000
    bulk_rounds: int = 9
    profile_ops: int = 1500
    component_rounds: int = 101
    component_batch: int = 50
    floor_rounds: int = 31
    floor_batch: int = 500
    search_records: int = 100_000
    search_rounds: int = 101
    search_batch: int = 20
    memory_records: int = 100_000
    memory_rounds: int = 3
    scope_records: int = 100_000
    scope_tenants: int = 1_000

    @classmethod
    def for_run(
        cls, *, quick: bool, rounds: int | None = None, records: int | None = None
    ) -> Settings:
        base = (
            cls(
                quick=True,
                roundtrip_rounds=3,
                roundtrip_batch=15,
                envelope_rounds=3,
                envelope_batch=100,
                bulk_records=150,
                bulk_rounds=1,
                profile_ops=40,
                component_rounds=3,
                component_batch=30,
                floor_rounds=3,
                floor_batch=50,
                search_records=300,
                search_rounds=3,
                search_batch=5,
                memory_records=2000,
                memory_rounds=1,
                scope_records=400,
                scope_tenants=20,
            )
            if quick
            else cls()
        )
        changes: dict[str, int] = {}
        if rounds is not None:
            changes.update(
                roundtrip_rounds=rounds,
                envelope_rounds=rounds,
                bulk_rounds=rounds,
                component_rounds=rounds,
                search_rounds=rounds,
            )
        if records is not None:
            changes["bulk_records"] = records
            changes["scope_records"] = records
        return cls(**{**_fields(base), **changes})


def _fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in Settings.__dataclass_fields__}


@dataclass(slots=True)
class Comparison:
    """Encrypted versus plain for one operation: per-operation seconds, one sample per round."""

    label: str
    encrypted: list[float] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)
    goal: float | None = None
    # Seconds per operation of AES-GCM work that any envelope scheme needs (see floor.py).
    floor: float | None = None
    # How a figure is shown (seconds by default; the memory benchmark measures bytes).
    fmt: Callable[[float], str] = field(default=lambda value: fmt_time(value))

    @property
    def encrypted_median(self) -> float:
        return statistics.median(self.encrypted)

    @property
    def plain_median(self) -> float:
        return statistics.median(self.plain)

    @property
    def ratio(self) -> float:
        return self.encrypted_median / self.plain_median

    @property
    def overhead(self) -> float:
        """Median encrypted minus median plain, in seconds per operation."""
        return self.encrypted_median - self.plain_median

    @property
    def round_ratios(self) -> list[float]:
        return [e / p for e, p in zip(self.encrypted, self.plain, strict=True)]

    @property
    def floor_ratio(self) -> float | None:
        """The best ratio possible: plain plus the AES-GCM floor, over plain."""
        if self.floor is None:
            return None
        return (self.plain_median + self.floor) / self.plain_median

    @property
    def glue_per_floor(self) -> float | None:
        """What the library adds beyond the AES-GCM floor, in units of the floor: (ratio - floor
        ratio) / (floor ratio - 1). At most 1 when the library costs no more than the
        cryptography it runs."""
        floor_ratio = self.floor_ratio
        if floor_ratio is None or floor_ratio <= 1:
            return None
        return (self.ratio - floor_ratio) / (floor_ratio - 1)

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.ratio <= self.goal

    def row(self, unit: str = "op") -> list[str]:
        """A table row, in the columns of ``COMPARISON_HEADER``."""
        ratios = self.round_ratios
        if len(ratios) >= 4:
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            spread = f"{q1:.2f} to {q3:.2f}"
        elif len(ratios) > 1:
            spread = f"{min(ratios):.2f} to {max(ratios):.2f}"
        else:
            spread = "-"
        goal = "-" if self.goal is None else f"≤ {self.goal:.2f}"
        met = {None: "-", True: "yes", False: "**no**"}[self.met]
        return [
            self.label,
            f"{self.fmt(self.encrypted_median)}/{unit}",
            f"{self.fmt(self.plain_median)}/{unit}",
            f"{fmt_time(self.overhead, signed=True)}",
            fmt_ratio(self.ratio),
            "-" if self.floor_ratio is None else fmt_ratio(self.floor_ratio),
            spread,
            goal,
            met,
        ]


COMPARISON_HEADER = [
    "case",
    "encrypted (median)",
    "plain (median)",
    "difference",
    "ratio",
    "floor ratio",
    "per-round ratios (middle half)",
    "goal",
    "met?",
]


@dataclass(slots=True)
class Section:
    """One benchmark's part of BENCHMARKS.md, and the goals it checked (for the summary)."""

    key: str
    title: str
    body: list[str] = field(default_factory=list)
    goals: list[tuple[str, Comparison]] = field(default_factory=list)
    pending: str | None = None


async def time_batch(op: Op, n: int) -> float:
    """Seconds per call of ``op`` over ``n`` calls (awaited when ``op`` returns an awaitable)."""
    gc.collect()
    if inspect.iscoroutinefunction(op):
        start = time.perf_counter()
        for _ in range(n):
            await op()
        return (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n):
        op()
    return (time.perf_counter() - start) / n


async def compare(
    label: str,
    encrypted: Op,
    plain: Op,
    *,
    rounds: int,
    batch: int,
    goal: float | None = None,
    warmup: int | None = None,
    setup: tuple[Callable[[], Any], Callable[[], Any]] | None = None,
) -> Comparison:
    """Interleave ``rounds`` batches of each variant, alternating which one goes first.

    ``setup``: a function per variant (encrypted, plain) run before each of its batches, untimed.
    """
    result = Comparison(label, goal=goal)
    warm = max(50, batch) if warmup is None else warmup
    before_encrypted, before_plain = setup or (_nothing, _nothing)

    async def timed_encrypted(n: int) -> float:
        before_encrypted()
        return await time_batch(encrypted, n)

    async def timed_plain(n: int) -> float:
        before_plain()
        return await time_batch(plain, n)

    await timed_encrypted(warm)
    await timed_plain(warm)
    for i in range(rounds):
        if i % 2 == 0:
            result.encrypted.append(await timed_encrypted(batch))
            result.plain.append(await timed_plain(batch))
        else:
            result.plain.append(await timed_plain(batch))
            result.encrypted.append(await timed_encrypted(batch))
    return result


def _nothing() -> None:
    pass


def fmt_time(seconds: float, *, signed: bool = False) -> str:
    """Three significant digits: ``812 µs``, ``1.93 ms``, ``65.3 ms``, ``2.41 s``; ``+21.5 µs``."""
    sign = ("+" if seconds >= 0 else "-") if signed else ("" if seconds >= 0 else "-")
    s = abs(seconds)
    if s >= 1:
        return f"{sign}{s:.2f} s"
    value, unit = (s * 1e3, "ms") if s >= 1e-3 else (s * 1e6, "µs")
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{sign}{value:.{digits}f} {unit}"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.3f}"


def fmt_bytes(n: float) -> str:
    """``512 KiB``, ``83.4 MiB``, ``1.21 GiB``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            value = n / size
            digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
            return f"{value:.{digits}f} {unit}"
    return f"{n:.0f} B"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out
