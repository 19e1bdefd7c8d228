"""The origin project's stored format ("v1"): read for drop-in compatibility, and written only in
the rolling-upgrade mode (``REDIS_SRE_WRITE_FORMAT=v1``), so that processes still running the
origin's module can read what new processes write.

A v1 value is standard base64 of the UTF-8 JSON object ``{"version": "v1", "ciphertext": b64,
"nonce": b64, "wrapped_dek": b64, "dek_nonce": b64}``; AES-256-GCM, no associated data, no key id.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import DecryptionError
from ..keys import KeyRing

__all__ = ["LegacyEnvelope", "is_legacy_envelope", "open_legacy", "parse_legacy", "seal_legacy"]

_FIELDS = ("ciphertext", "nonce", "wrapped_dek", "dek_nonce")
# base64 of '{"' — every v1 value starts with it, so most values are rejected without decoding.
_B64_PREFIX = "eyJ"
_FAILED = "Decryption failed"


@dataclass(frozen=True, slots=True)
class LegacyEnvelope:
    ciphertext: bytes
    nonce: bytes
    wrapped_dek: bytes
    dek_nonce: bytes


def parse_legacy(value: str) -> LegacyEnvelope | None:
    """The parsed v1 envelope, or ``None`` when ``value`` is not one."""
    if not value.startswith(_B64_PREFIX):
        return None
    try:
        doc = json.loads(base64.b64decode(value.encode("ascii"), validate=True))
    except (binascii.Error, UnicodeError, ValueError, RecursionError):
        # RecursionError: deeply nested JSON, which no v1 value is.
        return None
    if not isinstance(doc, dict) or doc.get("version") != "v1":
        return None
    parts: dict[str, bytes] = {}
    for name in _FIELDS:
        item = doc.get(name)
        if not isinstance(item, str):
            return None
        try:
            parts[name] = base64.b64decode(item.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeError, ValueError):
            return None
    return LegacyEnvelope(**parts)


def is_legacy_envelope(value: object) -> bool:
    """Whether ``value`` is an origin v1 envelope (the origin's own check, made strict)."""
    return isinstance(value, str) and parse_legacy(value) is not None


def open_legacy(value: str, keyring: KeyRing) -> str:
    """Decrypt a v1 value. It names no key, so each configured key is tried, current first."""
    env = parse_legacy(value)
    if env is None:
        raise DecryptionError(f"{_FAILED}: not an origin v1 envelope")
    for key in keyring.keys:
        try:
            dek = key.aead.decrypt(env.dek_nonce, env.wrapped_dek, None)
        except (InvalidTag, ValueError):
            continue
        try:
            return AESGCM(dek).decrypt(env.nonce, env.ciphertext, None).decode("utf-8")
        except (InvalidTag, ValueError, UnicodeDecodeError):
            break
    raise DecryptionError(f"{_FAILED}: wrong master key or corrupted data (origin v1 value)")


def seal_legacy(plaintext: str, keyring: KeyRing) -> str:
    """``plaintext`` in the origin's v1 format under the current master key: a fresh data key,
    AES-256-GCM with 12-byte random nonces and no associated data (so bound to no record), as
    the origin's ``encrypt_secret`` writes it; the origin reads it with the same master key."""
    dek = AESGCM.generate_key(bit_length=256)
    nonce, dek_nonce = os.urandom(12), os.urandom(12)
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext.encode("utf-8"), None)
    wrapped_dek = keyring.current.aead.encrypt(dek_nonce, dek, None)
    doc = {
        "version": "v1",
        "ciphertext": _b64(ciphertext),
        "nonce": _b64(nonce),
        "wrapped_dek": _b64(wrapped_dek),
        "dek_nonce": _b64(dek_nonce),
    }
    # json.dumps' default separators, as the origin writes it (the order of the keys too).
    return _b64(json.dumps(doc).encode("utf-8"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
