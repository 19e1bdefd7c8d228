"""The origin project's module API (``redis_encrypted_fields.compat``) as a drop-in, both ways:
the origin's own unit tests for its module, rewritten against ours; its behaviour on empty,
``None``, bytes and non-string input; and the rolling-upgrade mode (``REDIS_SRE_WRITE_FORMAT=v1``),
in which values are written in the origin's format until every process runs this library."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ops_models import Account
from support import client, new_key, origin_decrypt_v1, origin_encrypt_v1, raw, wipe

import redis_encrypted_fields
from redis_encrypted_fields import ConfigurationError, DecryptionError, ops
from redis_encrypted_fields.compat import (
    CURRENT_VERSION,
    EncryptionError,
    decrypt_secret,
    encrypt_secret,
    get_secret_value,
    is_encrypted,
    migrate_plaintext_to_encrypted,
)
from redis_encrypted_fields.crypto import PREFIX, Kind, classify

TESTS = Path(__file__).parent


def use_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SRE_WRITE_FORMAT", "v1")


# The origin's 16 unit tests of its module (tests/unit/core/test_encryption.py), against ours.


def test_origin_encrypt_decrypt_roundtrip() -> None:
    encrypted = encrypt_secret("my-secret-password-123")
    assert decrypt_secret(encrypted) == "my-secret-password-123"
    assert encrypted != "my-secret-password-123"
    assert len(encrypted) > len("my-secret-password-123")


def test_origin_encrypt_different_each_time() -> None:
    one, two = encrypt_secret("my-secret-password"), encrypt_secret("my-secret-password")
    assert one != two
    assert decrypt_secret(one) == decrypt_secret(two) == "my-secret-password"


def test_origin_encrypt_empty_string() -> None:
    assert decrypt_secret(encrypt_secret("")) == ""


def test_origin_encrypt_unicode() -> None:
    text = "🔐 Secret with émojis and spëcial çhars 中文"
    assert decrypt_secret(encrypt_secret(text)) == text


def test_origin_encrypt_long_string() -> None:
    assert decrypt_secret(encrypt_secret("x" * 10000)) == "x" * 10000


def test_origin_decrypt_invalid_data() -> None:
    with pytest.raises(EncryptionError):
        decrypt_secret("invalid-base64-data")


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_origin_decrypt_corrupted_ciphertext(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    monkeypatch.setenv("REDIS_SRE_WRITE_FORMAT", fmt)
    encrypted = encrypt_secret("my-secret")
    with pytest.raises(EncryptionError):
        decrypt_secret(encrypted[:-10] + "XXXXXXXXXX")


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_origin_decrypt_wrong_master_key(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    monkeypatch.setenv("REDIS_SRE_WRITE_FORMAT", fmt)
    encrypted = encrypt_secret("my-secret")
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    with pytest.raises(EncryptionError):
        decrypt_secret(encrypted)


def test_origin_missing_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_SRE_MASTER_KEY")
    with pytest.raises(EncryptionError, match="REDIS_SRE_MASTER_KEY"):
        encrypt_secret("test")


def test_origin_invalid_master_key_length(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(EncryptionError, match="32 bytes"):
        encrypt_secret("test")


def test_origin_is_encrypted() -> None:
    encrypted = encrypt_secret("my-secret")
    assert is_encrypted(encrypted) is True
    assert is_encrypted("my-secret") is False
    assert is_encrypted("") is False
    assert is_encrypted("random-string") is False


def test_origin_migrate_plaintext_to_encrypted() -> None:
    encrypted = migrate_plaintext_to_encrypted("my-secret")
    assert is_encrypted(encrypted) is True
    assert decrypt_secret(encrypted) == "my-secret"


def test_origin_migrate_already_encrypted(caplog: pytest.LogCaptureFixture) -> None:
    for encrypted in (encrypt_secret("my-secret"), origin_encrypt_v1("my-secret", _key())):
        assert migrate_plaintext_to_encrypted(encrypted) == encrypted
    assert "already encrypted" in caplog.text


def test_origin_get_secret_value_encrypted() -> None:
    assert get_secret_value(encrypt_secret("my-secret")) == "my-secret"
    assert get_secret_value(origin_encrypt_v1("my-secret", _key())) == "my-secret"


def test_origin_get_secret_value_plaintext(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="redis_encrypted_fields"):
        assert get_secret_value("my-secret") == "my-secret"
    assert "plaintext" in caplog.text
    assert "my-secret" not in caplog.text


def test_origin_envelope_structure_in_the_rolling_upgrade_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The origin's test of what encrypt_secret writes holds while REDIS_SRE_WRITE_FORMAT=v1;
    otherwise the current format is written (the origin cannot read it)."""
    assert encrypt_secret("my-secret").startswith(PREFIX)
    use_v1(monkeypatch)
    encrypted = encrypt_secret("my-secret")
    envelope = json.loads(base64.b64decode(encrypted).decode("utf-8"))
    assert set(envelope) == {"version", "ciphertext", "nonce", "wrapped_dek", "dek_nonce"}
    assert envelope["version"] == CURRENT_VERSION == "v1"
    for name in ("ciphertext", "nonce", "wrapped_dek", "dek_nonce"):
        assert isinstance(envelope[name], str)
        base64.b64decode(envelope[name], validate=True)
    assert origin_decrypt_v1(encrypted, _key()) == "my-secret"


# Empty, None, bytes and non-string input: as the origin's module answers them.


def test_encryption_error_is_the_librarys_and_every_name_is_exported() -> None:
    assert EncryptionError is redis_encrypted_fields.EncryptionError
    assert issubclass(DecryptionError, EncryptionError)
    assert redis_encrypted_fields.migrate_plaintext_to_encrypted is migrate_plaintext_to_encrypted


def test_get_secret_value_returns_empty_values_as_they_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The origin returns a falsy value unchanged: ``None`` stays ``None``, no exception, and no
    warning (an unset secret is not a plaintext one)."""
    with caplog.at_level(logging.WARNING, logger="redis_encrypted_fields"):
        assert get_secret_value(None) is None
        assert get_secret_value("") == ""
        assert get_secret_value(b"") == b""
    assert caplog.records == []


def test_get_secret_value_reads_bytes_as_the_origin_does(caplog: pytest.LogCaptureFixture) -> None:
    """The origin's base64 decoder takes bytes: an envelope's ASCII bytes are decrypted (to a
    str), other bytes are plaintext returned as they are, with the warning."""
    assert get_secret_value(encrypt_secret("s3cret").encode()) == "s3cret"
    assert get_secret_value(origin_encrypt_v1("s3cret", _key()).encode()) == "s3cret"
    with caplog.at_level(logging.WARNING, logger="redis_encrypted_fields"):
        assert get_secret_value(b"plain") == b"plain"
        assert get_secret_value("caf\u00e9".encode()) == "caf\u00e9".encode()
    assert "plaintext" in caplog.text


def test_get_secret_value_never_hands_back_an_envelope_as_the_secret() -> None:
    broken = encrypt_secret("s3cret")[:-4]
    with pytest.raises(DecryptionError):
        get_secret_value(broken)
    with pytest.raises(DecryptionError):
        get_secret_value(broken.encode())


def test_non_string_input_raises_the_librarys_error() -> None:
    for value in (None, 5, b"x", ["x"]):
        with pytest.raises(EncryptionError, match="Encryption failed") as info:
            encrypt_secret(value)  # type: ignore[arg-type]
        assert isinstance(info.value, ConfigurationError)
        with pytest.raises(EncryptionError):
            migrate_plaintext_to_encrypted(value)  # type: ignore[arg-type]
    for value in (None, 5, "", b"", b"\xff", ["x"]):
        with pytest.raises(DecryptionError, match="Decryption failed"):
            decrypt_secret(value)  # type: ignore[arg-type]
    for value in (5, ["x"], object()):
        with pytest.raises(ConfigurationError, match="takes a str or bytes"):
            get_secret_value(value)  # type: ignore[arg-type]


def test_is_encrypted_is_false_for_non_strings_and_reads_bytes() -> None:
    for value in (None, 5, b"", b"\xff", ["version", "ciphertext", "wrapped_dek"], object()):
        assert is_encrypted(value) is False
    assert is_encrypted(encrypt_secret("s").encode()) is True
    assert is_encrypted(bytearray(origin_encrypt_v1("s", _key()).encode())) is True
    assert decrypt_secret(encrypt_secret("s").encode()) == "s"


# The rolling-upgrade mode, against the real server.


def test_rolling_upgrade_writes_v1_that_the_origin_reads_then_migrate_binds_them(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    wipe(Account)
    key = _key()
    use_v1(monkeypatch)
    for i in range(3):
        Account(pk=f"r{i}", name=f"r{i}", password=f"pw-{i}", api_token=f"tok-{i}").save()
    for i in range(3):
        stored = raw(Account, f"r{i}")
        assert classify(stored["password"]) is Kind.LEGACY
        # What a process still running the origin's module reads, and what this library reads.
        assert origin_decrypt_v1(stored["password"], key) == f"pw-{i}"
        assert origin_decrypt_v1(stored["api_token"], key) == f"tok-{i}"
        assert Account.get(f"r{i}").password == f"pw-{i}"
    status = ops.status(Account)
    assert status.states["Account.password"] == {"origin-v1": 3}
    assert not status.ok
    proc = _cli("status", "ops_models:Account", "--url", redis_url)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "origin-v1" in stdout + stderr
    # migrate in the mode encrypts plaintext (in v1, for the old processes) and leaves v1 values.
    fields = {"pk": "r3", "name": "r3", "password": "plain-3"}
    client().hset(Account.make_primary_key("r3"), mapping=fields)
    report = ops.migrate(Account)
    assert (report.encrypted, report.upgraded) == (1, 0)
    assert origin_decrypt_v1(raw(Account, "r3")["password"], key) == "plain-3"

    # Every process runs the library: the switch is unset, and migrate upgrades to bound v2.
    monkeypatch.delenv("REDIS_SRE_WRITE_FORMAT")
    report = ops.migrate(Account)
    assert report.upgraded == 7
    assert report.ok
    for i in range(3):
        assert raw(Account, f"r{i}")["password"].startswith(PREFIX)
        assert Account.get(f"r{i}").password == f"pw-{i}"
    assert ops.status(Account).ok
    # Bound: r0's value copied into r1 no longer decrypts there.
    client().hset(Account.make_primary_key("r1"), "password", raw(Account, "r0")["password"])
    with pytest.raises(DecryptionError):
        Account.get("r1")


def test_write_format_rejects_an_invalid_value_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wipe(Account)
    monkeypatch.setenv("REDIS_SRE_WRITE_FORMAT", "v3")
    with pytest.raises(ConfigurationError, match="REDIS_SRE_WRITE_FORMAT='v3'"):
        Account(pk="bad", name="bad", password="pw").save()
    assert client().exists(Account.make_primary_key("bad")) == 0
    monkeypatch.setenv("REDIS_SRE_WRITE_FORMAT", " V2 ")
    Account(pk="ok", name="ok", password="pw").save()
    assert raw(Account, "ok")["password"].startswith(PREFIX)


def test_write_format_v1_conflicts_with_refusing_plaintext(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """v1 values are refused like plaintext once plaintext reads are refused: the combination
    would write what it then refuses to read, so it is refused itself, before any write."""
    wipe(Account)
    use_v1(monkeypatch)
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "1")
    with pytest.raises(ConfigurationError, match=r"REDIS_SRE_WRITE_FORMAT=v1 .* conflicts"):
        Account(pk="c", name="c", password="pw").save()
    assert client().exists(Account.make_primary_key("c")) == 0
    with pytest.raises(ConfigurationError, match="conflicts"):
        ops.status(Account)
    proc = _cli("status", "ops_models:Account", "--url", redis_url)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "conflicts with REDIS_SRE_REJECT_PLAINTEXT" in stderr
    monkeypatch.delenv("REDIS_SRE_REJECT_PLAINTEXT")
    redis_encrypted_fields.set_plaintext_reads(False)
    with pytest.raises(ConfigurationError, match=r"conflicts with set_plaintext_reads\(False\)"):
        Account(pk="c", name="c", password="pw").save()


def _key() -> str:
    return os.environ["REDIS_SRE_MASTER_KEY"]


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "redis_encrypted_fields", *args],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
