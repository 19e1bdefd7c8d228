"""One key store, keys of several KMSes: moving from AWS KMS to Vault transit is ``keys
create``, ``rotate``, ``keys retire``, and the old keys still unwrap through AWS meanwhile."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from devtools.kms_server import KmsServer
from devtools.vault_server import VaultServer
from redis_encrypted_fields import (
    AwsKms,
    KmsError,
    StoreKeyRing,
    VaultTransit,
    decrypt_secret,
    encrypt_secret,
    set_keyring,
)
from redis_encrypted_fields.keys.providers import provider_for
from redis_encrypted_fields.keys.store import STORE_KEY, KeyStore


@pytest.fixture
def both(
    kms_server: KmsServer,
    vault_server: VaultServer,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, str]]:
    """An AWS KMS alias and a Vault transit key URI, the environment reaching both, and an
    empty key store; yields (alias, vault URI)."""
    url = urlunsplit(urlsplit(redis_url)._replace(path="/1"))
    client = redis.Redis.from_url(url)
    client.delete(STORE_KEY)
    for name, value in {**kms_server.env, **vault_server.env}.items():
        monkeypatch.setenv(name, value)
    alias = f"alias/move-{uuid.uuid4().hex[:10]}"
    kms_server.create_key(alias)
    key = f"move-{uuid.uuid4().hex[:10]}"
    vault_server.create_transit_key(key)
    monkeypatch.setenv("REDIS_SRE_KEYSTORE_URL", url)
    monkeypatch.setenv("REDIS_SRE_KMS_KEY_ID", alias)
    monkeypatch.delenv("REDIS_SRE_MASTER_KEY")
    monkeypatch.delenv("REDIS_SRE_PREVIOUS_KMS_KEY_IDS", raising=False)
    set_keyring(None)
    yield alias, f"vault://transit/{key}"
    set_keyring(None)
    client.delete(STORE_KEY)
    client.close()


def test_provider_for_reads_each_form() -> None:
    env = {"VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_TOKEN": "t"}
    assert isinstance(provider_for("alias/app"), AwsKms)
    assert isinstance(provider_for("arn:aws:kms:us-east-1:111122223333:key/abc"), AwsKms)
    vault = provider_for("vault://transit/app", env)
    assert isinstance(vault, VaultTransit)
    assert vault.kms_key_id == "vault://transit/app"
    assert provider_for("vault://kv/team/transit/app", env).kms_key_id == (
        "vault://kv/team/transit/app"
    )
    with pytest.raises(KmsError, match="vault://<mount>/<key>"):
        provider_for("vault://app", env)
    with pytest.raises(KmsError, match="is not a KMS key"):
        provider_for("https://example.com/key")


def test_a_key_store_moves_from_aws_to_vault(
    both: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    alias, vault_uri = both
    old = KeyStore.from_env().create()
    assert old.provider == "aws"
    old_value = encrypt_secret("under AWS")

    monkeypatch.setenv("REDIS_SRE_KMS_KEY_ID", vault_uri)
    set_keyring(None)
    new = KeyStore.from_env().create()
    assert (new.provider, new.kms_key_id) == ("vault", vault_uri)
    # The old key is AWS's: without AWS configured, a clear error naming what to set.
    set_keyring(StoreKeyRing(KeyStore.from_env()))
    with pytest.raises(KmsError, match="REDIS_SRE_PREVIOUS_KMS_KEY_IDS"):
        decrypt_secret(old_value)

    monkeypatch.setenv("REDIS_SRE_PREVIOUS_KMS_KEY_IDS", alias)
    set_keyring(None)
    assert decrypt_secret(old_value) == "under AWS"
    new_value = encrypt_secret("under Vault")
    assert decrypt_secret(new_value) == "under Vault"
    ring = StoreKeyRing(KeyStore.from_env())
    assert ring.current.key_id_hex == new.key_id


def test_records_without_a_provider_are_aws(both: tuple[str, str], redis_url: str) -> None:
    """Key store records written before there were other providers read as AWS KMS's."""
    record = KeyStore.from_env().create()
    store = KeyStore.from_env()
    doc = json.loads(store.client.hget(STORE_KEY, record.key_id))
    del doc["provider"]
    store.client.hset(STORE_KEY, record.key_id, json.dumps(doc))
    old = store.records()[0]
    assert old.provider == "aws"
    assert store.unwrap(old).key_id_hex == record.key_id
