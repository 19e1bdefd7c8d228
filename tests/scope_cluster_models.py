"""Models with a KeyScope on the suite's Redis Cluster (``REDIS_OM_CLUSTER_URL``, conftest)."""

from __future__ import annotations

import os
from typing import Annotated

import aredis_om
import redis_om
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from redis_encrypted_fields import EncryptedModel, EncryptedStr, KeyScope

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


def _not_migrated(*models: type) -> None:
    """Out of redis-om's migrator registry, as ``cluster_models`` does: ``Migrator().run()``
    fails on a cluster client."""
    import aredis_om.model.model
    import redis_om.model.model

    for model in models:
        key = f"{model.__module__}.{model.__qualname__}"
        redis_om.model.model.model_registry.pop(key, None)
        aredis_om.model.model.model_registry.pop(key, None)


_not_migrated(ClusterLedger, AsyncClusterLedger)
