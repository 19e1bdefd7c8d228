"""Models with a KeyScope (per-tenant keys), in the four flavours (sync/async, hash/JSON)."""

from __future__ import annotations

import os
from typing import Annotated

import aredis_om
import redis_om
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

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


CLUSTER_URL = os.environ["REDIS_OM_CLUSTER_URL"]


class ClusterLedger(EncryptedModel, redis_om.HashModel, index=True):
    """On the suite's Redis Cluster: records and scope keys spread over the primaries."""

    tenant_id: Annotated[str, KeyScope("tenant")]
    password: EncryptedStr | None = None

    class Meta:
        model_key_prefix = "scope.cluster-ledger"
        database = RedisCluster.from_url(CLUSTER_URL, decode_responses=True)


class AsyncClusterLedger(EncryptedModel, aredis_om.JsonModel, index=True):
    tenant_id: Annotated[str, KeyScope("tenant")]
    password: EncryptedStr | None = None

    class Meta:
        model_key_prefix = "scope.cluster-ledger-async"
        database = AsyncRedisCluster.from_url(CLUSTER_URL, decode_responses=True)
