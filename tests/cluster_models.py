"""Models whose database is the test suite's Redis Cluster; importable by the CLI as
``cluster_models`` (cwd = tests/). ``REDIS_OM_CLUSTER_URL`` names the cluster (conftest)."""

from __future__ import annotations

import os

import aredis_om
import redis_om
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from redis_encrypted_fields import EncryptedModel, EncryptedStr

URL = os.environ["REDIS_OM_CLUSTER_URL"]


class ClusterAccount(EncryptedModel, redis_om.HashModel, index=True):
    name: str
    password: EncryptedStr
    api_token: EncryptedStr | None = None

    class Meta:
        model_key_prefix = "cluster.account"
        database = RedisCluster.from_url(URL, decode_responses=True)


class ClusterCredential(redis_om.EmbeddedJsonModel):
    user: str
    password: EncryptedStr


class ClusterTenant(EncryptedModel, redis_om.JsonModel, index=True):
    name: str
    admin: ClusterCredential
    replicas: list[ClusterCredential] = []

    class Meta:
        model_key_prefix = "cluster.tenant"
        database = RedisCluster.from_url(URL, decode_responses=True)


class AsyncClusterAccount(EncryptedModel, aredis_om.HashModel, index=True):
    name: str
    password: EncryptedStr
    api_token: EncryptedStr | None = None

    class Meta:
        model_key_prefix = "cluster.async-account"
        database = AsyncRedisCluster.from_url(URL, decode_responses=True)


class AsyncClusterCredential(aredis_om.EmbeddedJsonModel):
    user: str
    password: EncryptedStr


class AsyncClusterTenant(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str
    admin: AsyncClusterCredential
    replicas: list[AsyncClusterCredential] = []

    class Meta:
        model_key_prefix = "cluster.async-tenant"
        database = AsyncRedisCluster.from_url(URL, decode_responses=True)


SYNC_MODELS = [ClusterAccount, ClusterTenant]
ASYNC_MODELS = [AsyncClusterAccount, AsyncClusterTenant]
MODELS = SYNC_MODELS + ASYNC_MODELS


def _not_migrated(*models: type) -> None:
    """Take ``models`` out of redis-om's migrator registry: ``Migrator().run()`` creates an index
    for every model it knows through the model's database, and fails on a cluster client
    (redis-om reads ``connection_pool``, which ``RedisCluster`` has not). Models on an
    open-source cluster are not searched anyway (README, Redis Cluster)."""
    import aredis_om.model.model
    import redis_om.model.model

    for model in models:
        key = f"{model.__module__}.{model.__qualname__}"
        redis_om.model.model.model_registry.pop(key, None)
        aredis_om.model.model.model_registry.pop(key, None)


_not_migrated(*MODELS)
