"""Benchmark 12: per-tenant keys (``KeyScope``): what a scope costs a record, what the scope key
cache holds, and what a master-key rotation costs with tenants.

- Round trip (``save()`` + ``get()``) of a scoped model against the same model unscoped (a
  plain ``tenant_id``), with the tenant's scope key cached (the steady state).
- Memory of 10,000 cached scope keys (``ScopeKeys``), measured with ``tracemalloc``.
- ``rotate`` under a new master key over ``scope_records`` records of ``scope_tenants``
  tenants: scoped (re-wraps one scope key per tenant, checks every value) against the same
  records unscoped (re-wraps every value).
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from typing import Annotated, Any, Optional

import redis
import redis_om

from redis_encrypted_fields import (
    EncryptedModel,
    EncryptedStr,
    KeyRing,
    KeyScope,
    MasterKey,
    get_keyring,
    ops,
)
from redis_encrypted_fields.keys.scope import SCOPE_KEY_PREFIX, ScopeKeys

from . import BENCHMARKS
from .harness import (
    COMPARISON_HEADER,
    BenchmarkError,
    Comparison,
    Section,
    Settings,
    compare,
    fmt_bytes,
    fmt_ratio,
    fmt_time,
    table,
)
from .models import RUN_PREFIX, client

__all__ = ["GOAL", "run"]

# Scoped round trip over unscoped, warm cache.
GOAL = 1.05
# The scope namespace of this run (its keys are removed at the end).
NAMESPACE = "bench-" + RUN_PREFIX.rsplit("-", 1)[-1]

# ruff: noqa: UP045  (Optional: see models.py)


class ScopedAccount(EncryptedModel, redis_om.HashModel, index=True):
    tenant_id: Annotated[str, KeyScope(NAMESPACE)] = redis_om.Field(index=True)
    name: str
    connection_url: EncryptedStr
    admin_password: Optional[EncryptedStr] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "scoped-account"


class UnscopedAccount(EncryptedModel, redis_om.HashModel, index=True):
    tenant_id: str = redis_om.Field(index=True)
    name: str
    connection_url: EncryptedStr
    admin_password: Optional[EncryptedStr] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "unscoped-account"


def _values(i: int, tenants: int) -> dict[str, Any]:
    return {
        "tenant_id": f"tenant-{i % tenants:05d}",
        "name": f"acct-{i:06d}",
        "connection_url": f"redis://default:pw-{i:06d}-Xq7vT2mN9s@redis-{i:06d}.internal:6379/0",
        "admin_password": f"adm-{i:06d}-kL3pW8rZ",
    }


def _delete(match: str) -> None:
    with client() as c:
        batch = list(c.scan_iter(match=match, count=1000))
        for start in range(0, len(batch), 1000):
            c.unlink(*batch[start : start + 1000])


async def _round_trip(settings: Settings) -> Comparison:
    scoped = ScopedAccount(**_values(0, 1))
    unscoped = UnscopedAccount(**_values(0, 1))

    def scoped_op() -> None:
        scoped.save()
        ScopedAccount.get(scoped.pk)

    def unscoped_op() -> None:
        unscoped.save()
        UnscopedAccount.get(unscoped.pk)

    scoped_op()
    back = ScopedAccount.get(scoped.pk)
    if back.connection_url.get_secret_value() != _values(0, 1)["connection_url"]:
        raise BenchmarkError("the scoped record did not read back")
    return await compare(
        "HashModel, sync: scoped / unscoped",
        scoped_op,
        unscoped_op,
        rounds=settings.roundtrip_rounds,
        batch=settings.roundtrip_batch,
        goal=GOAL,
    )


def _cache_memory(n: int) -> tuple[int, float]:
    """Bytes held by a cache of ``n`` scope keys (loaded from Redis as a process does), and the
    seconds a first use of a tenant took on average (one Redis read and one unwrap)."""
    master = get_keyring()
    maker = ScopeKeys(size=n)
    with client() as c:
        for i in range(n):
            maker.create(c, master, NAMESPACE, f"mem-{i:06d}")
        cache = ScopeKeys(size=n)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        for i in range(n):
            cache.ring(c, master, NAMESPACE, f"mem-{i:06d}")
        elapsed = time.perf_counter() - start
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    if len(cache) != n:
        raise BenchmarkError(f"the cache holds {len(cache)} scope keys, not {n}")
    return held, elapsed / n


def _rotation(model: Any, n: int, tenants: int, old: KeyRing) -> float:
    model.add([model(**_values(i, tenants)) for i in range(n)])
    new = KeyRing(MasterKey.generate(), old.keys)
    start = time.perf_counter()
    report = ops.rotate(model, keyring=new, batch_size=500)
    elapsed = time.perf_counter() - start
    if not report.ok or report.records != n:
        raise BenchmarkError(f"{model.__name__}: rotate was not ok: {report.summary()}")
    return elapsed


async def run(settings: Settings) -> Section:
    section = Section("scopes", BENCHMARKS["scopes"].title)
    n, tenants = settings.scope_records, settings.scope_tenants
    cached = 300 if settings.quick else 10_000
    try:
        trip = await _round_trip(settings)
        section.goals.append(("KeyScope: round trip, scoped / unscoped", trip))
        held, first_use = _cache_memory(cached)
        _delete(f"{RUN_PREFIX}:*scoped-account:*")
        _delete(f"{SCOPE_KEY_PREFIX}{NAMESPACE}:*")  # the rotation's tenants only, from here
        old = get_keyring()
        scoped = _rotation(ScopedAccount, n, tenants, old)
        unscoped = _rotation(UnscopedAccount, n, tenants, old)
    finally:
        _delete(f"{RUN_PREFIX}:*scoped-account:*")
        _delete(f"{SCOPE_KEY_PREFIX}{NAMESPACE}:*")
        with client() as c:
            for model in (ScopedAccount, UnscopedAccount):
                with contextlib.suppress(redis.ResponseError):
                    c.ft(model.Meta.index_name).dropindex(delete_documents=False)
    section.body += [
        "A hash model with two secrets and a `tenant_id: Annotated[str, KeyScope(...)]` against "
        "the same model whose `tenant_id` is a plain field (both encrypted, environment master "
        f"key), in the same run: {settings.roundtrip_rounds} interleaved rounds of "
        f"{settings.roundtrip_batch} round trips (`save()` + `get()`), the tenant's scope key "
        "cached.",
        "",
        *table(COMPARISON_HEADER, [trip.row()]),
        "",
        f"Scope key cache: {cached:,} tenants' keys held in one process take "
        f"{fmt_bytes(held)} ({fmt_bytes(held / cached)} per tenant: the unwrapped key, its "
        "AES-GCM object, the scope's binding and the cache entry; `tracemalloc`). A tenant's "
        f"first use in a process took {fmt_time(first_use)} (one Redis read, one unwrap under "
        "the master key, no KMS call).",
        "",
        f"Master-key rotation (`rotate` under a new master key) of {n:,} records of {tenants:,} "
        "tenants:",
        "",
        *table(
            ["records", "time", "per record"],
            [
                [
                    f"scoped ({tenants:,} scope keys re-wrapped)",
                    fmt_time(scoped),
                    fmt_time(scoped / n),
                ],
                ["unscoped (every value re-wrapped)", fmt_time(unscoped), fmt_time(unscoped / n)],
                ["scoped / unscoped", fmt_ratio(scoped / unscoped), ""],
            ],
        ),
        "",
        "A scoped rotation writes only the scope keys; it still reads and decrypts every value "
        "(each run checks that every value opens), so its time is the scan and the checks.",
    ]
    return section
