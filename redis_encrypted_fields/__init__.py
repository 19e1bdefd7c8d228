"""Envelope encryption at rest for redis-om model fields: declare a field as ``EncryptedStr``
or ``Encrypted[T]``."""

from __future__ import annotations

from .audit import AuditEvent, add_audit_hook, remove_audit_hook
from .compat import (
    decrypt_secret,
    encrypt_secret,
    get_secret_value,
    is_encrypted,
    migrate_plaintext_to_encrypted,
)
from .errors import (
    BlindIndexError,
    ConcurrentChangeError,
    ConfigurationError,
    DecryptionError,
    EncryptionError,
    IndexKeyError,
    KeyStoreError,
    KmsError,
    MaskedSecretError,
    MasterKeyError,
    PlaintextSecretError,
    ScopeValueError,
    ShreddedKeyError,
    StoredMaskError,
    StoredTypeError,
    ValueTypeError,
)
from .keys import (
    AwsKms,
    KeyRecord,
    KeyRing,
    KeyState,
    KeyStore,
    KeyUsage,
    KmsProvider,
    MasterKey,
    StaticKeyRing,
    StoreKeyRing,
    WrappedKey,
    deny_statement,
    generate_master_key,
    get_keyring,
    set_keyring,
)
from .model.blind_index import BlindIndex, IndexPlan, plan_index
from .model.errors import UnsupportedQueryError
from .model.fields import EncryptedStr, Mask, UrlMask
from .model.mixin import EncryptedModel, set_plaintext_reads
from .model.scope import KeyScope
from .model.typed import Encrypted, EncryptedBytes
from .ops import Failure, Group, Operation, Report, Scanned
from .ops.scopes import ShredResult, rotate_scope, shred_scope
from .ops.topology import TopologyError
from .version import __version__

__all__ = [
    "AuditEvent",
    "AwsKms",
    "BlindIndex",
    "BlindIndexError",
    "ConcurrentChangeError",
    "ConfigurationError",
    "DecryptionError",
    "Encrypted",
    "EncryptedBytes",
    "EncryptedModel",
    "EncryptedStr",
    "EncryptionError",
    "Failure",
    "Group",
    "IndexKeyError",
    "IndexPlan",
    "KeyRecord",
    "KeyRing",
    "KeyScope",
    "KeyState",
    "KeyStore",
    "KeyStoreError",
    "KeyUsage",
    "KmsError",
    "KmsProvider",
    "Mask",
    "MaskedSecretError",
    "MasterKey",
    "MasterKeyError",
    "Operation",
    "PlaintextSecretError",
    "Report",
    "Scanned",
    "ScopeValueError",
    "ShredResult",
    "ShreddedKeyError",
    "StaticKeyRing",
    "StoreKeyRing",
    "StoredMaskError",
    "StoredTypeError",
    "TopologyError",
    "UnsupportedQueryError",
    "UrlMask",
    "ValueTypeError",
    "WrappedKey",
    "__version__",
    "add_audit_hook",
    "decrypt_secret",
    "deny_statement",
    "encrypt_secret",
    "generate_master_key",
    "get_keyring",
    "get_secret_value",
    "is_encrypted",
    "migrate_plaintext_to_encrypted",
    "plan_index",
    "remove_audit_hook",
    "rotate_scope",
    "set_keyring",
    "set_plaintext_reads",
    "shred_scope",
]
