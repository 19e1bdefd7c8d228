"""The v2 envelope: layout, authenticated header, binding, strict parsing, re-wrap (no server)."""

from __future__ import annotations

import base64
import binascii

import pytest

from redis_encrypted_fields import DecryptionError, KeyRing, MasterKey
from redis_encrypted_fields.crypto.envelope import (
    PREFIX,
    binding,
    is_envelope,
    open_envelope,
    parse,
    rewrap,
    seal,
)


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing(MasterKey.generate())


def blob_of(text: str) -> bytes:
    return binascii.a2b_base64(text[len(PREFIX) :])


def text_of(blob: bytes) -> str:
    return PREFIX + base64.b64encode(blob).decode()


def test_layout_matches_the_documented_offsets(ring: KeyRing) -> None:
    text = seal("hello", ring)
    blob = blob_of(text)
    assert text.startswith("REFv2:")
    assert blob[0] == 2
    assert blob[1:9] == ring.current.key_id
    assert len(blob) == 1 + 8 + 12 + 48 + 12 + len(b"hello") + 16
    env = parse(text)
    assert (env.dek_nonce, env.wrapped_dek, env.nonce) == (blob[9:21], blob[21:69], blob[69:81])
    assert env.to_text() == text


def test_round_trip_with_and_without_context(ring: KeyRing) -> None:
    ctx = binding(":app.Model:01H", "admin_password")
    for plaintext in ("", "p", "ünïcödé ✓", "x" * 10_000):
        assert open_envelope(seal(plaintext, ring), ring) == plaintext
        assert open_envelope(seal(plaintext, ring, ctx), ring, ctx) == plaintext


def test_context_must_match(ring: KeyRing) -> None:
    text = seal("secret", ring, binding("k1", "a"))
    for wrong in (b"", binding("k2", "a"), binding("k1", "b"), binding("k1a", "")):
        with pytest.raises(DecryptionError, match="Decryption failed"):
            open_envelope(text, ring, wrong)


def test_binding_is_unambiguous() -> None:
    assert binding("ab", "c") != binding("a", "bc")
    assert binding("a.b", "c") != binding("a", "b.c")


def test_the_header_is_authenticated(ring: KeyRing) -> None:
    other = MasterKey.generate()
    both = KeyRing(ring.current, [other])
    blob = bytearray(blob_of(seal("secret", both)))
    blob[1:9] = other.key_id  # claim the other (configured) key wrapped it
    with pytest.raises(DecryptionError, match="Decryption failed"):
        open_envelope(text_of(bytes(blob)), both)
    blob = bytearray(blob_of(seal("secret", both)))
    blob[0] = 3
    with pytest.raises(DecryptionError, match="unsupported envelope version"):
        open_envelope(text_of(bytes(blob)), both)


def test_key_id_selects_the_key_with_no_trial_decryption() -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    text = seal("secret", KeyRing(old))
    assert open_envelope(text, KeyRing(new, [old])) == "secret"
    with pytest.raises(DecryptionError, match=old.key_id_hex):
        open_envelope(text, KeyRing(new))


def test_every_single_byte_change_and_truncation_fails(ring: KeyRing) -> None:
    blob = blob_of(seal("secret", ring, b"ctx"))
    for i in range(len(blob)):
        changed = bytearray(blob)
        changed[i] ^= 0x01
        with pytest.raises(DecryptionError):
            open_envelope(text_of(bytes(changed)), ring, b"ctx")
    text = seal("secret", ring, b"ctx")
    for n in range(len(text)):
        with pytest.raises(DecryptionError):
            open_envelope(text[:n], ring, b"ctx")


# Three lengths: every amount of base64 padding (Python 3.11's strict base64 mode accepts "="
# after a complete group, so extra padding must be refused by the library itself).
@pytest.mark.parametrize("secret", ["secret", "secret!", "secret!!"])
def test_parsing_is_strict_and_canonical(ring: KeyRing, secret: str) -> None:
    text = seal(secret, ring)
    assert is_envelope(text)
    last = text[-3]  # a character whose low bits may be padding bits in a non-canonical form
    variants = [
        text + "=",
        text + "==",
        text.rstrip("=") + "=",
        text + "\n",
        " " + text,
        text.replace(PREFIX, "refv2:"),
        text[:-3] + ("A" if last != "A" else "B") + text[-2:],
        PREFIX + "!!!!",
        PREFIX,
    ]
    for v in variants:
        if v == text:
            continue
        try:
            result = open_envelope(v, ring)
        except DecryptionError:
            continue
        pytest.fail(f"accepted a changed envelope: {result!r}")
    assert not is_envelope("redis://localhost:6379")
    assert not is_envelope(PREFIX + "AAAA")
    assert not is_envelope(None)


# Three lengths: every amount of base64 padding, which rewrap keeps from the original text.
@pytest.mark.parametrize("secret", ["secret", "secret!", "secret!!"])
def test_rewrap_changes_only_the_wrapped_key_and_key_id(secret: str) -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    ctx = binding("k", "f")
    text = seal(secret, KeyRing(old), ctx)
    ring = KeyRing(new, [old])
    moved = rewrap(text, ring, ctx)
    before, after = parse(text), parse(moved)
    assert after.key_id == new.key_id
    assert (after.nonce, after.ciphertext) == (before.nonce, before.ciphertext)
    assert after.wrapped_dek != before.wrapped_dek
    assert open_envelope(moved, KeyRing(new), ctx) == secret
    head = len(PREFIX) + 92  # base64 of the 69-byte header (version .. wrapped data key)
    assert moved[head:] == text[head:]
    assert moved[:head] != text[:head]
    assert rewrap(moved, ring, ctx) == moved
    with pytest.raises(DecryptionError):
        rewrap(text, ring, binding("k", "other"))
