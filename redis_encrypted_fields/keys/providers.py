"""Which KMS a key id names: ``provider_for(kms_key_id)``, the one place that reads it.

- an AWS KMS key id, ARN or alias (``alias/...``): ``AwsKms``, as before;
- ``vault://<mount>/<key>`` (``vault://transit/<key>``): ``VaultTransit``, at ``VAULT_ADDR``;
- ``gcpkms://projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>``: ``GcpKms``;
- ``azurekv://<vault>.vault.azure.net/keys/<key>``: ``AzureKeyVault``.

Each provider imports its SDK only when it first calls its service.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import KmsError, printable
from .aws import AwsKms
from .azure import AzureKeyVault
from .gcp import GcpKms
from .kms import KmsProvider
from .vault import VaultTransit

__all__ = ["PROVIDERS", "provider_for", "provider_name"]

# What a key store record says wrapped its key (``KeyRecord.provider``), by key id scheme.
PROVIDERS = {"vault": "vault", "gcpkms": "gcp", "azurekv": "azure"}
_FORMS = (
    "an AWS KMS key id, ARN or alias, vault://<mount>/<key>, "
    "gcpkms://projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k> or "
    "azurekv://<vault>.vault.azure.net/keys/<key>"
)


def provider_name(kms_key_id: str) -> str:
    """``aws``, ``vault``, ``gcp`` or ``azure``: the KMS a key id (or URI) names."""
    scheme, sep, _ = kms_key_id.strip().partition("://")
    if not sep:
        return "aws"
    name = PROVIDERS.get(scheme.lower())
    if name is None:
        raise KmsError(f"{printable(kms_key_id)} is not a KMS key: give {_FORMS}")
    return name


def provider_for(kms_key_id: str, environ: Mapping[str, str] | None = None) -> KmsProvider:
    """The provider of the KMS key ``kms_key_id`` names (``KmsError`` if it names none)."""
    text = kms_key_id.strip()
    name = provider_name(text)
    if name == "aws":
        return AwsKms(text)
    rest = text.partition("://")[2]
    if name == "vault":
        mount, _, key = rest.strip("/").rpartition("/")
        if not mount or not key:
            raise KmsError(f"{printable(text)}: a Vault transit key is vault://<mount>/<key>")
        return VaultTransit(key, mount=mount, environ=environ)
    if name == "gcp":
        return GcpKms.from_uri(text)
    return AzureKeyVault.from_uri(text)
