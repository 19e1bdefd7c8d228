"""Models for the key store tests; importable by the CLI as ``keystore_models`` (cwd = tests/)."""

from __future__ import annotations

from typing import Annotated

import aredis_om
import redis_om

from redis_encrypted_fields import BlindIndex, EncryptedModel, EncryptedStr


class Vault(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    secret: EncryptedStr

    class Meta:
        model_key_prefix = "ks.vault"


class AsyncVault(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    secret: EncryptedStr

    class Meta:
        model_key_prefix = "ks.async-vault"


class Member(EncryptedModel, redis_om.HashModel, index=True):
    """Searchable by an encrypted field (blind index), under keys from the store."""

    email: Annotated[EncryptedStr, BlindIndex(normalize="casefold")]

    class Meta:
        model_key_prefix = "ks.member"
