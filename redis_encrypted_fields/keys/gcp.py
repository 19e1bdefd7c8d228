"""Google Cloud KMS as a key store's KMS provider (``kms.KmsProvider``), through google-cloud-kms
(``pip install redis-encrypted-fields[gcp]``), imported here and only here, on first use.

The encryption context is the additional authenticated data (AAD) of Cloud KMS ``encrypt`` and
``decrypt`` (``kms.canonical_context``): a wrapped key unwraps only with the context it was
wrapped with. New master keys come from ``os.urandom`` (see ``GcpKms.generate``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

from ..errors import KmsError
from ..forks import PerProcess
from .kms import WrappedKey, canonical_context
from .sdk_logs import SdkLogGuard

__all__ = ["URI_SCHEME", "GcpKms"]

URI_SCHEME = "gcpkms://"
PROVIDER = "GCP KMS"
# A CryptoKey's resource name; a version suffix (what encrypt answers with) is accepted and
# dropped: decrypt takes the CryptoKey and finds the version in the ciphertext.
_KEY_NAME = re.compile(
    r"(?P<key>projects/[^/\s]+/locations/[^/\s]+/keyRings/[^/\s]+/cryptoKeys/[^/\s]+)"
    r"(?:/cryptoKeyVersions/[^/\s]+)?"
)
_TRANSPORTS = ("rest", "grpc")
# SDK debug logs hold request bodies (the plaintext of an encrypt): dropped during our calls.
_logs = SdkLogGuard("google", "urllib3", "requests", "grpc")


class GcpKms:
    """Google Cloud KMS, a symmetric ``ENCRYPT_DECRYPT`` CryptoKey.

    ``key`` is the CryptoKey's resource name, ``projects/<p>/locations/<l>/keyRings/<r>/
    cryptoKeys/<k>``, or the same as a ``gcpkms://`` URI. Credentials are Application Default
    Credentials unless ``credentials`` is given. ``transport`` is ``"rest"`` (the default: plain
    HTTPS through requests, which a forked child can remake safely) or ``"grpc"``;
    ``api_endpoint`` replaces ``cloudkms.googleapis.com`` (a private or regional endpoint).
    Each attempt waits at most ``timeout`` seconds, and an unavailable service is tried
    ``max_attempts`` times in all, so a KMS that does not answer is an error within seconds.
    ``client`` replaces the ``KeyManagementServiceClient`` this provider makes.
    """

    def __init__(
        self,
        key: str,
        *,
        client: Any = None,
        credentials: Any = None,
        api_endpoint: str | None = None,
        transport: str = "rest",
        timeout: float = 5.0,
        max_attempts: int = 2,
    ) -> None:
        text = (key or "").strip()
        text = text.removeprefix(URI_SCHEME)
        match = _KEY_NAME.fullmatch(text)
        if match is None:
            raise KmsError(
                "GcpKms needs a CryptoKey name: "
                "gcpkms://projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>"
            )
        if transport not in _TRANSPORTS:
            raise KmsError(f"GcpKms transport must be one of {', '.join(_TRANSPORTS)}")
        if not (timeout > 0) or max_attempts < 1:
            raise KmsError("GcpKms needs a timeout above 0 and at least one attempt")
        self._name = match.group("key")
        self._clients = PerProcess(self._make_client, client)
        self._credentials = credentials
        self._api_endpoint = api_endpoint
        self._transport = transport
        self._timeout = float(timeout)
        self._max_attempts = int(max_attempts)

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> GcpKms:
        """The provider of a ``gcpkms://projects/.../cryptoKeys/<k>`` URI
        (``REDIS_SRE_KMS_KEY_ID``)."""
        if not uri.strip().startswith(URI_SCHEME):
            raise KmsError(f"not a GCP KMS key URI (expected {URI_SCHEME}projects/...)")
        return cls(uri, **options)

    @property
    def kms_key_id(self) -> str:
        return URI_SCHEME + self._name

    @property
    def key_name(self) -> str:
        """The CryptoKey's resource name, as Cloud KMS takes it."""
        return self._name

    @property
    def client(self) -> Any:
        """The ``KeyManagementServiceClient``, made on first use (again in a forked child)."""
        return self._clients.get()

    def _make_client(self) -> Any:
        try:
            from google.api_core.exceptions import GoogleAPIError
            from google.auth.exceptions import GoogleAuthError
            from google.cloud import kms
        except ImportError:
            raise KmsError(
                "the GCP KMS provider needs google-cloud-kms: "
                "pip install 'redis-encrypted-fields[gcp]'"
            ) from None
        options = {"api_endpoint": self._api_endpoint} if self._api_endpoint else None
        try:
            with _logs.quiet():
                return kms.KeyManagementServiceClient(
                    credentials=self._credentials,
                    transport=self._transport,
                    client_options=options,
                )
        except (GoogleAuthError, GoogleAPIError, ValueError) as exc:
            raise KmsError(f"{PROVIDER} client for {self.kms_key_id}: {exc}") from None

    def _call(self, operation: str, request: dict[str, Any]) -> Any:
        client = self.client
        from google.api_core.exceptions import (
            DeadlineExceeded,
            GoogleAPICallError,
            GoogleAPIError,
            InternalServerError,
            ServiceUnavailable,
            TooManyRequests,
        )
        from google.auth.exceptions import GoogleAuthError, TransportError
        from requests import ConnectionError as RequestsConnectionError
        from requests import RequestException, Timeout

        transient = (
            DeadlineExceeded,
            InternalServerError,
            ServiceUnavailable,
            TooManyRequests,
            TransportError,
            RequestsConnectionError,
            Timeout,
        )
        detail = "no attempt made"
        for attempt in range(self._max_attempts):
            if attempt:
                time.sleep(min(0.2 * 2**attempt, 1.0))
            try:
                with _logs.quiet():
                    # retry=None: our own bounded attempts, not the SDK's 60-second default.
                    return getattr(client, operation)(
                        request=request, retry=None, timeout=self._timeout
                    )
            except GoogleAPICallError as exc:
                # The service's own message; it never quotes the plaintext or the ciphertext.
                detail = f"{type(exc).__name__}: {exc.message}"
                retry = isinstance(exc, transient)
            except (GoogleAuthError, GoogleAPIError, RequestException) as exc:
                detail = f"{type(exc).__name__}: {exc}"
                retry = isinstance(exc, transient)
            if not retry:
                break
        name = operation.capitalize()
        raise KmsError(f"{PROVIDER} {name} with {self.kms_key_id} failed: {detail}")

    def generate(self, context: Mapping[str, str]) -> bytes:
        """32 bytes from ``os.urandom``, the operating system's CSPRNG. Cloud KMS's
        ``generateRandomBytes`` would need ``cloudkms.locations.generateRandomBytes`` on the
        location, which no role granted on the key gives, and a request per new key, for bytes
        that are then in this process's memory all the same."""
        return os.urandom(32)

    def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
        response = self._call(
            "encrypt",
            {
                "name": self._name,
                "plaintext": bytes(plaintext),
                "additional_authenticated_data": canonical_context(context),
            },
        )
        # The CryptoKeyVersion that encrypted: which version to keep enabled for this record.
        version = str(getattr(response, "name", "") or self._name)
        return WrappedKey(bytes(response.ciphertext), URI_SCHEME + version)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        # The configured key, not the one the record names: a record written by someone with
        # Redis access, encrypted under a key of theirs, is refused by Cloud KMS itself.
        response = self._call(
            "decrypt",
            {
                "name": self._name,
                "ciphertext": bytes(wrapped.blob),
                "additional_authenticated_data": canonical_context(context),
            },
        )
        return bytes(response.plaintext)

    def __repr__(self) -> str:
        return f"GcpKms({self.kms_key_id!r})"
