"""Benchmark 5: where the time goes in the encrypted round trip.

Two views, on the sync flavours (the async ones run the same library code, plus asyncio):

- a cost breakdown without a profiler: the real round trip with its phases timed inside it
  (redis-om's ``check()`` and ``model_dump()`` in ``save``, ``model_validate()`` in ``get``), for
  the encrypted and the plain model, interleaved; the same parts timed alone in a tight loop; and
  the AES-GCM floor of the two secrets;
- a ``cProfile`` of the same round trips, encrypted and plain: the library's own functions, and
  the functions that dominate either way.

cProfile inflates Python-heavy code and cannot see into pydantic-core: time that pydantic spends
validating between a wrap validator and its handler is booked as the validator's own time. Its
figures rank hot spots; the breakdown gives their cost.
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import pstats
import re
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import redis_encrypted_fields

from . import BENCHMARKS
from .floor import measure
from .harness import BenchmarkError, Comparison, Section, Settings, compare, fmt_time, table
from .models import FLAVOURS, Flavour, delete_keys, secret_values, stored

__all__ = ["run"]

# cProfile would also count every resumption of a coroutine as a call.
SYNC_FLAVOURS = [f for f in FLAVOURS if not f.is_async]
PARTS = ("check", "model_dump", "model_validate")

LIBRARY_DIR = str(Path(redis_encrypted_fields.__file__ or "").resolve().parent)
Key = tuple[str, int, str]
Entry = tuple[int, int, float, float, dict[Key, tuple[int, int, float, float]]]


def _is_library(func: Key) -> bool:
    return func[0].startswith(LIBRARY_DIR)


def _label(func: Key) -> str:
    filename, line, name = func
    if filename == "~":
        return f"`{name}`"
    if filename.startswith(LIBRARY_DIR):
        filename = "redis_encrypted_fields" + filename[len(LIBRARY_DIR) :]
    else:
        filename = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", filename)
    return f"`{filename}:{line}({name})`"


async def _await(value: Any) -> Any:
    if isinstance(value, Awaitable):
        return await value
    return value


def _per_op(value: float, ops: int) -> str:
    return fmt_time(value / ops)


# -- breakdown ---------------------------------------------------------------------------------


async def _alone(flavour: Flavour, settings: Settings) -> dict[str, Comparison]:
    """Encrypted-vs-plain cost of each part that runs library code, timed alone in a tight loop."""
    enc = flavour.encrypted(**secret_values(2))
    plain = flavour.plain(**secret_values(2))
    await _await(enc.save())
    await _await(plain.save())
    try:
        enc_doc = {**stored(flavour, flavour.encrypted, enc.pk), "pk": enc.pk}
        plain_doc = {**stored(flavour, flavour.plain, plain.pk), "pk": plain.pk}
    finally:
        delete_keys([flavour.encrypted.make_primary_key(enc.pk)])
        delete_keys([flavour.plain.make_primary_key(plain.pk)])
    if str(flavour.encrypted.model_validate(enc_doc).admin_password) != str(plain.admin_password):
        raise BenchmarkError("the stored document did not validate to the secret")
    ops = {
        "check": (enc.check, plain.check),
        "model_dump": (enc.model_dump, plain.model_dump),
        "model_validate": (
            lambda: flavour.encrypted.model_validate(enc_doc),
            lambda: flavour.plain.model_validate(plain_doc),
        ),
    }
    return {
        name: await compare(
            name,
            enc_op,
            plain_op,
            rounds=settings.component_rounds,
            batch=settings.component_batch,
            warmup=50,
        )
        for name, (enc_op, plain_op) in ops.items()
    }


@contextlib.contextmanager
def _timers(model: Any, spent: dict[str, float]) -> Iterator[None]:
    """Time ``check``, ``model_dump`` and ``model_validate`` where redis-om calls them.

    The wrappers are set on the benchmark's own model class (never on the library's) and removed
    afterwards; each adds two ``perf_counter`` calls, to both variants alike.
    """
    clock = time.perf_counter
    check, dump, validate = model.check, model.model_dump, model.model_validate

    def timed_check(self: Any) -> Any:
        start = clock()
        try:
            return check(self)
        finally:
            spent["check"] += clock() - start

    def timed_dump(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return dump(self, *args, **kwargs)
        finally:
            spent["model_dump"] += clock() - start

    def timed_validate(cls: Any, *args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return validate(*args, **kwargs)
        finally:
            spent["model_validate"] += clock() - start

    model.check, model.model_dump = timed_check, timed_dump
    model.model_validate = classmethod(timed_validate)
    try:
        yield
    finally:
        for name in PARTS:
            delattr(model, name)


async def _in_context(flavour: Flavour, settings: Settings) -> dict[str, Comparison]:
    """The round trip with its phases timed inside it: the parts as they cost in real use."""
    phases = ("round trip", "save", "get", *PARTS)
    out = {name: Comparison(name) for name in phases}
    clock = time.perf_counter
    n = max(10, settings.component_batch // 5)
    variants = []
    for encrypted in (True, False):
        model = flavour.encrypted if encrypted else flavour.plain
        variants.append((encrypted, model, model(**secret_values(5))))
    try:
        for _, model, instance in variants:  # warm up
            for _ in range(50):
                instance.save()
                model.get(instance.pk)
        for i in range(settings.component_rounds):
            for encrypted, model, instance in variants if i % 2 == 0 else variants[::-1]:
                spent = dict.fromkeys(phases, 0.0)
                gc.collect()
                with _timers(model, spent):
                    for _ in range(n):
                        start = clock()
                        instance.save()
                        middle = clock()
                        model.get(instance.pk)
                        spent["save"] += middle - start
                        spent["get"] += clock() - middle
                spent["round trip"] = spent["save"] + spent["get"]
                for name in phases:
                    side = out[name].encrypted if encrypted else out[name].plain
                    side.append(spent[name] / n)
    finally:
        for _, model, instance in variants:
            delete_keys([model.make_primary_key(instance.pk)])
    return out


def _breakdown_rows(
    flavour: Flavour, ctx: dict[str, Comparison], alone: dict[str, Comparison], floor: float
) -> list[list[str]]:
    overhead = ctx["round trip"].overhead

    def share(seconds: float) -> str:
        return f"{seconds / overhead:.0%}" if overhead > 0 else "-"

    def row(label: str, name: str) -> list[str]:
        c = ctx[name]
        return [
            label,
            fmt_time(c.encrypted_median),
            fmt_time(c.plain_median),
            fmt_time(c.overhead, signed=True),
            share(c.overhead),
            fmt_time(alone[name].overhead, signed=True) if name in alone else "",
        ]

    def rest(label: str, whole: str, *parts: str) -> list[str]:
        enc = ctx[whole].encrypted_median - sum(ctx[p].encrypted_median for p in parts)
        plain = ctx[whole].plain_median - sum(ctx[p].plain_median for p in parts)
        diff = enc - plain
        return [label, fmt_time(enc), fmt_time(plain), fmt_time(diff, signed=True), share(diff), ""]

    return [
        row(f"**{flavour.name}: round trip**", "round trip"),
        row("`save()`", "save"),
        row("- redis-om's `check()` (re-validates the instance)", "check"),
        row("- `model_dump()` (seals 2 secrets)", "model_dump"),
        rest("- the rest: redis-om, the `save()` hook, Redis", "save", "check", "model_dump"),
        row("`get()`", "get"),
        row("- `model_validate()` (opens 2 envelopes)", "model_validate"),
        rest("- the rest: redis-om, the `get()` hook, Redis", "get", "model_validate"),
        [
            "*floor: AES-GCM of 2 seals + 2 opens, inline*",
            "",
            "",
            fmt_time(floor, signed=True),
            share(floor),
            "",
        ],
    ]


# -- cProfile ----------------------------------------------------------------------------------


async def _round_trips(model: Any, n: int) -> None:
    instance = model(**secret_values(1))
    try:
        for _ in range(n):
            await _await(instance.save())
            await _await(model.get(instance.pk))
    finally:
        delete_keys([model.make_primary_key(instance.pk)])


async def _profile(encrypted: bool, n: int) -> dict[Key, Entry]:
    profiler = cProfile.Profile()
    for flavour in SYNC_FLAVOURS:
        model = flavour.encrypted if encrypted else flavour.plain
        await _round_trips(model, max(1, n // 10))  # warm up
        profiler.enable()
        try:
            await _round_trips(model, n)
        finally:
            profiler.disable()
    stats: dict[Key, Entry] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    return stats


async def run(settings: Settings) -> Section:
    section = Section("profile", BENCHMARKS["profile"].title)
    body = section.body

    floor = await measure(settings.floor_rounds, settings.floor_batch)
    rows: list[list[str]] = []
    for flavour in SYNC_FLAVOURS:
        ctx = await _in_context(flavour, settings)
        alone = await _alone(flavour, settings)
        rows += _breakdown_rows(flavour, ctx, alone, 2 * (floor.seal + floor.open))
    body += [
        "### Cost breakdown (no profiler)",
        "",
        "The round trip with its phases timed inside it (wrappers on the benchmark's model "
        f"classes), encrypted versus plain, {settings.component_rounds} interleaved rounds: "
        "'difference' is what the library adds, 'share' its part of the round trip's "
        "difference. The last column times the same part alone, in a tight loop: the gap "
        "between the two is the cost of running the library's code cold, between network "
        "calls (caches and branch predictors flushed by the kernel, Redis and the neighbours), "
        "which a micro-benchmark hides. The floor row is the AES-GCM work of the two secrets, "
        "whatever the library; it is part of `model_dump()` and `model_validate()`.",
        "",
        *table(["part", "encrypted", "plain", "difference", "share", "difference alone"], rows),
        "",
    ]

    # -- cProfile ---------------------------------------------------------------------------
    n = settings.profile_ops
    enc_stats = await _profile(True, n)
    plain_stats = await _profile(False, n)
    ops = n * len(SYNC_FLAVOURS)
    enc_total = sum(e[2] for e in enc_stats.values())
    plain_total = sum(e[2] for e in plain_stats.values())
    lib = {f: e for f, e in enc_stats.items() if _is_library(f)}
    lib_own = sum(e[2] for e in lib.values())
    # C functions (AES-GCM, urandom, base64, ...) called directly by library code.
    lib_c = sum(
        tt
        for f, e in enc_stats.items()
        if f[0] == "~"
        for caller, (_, _, tt, _) in e[4].items()
        if _is_library(caller)
    )
    body += [
        "### cProfile of the round trip",
        "",
        f"{n} encrypted round trips per sync flavour (HashModel, JsonModel), then {n} plain "
        "ones; per-operation figures are averaged over the two. Under the profiler an encrypted "
        "round trip "
        f"took {_per_op(enc_total, ops)}, a plain one {_per_op(plain_total, ops)} "
        f"(ratio {enc_total / plain_total:.2f}; the profiler inflates Python-heavy code).",
        "",
        f"- library functions' own time: {_per_op(lib_own, ops)}/op, "
        f"{lib_own / enc_total:.1%} of the encrypted round trip;",
        f"- plus the C functions they call directly (AES-GCM, `os.urandom`, base64, context "
        f"variables, …): {_per_op(lib_c, ops)}/op, {lib_c / enc_total:.1%};",
        f"- together {(lib_own + lib_c) / enc_total:.1%} of the profiled encrypted round trip. "
        "`_ref_open`'s own time also holds the pydantic-core validation run by its handler "
        "(cProfile cannot see it), which the plain model pays too.",
        "",
        "Library functions, by own time:",
        "",
    ]
    lib_rows = [
        [
            _label(f),
            f"{e[1] / ops:.1f}",
            _per_op(e[2], ops),
            _per_op(e[3], ops),
        ]
        for f, e in sorted(lib.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    ]
    body += [*table(["function", "calls/op", "own/op", "cumulative/op"], lib_rows), ""]

    body += [
        "Functions outside the library with the most own time in the encrypted round trip, "
        "with the same function's figures in the plain round trip:",
        "",
    ]
    outside = sorted(
        ((f, e) for f, e in enc_stats.items() if not _is_library(f)),
        key=lambda kv: kv[1][2],
        reverse=True,
    )[:15]
    out_rows = []
    for f, e in outside:
        p = plain_stats.get(f)
        out_rows.append(
            [
                _label(f),
                f"{e[1] / ops:.1f}",
                _per_op(e[2], ops),
                _per_op(e[3], ops),
                "-" if p is None else f"{p[1] / ops:.1f}",
                "-" if p is None else _per_op(p[2], ops),
                "-" if p is None else _per_op(p[3], ops),
            ]
        )
    body += [
        *table(
            [
                "function",
                "enc calls/op",
                "enc own/op",
                "enc cum/op",
                "plain calls/op",
                "plain own/op",
                "plain cum/op",
            ],
            out_rows,
        ),
        "",
    ]

    # redis-om's own costs that both variants pay, named explicitly.
    named = ["check", "__init__", "save", "get", "model_validate", "model_dump"]
    watch_rows = []
    for f, e in sorted(enc_stats.items(), key=lambda kv: kv[1][3], reverse=True):
        if _is_library(f) or f[2] not in named:
            continue
        if not any(m in f[0] for m in ("redis_om", "aredis_om", "pydantic/")):
            continue
        p = plain_stats.get(f)
        watch_rows.append(
            [
                _label(f),
                f"{e[1] / ops:.1f}",
                _per_op(e[3], ops),
                "-" if p is None else f"{p[1] / ops:.1f}",
                "-" if p is None else _per_op(p[3], ops),
            ]
        )
    body += [
        "redis-om and pydantic entry points (cumulative), encrypted versus plain: what is "
        "redis-om's cost (paid by both) and what the library adds inside it.",
        "",
        *table(
            ["function", "enc calls/op", "enc cum/op", "plain calls/op", "plain cum/op"],
            watch_rows[:12],
        ),
    ]
    return section
