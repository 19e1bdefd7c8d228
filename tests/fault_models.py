"""A model for the cluster fault tests, importable by the CLI as ``fault_models`` (cwd = tests/).

It lives on the fault tests' own cluster: their fixture sets ``_meta.database``, and the CLI is
given ``--url``."""

from __future__ import annotations

import redis_om
from cluster_models import _not_migrated

from redis_encrypted_fields import EncryptedModel, EncryptedStr


class FaultAccount(EncryptedModel, redis_om.HashModel, index=True):
    """On the fault tests' own cluster (their fixture sets ``_meta.database``)."""

    name: str
    password: EncryptedStr

    class Meta:
        model_key_prefix = "fault.account"


_not_migrated(FaultAccount)
