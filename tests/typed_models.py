"""Models with Encrypted[T] fields, in the four flavours (sync/async, hash/JSON)."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Annotated, Any

import aredis_om
import redis_om
from pydantic import BaseModel

from redis_encrypted_fields import BlindIndex, Encrypted, EncryptedBytes, EncryptedModel, Mask


class Profile(BaseModel):
    team: str
    level: int


class SyncHashPayroll(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    salary: Annotated[Encrypted[int], BlindIndex()]
    rate: Encrypted[float] | None = None
    bonus: Encrypted[Decimal] | None = None
    active: Encrypted[bool] | None = None
    born: Encrypted[datetime.date] | None = None
    seen_at: Encrypted[datetime.datetime] | None = None
    token: EncryptedBytes | None = None
    extra: Encrypted[dict[str, Any]] | None = None
    tags: Encrypted[list[str]] | None = None
    profile: Encrypted[Profile] | None = None
    pin: Annotated[Encrypted[int], Mask("****")] | None = None


class SyncJsonPayroll(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    salary: Annotated[Encrypted[int], BlindIndex()]
    rate: Encrypted[float] | None = None
    bonus: Encrypted[Decimal] | None = None
    active: Encrypted[bool] | None = None
    born: Encrypted[datetime.date] | None = None
    seen_at: Encrypted[datetime.datetime] | None = None
    token: EncryptedBytes | None = None
    extra: Encrypted[dict[str, Any]] | None = None
    tags: Encrypted[list[str]] | None = None
    profile: Encrypted[Profile] | None = None
    pin: Annotated[Encrypted[int], Mask("****")] | None = None


class AsyncHashPayroll(EncryptedModel, aredis_om.HashModel, index=True):
    name: str = aredis_om.Field(index=True)
    salary: Annotated[Encrypted[int], BlindIndex()]
    rate: Encrypted[float] | None = None
    bonus: Encrypted[Decimal] | None = None
    active: Encrypted[bool] | None = None
    born: Encrypted[datetime.date] | None = None
    seen_at: Encrypted[datetime.datetime] | None = None
    token: EncryptedBytes | None = None
    extra: Encrypted[dict[str, Any]] | None = None
    tags: Encrypted[list[str]] | None = None
    profile: Encrypted[Profile] | None = None
    pin: Annotated[Encrypted[int], Mask("****")] | None = None


class AsyncJsonPayroll(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    salary: Annotated[Encrypted[int], BlindIndex()]
    rate: Encrypted[float] | None = None
    bonus: Encrypted[Decimal] | None = None
    active: Encrypted[bool] | None = None
    born: Encrypted[datetime.date] | None = None
    seen_at: Encrypted[datetime.datetime] | None = None
    token: EncryptedBytes | None = None
    extra: Encrypted[dict[str, Any]] | None = None
    tags: Encrypted[list[str]] | None = None
    profile: Encrypted[Profile] | None = None
    pin: Annotated[Encrypted[int], Mask("****")] | None = None


PAYROLL_MODELS = [SyncHashPayroll, SyncJsonPayroll, AsyncHashPayroll, AsyncJsonPayroll]


class SyncBadge(redis_om.EmbeddedJsonModel):
    label: str
    code: Encrypted[int]


class SyncTeam(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    codes: list[Encrypted[int]] = []
    badge: SyncBadge | None = None
    badges: list[SyncBadge] = []


class AsyncBadge(aredis_om.EmbeddedJsonModel):
    label: str
    code: Encrypted[int]


class AsyncTeam(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    codes: list[Encrypted[int]] = []
    badge: AsyncBadge | None = None
    badges: list[AsyncBadge] = []


TEAM_MODELS = [SyncTeam, AsyncTeam]
