"""Master keys from the environment or from code, with the design note's error messages."""

from __future__ import annotations

import base64
import os
import uuid

import pytest
from support import SyncHashInstance, new_key

from redis_encrypted_fields import (
    DecryptionError,
    KeyRing,
    MasterKey,
    MasterKeyError,
    decrypt_secret,
    encrypt_secret,
    generate_master_key,
    get_keyring,
    set_keyring,
)
from redis_encrypted_fields.crypto.envelope import parse
from redis_encrypted_fields.keys import env as keys_module


def test_missing_key_raises_master_key_error_with_the_design_note_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_SRE_MASTER_KEY")
    with pytest.raises(MasterKeyError, match="REDIS_SRE_MASTER_KEY environment variable not set"):
        encrypt_secret("x")


@pytest.mark.parametrize(
    "value",
    [
        base64.b64encode(os.urandom(16)).decode(),
        base64.b64encode(os.urandom(33)).decode(),
        "not base64 at all!",
        "ünïcode",
    ],
)
def test_wrong_length_or_encoding_raises_master_key_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", value)
    with pytest.raises(MasterKeyError, match="Master key must be 32 bytes") as info:
        encrypt_secret("x")
    assert value not in str(info.value)


def test_bad_previous_key_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", f"{new_key()},short")
    with pytest.raises(MasterKeyError, match="REDIS_SRE_PREVIOUS_MASTER_KEYS"):
        encrypt_secret("x")


def test_model_operations_raise_master_key_error_without_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = SyncHashInstance(name=f"k-{uuid.uuid4().hex}", connection_url="redis://x")
    m.save()
    monkeypatch.delenv("REDIS_SRE_MASTER_KEY")
    with pytest.raises(MasterKeyError, match="REDIS_SRE_MASTER_KEY environment variable not set"):
        SyncHashInstance.get(m.pk)
    with pytest.raises(MasterKeyError):
        SyncHashInstance(name="n", connection_url="redis://y").save()


def test_previous_keys_decrypt_and_the_current_key_encrypts(
    monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    old_text = encrypt_secret("secret")
    current = new_key()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", current)
    with pytest.raises(DecryptionError, match="Decryption failed"):
        decrypt_secret(old_text)
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", f" {new_key()} , {master_key} ")
    assert decrypt_secret(old_text) == "secret"
    new_text = encrypt_secret("secret")
    assert parse(new_text).key_id == MasterKey.from_base64(current).key_id


def test_keys_are_read_at_use_time_but_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = keys_module._parse_env

    def counting(*args: object) -> KeyRing:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(keys_module, "_parse_env", counting)
    first = new_key()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", first)
    for _ in range(50):
        encrypt_secret("x")
    assert calls == 1
    second = new_key()
    os.environ["REDIS_SRE_MASTER_KEY"] = second  # as the design note's rotation script does
    assert parse(encrypt_secret("x")).key_id == MasterKey.from_base64(second).key_id
    assert calls == 2


def test_keys_configured_in_code_take_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing.from_base64(generate_master_key())
    set_keyring(ring)
    monkeypatch.delenv("REDIS_SRE_MASTER_KEY")
    assert get_keyring() is ring
    assert decrypt_secret(encrypt_secret("in code")) == "in code"
    set_keyring(None)
    with pytest.raises(MasterKeyError):
        get_keyring()


def test_keys_never_show_their_material() -> None:
    key = MasterKey.generate()
    material = key.to_base64()
    ring = KeyRing(key, [MasterKey.generate()])
    assert material not in repr(key)
    assert material not in repr(ring)
    assert key.key_id_hex in repr(ring)
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_generated_keys_are_standard_base64_of_32_bytes() -> None:
    assert len(base64.b64decode(generate_master_key(), validate=True)) == 32
    assert generate_master_key() != generate_master_key()


def test_every_ring_is_a_key_ring_and_key_ring_builds_the_static_one() -> None:
    from redis_encrypted_fields import KeyStore, StoreKeyRing
    from redis_encrypted_fields.keys import StaticKeyRing

    key = MasterKey.generate()
    ring = KeyRing(key)
    assert type(ring) is StaticKeyRing
    assert type(KeyRing.from_base64(key.to_base64())) is StaticKeyRing
    assert ring.current is key
    assert ring.get(key.key_id) is key
    assert key.key_id in ring
    store_ring = StoreKeyRing(KeyStore(client=None))
    assert isinstance(store_ring, KeyRing)
    assert not isinstance(store_ring, StaticKeyRing)


def test_the_keys_layer_imports_neither_pydantic_nor_redis_om_nor_a_higher_layer() -> None:
    import ast
    import pathlib

    import redis_encrypted_fields.keys as keys

    # Its own modules and the layers below it (docs/architecture.md).
    allowed_own = {"errors", "audit", "keys", "forks", "switches", "version"}
    for path in pathlib.Path(keys.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:  # within keys/
                    continue
                if node.level == 2:  # the package: its modules' names
                    names = [node.module or alias.name for alias in node.names]
                    assert {n.split(".")[0] for n in names} <= allowed_own, (path.name, names)
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in ("pydantic", "redis_om", "aredis_om"), (path.name, name)
                assert top != "redis_encrypted_fields", (path.name, name)
