"""EncryptedStr without EncryptedModel; the origin's module API; errors at class definition."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

import pytest
import redis_om
from pydantic import BaseModel, ValidationError
from support import client, origin_encrypt_v1

from redis_encrypted_fields import (
    DecryptionError,
    EncryptedModel,
    EncryptedStr,
    Mask,
    MaskedSecretError,
    decrypt_secret,
    encrypt_secret,
    get_secret_value,
    is_encrypted,
)
from redis_encrypted_fields.crypto.envelope import PREFIX


class PlainHash(redis_om.HashModel, index=True):
    """No EncryptedModel: values are encrypted without record binding."""

    name: str = redis_om.Field(index=True)
    password: EncryptedStr
    token: Annotated[EncryptedStr, Mask("*****")] | None = None


class Settings(BaseModel):
    api_key: EncryptedStr


def test_without_the_mixin_values_are_encrypted_decrypted_and_masked() -> None:
    m = PlainHash(name=f"plain-{uuid.uuid4().hex}", password="pw-standalone", token="tk")
    m.save()
    stored = client().hgetall(m.key())
    assert stored["password"].startswith(PREFIX)
    assert "pw-standalone" not in str(stored)
    got = PlainHash.get(m.pk)
    assert (got.password, got.token) == ("pw-standalone", "tk")
    assert got.model_dump(mode="json")["password"] == "***"
    assert got.model_dump(mode="json")["token"] == "*****"
    assert PlainHash.find(PlainHash.name == m.name).all()[0].password == "pw-standalone"
    assert "pw-standalone" not in repr(got)


def test_without_the_mixin_a_mask_is_refused() -> None:
    with pytest.raises(MaskedSecretError):
        PlainHash(name="x", password="***")
    m = PlainHash(name=f"plain-{uuid.uuid4().hex}", password="real")
    m.password = "***"  # type: ignore[assignment]
    with pytest.raises(MaskedSecretError):
        m.save()
    assert client().exists(m.key()) == 0


def test_plain_pydantic_models_round_trip_through_python_dump() -> None:
    s = Settings(api_key="k-123")
    dumped = s.model_dump()
    assert dumped["api_key"].startswith(PREFIX)
    assert Settings.model_validate(dumped).api_key == "k-123"
    assert s.model_dump_json() == '{"api_key":"***"}'


def test_validation_errors_do_not_echo_secret_input() -> None:
    class Model(EncryptedModel, redis_om.HashModel, index=True):
        secret: EncryptedStr
        port: int

    with pytest.raises(ValidationError) as info:
        Model(secret=b"bytes-secret", port="not-a-port")
    assert "bytes-secret" not in str(info.value)
    assert "not-a-port" not in str(info.value)


# The origin's module API


def test_origin_api_round_trip_and_detection(master_key: str, caplog: Any) -> None:
    text = encrypt_secret("secret123")
    assert text.startswith(PREFIX)
    assert decrypt_secret(text) == "secret123"
    assert is_encrypted(text)
    v1 = origin_encrypt_v1("secret123", master_key)
    assert is_encrypted(v1)
    assert decrypt_secret(v1) == "secret123"
    assert get_secret_value(v1) == "secret123"
    assert get_secret_value(text) == "secret123"
    for value in ("secret123", "redis://localhost:6379", "", "eyJub3QiOiAidjEifQ==", None, 42):
        assert not is_encrypted(value)
    with caplog.at_level(logging.WARNING, logger="redis_encrypted_fields"):
        assert get_secret_value("plain-pw") == "plain-pw"
    assert caplog.records
    assert "plain-pw" not in caplog.text


def test_origin_v1_with_a_wrong_key_fails_cleanly() -> None:
    from support import new_key

    v1 = origin_encrypt_v1("secret123", new_key())
    with pytest.raises(DecryptionError, match="Decryption failed"):
        decrypt_secret(v1)
    with pytest.raises(DecryptionError, match="Decryption failed"):
        decrypt_secret("plaintext")


# Errors at class definition


@pytest.mark.parametrize(
    "options",
    [{"index": True}, {"full_text_search": True}, {"sortable": True}],
    ids=["index", "full_text_search", "sortable"],
)
def test_indexing_an_encrypted_field_is_an_error_at_class_definition(
    options: dict[str, Any],
) -> None:
    with pytest.raises(TypeError, match="cannot be indexed"):

        class Bad(EncryptedModel, redis_om.HashModel, index=True):
            secret: EncryptedStr = redis_om.Field(**options)


class IndexedInner(redis_om.EmbeddedJsonModel):
    secret: EncryptedStr = redis_om.Field(index=True)


def test_indexing_an_encrypted_field_of_an_embedded_model_is_an_error() -> None:
    with pytest.raises(TypeError, match=r"inner\.secret: an EncryptedStr field cannot be indexed"):

        class Outer(EncryptedModel, redis_om.JsonModel, index=True):
            inner: IndexedInner


def test_unsupported_positions_are_an_error_at_class_definition() -> None:
    with pytest.raises(TypeError, match="not in this position"):

        class Bad(EncryptedModel, redis_om.JsonModel, index=True):
            secrets: dict[str, EncryptedStr]
