"""Envelope encryption at rest for redis-om model fields: declare a field as ``EncryptedStr``."""

from __future__ import annotations

from .api import decrypt_secret, encrypt_secret, get_secret_value, is_encrypted
from .errors import (
    DecryptionError,
    EncryptionError,
    MaskedSecretError,
    MasterKeyError,
    PlaintextSecretError,
)
from .fields import EncryptedStr, Mask
from .keys import KeyRing, MasterKey, generate_master_key, get_keyring, set_keyring
from .models import EncryptedModel, set_plaintext_reads

__all__ = [
    "DecryptionError",
    "EncryptedModel",
    "EncryptedStr",
    "EncryptionError",
    "KeyRing",
    "Mask",
    "MaskedSecretError",
    "MasterKey",
    "MasterKeyError",
    "PlaintextSecretError",
    "decrypt_secret",
    "encrypt_secret",
    "generate_master_key",
    "get_keyring",
    "get_secret_value",
    "is_encrypted",
    "set_keyring",
    "set_plaintext_reads",
]

__version__ = "0.1.0"
