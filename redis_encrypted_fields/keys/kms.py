"""KMS providers: the seam between the key store and a key management service.

The key store needs three things from a KMS, each bound to an encryption context (key-value
pairs the KMS authenticates with the ciphertext and checks on decryption):

- ``generate(context)``: 32 random bytes for a new master key;
- ``wrap(plaintext, context)``: encrypt them under the provider's KMS key;
- ``unwrap(wrapped, context)``: decrypt them, refused if the context is not the one they were
  wrapped with.

Each provider is a module of its own: ``aws`` (``AwsKms``, AWS KMS through boto3). Another KMS
(Google Cloud KMS, Azure Key Vault, Vault Transit) is one class with the same three methods and
the ``kms_key_id`` attribute; see docs/keys.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

__all__ = ["KmsProvider", "WrappedKey"]


class WrappedKey(NamedTuple):
    """Key material encrypted by a KMS, and the KMS key that did it (as the KMS names it)."""

    blob: bytes
    kms_key_id: str


class KmsProvider(Protocol):
    """What the key store asks of a KMS. Raise ``KmsError`` (no key material in it) on failure."""

    @property
    def kms_key_id(self) -> str:
        """The KMS key that wraps new master keys, as configured (id, ARN or alias)."""
        ...

    def generate(self, context: Mapping[str, str]) -> bytes:
        """32 random bytes from the KMS, for a new master key."""
        ...

    def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Encrypt ``plaintext`` under ``kms_key_id``, bound to ``context``."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Decrypt what ``wrap`` returned; refuse another context or another KMS key."""
        ...
