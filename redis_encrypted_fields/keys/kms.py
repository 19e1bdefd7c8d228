"""KMS providers: the seam between the key store and a key management service.

The key store needs three things from a KMS, each bound to an encryption context (key-value
pairs the KMS authenticates with the ciphertext and checks on decryption):

- ``generate(context)``: 32 random bytes for a new master key;
- ``wrap(plaintext, context)``: encrypt them under the provider's KMS key;
- ``unwrap(wrapped, context)``: decrypt them, refused if the context is not the one they were
  wrapped with.

Each provider is a module of its own: ``aws`` (``AwsKms``, AWS KMS through boto3), ``gcp``
(``GcpKms``, Google Cloud KMS), ``azure`` (``AzureKeyVault``). Another KMS is one class with the
same three methods and the ``kms_key_id`` attribute; see docs/keys.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import NamedTuple, Protocol

__all__ = ["KmsProvider", "WrappedKey", "canonical_context"]


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


def canonical_context(context: Mapping[str, str]) -> bytes:
    """An encryption context as the bytes a provider authenticates (GCP KMS additional
    authenticated data, the signed digest of Azure Key Vault): JSON with sorted keys and no
    spaces, UTF-8. One mapping always gives the same bytes, and two mappings never give the
    same bytes (JSON strings are quoted and escaped, so no name or value can pass for another)."""
    for name, value in context.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("an encryption context maps strings to strings")
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode("utf-8")
