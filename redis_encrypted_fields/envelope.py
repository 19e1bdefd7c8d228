"""The current envelope format ("v2"): explicit byte layout, AES-256-GCM twice, one opaque error.

An envelope is the text ``REFv2:`` followed by the standard base64 (with padding) of::

    offset  size    field
    0       1       version, 0x02
    1       8       key id of the master key that wrapped the data key
    9       12      nonce of the data-key wrap
    21      48      wrapped data key: AES-256-GCM(master key, 32-byte data key) with its 16-byte tag
    69      12      nonce of the data encryption
    81      n + 16  ciphertext: AES-256-GCM(data key, UTF-8 plaintext) with its 16-byte tag

Associated data binds both layers to the ``context`` (the record and field, see ``binding``):

- wrap: ``b"REFv2/dek" || version || key id || context``: the header is authenticated and a data
  key cannot be moved to another record or field.
- data: ``b"REFv2/data" || version || context``: the key id is left out so that a re-wrap under
  another master key leaves the data ciphertext as it is.

See ``docs/format.md``.
"""

from __future__ import annotations

import binascii
import os
import struct
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import DecryptionError, EncryptionError
from .keys import KEY_ID_SIZE, KeyRing, MasterKey

__all__ = [
    "PREFIX",
    "VERSION",
    "Envelope",
    "binding",
    "is_envelope",
    "looks_like_envelope",
    "open_envelope",
    "open_parsed",
    "parse",
    "rewrap",
    "rewrap_parsed",
    "seal",
]

PREFIX = "REFv2:"
VERSION = 2
_VERSION_BYTE = bytes([VERSION])
_NONCE = 12
_TAG = 16
_DEK = 32
_WRAPPED = _DEK + _TAG
_O_KID = 1
_O_DEK_NONCE = _O_KID + KEY_ID_SIZE
_O_WRAPPED = _O_DEK_NONCE + _NONCE
_O_NONCE = _O_WRAPPED + _WRAPPED
_O_CT = _O_NONCE + _NONCE
_MIN_BLOB = _O_CT + _TAG
_WRAP_LABEL = b"REFv2/dek" + _VERSION_BYTE
_DATA_LABEL = b"REFv2/data" + _VERSION_BYTE
_FAILED = "Decryption failed"


def binding(record_key: str, field_path: str) -> bytes:
    """The associated data that ties a ciphertext to one record (its Redis key) and field path."""
    k = record_key.encode("utf-8", "surrogatepass")
    f = field_path.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(k)) + k + struct.pack(">I", len(f)) + f


class Envelope(NamedTuple):
    """A parsed envelope. Holds no secret: every part is encrypted or public.

    A NamedTuple, not a frozen dataclass: parsing is on every read's path, and a frozen
    dataclass's ``__init__`` costs more than the rest of the parse.
    """

    key_id: bytes
    dek_nonce: bytes
    wrapped_dek: bytes
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                _VERSION_BYTE,
                self.key_id,
                self.dek_nonce,
                self.wrapped_dek,
                self.nonce,
                self.ciphertext,
            )
        )

    def to_text(self) -> str:
        return PREFIX + binascii.b2a_base64(self.to_bytes(), newline=False).decode("ascii")


def looks_like_envelope(value: object) -> bool:
    """Whether ``value`` claims to be an envelope (has the prefix). Its structure is not checked."""
    return isinstance(value, str) and value.startswith(PREFIX)


def is_envelope(value: object) -> bool:
    """Whether ``value`` is a well-formed envelope: prefix and structure, no decryption."""
    if not looks_like_envelope(value):
        return False
    try:
        parse(value)  # type: ignore[arg-type]
    except DecryptionError:
        return False
    return True


def parse(text: str) -> Envelope:
    """Parse strictly: canonical base64, known version, full length. Raises ``DecryptionError``."""
    if not text.startswith(PREFIX):
        raise DecryptionError(f"{_FAILED}: not an envelope")
    try:
        body = text[len(PREFIX) :].encode("ascii")
        blob = binascii.a2b_base64(body, strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise DecryptionError(f"{_FAILED}: malformed envelope") from None
    # strict_mode still accepts non-zero padding bits; re-encoding makes every character count.
    if binascii.b2a_base64(blob, newline=False) != body:
        raise DecryptionError(f"{_FAILED}: malformed envelope")
    if len(blob) < _MIN_BLOB:
        raise DecryptionError(f"{_FAILED}: truncated envelope")
    if blob[0] != VERSION:
        raise DecryptionError(f"{_FAILED}: unsupported envelope version {blob[0]}")
    return Envelope(
        blob[_O_KID:_O_DEK_NONCE],
        blob[_O_DEK_NONCE:_O_WRAPPED],
        blob[_O_WRAPPED:_O_NONCE],
        blob[_O_NONCE:_O_CT],
        blob[_O_CT:],
    )


def seal(plaintext: str, keyring: KeyRing, context: bytes = b"") -> str:
    """Encrypt under a fresh data key and nonce; wrap the data key with the current master key."""
    try:
        data = plaintext.encode("utf-8")
    except UnicodeEncodeError:
        raise EncryptionError("Encryption failed: the value is not valid Unicode text") from None
    key = keyring.current
    random = os.urandom(_DEK + 2 * _NONCE)
    dek, dek_nonce, nonce = random[:_DEK], random[_DEK : _DEK + _NONCE], random[_DEK + _NONCE :]
    wrapped = key.aead.encrypt(dek_nonce, dek, _WRAP_LABEL + key.key_id + context)
    ciphertext = AESGCM(dek).encrypt(nonce, data, _DATA_LABEL + context)
    blob = b"".join((_VERSION_BYTE, key.key_id, dek_nonce, wrapped, nonce, ciphertext))
    return PREFIX + binascii.b2a_base64(blob, newline=False).decode("ascii")


def _unwrap(env: Envelope, key: MasterKey, context: bytes) -> bytes:
    try:
        return key.aead.decrypt(env.dek_nonce, env.wrapped_dek, _WRAP_LABEL + env.key_id + context)
    except InvalidTag:
        raise DecryptionError(
            f"{_FAILED}: wrong master key, corrupted data, or a value moved from another record "
            "or field"
        ) from None


def open_envelope(text: str, keyring: KeyRing, context: bytes = b"") -> str:
    """Decrypt an envelope with the key its id names. Raises ``DecryptionError``."""
    return open_parsed(parse(text), keyring, context)


def open_parsed(env: Envelope, keyring: KeyRing, context: bytes = b"") -> str:
    """``open_envelope`` of an already parsed envelope."""
    dek = _unwrap(env, keyring.get(env.key_id), context)
    try:
        data = AESGCM(dek).decrypt(env.nonce, env.ciphertext, _DATA_LABEL + context)
        return data.decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        raise DecryptionError(f"{_FAILED}: corrupted data") from None


def rewrap(text: str, keyring: KeyRing, context: bytes = b"") -> str:
    """Re-wrap the data key under the current master key. The data ciphertext is kept as is.

    Returns ``text`` unchanged when it is already wrapped by the current key. The data is
    decrypted once to prove the envelope is intact before it is vouched for under the new key.
    """
    env = parse(text)
    if env.key_id == keyring.current.key_id:
        return text
    return rewrap_parsed(env, keyring, context)


def rewrap_parsed(env: Envelope, keyring: KeyRing, context: bytes = b"") -> str:
    """``rewrap`` of an already parsed envelope (re-wrapped even if under the current key)."""
    current = keyring.current
    dek = _unwrap(env, keyring.get(env.key_id), context)
    try:
        AESGCM(dek).decrypt(env.nonce, env.ciphertext, _DATA_LABEL + context)
    except InvalidTag:
        raise DecryptionError(f"{_FAILED}: corrupted data") from None
    dek_nonce = os.urandom(_NONCE)
    wrapped = current.aead.encrypt(dek_nonce, dek, _WRAP_LABEL + current.key_id + context)
    return Envelope(current.key_id, dek_nonce, wrapped, env.nonce, env.ciphertext).to_text()
