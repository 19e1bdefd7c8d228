"""A loopback stand-in for Azure Key Vault's keys REST API: ``GET {vault}/keys/{name}/{version}``
and ``POST .../wrapkey``, ``unwrapkey``, ``sign``, ``verify``
(https://learn.microsoft.com/rest/api/keyvault/keys), over HTTPS with a self-signed certificate.

For the tests of ``AzureKeyVault`` through the official SDK (``CryptographyClient``)::

    with AzureKeyVaultStandIn() as vault:
        kid = vault.create_key("wrapping")      # https://127.0.0.1:<port>/keys/wrapping/<version>
        vault.credential                        # a TokenCredential of a token it accepts
        vault.client_options                    # connection_verify (its CA), no resource check
        vault.disable("wrapping"); vault.delete("wrapping"); vault.forbid_get("wrapping")
        vault.requests("unwrapkey")             # what it served

Like the service: a request without a bearer token is answered 401 with the
``WWW-Authenticate: Bearer authorization=..., resource=...`` challenge the SDK's challenge flow
starts from; a token it did not issue is 401; ``api-version`` must be a known version; bodies are
JSON with base64url (unpadded) values; wrap and unwrap take RSA-OAEP-256 only and sign/verify
PS256 (real RSA, 2048-bit, from the cryptography package); an operation not in the key's
``key_ops``, or on a disabled key, is 403; a deleted or unknown key is 404 ``KeyNotFound``. The
SDK checks the challenge's resource against the vault's host name, which 127.0.0.1 cannot pass:
clients turn that check off (``verify_challenge_resource=False``). Not emulated: RBAC beyond
``forbid_get``, soft-delete recovery, key rotation policies.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import re
import secrets
import shutil
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.x509.oid import NameOID

from devtools.http_standin import HttpError, Request, StandIn, json_body

__all__ = ["API_VERSIONS", "AzureKeyVaultStandIn", "StaticTokenCredential"]

API_VERSIONS = frozenset(
    {"7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-01-01"}
)
TENANT = "00000000-0000-0000-0000-00000000cafe"
CHALLENGE = (
    f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
    'resource="https://vault.azure.net"'
)
_PATH = re.compile(
    r"/keys/(?P<name>[0-9A-Za-z-]{1,127})(?:/(?P<version>[0-9A-Za-z]*))?"
    r"(?:/(?P<op>wrapkey|unwrapkey|sign|verify))?/?"
)
_OPERATIONS = {"wrapkey": "wrapKey", "unwrapkey": "unwrapKey", "sign": "sign", "verify": "verify"}


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> HttpError:
    return HttpError(status, {"error": {"code": code, "message": message}}, headers)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(value: Any) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", value):
        raise _error(400, "BadParameter", "Property 'value' is not a valid base64url string.")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _error(
            400, "BadParameter", "Property 'value' is not a valid base64url string."
        ) from None


def _int_bytes(number: int) -> bytes:
    return number.to_bytes((number.bit_length() + 7) // 8, "big")


class StaticTokenCredential:
    """An azure-core ``TokenCredential`` that always gives one token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.requested = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.requested += 1
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class Key:
    versions: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    latest: str = ""
    enabled: bool = True
    deleted: bool = False
    get_forbidden: bool = False
    key_ops: tuple[str, ...] = ("encrypt", "decrypt", "wrapKey", "unwrapKey", "sign", "verify")


class AzureKeyVaultStandIn(StandIn):
    """Key Vault's key operations on a free loopback port, over TLS with its own certificate."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="azure-kv-standin-"))
        self.ca_file = self.workdir / "ca.pem"
        super().__init__(self._tls())
        self.token = secrets.token_urlsafe(16)
        self.keys: dict[str, Key] = {}

    def _tls(self) -> ssl.SSLContext:
        """A self-signed certificate for 127.0.0.1 (clients trust ``ca_file``)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "azure-kv-standin")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file = self.workdir / "key.pem"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.ca_file, key_file)
        return context

    @property
    def credential(self) -> StaticTokenCredential:
        return StaticTokenCredential(self.token)

    @property
    def client_options(self) -> dict[str, Any]:
        """What a ``CryptographyClient`` needs to talk to the stand-in."""
        return {"connection_verify": str(self.ca_file), "verify_challenge_resource": False}

    def key_url(self, name: str, version: str | None = None) -> str:
        return f"{self.url}/keys/{name}" + (f"/{version}" if version else "")

    # --- state ---------------------------------------------------------------------------------

    def create_key(self, name: str) -> str:
        """A new RSA 2048 key (or a new version of ``name``); its kid with the version."""
        version = secrets.token_hex(16)
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self.lock:
            key = self.keys.get(name)
            if key is None or key.deleted:
                key = self.keys[name] = Key()
            key.versions[version] = private
            key.latest = version
        return self.key_url(name, version)

    def disable(self, name: str) -> None:
        with self.lock:
            self.keys[name].enabled = False

    def enable(self, name: str) -> None:
        with self.lock:
            self.keys[name].enabled = True

    def delete(self, name: str) -> None:
        with self.lock:
            self.keys[name].deleted = True

    def forbid_get(self, name: str, forbidden: bool = True) -> None:
        """The caller has no keys/get permission (its role lacks ``keys/read``)."""
        with self.lock:
            self.keys[name].get_forbidden = forbidden

    # --- requests ------------------------------------------------------------------------------

    def handle(self, request: Request) -> tuple[int, Any]:
        match = _PATH.fullmatch(request.path)
        if match is None:
            raise _error(404, "NotFound", f"The requested resource {request.path} was not found")
        op = match.group("op")
        request.operation = op or "get"
        auth = request.headers.get("authorization")
        if auth is None:
            raise _error(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                {"WWW-Authenticate": CHALLENGE},
            )
        if auth != f"Bearer {self.token}":
            raise _error(
                401,
                "Unauthorized",
                "AKV10022: Invalid audience or token. Expected https://vault.azure.net.",
                {"WWW-Authenticate": CHALLENGE},
            )
        versions = request.query.get("api-version", [])
        if len(versions) != 1 or versions[0] not in API_VERSIONS:
            raise _error(
                400,
                "BadParameter",
                "The 'api-version' query parameter is missing or not a supported version.",
            )
        if (op is None) != (request.method == "GET") or request.method not in ("GET", "POST"):
            raise _error(405, "MethodNotAllowed", f"{request.method} is not allowed here")
        name, version = match.group("name"), match.group("version") or ""
        with self.lock:
            key = self.keys.get(name)
            if key is None or key.deleted:
                raise _error(
                    404,
                    "KeyNotFound",
                    f"A key with (name/id) {name} was not found in this key vault. If you "
                    "recently deleted this key you may be able to recover it using the correct "
                    "recovery command.",
                )
            version = version or key.latest
            private = key.versions.get(version)
            if private is None:
                raise _error(
                    404, "KeyNotFound", f"A key with (name/id) {name}/{version} was not found."
                )
            operation = _OPERATIONS.get(op or "", "get")
            if not key.enabled:
                raise _error(
                    403, "Forbidden", f"Operation {operation} is not allowed on a disabled key."
                )
            kid = self.key_url(name, version)
            if op is None:
                if key.get_forbidden:
                    raise _error(
                        403,
                        "Forbidden",
                        "Caller is not authorized to perform action on resource. "
                        "Action: 'Microsoft.KeyVault/vaults/keys/read'",
                    )
                return 200, self._bundle(kid, key, private)
            if operation not in key.key_ops:
                raise _error(
                    403, "Forbidden", f"Operation {operation} is not permitted on this key."
                )
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise _error(400, "BadParameter", "Content-Type must be application/json")
        doc = json_body(request, _error(400, "BadParameter", "The request body is not JSON."))
        return 200, self._operate(str(op), kid, private, doc)

    def _bundle(self, kid: str, key: Key, private: rsa.RSAPrivateKey) -> dict[str, Any]:
        public = private.public_key().public_numbers()
        now = int(time.time())
        return {
            "key": {
                "kid": kid,
                "kty": "RSA",
                "key_ops": list(key.key_ops),
                "n": _b64url(_int_bytes(public.n)),
                "e": _b64url(_int_bytes(public.e)),
            },
            "attributes": {
                "enabled": key.enabled,
                "created": now,
                "updated": now,
                "recoveryLevel": "Recoverable+Purgeable",
            },
        }

    def _operate(
        self, op: str, kid: str, private: rsa.RSAPrivateKey, doc: dict[str, Any]
    ) -> dict[str, Any]:
        alg = doc.get("alg")
        value = _unb64url(doc.get("value"))
        oaep = padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        )
        if op in ("wrapkey", "unwrapkey"):
            if alg != "RSA-OAEP-256":
                raise _error(400, "BadParameter", f"Invalid algorithm for this operation: {alg}")
            if op == "wrapkey":
                return {"kid": kid, "value": _b64url(private.public_key().encrypt(value, oaep))}
            try:
                return {"kid": kid, "value": _b64url(private.decrypt(value, oaep))}
            except ValueError:
                raise _error(400, "BadParameter", "Unwrap operation failed.") from None
        if alg != "PS256":
            raise _error(400, "BadParameter", f"Invalid algorithm for this operation: {alg}")
        # sign: ``value`` is the digest; verify: ``digest`` is, and ``value`` the signature.
        digest = value if op == "sign" else _unb64url(doc.get("digest"))
        if len(digest) != 32:
            raise _error(400, "BadParameter", "The digest is not a SHA-256 digest.")
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        prehashed = utils.Prehashed(hashes.SHA256())
        if op == "sign":
            return {"kid": kid, "value": _b64url(private.sign(digest, pss, prehashed))}
        try:
            private.public_key().verify(value, digest, pss, prehashed)
        except InvalidSignature:
            return {"value": False}
        return {"value": True}

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
