"""The benchmark models: one shape, four flavours (sync/async x hash/JSON), encrypted and plain.

Each encrypted model and its plain twin differ only in the types of the two secret fields
(``EncryptedStr`` versus ``str``) and in the ``EncryptedModel`` mixin, listed first as users do.
The shape is the origin project's record in small: an indexed name, a public field and two
secrets. Keys live under a prefix unique to this run (``RUN_PREFIX``), removed by ``cleanup``.

Imported only once ``REDIS_OM_URL`` is set: redis-om binds a model's connection at definition.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import aredis_om
import redis
import redis_om

from redis_encrypted_fields import Encrypted, EncryptedModel, EncryptedStr, Mask

__all__ = [
    "FLAVOURS",
    "RUN_PREFIX",
    "TYPED_FLAVOURS",
    "Flavour",
    "cleanup",
    "client",
    "ensure_indexes",
    "secret_values",
    "typed_values",
]

# A child process of a benchmark (memory) works on its parent's records: it is given their prefix.
RUN_PREFIX = os.environ.get("REF_BENCH_RUN_PREFIX") or f"bench-{os.getpid()}-{secrets.token_hex(3)}"
URL_MASK = Mask("**********")

# Optional[...] rather than "X | None": redis-om maps the "" a HashModel stores for None back to
# None only for typing.Optional (as the library's README recommends).
# ruff: noqa: UP045


class SyncHashEncrypted(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    environment: str = "development"
    connection_url: Annotated[EncryptedStr, URL_MASK]
    admin_password: Optional[EncryptedStr] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "sync-hash-encrypted"


class SyncHashPlain(redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    environment: str = "development"
    connection_url: str
    admin_password: Optional[str] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "sync-hash-plain"


class SyncJsonEncrypted(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    environment: str = "development"
    connection_url: Annotated[EncryptedStr, URL_MASK]
    admin_password: Optional[EncryptedStr] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "sync-json-encrypted"


class SyncJsonPlain(redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    environment: str = "development"
    connection_url: str
    admin_password: Optional[str] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "sync-json-plain"


class AsyncHashEncrypted(EncryptedModel, aredis_om.HashModel, index=True):
    name: str = aredis_om.Field(index=True)
    environment: str = "development"
    connection_url: Annotated[EncryptedStr, URL_MASK]
    admin_password: Optional[EncryptedStr] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "async-hash-encrypted"


class AsyncHashPlain(aredis_om.HashModel, index=True):
    name: str = aredis_om.Field(index=True)
    environment: str = "development"
    connection_url: str
    admin_password: Optional[str] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "async-hash-plain"


class AsyncJsonEncrypted(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    environment: str = "development"
    connection_url: Annotated[EncryptedStr, URL_MASK]
    admin_password: Optional[EncryptedStr] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "async-json-encrypted"


class AsyncJsonPlain(aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    environment: str = "development"
    connection_url: str
    admin_password: Optional[str] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "async-json-plain"


# The same shape with typed secrets (benchmark 11): an int and an optional date, Encrypted[T]
# against the plain types.


class SyncHashTyped(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    environment: str = "development"
    salary: Encrypted[int]
    born: Optional[Encrypted[datetime.date]] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "sync-hash-typed"


class SyncHashTypedPlain(redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    environment: str = "development"
    salary: int
    born: Optional[datetime.date] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "sync-hash-typed-plain"


class SyncJsonTyped(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    environment: str = "development"
    salary: Encrypted[int]
    born: Optional[Encrypted[datetime.date]] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "sync-json-typed"


class SyncJsonTypedPlain(redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    environment: str = "development"
    salary: int
    born: Optional[datetime.date] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "sync-json-typed-plain"


@dataclass(frozen=True, slots=True)
class Flavour:
    """One redis-om flavour: the encrypted model and its plain twin."""

    name: str
    encrypted: Any
    plain: Any
    is_async: bool
    is_json: bool


FLAVOURS = [
    Flavour("HashModel, sync", SyncHashEncrypted, SyncHashPlain, is_async=False, is_json=False),
    Flavour("JsonModel, sync", SyncJsonEncrypted, SyncJsonPlain, is_async=False, is_json=True),
    Flavour("HashModel, async", AsyncHashEncrypted, AsyncHashPlain, is_async=True, is_json=False),
    Flavour("JsonModel, async", AsyncJsonEncrypted, AsyncJsonPlain, is_async=True, is_json=True),
]

# Each typed flavour beside the str flavour of the same shape it is compared with.
TYPED_FLAVOURS = [
    Flavour("HashModel, sync", SyncHashTyped, SyncHashTypedPlain, is_async=False, is_json=False),
    Flavour("JsonModel, sync", SyncJsonTyped, SyncJsonTypedPlain, is_async=False, is_json=True),
]

SECRET_FIELDS = ("connection_url", "admin_password")
TYPED_FIELDS = ("salary", "born")


def typed_values(i: int) -> dict[str, Any]:
    """Field values of the ``i``-th typed record, distinct per record."""
    return {
        "name": f"typed-{i:05d}",
        "environment": "production",
        "salary": 40_000 + i,
        "born": datetime.date(1950, 1, 1) + datetime.timedelta(days=i),
    }


def secret_values(i: int) -> dict[str, Any]:
    """Field values of the ``i``-th record: realistic lengths, distinct per record."""
    return {
        "name": f"redis-{i:05d}",
        "environment": "production",
        "connection_url": f"redis://default:pw-{i:05d}-Xq7vT2mN9s@redis-{i:05d}.internal:6379/0",
        "admin_password": f"adm-{i:05d}-kL3pW8rZ",
    }


def client() -> redis.Redis:  # type: ignore[type-arg]
    """A plain synchronous client, for checks and cleanup behind redis-om's back."""
    return redis.Redis.from_url(os.environ["REDIS_OM_URL"], decode_responses=True)


async def ensure_indexes() -> None:
    """redis-om's Migrator for both registries (``find()`` needs the indexes)."""
    redis_om.Migrator().run()
    await aredis_om.Migrator().run()


def stored(flavour: Flavour, model: Any, pk: str) -> dict[str, Any]:
    """What Redis holds for one record, read without redis-om."""
    key = model.make_primary_key(pk)
    with client() as c:
        if flavour.is_json:
            return c.json().get(key) or {}
        return c.hgetall(key)


def delete_keys(keys: list[str]) -> None:
    with client() as c:
        for start in range(0, len(keys), 1000):
            c.unlink(*keys[start : start + 1000])


def cleanup() -> int:
    """Drop this run's indexes and every key under ``RUN_PREFIX``; the number of keys removed."""
    removed = 0
    with client() as c:
        for flavour in [*FLAVOURS, *TYPED_FLAVOURS]:
            for model in (flavour.encrypted, flavour.plain):
                with contextlib.suppress(redis.ResponseError):
                    c.ft(model.Meta.index_name).dropindex(delete_documents=False)
        batch: list[str] = []
        for key in c.scan_iter(match=f"{RUN_PREFIX}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += c.unlink(*batch)
                batch.clear()
        if batch:
            removed += c.unlink(*batch)
    return removed
