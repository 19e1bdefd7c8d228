"""Master keys and where they come from, bottom up: KMS providers (``kms``: the interface,
``aws``: AWS KMS, ``vault``: Vault/OpenBao transit, ``gcp``: Google Cloud KMS, ``azure``: Azure
Key Vault; ``providers``: which a key id names; ``sdk_logs`` keeps the SDKs' debug logs out of a
KMS call), key rings (``ring``: ``MasterKey``, the ``KeyRing`` interface, the static ring;
``secrets_manager``: keys from an AWS Secrets Manager secret), the KMS-backed key store
(``store``: its records and their states) and the cached ring over it (``store_ring``),
scheduled rotation (``schedule``), and the environment factory (``env``: ``get_keyring``,
``set_keyring``) above them.

Imports neither pydantic nor redis-om. The names below are this layer's public surface; the
package ``redis_encrypted_fields`` says which of them users see.
"""

from __future__ import annotations

from .aws import AwsKms
from .azure import AzureKeyVault
from .env import get_keyring, set_keyring
from .gcp import GcpKms
from .kms import KmsProvider, WrappedKey
from .providers import provider_for
from .ring import (
    ENV_MASTER_KEY,
    ENV_PREVIOUS_MASTER_KEYS,
    KEY_ID_SIZE,
    KeyRing,
    MasterKey,
    StaticKeyRing,
    generate_master_key,
)
from .secrets_manager import SecretsManagerKeyRing
from .store import (
    ENV_KMS_KEY_ID,
    KeyRecord,
    KeyState,
    KeyStore,
    KeyUsage,
    deny_statement,
)
from .store_ring import StoreKeyRing
from .vault import VaultTransit

__all__ = [
    "ENV_KMS_KEY_ID",
    "ENV_MASTER_KEY",
    "ENV_PREVIOUS_MASTER_KEYS",
    "KEY_ID_SIZE",
    "AwsKms",
    "AzureKeyVault",
    "GcpKms",
    "KeyRecord",
    "KeyRing",
    "KeyState",
    "KeyStore",
    "KeyUsage",
    "KmsProvider",
    "MasterKey",
    "SecretsManagerKeyRing",
    "StaticKeyRing",
    "StoreKeyRing",
    "VaultTransit",
    "WrappedKey",
    "deny_statement",
    "generate_master_key",
    "get_keyring",
    "provider_for",
    "set_keyring",
]
