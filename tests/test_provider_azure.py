"""Azure Key Vault (``AzureKeyVault``) through the official SDK, azure-keyvault-keys'
``CryptographyClient``, against a loopback stand-in of the Key Vault keys REST API over TLS
(devtools/azure_kv_standin.py), started once per session. Not the real service: see
docs/keys-gcp-azure.md."""

from __future__ import annotations

import base64
import struct
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import azure.keyvault.keys
import pytest
import requests
from cloud_support import (
    check_failing_kms_writes_nothing,
    check_forked_child_makes_its_own_client,
    check_no_key_material_in_debug_logs,
    check_one_unwrap_per_key_per_ttl,
    key_store,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from provider_conformance import CONTEXT, ProviderConformance, closed_port

from devtools.azure_kv_standin import API_VERSIONS, AzureKeyVaultStandIn, StaticTokenCredential
from redis_encrypted_fields import AzureKeyVault, KmsError
from redis_encrypted_fields.keys.kms import WrappedKey, canonical_context

# The suite's fixture, seen by pytest only where a test module names it.


@pytest.fixture(scope="session")
def vault() -> Iterator[AzureKeyVaultStandIn]:
    with AzureKeyVaultStandIn() as standin:
        yield standin


@pytest.fixture
def key_name(vault: AzureKeyVaultStandIn) -> str:
    name = f"key-{uuid.uuid4().hex[:12]}"
    vault.create_key(name)
    return name


def akv(
    vault: AzureKeyVaultStandIn, name: str, *, version: str | None = None, **options: Any
) -> AzureKeyVault:
    options.setdefault("credential", vault.credential)
    return AzureKeyVault(
        vault.key_url(name, version), client_options=vault.client_options, **options
    )


class TestAzureKeyVaultConformance(ProviderConformance):
    provider_name = "Azure Key Vault"

    @pytest.fixture
    def provider(self, vault: AzureKeyVaultStandIn, key_name: str) -> AzureKeyVault:
        return akv(vault, key_name)

    @pytest.fixture
    def other_provider(self, vault: AzureKeyVaultStandIn) -> AzureKeyVault:
        name = f"other-{uuid.uuid4().hex[:12]}"
        vault.create_key(name)
        return akv(vault, name)

    @pytest.fixture
    def missing_key_provider(self, vault: AzureKeyVaultStandIn) -> AzureKeyVault:
        return akv(vault, f"missing-{uuid.uuid4().hex[:12]}")

    @pytest.fixture
    def unreachable_provider(self, vault: AzureKeyVaultStandIn) -> AzureKeyVault:
        return AzureKeyVault(
            f"https://127.0.0.1:{closed_port()}/keys/nowhere",
            credential=vault.credential,
            client_options=vault.client_options,
        )

    @pytest.fixture
    def silent_provider(
        self, vault: AzureKeyVaultStandIn, silent_endpoint: tuple[str, int]
    ) -> AzureKeyVault:
        host, port = silent_endpoint
        return AzureKeyVault(
            f"azurekv://{host}:{port}/keys/silent",
            credential=vault.credential,
            client_options=vault.client_options,
            connect_timeout=0.5,
            read_timeout=0.5,
        )


def test_requests_carry_the_token_api_version_rsa_oaep_256_and_base64url(
    vault: AzureKeyVaultStandIn, key_name: str
) -> None:
    """Without keys/read the SDK cannot work locally: every operation goes to the vault, and
    each request is what Key Vault requires."""
    version = vault.create_key(key_name).rsplit("/", 1)[1]
    vault.forbid_get(key_name)
    provider = akv(vault, key_name, version=version)
    vault.reset_requests()
    secret = bytes(range(32))
    wrapped = provider.wrap(secret, CONTEXT)
    assert provider.unwrap(wrapped, CONTEXT) == secret
    served = [r for r in vault.requests() if r.status == 200]
    assert [r.operation for r in served] == ["wrapkey", "sign", "verify", "unwrapkey"]
    for request in served:
        assert request.path.startswith(f"/keys/{key_name}/{version}/")
        assert request.headers["authorization"] == f"Bearer {vault.token}"
        # The SDK's own version (older SDKs send older ones), one the service knows.
        assert request.query["api-version"] == served[0].query["api-version"]
        assert request.query["api-version"][0] in API_VERSIONS
        assert "=" not in request.json["value"]
        assert "+" not in request.json["value"]
    wrap, sign, verify, unwrap = served
    assert wrap.json["alg"] == unwrap.json["alg"] == "RSA-OAEP-256"
    assert sign.json["alg"] == verify.json["alg"] == "PS256"
    plain = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    assert wrap.json["value"] == plain
    assert wrapped.kms_key_id == provider.kms_key_id  # the version was given


def test_the_first_request_elicits_the_bearer_challenge() -> None:
    """The SDK's challenge flow: a request without a token, answered 401 with the challenge,
    then the request with the token (a vault the process has not talked to yet)."""
    with AzureKeyVaultStandIn() as fresh:
        fresh.create_key("challenge")
        akv(fresh, "challenge").wrap(bytes(32), CONTEXT)
        first, second = fresh.requests()[:2]
    assert first.status == 401
    assert "authorization" not in first.headers
    assert second.headers["authorization"] == f"Bearer {fresh.token}"


def test_a_blob_made_with_the_public_key_alone_is_refused_before_any_unwrap(
    vault: AzureKeyVaultStandIn, key_name: str
) -> None:
    """Whoever can write to Redis can read the key's public half (or its blobs): a record they
    plant, wrapped by that public key with a key of their own, must not be unwrapped and used."""
    provider = akv(vault, key_name)
    genuine = provider.wrap(bytes(32), CONTEXT)
    kid = genuine.kms_key_id.replace("azurekv://", "https://")
    public = vault.keys[key_name].versions[kid.rsplit("/", 1)[1]].public_key()
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    theirs = b"attacker's key, 32 bytes long!!!"
    encrypted = public.encrypt(theirs, oaep)
    own = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"redis-encrypted-fields azurekv blob 1\x00")
    for part in (kid.encode(), encrypted, canonical_context(CONTEXT)):
        digest.update(struct.pack(">H", len(part)) + part)
    signature = own.sign(
        digest.finalize(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        utils.Prehashed(hashes.SHA256()),
    )
    planted = b"\x01" + b"".join(
        struct.pack(">H", len(p)) + p for p in (kid.encode(), encrypted, signature)
    )
    vault.reset_requests()
    with pytest.raises(KmsError, match="signature does not match") as caught:
        provider.unwrap(WrappedKey(planted, genuine.kms_key_id), CONTEXT)
    assert provider.kms_key_id in str(caught.value)
    assert vault.requests("unwrapkey") == []


def test_a_blob_naming_another_vault_is_refused_without_a_request(
    vault: AzureKeyVaultStandIn, key_name: str
) -> None:
    provider = akv(vault, key_name)
    genuine = provider.wrap(bytes(32), CONTEXT)
    elsewhere = genuine.blob.replace(b"127.0.0.1", b"127.0.0.2")
    vault.reset_requests()
    with pytest.raises(KmsError, match="wrapped by another key"):
        provider.unwrap(WrappedKey(elsewhere, genuine.kms_key_id), CONTEXT)
    assert vault.requests() == []


def test_a_key_rotated_in_the_vault_still_unwraps_what_its_old_version_wrapped(
    vault: AzureKeyVaultStandIn, key_name: str
) -> None:
    old = akv(vault, key_name).wrap(bytes(32), CONTEXT)
    vault.create_key(key_name)  # a new current version
    provider = akv(vault, key_name)  # a process started after the rotation
    new = provider.wrap(bytes(range(32)), CONTEXT)
    assert old.kms_key_id != new.kms_key_id
    assert new.kms_key_id.startswith(provider.kms_key_id + "/")
    assert provider.unwrap(old, CONTEXT) == bytes(32)
    assert provider.unwrap(new, CONTEXT) == bytes(range(32))


def test_without_keys_read_and_no_version_wrapping_is_refused(
    vault: AzureKeyVaultStandIn, key_name: str
) -> None:
    """The blob could not name the version that wrapped it: once the key is rotated in the
    vault, it would no longer unwrap. Refused at `keys create`, while nothing depends on it."""
    vault.forbid_get(key_name)
    with pytest.raises(KmsError, match=r"key version is unknown.*keys/read"):
        akv(vault, key_name).wrap(bytes(32), CONTEXT)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("disable", "Operation unwrapKey is not allowed on a disabled key"),
        ("delete", "KeyNotFound"),
    ],
)
def test_a_disabled_or_deleted_key_is_a_kms_error_with_the_service_message(
    vault: AzureKeyVaultStandIn, key_name: str, change: str, message: str
) -> None:
    provider = akv(vault, key_name)
    wrapped = provider.wrap(bytes(32), CONTEXT)
    getattr(vault, change)(key_name)
    with pytest.raises(KmsError) as caught:
        provider.unwrap(wrapped, CONTEXT)
    assert "Azure Key Vault UnwrapKey" in str(caught.value)
    assert message in str(caught.value)
    assert provider.kms_key_id in str(caught.value)


def test_a_wrong_token_is_a_kms_error_with_the_service_message(
    vault: AzureKeyVaultStandIn, key_name: str
) -> None:
    started = time.monotonic()
    with pytest.raises(KmsError) as caught:
        akv(vault, key_name, credential=StaticTokenCredential("nope")).wrap(bytes(32), CONTEXT)
    assert time.monotonic() - started < 10
    assert "ClientAuthenticationError (401)" in str(caught.value)
    assert "AKV10022" in str(caught.value)


def test_no_credential_anywhere_is_a_kms_error(
    vault: AzureKeyVaultStandIn, key_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DefaultAzureCredential (no ``credential=``), limited to the environment's: none set."""
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
    provider = AzureKeyVault(vault.key_url(key_name), client_options=vault.client_options)
    with pytest.raises(KmsError) as caught:
        provider.wrap(bytes(32), CONTEXT)
    assert "Azure Key Vault" in str(caught.value)
    assert "EnvironmentCredential" in str(caught.value)


def test_a_key_store_asks_the_vault_once_per_key_per_cache_lifetime(
    vault: AzureKeyVaultStandIn, key_name: str, redis_url: str
) -> None:
    with key_store(redis_url, akv(vault, key_name)) as store:
        check_one_unwrap_per_key_per_ttl(store, lambda: len(vault.requests("unwrapkey")))


def test_a_disabled_key_fails_the_save_and_writes_nothing(
    vault: AzureKeyVaultStandIn, key_name: str, redis_url: str
) -> None:
    with key_store(redis_url, akv(vault, key_name)) as store:
        error = check_failing_kms_writes_nothing(store, lambda: vault.disable(key_name))
    assert "disabled key" in str(error)


def test_a_forked_child_makes_its_own_client(
    vault: AzureKeyVaultStandIn, key_name: str, redis_url: str
) -> None:
    provider = akv(vault, key_name)
    with key_store(redis_url, provider) as store:
        check_forked_child_makes_its_own_client(provider, store)


def test_sdk_debug_logs_hold_no_key_material(
    vault: AzureKeyVaultStandIn, key_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the SDK's network trace on (``logging_enable``), request and response bodies are
    logged at DEBUG: the unwrap answer is the key."""
    provider = AzureKeyVault(
        vault.key_url(key_name),
        credential=vault.credential,
        client_options={**vault.client_options, "logging_enable": True},
    )
    check_no_key_material_in_debug_logs(caplog, ("azure", "urllib3"), provider)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "https://v.vault.azure.net/secrets/k",
        "http://v.vault.azure.net/keys/k",
        "azurekv://v.vault.azure.net/keys/",
        "https://v.vault.azure.net/keys/k/v1/extra",
        "gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k",
    ],
)
def test_a_malformed_key_url_is_refused(key: str) -> None:
    with pytest.raises(KmsError, match="AzureKeyVault needs a key URL"):
        AzureKeyVault(key)


def test_from_uri_takes_the_azurekv_scheme_only() -> None:
    provider = AzureKeyVault.from_uri("azurekv://My-Vault.vault.azure.net/keys/wrapping")
    assert provider.kms_key_id == "azurekv://my-vault.vault.azure.net/keys/wrapping"
    assert provider.key_url == "https://my-vault.vault.azure.net/keys/wrapping"
    assert repr(provider) == "AzureKeyVault('azurekv://my-vault.vault.azure.net/keys/wrapping')"
    with pytest.raises(KmsError, match="not an Azure Key Vault key URI"):
        AzureKeyVault.from_uri("https://my-vault.vault.azure.net/keys/wrapping")


def test_without_the_sdk_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, vault: AzureKeyVaultStandIn, key_name: str
) -> None:
    monkeypatch.setitem(sys.modules, "azure.keyvault.keys.crypto", None)
    monkeypatch.delattr(azure.keyvault.keys, "crypto", raising=False)
    with pytest.raises(KmsError, match=r"redis-encrypted-fields\[azure\]"):
        AzureKeyVault(vault.key_url(key_name), credential=vault.credential).wrap(bytes(32), CONTEXT)


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({}, 200),  # the well-formed request
        ({"token": None}, 401),
        ({"token": "wrong"}, 401),
        ({"api-version": None}, 400),
        ({"api-version": "1999-01-01"}, 400),
        ({"alg": "RSA-OAEP"}, 400),
        ({"alg": "RSA1_5"}, 400),
        ({"value": base64.urlsafe_b64encode(bytes(32)).decode()}, 400),  # padded
        ({"value": base64.b64encode(b"\xfb" * 32).decode()}, 400),  # not url-safe
    ],
)
def test_the_standin_refuses_what_the_service_refuses(
    vault: AzureKeyVaultStandIn, key_name: str, change: dict[str, Any], status: int
) -> None:
    """The stand-in is worth testing against only if it refuses malformed requests."""
    sent: dict[str, Any] = {
        "token": vault.token,
        "api-version": "7.6",
        "alg": "RSA-OAEP-256",
        "value": base64.urlsafe_b64encode(bytes(32)).decode().rstrip("="),
        **change,
    }
    headers = {"Content-Type": "application/json"}
    if sent["token"] is not None:
        headers["Authorization"] = f"Bearer {sent['token']}"
    params = {} if sent["api-version"] is None else {"api-version": sent["api-version"]}
    answer = requests.post(
        f"{vault.key_url(key_name, vault.keys[key_name].latest)}/wrapkey",
        params=params,
        json={"alg": sent["alg"], "value": sent["value"]},
        headers=headers,
        verify=str(vault.ca_file),
        timeout=5,
    )
    assert answer.status_code == status
    assert answer.json()["value" if status == 200 else "error"]
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer authorization=")
