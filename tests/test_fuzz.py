"""Property-based tests (hypothesis) of everything that reads untrusted stored values.

Random strings, random base64, almost-valid envelopes (real ones changed in one place, truncated,
extended), random JSON in base64 for the origin v1 detection, and values of the wrong type are fed
to the parsers, the module API and model hydration (``Model.model_validate``, as redis-om does
on ``get``/``find``). Only the library's own errors (``EncryptionError`` subclasses) come out, or
pydantic's ``ValidationError`` for a wrong type; detection never raises; nothing hangs (a
deadline per example); a changed envelope never opens. No server is involved.
"""

from __future__ import annotations

import base64
import contextlib
import json
import string
from datetime import timedelta
from typing import Any

import pytest
from conftest import SESSION_KEY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support import SyncCluster, SyncHashInstance, SyncJsonInstance

from redis_encrypted_fields import (
    DecryptionError,
    EncryptionError,
    KeyRing,
    MasterKey,
    MasterKeyError,
    decrypt_secret,
    is_encrypted,
    set_plaintext_reads,
)
from redis_encrypted_fields.crypto.envelope import (
    PREFIX,
    binding,
    is_envelope,
    looks_like_envelope,
    open_envelope,
    parse,
    rewrap,
    seal,
)
from redis_encrypted_fields.crypto.legacy import is_legacy_envelope, open_legacy, parse_legacy
from redis_encrypted_fields.crypto.stored import key_id_of
from redis_encrypted_fields.model import mixin as models_module

KEY = MasterKey.from_base64(SESSION_KEY)  # the key the autouse fixture puts in the environment
RING = KeyRing(KEY)
CONTEXT = binding(":fuzz:record", "field")

# Twice the profile's count (200 in `make test`, 4,000 in `make fuzz`; see conftest.py).
fuzz = settings(
    max_examples=2 * settings.default.max_examples,
    deadline=timedelta(seconds=2),  # generous against CI jitter; a pathological input is far slower
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
few = settings(fuzz, max_examples=settings.default.max_examples)

B64_ALPHABET = string.ascii_letters + string.digits + "+/"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Strategies

any_char = st.characters(exclude_categories=())  # every code point, lone surrogates included
any_text = st.text(any_char, max_size=200)
random_b64 = st.binary(max_size=300).map(b64)
blob_like = st.builds(
    lambda version, key_id, rest: version + key_id + rest,
    st.sampled_from([b"\x02", b"\x01", b"\x03", b"\x00"]),
    st.one_of(st.just(KEY.key_id), st.binary(min_size=8, max_size=8)),
    st.binary(min_size=60, max_size=200),  # around the 97-byte minimum
)
prefixed = st.one_of(
    st.binary(max_size=300).map(lambda b: PREFIX + b64(b)),
    blob_like.map(lambda b: PREFIX + b64(b)),
    st.text(st.sampled_from(B64_ALPHABET + "=-_ \n\r\t.*é"), max_size=300).map(
        lambda s: PREFIX + s
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(any_char),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
v1_fields = st.fixed_dictionaries(
    {"version": st.sampled_from(["v1", "v2", 1, None, ""])},
    optional={
        name: st.one_of(random_b64, st.binary(max_size=60).map(b64), any_text, json_values)
        for name in ("ciphertext", "nonce", "wrapped_dek", "dek_nonce")
    },
)
v1_structured = st.fixed_dictionaries(  # the full v1 shape with random parts: reaches AES-GCM
    {
        "version": st.just("v1"),
        "ciphertext": st.binary(max_size=64).map(b64),
        "nonce": st.binary(min_size=0, max_size=16).map(b64),
        "wrapped_dek": st.binary(min_size=40, max_size=56).map(b64),
        "dek_nonce": st.binary(min_size=0, max_size=16).map(b64),
    }
)


def json_b64(doc: Any) -> str:
    return b64(json.dumps(doc).encode())


v1_like = st.one_of(
    st.dictionaries(st.text(max_size=8), json_values, max_size=5).map(json_b64),
    v1_fields.map(json_b64),
    v1_structured.map(json_b64),
    json_values.map(json_b64),
    st.text(st.sampled_from(B64_ALPHABET + "="), max_size=120).map(lambda s: "eyJ" + s),
)
stored_text = st.one_of(any_text, random_b64, prefixed, v1_like)
not_text = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(max_size=50),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def change(draw: st.DrawFn, original: str) -> str:
    """``original`` changed in one way: a character replaced, deleted, inserted or swapped,
    truncated, extended (sometimes the change is no change: the test then expects success)."""
    i = draw(st.integers(0, len(original) - 1))
    how = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "append", "swap"]))
    ch = draw(st.one_of(st.sampled_from(B64_ALPHABET + "=-_ "), any_char))
    if how == "replace":
        return original[:i] + ch + original[i + 1 :]
    if how == "delete":
        return original[:i] + original[i + 1 :]
    if how == "insert":
        return original[:i] + ch + original[i:]
    if how == "truncate":
        return original[:i]
    if how == "append":
        return original + draw(st.text(st.sampled_from(B64_ALPHABET + "="), min_size=1))
    j = draw(st.integers(0, len(original) - 1))
    chars = list(original)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


@st.composite
def changed_envelopes(draw: st.DrawFn, context: bytes = CONTEXT) -> tuple[str, str, str]:
    """(plaintext, its envelope, the envelope changed in one way)."""
    plaintext = draw(st.text(max_size=40))
    original = seal(plaintext, RING, context)
    return plaintext, original, change(draw, original)


# The parsers


@fuzz
@given(stored_text)
def test_parse_raises_only_decryption_error_and_accepts_one_text_per_envelope(value: str) -> None:
    try:
        env = parse(value)
    except DecryptionError:
        return
    assert env.to_text() == value  # canonical: what parses is exactly what would be written


@fuzz
@given(st.one_of(stored_text, not_text))
def test_detection_never_raises(value: Any) -> None:
    for check in (looks_like_envelope, is_envelope, is_legacy_envelope, is_encrypted):
        assert check(value) in (True, False)
    if isinstance(value, str):
        key_id_of(value)
        legacy = parse_legacy(value)
        assert legacy is None or is_encrypted(value)


@fuzz
@given(stored_text)
def test_decrypt_secret_raises_only_decryption_or_master_key_errors(value: str) -> None:
    with contextlib.suppress(DecryptionError, MasterKeyError):
        decrypt_secret(value)


@fuzz
@given(stored_text)
def test_opening_and_rewrapping_raise_only_decryption_error(value: str) -> None:
    ring = KeyRing(MasterKey.generate(), [KEY])
    for call in (
        lambda: open_envelope(value, RING, CONTEXT),
        lambda: rewrap(value, ring, CONTEXT),
        lambda: open_legacy(value, ring),
    ):
        with contextlib.suppress(DecryptionError):
            call()


@fuzz
@given(changed_envelopes())
def test_a_changed_envelope_never_opens(case: tuple[str, str, str]) -> None:
    plaintext, original, changed = case
    ring = KeyRing(MasterKey.generate(), [KEY])
    if changed == original:
        assert open_envelope(changed, RING, CONTEXT) == plaintext
        return
    with pytest.raises(DecryptionError):
        open_envelope(changed, RING, CONTEXT)
    with pytest.raises(DecryptionError):
        rewrap(changed, ring, CONTEXT)
    with pytest.raises(DecryptionError):
        decrypt_secret(changed)


@fuzz
@given(st.text(max_size=60), st.text(max_size=30), st.text(max_size=30))
def test_an_envelope_opens_only_in_its_own_context(plaintext: str, key: str, field: str) -> None:
    text = seal(plaintext, RING, binding(key, field))
    assert open_envelope(text, RING, binding(key, field)) == plaintext
    for other in (binding(key + "x", field), binding(key, field + "x"), binding(field, key)):
        if other != binding(key, field):
            with pytest.raises(DecryptionError):
                open_envelope(text, RING, other)


def test_deeply_nested_json_in_a_v1_lookalike_is_not_an_error() -> None:
    value = b64(b'{"version": ' + b"[" * 5000)  # 6.7 kB, starts with "eyJ"
    assert is_encrypted(value) is False
    assert parse_legacy(value) is None
    with pytest.raises(DecryptionError):
        decrypt_secret(value)
    model = SyncHashInstance.model_validate({"pk": "p", "name": "n", "connection_url": value})
    assert model.connection_url == value  # plaintext, as for any value that is not an envelope


# Model hydration


field_value = st.one_of(stored_text, not_text)


def hydrate(model: Any, data: dict[str, Any], reading: bool, plaintext_ok: bool) -> None:
    """``model_validate`` as redis-om calls it; only the library's errors or ValidationError."""
    set_plaintext_reads(plaintext_ok)
    token = models_module._reading.set(reading)
    try:
        model.model_validate(data)
    except (EncryptionError, ValidationError):
        pass
    finally:
        models_module._reading.reset(token)
        set_plaintext_reads(None)


@few
@given(
    st.sampled_from([SyncHashInstance, SyncJsonInstance]),
    st.one_of(st.text(max_size=30), st.none(), st.integers()),
    field_value,
    field_value,
    st.booleans(),
    st.booleans(),
)
def test_hydrating_an_instance_raises_only_library_or_validation_errors(
    model: Any, pk: Any, url: Any, password: Any, reading: bool, plaintext_ok: bool
) -> None:
    data = {"pk": pk, "name": "n", "connection_url": url, "admin_password": password}
    hydrate(model, data, reading, plaintext_ok)


credential = st.one_of(
    st.fixed_dictionaries({"username": st.text(max_size=10), "password": field_value}),
    field_value,
)


@few
@given(
    st.text(min_size=1, max_size=30),
    credential,
    st.lists(credential, max_size=3),
    st.one_of(st.lists(field_value, max_size=3), field_value),
    st.booleans(),
)
def test_hydrating_nested_models_and_lists_raises_only_library_or_validation_errors(
    pk: str, primary: Any, replicas: Any, tokens: Any, reading: bool
) -> None:
    data = {"pk": pk, "name": "n", "primary": primary, "replicas": replicas, "tokens": tokens}
    hydrate(SyncCluster, data, reading, plaintext_ok=True)


@few
@given(st.sampled_from([SyncHashInstance, SyncJsonInstance]), st.text(max_size=30), st.data())
def test_hydrating_a_changed_envelope_fails_with_decryption_error(
    model: Any, pk: str, data: st.DataObject
) -> None:
    """A real envelope of this record and field, changed: never a value, never another error.
    (A change to the prefix makes plaintext: refused here, as once migration is done.)"""
    plaintext = data.draw(st.text(max_size=40))
    context = binding(model.make_primary_key(pk), "connection_url")
    original = seal(plaintext, RING, context)
    changed = change(data.draw, original)
    record = {"pk": pk, "name": "n", "connection_url": changed}
    set_plaintext_reads(False)
    token = models_module._reading.set(True)
    try:
        if pk and changed == original:
            assert model.model_validate(record).connection_url == plaintext
        elif changed:  # "" is how a hash stores a cleared secret
            with pytest.raises(DecryptionError):
                model.model_validate(record)
    finally:
        models_module._reading.reset(token)
        set_plaintext_reads(None)


@few
@given(
    st.sampled_from([SyncHashInstance, SyncJsonInstance, SyncCluster]),
    st.text(min_size=1, max_size=30),
    st.text(max_size=60).filter(lambda s: not s.startswith(PREFIX) and "*" not in s),
)
def test_what_a_model_stores_hydrates_back_to_the_same_plaintext(
    model: Any, pk: str, plaintext: str
) -> None:
    if model is SyncCluster:
        m = model(
            pk=pk,
            name="n",
            primary={"username": "u", "password": plaintext},
            replicas=[{"username": "r", "password": plaintext}],
            tokens=[plaintext, plaintext],
        )
    else:
        m = model(pk=pk, name="n", connection_url=plaintext, admin_password=plaintext)
    again = model.model_validate(m.model_dump())
    if model is SyncCluster:
        assert again.primary.password == plaintext
        assert again.replicas[0].password == plaintext
        assert again.tokens == [plaintext, plaintext]
    else:
        assert again.connection_url == plaintext
        # redis-om reads "" as None for an Optional field of a hash, encrypted or not.
        empty_is_none = plaintext == "" and model is SyncHashInstance
        assert again.admin_password == (None if empty_is_none else plaintext)
