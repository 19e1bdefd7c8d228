"""Models for the operations tests; importable by the CLI as ``ops_models`` (cwd = tests/)."""

from __future__ import annotations

import aredis_om
import redis_om

from redis_encrypted_fields import EncryptedModel, EncryptedStr


class Account(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    password: EncryptedStr
    api_token: EncryptedStr | None = None

    class Meta:
        model_key_prefix = "ops.account"


class Credential(redis_om.EmbeddedJsonModel):
    user: str
    password: EncryptedStr


class Tenant(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    admin: Credential
    replicas: list[Credential] = []

    class Meta:
        model_key_prefix = "ops.tenant"


class AsyncAccount(EncryptedModel, aredis_om.HashModel, index=True):
    name: str = aredis_om.Field(index=True)
    password: EncryptedStr
    api_token: EncryptedStr | None = None

    class Meta:
        model_key_prefix = "ops.async-account"


class Unbound(redis_om.HashModel, index=True):
    """EncryptedStr without EncryptedModel: values carry no record binding."""

    name: str
    secret: EncryptedStr

    class Meta:
        model_key_prefix = "ops.unbound"


class Bulk(EncryptedModel, redis_om.HashModel, index=True):
    """For the large runs (tens of thousands of records)."""

    name: str
    password: EncryptedStr

    class Meta:
        model_key_prefix = "ops.bulk"
