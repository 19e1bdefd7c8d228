"""Models for the blind-index tests: one shape in four flavours (sync/async, hash/JSON).

Written with ``from __future__ import annotations`` (the annotations are strings pydantic
resolves); ``test_search.py`` defines one more model without it. ``Collide*`` use a 2-bit index,
so that four companions cover every value and most candidates are false positives.
"""

from __future__ import annotations

from typing import Annotated, Optional

import aredis_om
import redis_om

from redis_encrypted_fields import BlindIndex, EncryptedModel, EncryptedStr, Mask

# Optional[...] (not "X | None"): redis-om maps the "" a HashModel stores for None back to None
# only for typing.Optional.
# ruff: noqa: UP045


def lowercase_domain(value: str) -> str:
    """A user normalization: the domain of an address is case-insensitive, the local part not."""
    local, at, host = value.rpartition("@")
    return f"{local}{at}{host.lower()}" if at else value


# A mask of its own and a user normalization, in an alias (resolved from this module's globals).
Login = Annotated[EncryptedStr, Mask("******"), BlindIndex(normalize=lowercase_domain)]


class SyncHashUser(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    team: str = redis_om.Field(index=True, default="core")
    email: Annotated[EncryptedStr, BlindIndex(normalize="casefold")]
    phone: Optional[Annotated[EncryptedStr, BlindIndex()]] = None
    login: Optional[Login] = None
    note: Optional[EncryptedStr] = None  # encrypted, not searchable

    class Meta:
        model_key_prefix = "search.sync-hash-user"


class SyncJsonUser(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    team: str = redis_om.Field(index=True, default="core")
    email: Annotated[EncryptedStr, BlindIndex(normalize="casefold")]
    phone: Optional[Annotated[EncryptedStr, BlindIndex()]] = None
    login: Optional[Login] = None
    note: Optional[EncryptedStr] = None

    class Meta:
        model_key_prefix = "search.sync-json-user"


class AsyncHashUser(EncryptedModel, aredis_om.HashModel, index=True):
    name: str = aredis_om.Field(index=True)
    team: str = aredis_om.Field(index=True, default="core")
    email: Annotated[EncryptedStr, BlindIndex(normalize="casefold")]
    phone: Optional[Annotated[EncryptedStr, BlindIndex()]] = None
    login: Optional[Login] = None
    note: Optional[EncryptedStr] = None

    class Meta:
        model_key_prefix = "search.async-hash-user"


class AsyncJsonUser(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    team: str = aredis_om.Field(index=True, default="core")
    email: Annotated[EncryptedStr, BlindIndex(normalize="casefold")]
    phone: Optional[Annotated[EncryptedStr, BlindIndex()]] = None
    login: Optional[Login] = None
    note: Optional[EncryptedStr] = None

    class Meta:
        model_key_prefix = "search.async-json-user"


class SyncHashCollide(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    code: Annotated[EncryptedStr, BlindIndex(bits=2)]

    class Meta:
        model_key_prefix = "search.sync-hash-collide"


class SyncJsonCollide(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    code: Annotated[EncryptedStr, BlindIndex(bits=2)]

    class Meta:
        model_key_prefix = "search.sync-json-collide"


class AsyncHashCollide(EncryptedModel, aredis_om.HashModel, index=True):
    name: str = aredis_om.Field(index=True)
    code: Annotated[EncryptedStr, BlindIndex(bits=2)]

    class Meta:
        model_key_prefix = "search.async-hash-collide"


class AsyncJsonCollide(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    code: Annotated[EncryptedStr, BlindIndex(bits=2)]

    class Meta:
        model_key_prefix = "search.async-json-collide"


# The same stored records as SyncHashUser, seen by code from before the field had its blind
# index (same key prefix, so the envelopes open): records it saves have no companion.
class SyncHashUserBefore(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    team: str = "core"
    email: EncryptedStr
    phone: Optional[EncryptedStr] = None
    login: Optional[EncryptedStr] = None
    note: Optional[EncryptedStr] = None

    class Meta:
        model_key_prefix = "search.sync-hash-user"
        index_name = "search.sync-hash-user-before:index"


class SyncJsonUserBefore(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    team: str = "core"
    email: EncryptedStr
    phone: Optional[EncryptedStr] = None
    login: Optional[EncryptedStr] = None
    note: Optional[EncryptedStr] = None

    class Meta:
        model_key_prefix = "search.sync-json-user"
        index_name = "search.sync-json-user-before:index"


# The same records once more, with the email index redefined (exact instead of case-insensitive):
# a re-index, which migrate performs.
class SyncHashUserExact(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    team: str = "core"
    email: Annotated[EncryptedStr, BlindIndex()]
    phone: Optional[EncryptedStr] = None
    login: Optional[EncryptedStr] = None
    note: Optional[EncryptedStr] = None

    class Meta:
        model_key_prefix = "search.sync-hash-user"
        index_name = "search.sync-hash-user-exact:index"


USER_MODELS = [SyncHashUser, SyncJsonUser, AsyncHashUser, AsyncJsonUser]
COLLIDE_MODELS = [SyncHashCollide, SyncJsonCollide, AsyncHashCollide, AsyncJsonCollide]
BEFORE = {SyncHashUser: SyncHashUserBefore, SyncJsonUser: SyncJsonUserBefore}
