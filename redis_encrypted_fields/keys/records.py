"""The key store's records: one per master key (``KeyRecord``), its state, and the KMS
encryption context that binds its wrapped key to its key id, purpose and creation time."""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import KeyStoreError
from .ring import KEY_ID_SIZE

__all__ = [
    "CONTEXT_VERSION",
    "KNOWN_PROVIDERS",
    "PURPOSE",
    "KeyRecord",
    "KeyState",
    "deny_statement",
    "encryption_context",
    "instant",
    "iso",
    "parse_key_id",
]

PURPOSE = "redis-encrypted-fields master key"
# The KMS that wrapped a key (``KeyRecord.provider``; ``providers.provider_name`` of a key id).
KNOWN_PROVIDERS = ("aws", "vault", "gcp", "azure")


class KeyState(enum.StrEnum):
    ACTIVE = "active"  # encrypts new values (one key) and decrypts
    DECRYPT_ONLY = "decrypt-only"
    # Wrapped key deleted from the store. A copy of its record (a backup) still unwraps until
    # the KMS key policy denies its key id (``deny_statement``).
    RETIRED = "retired"


# Context version 2 (keys created from now on) also binds the creation time: a replayed record
# cannot claim to be newer than it is without the KMS refusing to unwrap it.
CONTEXT_VERSION = 2


def encryption_context(key_id_hex: str, created_at: str | None = None) -> dict[str, str]:
    """The KMS encryption context of a master key: its key id and purpose, and its creation time
    for records of context version 2."""
    context = {"purpose": PURPOSE, "key_id": key_id_hex}
    if created_at is not None:
        context["created_at"] = created_at
    return context


def deny_statement(key_id_hex: str) -> dict[str, Any]:
    """The KMS key policy statement that denies unwrapping one master key, whatever its record
    says: what makes retiring a key irreversible (``keys retire`` prints it)."""
    return {
        "Sid": f"DenyRetiredMasterKey{key_id_hex}",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:Decrypt",
        "Resource": "*",
        "Condition": {
            "StringEquals": {
                f"kms:EncryptionContext:{name}": value
                for name, value in encryption_context(key_id_hex).items()
            }
        },
    }


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds")


def instant(text: str) -> datetime.datetime:
    """A record's timestamp as an aware datetime (ValueError if it is not one)."""
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("a timestamp without a time zone")
    return moment


def parse_key_id(text: str) -> bytes:
    try:
        key_id = bytes.fromhex(text)
    except ValueError:
        key_id = b""
    if len(key_id) != KEY_ID_SIZE or len(text) != 2 * KEY_ID_SIZE:
        raise KeyStoreError(f"{text!r} is not a key id (16 hex digits, as `keys list` shows)")
    return key_id


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One master key in the store. ``wrapped`` is KMS ciphertext (empty once retired)."""

    key_id: str  # 16 hex digits, the id envelopes carry
    state: KeyState
    created_at: str  # ISO 8601, UTC
    kms_key_id: str  # the KMS key that wrapped it
    wrapped: bytes = field(default=b"", repr=False)
    deactivated_at: str | None = None  # when it stopped being active (ISO 8601, UTC)
    context_version: int = 1  # 2: created_at is in the KMS encryption context
    provider: str = "aws"  # the KMS that wrapped it: aws, vault, gcp, azure (providers.py)

    @property
    def is_active(self) -> bool:
        return self.state is KeyState.ACTIVE

    @property
    def context(self) -> dict[str, str]:
        """The KMS encryption context its key was wrapped with."""
        bound = self.created_at if self.context_version >= 2 else None
        return encryption_context(self.key_id, bound)

    def as_dict(self) -> dict[str, str | None]:
        """What ``keys list --json`` prints for it."""
        return {
            "key_id": self.key_id,
            "state": self.state.value,
            "created_at": self.created_at,
            "deactivated_at": self.deactivated_at,
            "provider": self.provider,
            "kms_key_id": self.kms_key_id,
        }

    def to_json(self) -> str:
        doc: dict[str, Any] = {k: v for k, v in self.as_dict().items() if v is not None}
        del doc["key_id"]  # the hash field
        doc["wrapped"] = base64.b64encode(self.wrapped).decode("ascii")
        if self.context_version != 1:
            doc["context_version"] = self.context_version
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, key_id: str, text: str) -> KeyRecord:
        parse_key_id(key_id)
        try:
            doc = json.loads(text)
            deactivated_at = doc.get("deactivated_at")
            record = cls(
                key_id=key_id,
                state=KeyState(doc["state"]),
                created_at=str(doc["created_at"]),
                kms_key_id=str(doc["kms_key_id"]),
                wrapped=base64.b64decode(doc["wrapped"], validate=True),
                deactivated_at=None if deactivated_at is None else str(deactivated_at),
                context_version=doc.get("context_version", 1),
                # Records written before there were other providers are AWS KMS's.
                provider=str(doc.get("provider", "aws")),
            )
            # Timestamps are compared (which key is newest, how long one has been inactive).
            instant(record.created_at)
            if record.deactivated_at is not None:
                instant(record.deactivated_at)
            if type(record.context_version) is not int or record.context_version not in (1, 2):
                raise ValueError("unknown context version")
            if record.provider not in KNOWN_PROVIDERS:
                raise ValueError("unknown provider")
            return record
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise KeyStoreError(f"the key store record of {key_id} is malformed") from None
