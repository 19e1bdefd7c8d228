"""Benchmark 8: equality search on an encrypted field (blind index) and what the index costs a save.

- ``find(Model.email == v).all()`` on an encrypted field with ``BlindIndex()`` against
  ``find(Model.name == v).all()`` on a plain indexed field of the same model and records, each
  finding one record of 100,000 (a different, random one every operation; the same sequence for
  both). The encrypted query computes the value's companion, fetches the candidates and decrypts
  them to drop false positives; both build the one record they return.
- ``save()`` of a record with a blind-indexed field against the same model without the index.
- A query that finds nothing: ``find(Model.email == absent).all()`` runs one more RediSearch
  query, the key check (companions made under a master key the ring does not hold: a wrong or
  missing key), against ``find(Model.name == absent).all()``; and that check's FT.SEARCH alone
  against the blind query's own TAG lookup.

The records are loaded once (``add()`` in pipelines of 2,000), then both queries are timed in
interleaved rounds, as every comparison in this harness is.
"""

from __future__ import annotations

import contextlib
import random
import statistics
from typing import Annotated, Any

import redis
import redis_om
from redis_om.search_reply import search_total

from redis_encrypted_fields import BlindIndex, EncryptedModel, EncryptedStr, get_keyring
from redis_encrypted_fields.model.blind_index import companion_name, foreign_prefixes

from . import BENCHMARKS
from .harness import (
    COMPARISON_HEADER,
    BenchmarkError,
    Section,
    Settings,
    compare,
    table,
)
from .models import RUN_PREFIX, client

__all__ = ["FIND_GOAL", "SAVE_GOAL", "run"]

FIND_GOAL = 1.5
SAVE_GOAL = 1.10
_LOAD_CHUNK = 2000


class SearchUser(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    email: Annotated[EncryptedStr, BlindIndex()]

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "search-user"


# For save(): the same model with and without the blind index, each holding only the record
# being saved (SearchUser's index is a hundred thousand records larger).
class SaveIndexed(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    email: Annotated[EncryptedStr, BlindIndex()]

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "save-indexed"


class SaveIndexedJson(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    email: Annotated[EncryptedStr, BlindIndex()]

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "save-indexed-json"


class SaveUnindexed(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    email: EncryptedStr

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "save-unindexed"


class SaveUnindexedJson(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    email: EncryptedStr

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "save-unindexed-json"


_MODELS = (SearchUser, SaveIndexed, SaveIndexedJson, SaveUnindexed, SaveUnindexedJson)


def _email(i: int) -> str:
    return f"user.{i:06d}.{i * 7919 % 100_003:05d}@example.com"


def _load(n: int) -> None:
    for start in range(0, n, _LOAD_CHUNK):
        stop = min(n, start + _LOAD_CHUNK)
        SearchUser.add(
            [
                SearchUser(pk=f"u{i:06d}", name=f"user-{i:06d}", email=_email(i))
                for i in range(start, stop)
            ]
        )


def _candidates(samples: list[int]) -> float:
    """Records the TAG query returns per equality query, on average (before filtering)."""
    totals = []
    for i in samples:
        query = SearchUser.find(SearchUser.email == _email(i))
        totals.append(search_total(query.execute(exhaust_results=False, return_raw_result=True)))
    return statistics.mean(totals)


def _find_ops(n: int, seed: int) -> tuple[Any, Any]:
    rng = random.Random(seed)
    encrypted_order = [rng.randrange(n) for _ in range(100_000)]
    plain_order = list(encrypted_order)
    state = {"e": 0, "p": 0}

    def by_email() -> None:
        i = encrypted_order[state["e"] % len(encrypted_order)]
        state["e"] += 1
        found = SearchUser.find(SearchUser.email == _email(i)).all()
        if len(found) != 1 or found[0].name != f"user-{i:06d}":
            raise BenchmarkError(f"find(email == ...) returned {len(found)} records, not 1")

    def by_name() -> None:
        i = plain_order[state["p"] % len(plain_order)]
        state["p"] += 1
        found = SearchUser.find(SearchUser.name == f"user-{i:06d}").all()
        if len(found) != 1 or found[0].email != _email(i):
            raise BenchmarkError(f"find(name == ...) returned {len(found)} records, not 1")

    return by_email, by_name


def _empty_ops() -> tuple[Any, Any]:
    """Queries for values no record holds: the blind one ends with the key check."""
    state = {"e": 0, "p": 0}

    def by_email() -> None:
        state["e"] += 1
        if SearchUser.find(SearchUser.email == f"absent.{state['e']}@example.com").all():
            raise BenchmarkError("find(email == absent) found a record")

    def by_name() -> None:
        state["p"] += 1
        if SearchUser.find(SearchUser.name == f"absent-{state['p']}").all():
            raise BenchmarkError("find(name == absent) found a record")

    return by_email, by_name


def _check_ops() -> tuple[Any, Any]:
    """The key check's FT.SEARCH (as the library sends it) and a one-companion TAG lookup."""
    db = SearchUser.db()
    index, field = SearchUser.Meta.index_name, companion_name("email")
    ring = [key.key_id_hex for key in get_keyring().keys]
    prefixes = "|".join(f"{p}*" for p in foreign_prefixes(ring))
    check = f"@{field}:{{{prefixes}}}"
    lookup = f"@{field}:{{{ring[0]}abcd}}"

    def run(query: str) -> Any:
        return db.execute_command("FT.SEARCH", index, query, "LIMIT", 0, 10, "RETURN", 1, field)

    def key_check() -> None:
        if search_total(run(check)):
            raise BenchmarkError("the key check found companions under a foreign key")

    return key_check, lambda: run(lookup)


def _save_ops(indexed: Any, plain: Any) -> tuple[Any, Any]:
    a = indexed(name="saved", email=_email(1))
    b = plain(name="saved", email=_email(1))
    return a.save, b.save


def _drop_indexes() -> None:
    with client() as c:
        for model in _MODELS:
            with contextlib.suppress(redis.ResponseError):
                c.ft(model.Meta.index_name).dropindex(delete_documents=False)


async def run(settings: Settings) -> Section:
    section = Section("search", BENCHMARKS["search"].title)
    n = settings.search_records
    redis_om.Migrator().run()
    try:
        _load(n)
        if SearchUser.find().count() != n:
            raise BenchmarkError("not every record was indexed")
        candidates = _candidates(random.Random(7).sample(range(n), min(n, 500)))
        by_email, by_name = _find_ops(n, seed=13)
        find = await compare(
            "`find(email == v).all()` vs `find(name == v).all()`",
            by_email,
            by_name,
            rounds=settings.search_rounds,
            batch=settings.search_batch,
            goal=FIND_GOAL,
        )
        empty_email, empty_name = _empty_ops()
        empty = await compare(
            "finds nothing: `find(email == v).all()` vs `find(name == v).all()`",
            empty_email,
            empty_name,
            rounds=settings.search_rounds,
            batch=settings.search_batch,
        )
        key_check, lookup = _check_ops()
        check = await compare(
            "the key check's FT.SEARCH vs a one-companion TAG lookup",
            key_check,
            lookup,
            rounds=settings.search_rounds,
            batch=settings.search_batch,
        )
        saves = []
        for label, indexed, plain in (
            ("HashModel", SaveIndexed, SaveUnindexed),
            ("JsonModel", SaveIndexedJson, SaveUnindexedJson),
        ):
            with_index, without = _save_ops(indexed, plain)
            saves.append(
                await compare(
                    f"{label}: `save()` with vs without `BlindIndex()`",
                    with_index,
                    without,
                    rounds=settings.roundtrip_rounds,
                    batch=settings.roundtrip_batch,
                    goal=SAVE_GOAL,
                )
            )
    finally:
        _drop_indexes()
    section.goals.append((f"Search: `find(email == v)` vs a plain field, {n:,} records", find))
    section.goals += [(f"Save with a blind index, {c.label.split(':')[0]}", c) for c in saves]
    header = ["case", "blind index (median)", "baseline (median)", *COMPARISON_HEADER[3:]]
    section.body += [
        f"{n:,} hash records with an encrypted `email` (`BlindIndex()`, {16} bits: the default) "
        "and a plain indexed `name`; each operation finds one record, a different one every "
        f"time. {settings.search_rounds} interleaved rounds of {settings.search_batch} "
        "operations. The TAG query returned "
        f"{candidates:.2f} candidates per query on average (500 queries): one match, the rest "
        "false positives the library decrypts and drops.",
        "",
        *table(header, [find.row()]),
        "",
        "A blind query that finds nothing makes sure it could have: one more FT.SEARCH looks "
        "for companions made under a master key the ring does not hold (TAG prefixes of every "
        "other key id; it matches nothing while the ring holds every key in use) and raises "
        "`IndexKeyError` if it finds one, where a wrong or missing key would otherwise give an "
        "empty answer. Queries for a value no record holds, and that check alone against the "
        "blind query's own TAG lookup (both sent raw, same client):",
        "",
        *table(header, [empty.row(), check.row()]),
        "",
        f"`save()` of one record: the model with `email: Annotated[EncryptedStr, BlindIndex()]` "
        "against the same model with `email: EncryptedStr` (both encrypt; one also computes and "
        f"writes the companion). {settings.roundtrip_rounds} interleaved rounds of "
        f"{settings.roundtrip_batch} saves.",
        "",
        *table(header, [c.row() for c in saves]),
    ]
    return section
