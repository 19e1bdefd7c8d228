"""Google Cloud KMS (``GcpKms``) through the official client, google-cloud-kms with
``transport="rest"``, against a loopback stand-in of the Cloud KMS REST API v1
(devtools/gcp_kms_standin.py), started once per session. Not the real service: see
docs/keys-gcp-azure.md."""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import google.cloud
import pytest
import requests
from cloud_support import (
    check_failing_kms_writes_nothing,
    check_forked_child_makes_its_own_client,
    check_no_key_material_in_debug_logs,
    check_one_unwrap_per_key_per_ttl,
    key_store,
)
from google.auth.credentials import Credentials
from provider_conformance import CONTEXT, ProviderConformance, closed_port

from devtools.gcp_kms_standin import GcpKmsStandIn
from redis_encrypted_fields import GcpKms, KmsError
from redis_encrypted_fields.keys.kms import canonical_context

# The suite's fixture, seen by pytest only where a test module names it.


class StaticToken(Credentials):  # type: ignore[misc]
    """Credentials holding one access token (refreshing keeps it: a wrong one stays wrong)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def refresh(self, request: Any) -> None:
        pass


@pytest.fixture(scope="session")
def gcp_kms() -> Iterator[GcpKmsStandIn]:
    with GcpKmsStandIn() as standin:
        yield standin


@pytest.fixture
def gcp_key(gcp_kms: GcpKmsStandIn) -> str:
    """A new CryptoKey's resource name."""
    return gcp_kms.create_key("tests", f"key-{uuid.uuid4().hex[:12]}")


def gcp(standin: GcpKmsStandIn, name: str, *, token: str | None = None, **options: Any) -> GcpKms:
    return GcpKms(
        f"gcpkms://{name}",
        credentials=StaticToken(token or standin.token),
        api_endpoint=standin.url,
        **options,
    )


class TestGcpKmsConformance(ProviderConformance):
    provider_name = "GCP KMS"

    @pytest.fixture
    def provider(self, gcp_kms: GcpKmsStandIn, gcp_key: str) -> GcpKms:
        return gcp(gcp_kms, gcp_key)

    @pytest.fixture
    def other_provider(self, gcp_kms: GcpKmsStandIn) -> GcpKms:
        return gcp(gcp_kms, gcp_kms.create_key("tests", f"other-{uuid.uuid4().hex[:12]}"))

    @pytest.fixture
    def missing_key_provider(self, gcp_kms: GcpKmsStandIn) -> GcpKms:
        name = f"projects/standin/locations/global/keyRings/tests/cryptoKeys/{uuid.uuid4().hex}"
        return gcp(gcp_kms, name)

    @pytest.fixture
    def unreachable_provider(self, gcp_key: str) -> GcpKms:
        return GcpKms(
            gcp_key,
            credentials=StaticToken("t"),
            api_endpoint=f"http://127.0.0.1:{closed_port()}",
        )

    @pytest.fixture
    def silent_provider(self, gcp_key: str, silent_endpoint: tuple[str, int]) -> GcpKms:
        host, port = silent_endpoint
        return GcpKms(
            gcp_key,
            credentials=StaticToken("t"),
            api_endpoint=f"http://{host}:{port}",
            timeout=0.5,
        )


def test_requests_carry_the_token_and_the_context_as_aad(
    gcp_kms: GcpKmsStandIn, gcp_key: str
) -> None:
    provider = gcp(gcp_kms, gcp_key)
    gcp_kms.reset_requests()
    secret = bytes(range(32))
    wrapped = provider.wrap(secret, {"b": "2", "a": "1"})
    assert provider.unwrap(wrapped, {"a": "1", "b": "2"}) == secret  # order does not matter
    encrypt, decrypt = gcp_kms.requests()
    aad = base64.b64encode(b'{"a":"1","b":"2"}').decode()
    assert encrypt.path == f"/v1/{gcp_key}:encrypt"
    assert encrypt.headers["authorization"] == f"Bearer {gcp_kms.token}"
    assert encrypt.json["additionalAuthenticatedData"] == aad
    assert base64.b64decode(encrypt.json["plaintext"]) == secret
    assert decrypt.path == f"/v1/{gcp_key}:decrypt"
    assert decrypt.json["additionalAuthenticatedData"] == aad
    assert base64.b64decode(decrypt.json["ciphertext"]) == wrapped.blob


def test_canonical_context_is_one_byte_string_per_mapping() -> None:
    assert canonical_context({"b": "2", "a": "1"}) == canonical_context({"a": "1", "b": "2"})
    assert canonical_context({"a": "1", "b": "2"}) == b'{"a":"1","b":"2"}'
    # What a delimiter-joined encoding would confuse: names and values that hold the delimiters.
    assert canonical_context({"a": "1,b=2"}) != canonical_context({"a": "1", "b": "2"})
    assert json.loads(canonical_context({"k\u00e9y": 'v"'})) == {"k\u00e9y": 'v"'}
    with pytest.raises(TypeError):
        canonical_context({"a": 1})  # type: ignore[dict-item]


def test_a_wrapped_key_names_the_version_that_wrapped_it_and_survives_rotation(
    gcp_kms: GcpKmsStandIn, gcp_key: str
) -> None:
    provider = gcp(gcp_kms, gcp_key)
    old = provider.wrap(bytes(32), CONTEXT)
    assert old.kms_key_id == f"gcpkms://{gcp_key}/cryptoKeyVersions/1"
    gcp_kms.rotate(gcp_key)
    new = provider.wrap(bytes(32), CONTEXT)
    assert new.kms_key_id == f"gcpkms://{gcp_key}/cryptoKeyVersions/2"
    assert provider.unwrap(old, CONTEXT) == provider.unwrap(new, CONTEXT) == bytes(32)
    # The version a record names is accepted as the key (decrypt finds the version itself).
    assert GcpKms.from_uri(old.kms_key_id).kms_key_id == f"gcpkms://{gcp_key}"


@pytest.mark.parametrize("state", ["DISABLED", "DESTROYED"])
def test_a_disabled_or_destroyed_version_is_a_kms_error_with_the_service_message(
    gcp_kms: GcpKmsStandIn, gcp_key: str, state: str
) -> None:
    provider = gcp(gcp_kms, gcp_key)
    wrapped = provider.wrap(bytes(32), CONTEXT)
    gcp_kms.set_state(gcp_key, state)
    for call in (
        lambda: provider.wrap(bytes(32), CONTEXT),
        lambda: provider.unwrap(wrapped, CONTEXT),
    ):
        with pytest.raises(KmsError) as caught:
            call()
        assert f"has value {state} in field crypto_key_version.state" in str(caught.value)
        assert provider.kms_key_id in str(caught.value)


def test_a_wrong_token_is_a_kms_error_with_the_service_message(
    gcp_kms: GcpKmsStandIn, gcp_key: str
) -> None:
    started = time.monotonic()
    with pytest.raises(KmsError) as caught:
        gcp(gcp_kms, gcp_key, token="not-a-token").wrap(bytes(32), CONTEXT)
    assert time.monotonic() - started < 10
    assert "GCP KMS Encrypt" in str(caught.value)
    assert "invalid authentication credentials" in str(caught.value)


def test_a_key_store_asks_gcp_once_per_key_per_cache_lifetime(
    gcp_kms: GcpKmsStandIn, gcp_key: str, redis_url: str
) -> None:
    with key_store(redis_url, gcp(gcp_kms, gcp_key)) as store:
        check_one_unwrap_per_key_per_ttl(store, lambda: len(gcp_kms.requests("decrypt")))


def test_a_disabled_key_fails_the_save_and_writes_nothing(
    gcp_kms: GcpKmsStandIn, gcp_key: str, redis_url: str
) -> None:
    with key_store(redis_url, gcp(gcp_kms, gcp_key)) as store:
        error = check_failing_kms_writes_nothing(store, lambda: gcp_kms.disable(gcp_key))
    assert "GCP KMS Decrypt" in str(error)
    assert "DISABLED" in str(error)


def test_a_forked_child_makes_its_own_client(
    gcp_kms: GcpKmsStandIn, gcp_key: str, redis_url: str
) -> None:
    provider = gcp(gcp_kms, gcp_key)
    with key_store(redis_url, provider) as store:
        check_forked_child_makes_its_own_client(provider, store)


def test_sdk_debug_logs_hold_no_key_material(
    gcp_kms: GcpKmsStandIn, gcp_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider = gcp(gcp_kms, gcp_key)
    check_no_key_material_in_debug_logs(caplog, ("google", "urllib3"), provider)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "projects/p/locations/l/keyRings/r",
        "gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/",
        "projects/p/locations/l/keyRings/r/cryptoKeys/k/extra/path",
        "azurekv://v.vault.azure.net/keys/k",
    ],
)
def test_a_malformed_key_name_is_refused(key: str) -> None:
    with pytest.raises(KmsError, match="GcpKms needs a CryptoKey name"):
        GcpKms(key)


def test_from_uri_takes_the_gcpkms_scheme_only() -> None:
    name = "projects/p/locations/l/keyRings/r/cryptoKeys/k"
    provider = GcpKms.from_uri(f"gcpkms://{name}")
    assert provider.kms_key_id == f"gcpkms://{name}"
    assert provider.key_name == name
    assert repr(provider) == f"GcpKms('gcpkms://{name}')"
    with pytest.raises(KmsError, match="not a GCP KMS key URI"):
        GcpKms.from_uri(name)


def test_without_the_sdk_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, gcp_key: str
) -> None:
    monkeypatch.setitem(sys.modules, "google.cloud.kms", None)
    monkeypatch.delattr(google.cloud, "kms", raising=False)
    with pytest.raises(KmsError, match=r"redis-encrypted-fields\[gcp\]"):
        GcpKms(gcp_key).wrap(bytes(32), CONTEXT)


GOOD = object()  # the stand-in's own token


@pytest.mark.parametrize(
    ("token", "content_type", "body", "status"),
    [
        (GOOD, "application/json", {"plaintext": "AAAA"}, 200),  # the well-formed request
        (None, "application/json", {"plaintext": "AAAA"}, 401),
        ("wrong", "application/json", {"plaintext": "AAAA"}, 401),
        (GOOD, "text/plain", {"plaintext": "AAAA"}, 400),
        (GOOD, "application/json", {"plaintext": "not base64!"}, 400),
        (GOOD, "application/json", {"additionalAuthenticatedData": "AAAA"}, 400),
    ],
)
def test_the_standin_refuses_what_the_service_refuses(
    gcp_kms: GcpKmsStandIn, gcp_key: str, token: Any, content_type: str, body: Any, status: int
) -> None:
    """The stand-in is worth testing against only if it refuses malformed requests."""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {gcp_kms.token if token is GOOD else token}"
    answer = requests.post(
        f"{gcp_kms.url}/v1/{gcp_key}:encrypt", data=json.dumps(body), headers=headers, timeout=5
    )
    assert answer.status_code == status
    assert (
        answer.json()["error"]["code"] == status if status != 200 else answer.json()["ciphertext"]
    )
