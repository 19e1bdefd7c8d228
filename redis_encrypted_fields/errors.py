"""The library's exceptions: one base, a few precise subclasses, no secret in any message."""

from __future__ import annotations

__all__ = [
    "DecryptionError",
    "EncryptionError",
    "KeyStoreError",
    "KmsError",
    "MaskedSecretError",
    "MasterKeyError",
    "PlaintextSecretError",
]


class EncryptionError(Exception):
    """Base class of every error this library raises.

    Deliberately not a ``ValueError``: pydantic turns ``ValueError``s raised in validators into
    ``ValidationError``s, and callers must be able to catch these by their own type.
    """


class MasterKeyError(EncryptionError):
    """The master key is missing or malformed."""


class KeyStoreError(MasterKeyError):
    """The key store cannot supply or change a master key (no active key, a record that does not
    match its key id, a retirement refused). Names the key id."""


class KmsError(KeyStoreError):
    """A KMS call failed or was refused (unreachable, key disabled, access denied, a wrapped key
    that does not unwrap). Names the key id and the KMS's error."""


class DecryptionError(EncryptionError):
    """A stored value could not be decrypted: wrong key, tampered, truncated or misplaced."""


class PlaintextSecretError(DecryptionError):
    """A plaintext value was read from Redis while plaintext reads are disabled."""


class MaskedSecretError(EncryptionError):
    """A mask (such as ``***``) would have been stored in place of a secret."""
