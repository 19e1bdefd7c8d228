"""Master keys from an AWS Secrets Manager secret (``REDIS_SRE_MASTER_KEY_SECRET``), through
moto_server on loopback (``AWS_ENDPOINT_URL_SECRETS_MANAGER``)."""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections import Counter

import pytest
from provider_conformance import closed_port

from devtools.kms_server import AWS_TEST_ENV, KmsServer
from redis_encrypted_fields import (
    DecryptionError,
    KeyRing,
    KmsError,
    MasterKey,
    MasterKeyError,
    decrypt_secret,
    encrypt_secret,
    get_keyring,
    set_keyring,
)
from redis_encrypted_fields.keys.secrets_manager import SecretsManagerKeyRing


@pytest.fixture
def secret(kms_server: KmsServer, monkeypatch: pytest.MonkeyPatch) -> tuple[str, MasterKey]:
    """A new secret holding a master key, and the environment of a process that uses it."""
    for name, value in kms_server.env.items():
        monkeypatch.setenv(name, value)
    key = MasterKey.generate()
    name = f"redis-sre/{uuid.uuid4().hex[:10]}"
    kms_server.client("secretsmanager").create_secret(Name=name, SecretString=key.to_base64())
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY_SECRET", name)
    monkeypatch.delenv("REDIS_SRE_MASTER_KEY")
    monkeypatch.delenv("REDIS_SRE_KEY_CACHE_TTL", raising=False)
    set_keyring(None)
    return name, key


def rotate(kms_server: KmsServer, name: str) -> MasterKey:
    """A new AWSCURRENT version (the old one becomes AWSPREVIOUS)."""
    key = MasterKey.generate()
    kms_server.client("secretsmanager").put_secret_value(
        SecretId=name, SecretString=key.to_base64()
    )
    return key


def test_the_secret_is_the_master_key(secret: tuple[str, MasterKey]) -> None:
    _, key = secret
    ring = get_keyring()
    assert isinstance(ring, SecretsManagerKeyRing)
    assert ring.current == key
    assert decrypt_secret(encrypt_secret("hello")) == "hello"


def test_a_rotation_reaches_the_process_within_the_ttl_and_previous_decrypts(
    secret: tuple[str, MasterKey], kms_server: KmsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, old = secret
    monkeypatch.setenv("REDIS_SRE_KEY_CACHE_TTL", "1")
    set_keyring(None)
    before = encrypt_secret("before")
    new = rotate(kms_server, name)
    assert get_keyring().current == old  # cached for the TTL
    time.sleep(1.1)
    assert get_keyring().current == new
    after = encrypt_secret("after")
    assert decrypt_secret(before) == "before"  # AWSPREVIOUS decrypts
    assert decrypt_secret(after) == "after"
    assert get_keyring().previous_ids == (old.key_id_hex,)


def test_one_request_per_version_per_ttl(
    secret: tuple[str, MasterKey], kms_server: KmsServer
) -> None:
    name, _ = secret
    old_value = encrypt_secret("old")
    rotate(kms_server, name)
    ring = SecretsManagerKeyRing(name, ttl=300)
    set_keyring(ring)
    kms_server.reset_requests()
    values = [encrypt_secret(f"v{n}") for n in range(20)]
    assert [decrypt_secret(v) for v in values] == [f"v{n}" for n in range(20)]
    for _ in range(20):
        assert decrypt_secret(old_value) == "old"
    # An unknown key id (a planted value) does not cost a request per read either.
    set_keyring(KeyRing(MasterKey.generate()))
    planted = encrypt_secret("planted")
    set_keyring(ring)
    for _ in range(5):
        with pytest.raises(DecryptionError, match="no configured master key"):
            decrypt_secret(planted)
    assert Counter(kms_server.requests("secretsmanager")) == {"GetSecretValue": 2}


def test_a_missing_secret_is_a_kms_error_naming_service_and_secret(
    secret: tuple[str, MasterKey],
) -> None:
    ring = SecretsManagerKeyRing("redis-sre/does-not-exist")
    with pytest.raises(KmsError) as caught:
        ring.current  # noqa: B018
    assert isinstance(caught.value, MasterKeyError)
    text = str(caught.value)
    assert "AWS Secrets Manager" in text
    assert "redis-sre/does-not-exist" in text
    assert "ResourceNotFoundException" in text


def test_a_secret_that_is_not_a_key_is_refused_without_quoting_it(
    kms_server: KmsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in kms_server.env.items():
        monkeypatch.setenv(name, value)
    name = f"redis-sre/{uuid.uuid4().hex[:10]}"
    kms_server.client("secretsmanager").create_secret(Name=name, SecretString="hunter2-not-a-key")
    with pytest.raises(KmsError, match="not standard base64") as caught:
        SecretsManagerKeyRing(name).current  # noqa: B018
    assert "hunter2" not in str(caught.value)


def test_an_unreachable_service_is_a_kms_error_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{closed_port()}")
    ring = SecretsManagerKeyRing("app", connect_timeout=1, read_timeout=1, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(KmsError, match="AWS Secrets Manager GetSecretValue of app"):
        ring.current  # noqa: B018
    assert time.monotonic() - started < 30


def test_the_secret_never_reaches_a_log_or_repr(
    secret: tuple[str, MasterKey], caplog: pytest.LogCaptureFixture
) -> None:
    name, key = secret
    caplog.set_level(logging.DEBUG)
    ring = SecretsManagerKeyRing(name)
    assert ring.current == key
    assert key.to_base64() not in caplog.text
    assert key.to_base64() not in repr(ring)


def test_kms_key_id_and_secret_together_are_refused(
    secret: tuple[str, MasterKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_SRE_KMS_KEY_ID", "alias/app")
    set_keyring(None)
    with pytest.raises(MasterKeyError, match="set one"):
        get_keyring()


def test_a_forked_child_can_use_a_ring_whose_lock_its_parent_held(
    secret: tuple[str, MasterKey],
) -> None:
    name, key = secret
    ring = SecretsManagerKeyRing(name)
    lock = ring._locks["AWSCURRENT"]  # what a parent thread fetching the secret holds
    lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child: a hang is killed by the alarm, and fails the test
            code = 1
            try:
                signal.alarm(20)
                if ring.current == key:
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        lock.release()
    assert os.waitstatus_to_exitcode(status) == 0
