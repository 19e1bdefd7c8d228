"""Models with a KeyScope (per-tenant keys), in the four flavours (sync/async, hash/JSON)."""

from __future__ import annotations

from typing import Annotated

import aredis_om
import redis_om

from redis_encrypted_fields import BlindIndex, Encrypted, EncryptedModel, EncryptedStr, KeyScope


class SyncHashVault(EncryptedModel, redis_om.HashModel, index=True):
    tenant_id: Annotated[str, KeyScope("tenant")] = redis_om.Field(index=True)
    name: str = redis_om.Field(index=True)
    password: EncryptedStr
    pin: Encrypted[int] | None = None
    email: Annotated[EncryptedStr, BlindIndex()] | None = None

    class Meta:
        model_key_prefix = "scope.sync-hash"


class SyncJsonVault(EncryptedModel, redis_om.JsonModel, index=True):
    tenant_id: Annotated[str, KeyScope("tenant")] = redis_om.Field(index=True)
    name: str = redis_om.Field(index=True)
    password: EncryptedStr
    pin: Encrypted[int] | None = None
    email: Annotated[EncryptedStr, BlindIndex()] | None = None

    class Meta:
        model_key_prefix = "scope.sync-json"


class AsyncHashVault(EncryptedModel, aredis_om.HashModel, index=True):
    tenant_id: Annotated[str, KeyScope("tenant")] = aredis_om.Field(index=True)
    name: str = aredis_om.Field(index=True)
    password: EncryptedStr
    pin: Encrypted[int] | None = None
    email: Annotated[EncryptedStr, BlindIndex()] | None = None

    class Meta:
        model_key_prefix = "scope.async-hash"


class AsyncJsonVault(EncryptedModel, aredis_om.JsonModel, index=True):
    tenant_id: Annotated[str, KeyScope("tenant")] = aredis_om.Field(index=True)
    name: str = aredis_om.Field(index=True)
    password: EncryptedStr
    pin: Encrypted[int] | None = None
    email: Annotated[EncryptedStr, BlindIndex()] | None = None

    class Meta:
        model_key_prefix = "scope.async-json"


class SyncHashNote(EncryptedModel, redis_om.HashModel, index=True):
    """Another model of the same namespace: it shares the tenants' keys."""

    tenant_id: Annotated[str, KeyScope("tenant")]
    body: EncryptedStr

    class Meta:
        model_key_prefix = "scope.note"


VAULT_MODELS = [SyncHashVault, SyncJsonVault, AsyncHashVault, AsyncJsonVault]


# Models the maintenance tests run over (each test wipes them first: a run counts every record).
class SyncHashLedger(EncryptedModel, redis_om.HashModel, index=True):
    tenant_id: Annotated[str, KeyScope("tenant")] = redis_om.Field(index=True)
    password: EncryptedStr | None = None
    email: Annotated[EncryptedStr, BlindIndex()] | None = None

    class Meta:
        model_key_prefix = "scope.ledger-sync-hash"


class SyncJsonLedger(EncryptedModel, redis_om.JsonModel, index=True):
    tenant_id: Annotated[str, KeyScope("tenant")] = redis_om.Field(index=True)
    password: EncryptedStr | None = None
    email: Annotated[EncryptedStr, BlindIndex()] | None = None

    class Meta:
        model_key_prefix = "scope.ledger-sync-json"


class AsyncHashLedger(EncryptedModel, aredis_om.HashModel, index=True):
    tenant_id: Annotated[str, KeyScope("tenant")] = aredis_om.Field(index=True)
    password: EncryptedStr | None = None
    email: Annotated[EncryptedStr, BlindIndex()] | None = None

    class Meta:
        model_key_prefix = "scope.ledger-async-hash"


class AsyncJsonLedger(EncryptedModel, aredis_om.JsonModel, index=True):
    tenant_id: Annotated[str, KeyScope("tenant")] = aredis_om.Field(index=True)
    password: EncryptedStr | None = None
    email: Annotated[EncryptedStr, BlindIndex()] | None = None

    class Meta:
        model_key_prefix = "scope.ledger-async-json"


LEDGER_MODELS = [SyncHashLedger, SyncJsonLedger, AsyncHashLedger, AsyncJsonLedger]
