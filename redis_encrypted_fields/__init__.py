"""Envelope encryption at rest for redis-om model fields: declare a field as ``EncryptedStr``."""

from __future__ import annotations

from .api import decrypt_secret, encrypt_secret, get_secret_value, is_encrypted
from .audit import AuditEvent, add_audit_hook, remove_audit_hook
from .errors import (
    DecryptionError,
    EncryptionError,
    KeyStoreError,
    KmsError,
    MaskedSecretError,
    MasterKeyError,
    PlaintextSecretError,
)
from .fields import EncryptedStr, Mask, UrlMask
from .keys import KeyRing, MasterKey, generate_master_key, get_keyring, set_keyring
from .keystore import KeyStore, StoreKeyRing
from .kms import AwsKms, KmsProvider
from .models import EncryptedModel, set_plaintext_reads

__all__ = [
    "AuditEvent",
    "AwsKms",
    "DecryptionError",
    "EncryptedModel",
    "EncryptedStr",
    "EncryptionError",
    "KeyRing",
    "KeyStore",
    "KeyStoreError",
    "KmsError",
    "KmsProvider",
    "Mask",
    "MaskedSecretError",
    "MasterKey",
    "MasterKeyError",
    "PlaintextSecretError",
    "StoreKeyRing",
    "UrlMask",
    "add_audit_hook",
    "decrypt_secret",
    "encrypt_secret",
    "generate_master_key",
    "get_keyring",
    "get_secret_value",
    "is_encrypted",
    "remove_audit_hook",
    "set_keyring",
    "set_plaintext_reads",
]

__version__ = "0.1.0"
