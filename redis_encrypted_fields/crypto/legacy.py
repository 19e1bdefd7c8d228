"""The origin project's stored format ("v1"), read for drop-in compatibility and never written.

A v1 value is standard base64 of the UTF-8 JSON object ``{"version": "v1", "ciphertext": b64,
"nonce": b64, "wrapped_dek": b64, "dek_nonce": b64}``; AES-256-GCM, no associated data, no key id.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import DecryptionError
from ..keys import KeyRing

__all__ = ["LegacyEnvelope", "is_legacy_envelope", "open_legacy", "parse_legacy"]

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
