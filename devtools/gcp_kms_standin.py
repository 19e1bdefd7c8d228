"""A loopback stand-in for Google Cloud KMS, REST API v1: ``encrypt`` and ``decrypt`` of
``projects/*/locations/*/keyRings/*/cryptoKeys/*`` (https://cloud.google.com/kms/docs/reference/rest).

For the tests of ``GcpKms`` through the official client (``transport="rest"``,
``api_endpoint=standin.url``)::

    with GcpKmsStandIn() as kms:
        name = kms.create_key("ring", "key")       # projects/standin/locations/global/...
        token = kms.token                          # the bearer token it accepts
        kms.disable(name); kms.destroy(name)       # the primary version DISABLED / DESTROYED
        kms.requests("encrypt")                    # what it served

Like the service, it refuses a request without a valid ``Authorization: Bearer`` token (401
UNAUTHENTICATED), a body that is not the JSON of the request message, bytes fields that are not
base64, and it encrypts with real AES-256-GCM, the additional authenticated data (AAD) bound:
decrypting with other AAD, another key or a changed ciphertext fails (400 INVALID_ARGUMENT). A key
it does not have is 404 NOT_FOUND, a version not ENABLED is 400 FAILED_PRECONDITION; error bodies
are Google's JSON error form. Not checked: IAM, quotas, CRC32C fields (accepted, not verified).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from devtools.http_standin import HttpError, Request, StandIn, json_body

__all__ = ["GcpKmsStandIn"]

PROJECT = "standin"
LOCATION = "global"
_PATH = re.compile(
    r"/v1/(?P<name>projects/[^/:]+/locations/[^/:]+/keyRings/[^/:]+/cryptoKeys/[^/:]+)"
    r":(?P<op>encrypt|decrypt)"
)
_MAX_BYTES = 64 * 1024  # the service's limit on plaintext and AAD


def _error(status: int, code: str, message: str) -> HttpError:
    return HttpError(status, {"error": {"code": status, "message": message, "status": code}})


def _bytes_field(doc: dict[str, Any], *names: str) -> bytes | None:
    """A proto3 JSON ``bytes`` field (standard or URL-safe base64), by its JSON or proto name."""
    for name in names:
        if name in doc:
            value = doc[name]
            if not isinstance(value, str):
                raise _error(400, "INVALID_ARGUMENT", f"Invalid value at '{name}': not a string")
            try:
                return base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raise _error(
                    400, "INVALID_ARGUMENT", f"Invalid value at '{name}' (TYPE_BYTES), Base64"
                ) from None
    return None


@dataclass
class Version:
    number: int
    material: bytes
    state: str = "ENABLED"


@dataclass
class CryptoKey:
    versions: list[Version] = field(default_factory=list)
    primary: int = 0  # index into versions


class GcpKmsStandIn(StandIn):
    """Cloud KMS's encrypt and decrypt on a free loopback port (plain HTTP, as the REST
    transport allows for ``http://`` endpoints)."""

    def __init__(self) -> None:
        super().__init__()
        self.token = secrets.token_urlsafe(16)
        self.keys: dict[str, CryptoKey] = {}

    def create_key(self, ring: str, key: str, *, location: str = LOCATION) -> str:
        """A new ENCRYPT_DECRYPT CryptoKey with one enabled version; its resource name."""
        name = f"projects/{PROJECT}/locations/{location}/keyRings/{ring}/cryptoKeys/{key}"
        with self.lock:
            self.keys[name] = CryptoKey([Version(1, AESGCM.generate_key(256))])
        return name

    def rotate(self, name: str) -> None:
        """A new primary version (the old ones stay enabled, as after a rotation)."""
        with self.lock:
            key = self.keys[name]
            key.versions.append(Version(len(key.versions) + 1, AESGCM.generate_key(256)))
            key.primary = len(key.versions) - 1

    def set_state(self, name: str, state: str, version: int | None = None) -> None:
        """ENABLED, DISABLED or DESTROYED, for one version (default: the primary)."""
        with self.lock:
            key = self.keys[name]
            target = key.versions[key.primary] if version is None else key.versions[version - 1]
            target.state = state

    def disable(self, name: str) -> None:
        self.set_state(name, "DISABLED")

    def enable(self, name: str) -> None:
        self.set_state(name, "ENABLED")

    def destroy(self, name: str) -> None:
        self.set_state(name, "DESTROYED")

    def handle(self, request: Request) -> tuple[int, Any]:
        match = _PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            raise _error(404, "NOT_FOUND", f"The requested URL {request.path} was not found.")
        name, request.operation = match.group("name"), match.group("op")
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {self.token}":
            raise _error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise _error(400, "INVALID_ARGUMENT", "Content-Type must be application/json")
        doc = json_body(request, _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."))
        aad = _bytes_field(doc, "additionalAuthenticatedData", "additional_authenticated_data")
        aad = aad or b""
        if len(aad) > _MAX_BYTES:
            raise _error(400, "INVALID_ARGUMENT", "additional_authenticated_data is too large")
        with self.lock:
            key = self.keys.get(name)
            if key is None:
                raise _error(404, "NOT_FOUND", f"CryptoKey {name} not found.")
            if request.operation == "encrypt":
                return 200, self._encrypt(name, key, doc, aad)
            return 200, self._decrypt(name, key, doc, aad)

    def _encrypt(self, name: str, key: CryptoKey, doc: dict[str, Any], aad: bytes) -> Any:
        plaintext = _bytes_field(doc, "plaintext")
        if plaintext is None:
            raise _error(400, "INVALID_ARGUMENT", "plaintext is required.")
        if len(plaintext) > _MAX_BYTES:
            raise _error(400, "INVALID_ARGUMENT", "plaintext is too large")
        version = key.versions[key.primary]
        version_name = f"{name}/cryptoKeyVersions/{version.number}"
        _usable(version, version_name)
        nonce = os.urandom(12)
        sealed = AESGCM(version.material).encrypt(nonce, plaintext, aad)
        ciphertext = struct.pack(">I", version.number) + nonce + sealed
        return {
            "name": version_name,
            "ciphertext": base64.b64encode(ciphertext).decode(),
            "protectionLevel": "SOFTWARE",
        }

    def _decrypt(self, name: str, key: CryptoKey, doc: dict[str, Any], aad: bytes) -> Any:
        ciphertext = _bytes_field(doc, "ciphertext")
        if ciphertext is None:
            raise _error(400, "INVALID_ARGUMENT", "ciphertext is required.")
        refused = _error(
            400,
            "INVALID_ARGUMENT",
            "Decryption failed: verify that 'name' refers to the correct CryptoKey.",
        )
        if len(ciphertext) < 4 + 12 + 16:
            raise refused
        (number,) = struct.unpack(">I", ciphertext[:4])
        if not 1 <= number <= len(key.versions):
            raise refused
        version = key.versions[number - 1]
        _usable(version, f"{name}/cryptoKeyVersions/{number}")
        try:
            plaintext = AESGCM(version.material).decrypt(ciphertext[4:16], ciphertext[16:], aad)
        except InvalidTag:
            raise refused from None
        return {
            "plaintext": base64.b64encode(plaintext).decode(),
            "usedPrimary": number - 1 == key.primary,
            "protectionLevel": "SOFTWARE",
        }


def _usable(version: Version, version_name: str) -> None:
    if version.state != "ENABLED":
        raise _error(
            400,
            "FAILED_PRECONDITION",
            f"The request cannot be fulfilled. Resource {version_name} has value "
            f"{version.state} in field crypto_key_version.state.",
        )
