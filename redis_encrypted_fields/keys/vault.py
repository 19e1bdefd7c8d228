"""HashiCorp Vault or OpenBao transit as a key store's KMS provider (``kms.KmsProvider``), through
hvac (``pip install redis-encrypted-fields[vault]``), imported here and only here, on first use.

- ``generate``: ``transit/datakey/plaintext/<key>`` (256 bits; its ciphertext is dropped, the
  key store wraps the key again with its full context);
- ``wrap``: ``transit/encrypt/<key>``; ``unwrap``: ``transit/decrypt/<key>``.

The encryption context is bound as the transit engine's ``associated_data`` (AES-GCM / ChaCha20
additional authenticated data, for ``aes128-gcm96``, ``aes256-gcm96`` and ``chacha20-poly1305``
keys): the decrypt is refused unless it is given the same context. Not the engine's ``context``,
which needs a key created with ``derived=true`` (a choice made once, at key creation, that most
existing keys did not make) and derives a key per context rather than authenticating it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

from ..errors import KmsError
from ..forks import PerProcess
from .kms import WrappedKey, canonical_context

__all__ = [
    "ENVIRONMENT",
    "ENV_VAULT_ADDR",
    "ENV_VAULT_NAMESPACE",
    "ENV_VAULT_ROLE_ID",
    "ENV_VAULT_SECRET_ID",
    "ENV_VAULT_TOKEN",
    "VaultTransit",
]

ENV_VAULT_ADDR = "VAULT_ADDR"
ENV_VAULT_TOKEN = "VAULT_TOKEN"  # noqa: S105 - a variable's name
ENV_VAULT_NAMESPACE = "VAULT_NAMESPACE"
ENV_VAULT_ROLE_ID = "VAULT_ROLE_ID"
ENV_VAULT_SECRET_ID = "VAULT_SECRET_ID"  # noqa: S105 - a variable's name
ENV_VAULT_APPROLE_MOUNT = "VAULT_APPROLE_MOUNT"
# What a provider built from the environment reads (a change makes a new one).
ENVIRONMENT = (
    ENV_VAULT_ADDR,
    ENV_VAULT_TOKEN,
    ENV_VAULT_NAMESPACE,
    ENV_VAULT_ROLE_ID,
    ENV_VAULT_SECRET_ID,
    ENV_VAULT_APPROLE_MOUNT,
)


def associated_data(context: Mapping[str, str]) -> str:
    """The context as transit ``associated_data``: canonical JSON, base64."""
    return base64.b64encode(canonical_context(context)).decode("ascii")


class VaultTransit:
    """A transit key of HashiCorp Vault or OpenBao.

    ``key`` is the transit key's name, ``mount`` the engine's mount path (``transit``). The
    server is ``url``, else ``VAULT_ADDR``; the token ``token``, else ``VAULT_TOKEN``, else an
    AppRole login with ``role_id``/``secret_id`` (else ``VAULT_ROLE_ID``/``VAULT_SECRET_ID``,
    at ``approle_mount``, else ``VAULT_APPROLE_MOUNT``, else ``approle``); the namespace
    ``namespace``, else ``VAULT_NAMESPACE``. Timeouts are short and there is no retry: a server
    that does not answer is an error within seconds. ``client`` replaces the hvac client.
    """

    def __init__(
        self,
        key: str,
        *,
        mount: str = "transit",
        url: str | None = None,
        token: str | None = None,
        namespace: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        approle_mount: str | None = None,
        client: Any = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        key, mount = (key or "").strip(), (mount or "").strip().strip("/")
        if not key or "/" in key or not mount:
            raise KmsError("VaultTransit needs a transit key name and the engine's mount path")
        env = os.environ if environ is None else environ
        self._key, self._mount = key, mount
        self._url = (url or env.get(ENV_VAULT_ADDR) or "").strip()
        self._token = (token or env.get(ENV_VAULT_TOKEN) or "").strip() or None
        self._namespace = (namespace or env.get(ENV_VAULT_NAMESPACE) or "").strip() or None
        self._role_id = (role_id or env.get(ENV_VAULT_ROLE_ID) or "").strip() or None
        self._secret_id = (secret_id or env.get(ENV_VAULT_SECRET_ID) or "").strip() or None
        self._approle_mount = (
            approle_mount or env.get(ENV_VAULT_APPROLE_MOUNT) or "approle"
        ).strip("/")
        if client is None and not self._url:
            raise KmsError(f"Vault transit key {self.kms_key_id}: set {ENV_VAULT_ADDR}")
        if client is None and self._token is None and not (self._role_id and self._secret_id):
            raise KmsError(
                f"Vault transit key {self.kms_key_id}: set {ENV_VAULT_TOKEN}, or "
                f"{ENV_VAULT_ROLE_ID} and {ENV_VAULT_SECRET_ID} for an AppRole login"
            )
        # A forked child makes its own client (a requests session shares its pooled sockets
        # with the parent otherwise).
        self._clients = PerProcess(self._make_client, client)
        self._timeout = (connect_timeout, read_timeout)

    @property
    def kms_key_id(self) -> str:
        """``vault://<mount>/<key>``, as ``REDIS_SRE_KMS_KEY_ID`` names it."""
        return f"vault://{self._mount}/{self._key}"

    @property
    def client(self) -> Any:
        """The hvac client, made (and logged in, for AppRole) on first use."""
        return self._clients.get()

    def _make_client(self) -> Any:
        try:
            import hvac
        except ImportError:
            raise KmsError(
                "the Vault transit provider needs hvac: pip install 'redis-encrypted-fields[vault]'"
            ) from None
        client = hvac.Client(
            url=self._url, token=self._token, namespace=self._namespace, timeout=self._timeout
        )
        if self._token is None:
            self._login(client)
        return client

    def _login(self, client: Any) -> None:
        detail = self._attempt(
            lambda: client.auth.approle.login(
                role_id=self._role_id, secret_id=self._secret_id, mount_point=self._approle_mount
            )
        )
        if detail is not None:
            raise KmsError(f"Vault AppRole login for {self.kms_key_id} failed: {detail}")

    @staticmethod
    def _attempt(call: Any) -> str | None:
        """Run ``call``; ``None`` if it worked, else what went wrong (the server's own words)."""
        import hvac.exceptions
        import requests

        try:
            call()
        except hvac.exceptions.VaultError as exc:
            # Its str() adds the request's URL; the server's errors are what the operator needs.
            errors = exc.errors or ([str(exc.args[0])] if exc.args and exc.args[0] else [])
            return f"{type(exc).__name__}: {'; '.join(str(e) for e in errors) or 'no message'}"
        except requests.exceptions.RequestException as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _post(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        client = self.client
        path = f"/v1/{self._mount}/{operation}/{self._key}"
        result: list[Any] = []
        detail = self._attempt(lambda: result.append(client.adapter.post(path, json=body)))
        if detail is not None and "Forbidden" in detail and self._token is None:
            # An AppRole token that expired: log in again, once.
            self._login(client)
            detail = self._attempt(lambda: result.append(client.adapter.post(path, json=body)))
        if detail is not None:
            raise KmsError(f"Vault transit {operation} with {self.kms_key_id} failed: {detail}")
        reply = result[0]
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, dict):
            raise KmsError(f"Vault transit {operation} with {self.kms_key_id}: no data in reply")
        return data

    @staticmethod
    def _bytes(data: Mapping[str, Any], operation: str, key: str) -> bytes:
        try:
            return base64.b64decode(str(data["plaintext"]), validate=True)
        except (KeyError, ValueError):
            raise KmsError(f"Vault transit {operation} with {key}: malformed reply") from None

    def generate(self, context: Mapping[str, str]) -> bytes:
        data = self._post(
            "datakey/plaintext", {"bits": 256, "associated_data": associated_data(context)}
        )
        return self._bytes(data, "datakey", self.kms_key_id)

    def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
        data = self._post(
            "encrypt",
            {
                "plaintext": base64.b64encode(plaintext).decode("ascii"),
                "associated_data": associated_data(context),
            },
        )
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str):
            raise KmsError(f"Vault transit encrypt with {self.kms_key_id}: no ciphertext")
        return WrappedKey(ciphertext.encode("ascii"), self.kms_key_id)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        # This provider's key, not the one the record names: a record wrapped under another
        # transit key fails authentication.
        try:
            ciphertext = wrapped.blob.decode("ascii")
        except UnicodeDecodeError:
            raise KmsError(
                f"Vault transit decrypt with {self.kms_key_id}: not a transit ciphertext"
            ) from None
        data = self._post(
            "decrypt", {"ciphertext": ciphertext, "associated_data": associated_data(context)}
        )
        return self._bytes(data, "decrypt", self.kms_key_id)

    def __repr__(self) -> str:
        return f"VaultTransit({self.kms_key_id!r})"
