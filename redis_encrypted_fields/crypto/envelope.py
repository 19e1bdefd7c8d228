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

from ..errors import DecryptionError, EncryptionError
from ..keys import KEY_ID_SIZE, KeyRing

__all__ = [
    "KEY_ID_SLICE",
    "PREFIX",
    "SCOPED_VERSION",
    "Envelope",
    "binding",
    "binding_part",
    "decode",
    "is_envelope",
    "looks_like_envelope",
    "open_blob",
    "open_envelope",
    "parse",
    "rewrap",
    "rewrap_blob",
    "seal",
]

PREFIX = "REFv2:"
_VERSION = 2
_VERSION_BYTE = bytes([_VERSION])
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
KEY_ID_SLICE = slice(_O_KID, _O_DEK_NONCE)  # where the key id is in ``decode``'s bytes
_WRAP_LABEL = b"REFv2/dek" + _VERSION_BYTE
_DATA_LABEL = b"REFv2/data" + _VERSION_BYTE
# A scoped envelope: v2's layout with the version byte's high bit set (0x82); the data key is
# wrapped by a scope key (keys/scope.py), whose id the header carries, and both layers are bound
# to the scope as well (other labels, a longer context).
SCOPED_VERSION = _VERSION | 0x80
_SCOPED_BYTE = bytes([SCOPED_VERSION])
_S_WRAP_LABEL = b"REFv2s/dek" + _SCOPED_BYTE
_S_DATA_LABEL = b"REFv2s/data" + _SCOPED_BYTE
_VERSIONS = (_VERSION, SCOPED_VERSION)
_FAILED = "Decryption failed"
_UNWRAP_FAILED = (
    f"{_FAILED}: wrong master key, corrupted data, or a value moved from another record or field"
)
_LENGTH = struct.Struct(">I").pack
_PREFIX_LEN = len(PREFIX)
# The header (version to wrapped data key) in base64 characters: whole groups of 3 bytes.
_HEAD_CHARS = _O_NONCE // 3 * 4
assert _O_NONCE % 3 == 0
_B64_VALUE = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
}
# Bits of the last data character that are padding, by the number of "=" after it.
_PAD_BITS = {1: 0b11, 2: 0b1111}


def binding(record_key: str, field_path: str) -> bytes:
    """The associated data that ties a ciphertext to one record (its Redis key) and field path."""
    # binding_part() twice, written out: this runs for every secret sealed or opened.
    k = record_key.encode("utf-8", "surrogatepass")
    f = field_path.encode("utf-8", "surrogatepass")
    return _LENGTH(len(k)) + k + _LENGTH(len(f)) + f


def binding_part(text: str) -> bytes:
    """One half of a binding, length-prefixed: ``binding(k, f) == binding_part(k) +
    binding_part(f)`` (for callers that bind many fields of one record)."""
    data = text.encode("utf-8", "surrogatepass")
    return _LENGTH(len(data)) + data


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
    version: int = _VERSION  # SCOPED_VERSION: sealed under a scope key

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                bytes([self.version]),
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


def decode(text: str) -> bytes:
    """The envelope's bytes, checked: canonical base64, known version, full length.

    Raises ``DecryptionError``. (``parse`` splits them into an ``Envelope``.)
    """
    if not text.startswith(PREFIX):
        raise DecryptionError(f"{_FAILED}: not an envelope")
    try:
        # a2b_base64 takes ASCII text as it is (anything else is a ValueError).
        blob = binascii.a2b_base64(text[_PREFIX_LEN:], strict_mode=True)
    except (binascii.Error, ValueError):
        raise DecryptionError(f"{_FAILED}: malformed envelope") from None
    # strict_mode still accepts non-zero padding bits and (Python 3.11) "=" after a complete
    # group: refused here, so that every character counts and what parses is exactly what
    # would be written.
    if len(text) - _PREFIX_LEN != (len(blob) + 2) // 3 * 4:
        raise DecryptionError(f"{_FAILED}: malformed envelope")
    if text[-1] == "=":
        pads = 2 if text[-2] == "=" else 1
        if _B64_VALUE[text[-1 - pads]] & _PAD_BITS[pads]:
            raise DecryptionError(f"{_FAILED}: malformed envelope")
    if len(blob) < _MIN_BLOB:
        raise DecryptionError(f"{_FAILED}: truncated envelope")
    if blob[0] not in _VERSIONS:
        raise DecryptionError(f"{_FAILED}: unsupported envelope version {blob[0]}")
    return blob


def parse(text: str) -> Envelope:
    """Parse strictly: canonical base64, known version, full length. Raises ``DecryptionError``."""
    blob = decode(text)
    return Envelope(
        blob[_O_KID:_O_DEK_NONCE],
        blob[_O_DEK_NONCE:_O_WRAPPED],
        blob[_O_WRAPPED:_O_NONCE],
        blob[_O_NONCE:_O_CT],
        blob[_O_CT:],
        blob[0],
    )


def seal(plaintext: str, keyring: KeyRing, context: bytes = b"") -> str:
    """Encrypt under a fresh data key and nonce; wrap the data key with the current master key."""
    try:
        data = plaintext.encode("utf-8")
    except UnicodeEncodeError:
        raise EncryptionError("Encryption failed: the value is not valid Unicode text") from None
    scope = keyring.scope_part
    if scope is None:
        key, version, wrap_label, data_label = (
            keyring.current,
            _VERSION_BYTE,
            _WRAP_LABEL,
            _DATA_LABEL,
        )
    else:
        # A scope's ring: under its current scope key, bound to the scope as well.
        key, version, wrap_label, data_label = (
            keyring.scope_current(),
            _SCOPED_BYTE,
            _S_WRAP_LABEL,
            _S_DATA_LABEL,
        )
        context += scope
    random = os.urandom(_DEK + 2 * _NONCE)
    dek, dek_nonce, nonce = random[:_DEK], random[_DEK : _DEK + _NONCE], random[_DEK + _NONCE :]
    wrapped = key.aead.encrypt(dek_nonce, dek, wrap_label + key.key_id + context)
    ciphertext = AESGCM(dek).encrypt(nonce, data, data_label + context)
    blob = b"".join((version, key.key_id, dek_nonce, wrapped, nonce, ciphertext))
    return PREFIX + binascii.b2a_base64(blob, newline=False).decode("ascii")


def _unwrap(blob: bytes, keyring: KeyRing, context: bytes, label: bytes) -> bytes:
    key_id = blob[_O_KID:_O_DEK_NONCE]
    key = keyring.get(key_id) if label is _WRAP_LABEL else keyring.scope_key(key_id)
    try:
        return key.aead.decrypt(
            blob[_O_DEK_NONCE:_O_WRAPPED], blob[_O_WRAPPED:_O_NONCE], label + key_id + context
        )
    except InvalidTag:
        raise DecryptionError(_UNWRAP_FAILED) from None


def _decrypt(blob: bytes, dek: bytes, context: bytes, label: bytes) -> bytes:
    try:
        return AESGCM(dek).decrypt(blob[_O_NONCE:_O_CT], blob[_O_CT:], label + context)
    except InvalidTag:
        raise DecryptionError(f"{_FAILED}: corrupted data") from None


def _open_scoped(blob: bytes, keyring: KeyRing, context: bytes) -> str:
    context += keyring.scope_binding()
    dek = _unwrap(blob, keyring, context, _S_WRAP_LABEL)
    try:
        return _decrypt(blob, dek, context, _S_DATA_LABEL).decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptionError(f"{_FAILED}: corrupted data") from None


def open_envelope(text: str, keyring: KeyRing, context: bytes = b"") -> str:
    """Decrypt an envelope with the key its id names. Raises ``DecryptionError``."""
    return open_blob(decode(text), keyring, context)


def open_blob(blob: bytes, keyring: KeyRing, context: bytes = b"") -> str:
    """``open_envelope`` of an envelope's checked bytes (from ``decode``)."""
    # _unwrap and _decrypt written out: this is every read's path, and a Python call costs
    # about as much as the slicing it wraps.
    if blob[0] == SCOPED_VERSION:
        return _open_scoped(blob, keyring, context)
    key_id = blob[_O_KID:_O_DEK_NONCE]
    key = keyring.get(key_id)
    try:
        dek = key.aead.decrypt(
            blob[_O_DEK_NONCE:_O_WRAPPED], blob[_O_WRAPPED:_O_NONCE], _WRAP_LABEL + key_id + context
        )
    except InvalidTag:
        raise DecryptionError(_UNWRAP_FAILED) from None
    try:
        data = AESGCM(dek).decrypt(blob[_O_NONCE:_O_CT], blob[_O_CT:], _DATA_LABEL + context)
        return data.decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        raise DecryptionError(f"{_FAILED}: corrupted data") from None


def rewrap(text: str, keyring: KeyRing, context: bytes = b"") -> str:
    """Re-wrap the data key under the current master key. The data ciphertext is kept as is.

    Returns ``text`` unchanged when it is already wrapped by the current key. The data is
    decrypted once to prove the envelope is intact before it is vouched for under the new key.
    """
    blob = decode(text)
    current = keyring.current if blob[0] == _VERSION else keyring.scope_current()
    if blob[_O_KID:_O_DEK_NONCE] == current.key_id:
        return text
    return rewrap_blob(text, blob, keyring, context)


def rewrap_blob(text: str, blob: bytes, keyring: KeyRing, context: bytes = b"") -> str:
    """``rewrap`` of an envelope's text and its checked bytes (re-wrapped even if current).

    A scoped envelope (``SCOPED_VERSION``) is re-wrapped under its scope's current scope key."""
    if blob[0] == SCOPED_VERSION:
        current = keyring.scope_current()
        context += keyring.scope_binding()
        version, wrap_label, data_label = _SCOPED_BYTE, _S_WRAP_LABEL, _S_DATA_LABEL
    else:
        current, version, wrap_label, data_label = (
            keyring.current,
            _VERSION_BYTE,
            _WRAP_LABEL,
            _DATA_LABEL,
        )
    dek = _unwrap(blob, keyring, context, wrap_label)
    _decrypt(blob, dek, context, data_label)
    dek_nonce = os.urandom(_NONCE)
    wrapped = current.aead.encrypt(dek_nonce, dek, wrap_label + current.key_id + context)
    # The header is a whole number of base64 groups: the text after it (the data nonce and
    # ciphertext) is reused as it is instead of being encoded again.
    head = binascii.b2a_base64(version + current.key_id + dek_nonce + wrapped, newline=False)
    return PREFIX + head.decode("ascii") + text[_PREFIX_LEN + _HEAD_CHARS :]
