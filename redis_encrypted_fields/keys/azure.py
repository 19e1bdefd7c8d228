"""Azure Key Vault as a key store's KMS provider (``kms.KmsProvider``), through
azure-keyvault-keys and azure-identity (``pip install redis-encrypted-fields[azure]``), imported
here and only here, on first use.

Key Vault wraps with RSA-OAEP-256, which takes no associated data, and anyone with the key's
public half can wrap: a wrapped key alone binds neither the encryption context nor who made it.
So a blob holds the wrapped key and a Key Vault signature (PS256, made with the private half,
which never leaves the vault) over the key version, the wrapped key and the canonical context
(``kms.canonical_context``). ``unwrap`` checks the signature before it unwraps: another context,
a blob changed in any byte, or a key wrapped by someone who has only the public key (a record
planted in Redis) is refused. (Wrapping a fresh key-encryption key and sealing the master key
under it with AES-GCM, the context as associated data, would bind the context but not the
author: the public key makes such blobs too.)

Blob, version 1: ``0x01``, then the key id (``https://<vault>/keys/<name>/<version>``), the
wrapped key and the signature, each as a 2-byte big-endian length and its bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..errors import KmsError
from ..forks import reset_in_children
from .kms import WrappedKey, canonical_context
from .sdk_logs import SdkLogGuard

__all__ = ["URI_SCHEME", "AzureKeyVault"]

URI_SCHEME = "azurekv://"
PROVIDER = "Azure Key Vault"
WRAP_ALGORITHM = "RSA-OAEP-256"
SIGN_ALGORITHM = "PS256"
_BLOB_VERSION = 1
_DOMAIN = b"redis-encrypted-fields azurekv blob 1\x00"
# https://<vault>.vault.azure.net/keys/<name>[/<version>] (a Managed HSM's or a sovereign
# cloud's host alike). Key names: 1-127 letters, digits and hyphens.
_KEY_URL = re.compile(
    r"https://(?P<host>[^/\s?#]+)/keys/(?P<name>[0-9A-Za-z-]{1,127})(?:/(?P<version>[0-9A-Za-z]+))?/?"
)
_logs = SdkLogGuard("azure", "urllib3", "requests", "msal")
_MAX_CLIENTS = 16  # key versions with a client at once (a vault key has a few in use)


def _algorithms() -> tuple[Any, Any]:
    """The SDK's RSA-OAEP-256 and PS256 (its enums: plain strings are not taken alike)."""
    try:
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm, SignatureAlgorithm
    except ImportError:
        raise KmsError(
            "the Azure Key Vault provider needs azure-keyvault-keys and azure-identity: "
            "pip install 'redis-encrypted-fields[azure]'"
        ) from None
    return KeyWrapAlgorithm.rsa_oaep_256, SignatureAlgorithm.ps256


class _KeyId(NamedTuple):
    host: str
    name: str
    version: str | None

    @classmethod
    def parse(cls, text: str) -> _KeyId | None:
        match = _KEY_URL.fullmatch(text.strip())
        if match is None:
            return None
        return cls(match.group("host").lower(), match.group("name"), match.group("version"))

    @property
    def url(self) -> str:
        tail = f"/{self.version}" if self.version else ""
        return f"https://{self.host}/keys/{self.name}{tail}"

    @property
    def uri(self) -> str:
        return URI_SCHEME + self.url.removeprefix("https://")

    def same_key(self, other: _KeyId) -> bool:
        # Key Vault names are case-insensitive.
        return (self.host, self.name.lower()) == (other.host, other.name.lower())


def _pack(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">H", len(f)) + f for f in fields)


def _unpack(data: bytes, count: int) -> list[bytes] | None:
    out, at = [], 0
    for _ in range(count):
        if at + 2 > len(data):
            return None
        (size,) = struct.unpack_from(">H", data, at)
        at += 2
        if at + size > len(data):
            return None
        out.append(data[at : at + size])
        at += size
    return out if at == len(data) else None


def _digest(kid: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
    return hashlib.sha256(
        _DOMAIN + _pack(kid.encode(), wrapped, canonical_context(context))
    ).digest()


class AzureKeyVault:
    """Azure Key Vault (or Managed HSM), an RSA key with the wrapKey, unwrapKey and sign
    operations.

    ``key`` is the key's URL, ``https://<vault>.vault.azure.net/keys/<name>[/<version>]``, or
    the same as an ``azurekv://`` URI; without a version, new master keys are wrapped by the
    key's current version, and each blob names the version that wrapped it. Credentials are
    azure-identity's ``DefaultAzureCredential`` unless ``credential`` is given. Each request
    waits at most ``connect_timeout`` to connect and ``read_timeout`` for an answer, and is sent
    ``max_attempts`` times in all. ``client_options`` are passed on to each
    ``CryptographyClient`` (azure-core's settings: ``connection_verify``, ``api_version``, ...);
    ``client`` replaces the one this provider makes for the configured key (blobs of another
    version of the key are unwrapped by a client made with ``credential``).
    """

    def __init__(
        self,
        key: str,
        *,
        credential: Any = None,
        client: Any = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 2,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        text = (key or "").strip()
        if text.startswith(URI_SCHEME):
            text = "https://" + text.removeprefix(URI_SCHEME)
        key_id = _KeyId.parse(text)
        if key_id is None:
            raise KmsError(
                "AzureKeyVault needs a key URL: "
                "https://<vault>.vault.azure.net/keys/<name>[/<version>] "
                "(or azurekv://<vault>.vault.azure.net/keys/<name>)"
            )
        if max_attempts < 1 or not (connect_timeout > 0 and read_timeout > 0):
            raise KmsError("AzureKeyVault needs timeouts above 0 and at least one attempt")
        self._key = key_id
        self._credential = credential
        self._options: dict[str, Any] = {
            "connection_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retry_total": max_attempts - 1,
            "retry_backoff_factor": 0.2,
            "retry_backoff_max": 1,
            **(client_options or {}),
        }
        # One CryptographyClient per key version used (unwrap names the blob's), made on first
        # use, again in a forked child (their connection pools are the parent's otherwise).
        self._given: dict[str, Any] = {} if client is None else {key_id.url: client}
        self._clients = dict(self._given)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        reset_in_children(self)

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> AzureKeyVault:
        """The provider of an ``azurekv://<vault>.vault.azure.net/keys/<key>`` URI
        (``REDIS_SRE_KMS_KEY_ID``)."""
        if not uri.strip().startswith(URI_SCHEME):
            raise KmsError(
                f"not an Azure Key Vault key URI (expected {URI_SCHEME}<vault>/keys/...)"
            )
        return cls(uri, **options)

    @property
    def kms_key_id(self) -> str:
        return self._key.uri

    @property
    def key_url(self) -> str:
        """The key's URL, as Key Vault takes it."""
        return self._key.url

    def _client(self, url: str) -> Any:
        with self._lock:
            if self._pid != os.getpid():
                self._clients = dict(self._given)
                self._pid = os.getpid()
            client = self._clients.get(url)
            if client is None:
                if len(self._clients) >= _MAX_CLIENTS:
                    # Records name versions: planted ones could name any number of them.
                    self._clients = dict(self._given)
                client = self._clients[url] = self._make_client(url)
            return client

    def _make_client(self, url: str) -> Any:
        _algorithms()  # the SDK is there
        from azure.core.exceptions import AzureError
        from azure.keyvault.keys.crypto import CryptographyClient

        credential = self._credential
        try:
            with _logs.quiet():
                if credential is None:
                    from azure.identity import DefaultAzureCredential

                    credential = self._credential = DefaultAzureCredential()
                return CryptographyClient(url, credential, **self._options)
        except (AzureError, ImportError, ValueError) as exc:
            raise KmsError(f"{PROVIDER} client for {self.kms_key_id}: {exc}") from None

    def _call(self, operation: str, url: str, *args: Any) -> Any:
        client = self._client(url)
        from azure.core.exceptions import AzureError, HttpResponseError

        try:
            with _logs.quiet():
                return getattr(client, operation)(*args)
        except HttpResponseError as exc:
            # The service's own code and message; they never quote the request body.
            error = getattr(exc, "error", None)
            code = getattr(error, "code", None) or exc.reason or "error"
            message = getattr(error, "message", None) or exc.message
            detail = f"{type(exc).__name__} ({exc.status_code}) {code}: {message}"
        except AzureError as exc:
            detail = f"{type(exc).__name__}: {exc.message}"
        except ValueError as exc:
            detail = f"{type(exc).__name__}: {exc}"
        name = {"wrap_key": "WrapKey", "unwrap_key": "UnwrapKey"}.get(operation, operation.title())
        raise KmsError(f"{PROVIDER} {name} with {self.kms_key_id} failed: {detail}")

    def generate(self, context: Mapping[str, str]) -> bytes:
        """32 bytes from ``os.urandom``, the operating system's CSPRNG: Key Vault has no
        random-bytes operation for RSA keys (Managed HSM's ``getRandomBytes`` is not in Key
        Vault), and the bytes are in this process's memory all the same."""
        return os.urandom(32)

    def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
        wrap_algorithm, sign_algorithm = _algorithms()
        url = self._key.url
        wrapped = self._call("wrap_key", url, wrap_algorithm, bytes(plaintext))
        kid = str(wrapped.key_id or url)
        used = _KeyId.parse(kid)
        if used is None or not used.same_key(self._key):
            raise KmsError(f"{PROVIDER} WrapKey with {self.kms_key_id} answered for another key")
        if used.version is None:
            # Unwrapped later by the key's then current version, it would fail once the key is
            # rotated in the vault: refused now, while nothing depends on it.
            raise KmsError(
                f"{PROVIDER} WrapKey with {self.kms_key_id}: the key version is unknown (the "
                "SDK could not read the key: no keys/read permission); grant it (the role Key "
                "Vault Crypto User has it) or give the version in the key URL"
            )
        digest = _digest(used.url, bytes(wrapped.encrypted_key), context)
        # The version that wrapped signs: the blob then names one key version throughout.
        signed = self._call("sign", used.url, sign_algorithm, digest)
        blob = bytes([_BLOB_VERSION]) + _pack(
            used.url.encode(), bytes(wrapped.encrypted_key), bytes(signed.signature)
        )
        return WrappedKey(blob, used.uri)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        wrap_algorithm, sign_algorithm = _algorithms()
        blob = bytes(wrapped.blob)
        fields = _unpack(blob[1:], 3) if blob[:1] == bytes([_BLOB_VERSION]) else None
        used = None if fields is None else _KeyId.parse(fields[0].decode("ascii", "replace"))
        if fields is None or used is None:
            raise KmsError(f"{PROVIDER} unwrap with {self.kms_key_id}: not a wrapped key of ours")
        # The configured key, not the one the blob names: a blob wrapped under a key of someone
        # with Redis access is refused here, before any request.
        if not used.same_key(self._key):
            raise KmsError(
                f"{PROVIDER} unwrap with {self.kms_key_id}: the key was wrapped by another key"
            )
        _, encrypted, signature = fields
        digest = _digest(used.url, encrypted, context)
        verified = self._call("verify", used.url, sign_algorithm, digest, signature)
        if not verified.is_valid:
            raise KmsError(
                f"{PROVIDER} unwrap with {self.kms_key_id}: the signature does not match (another "
                "encryption context, an altered blob, or one not made by this key's holder)"
            )
        unwrapped = self._call("unwrap_key", used.url, wrap_algorithm, encrypted)
        return bytes(unwrapped.key)

    def after_fork(self) -> None:
        # A parent's thread making a client at fork time held the lock: a fresh one (the clients
        # are remade on first use, by pid).
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AzureKeyVault({self.kms_key_id!r})"
