"""AWS Secrets Manager as the source of master keys, without a KMS: ``REDIS_SRE_MASTER_KEY_SECRET``
names a secret whose string is a master key as ``REDIS_SRE_MASTER_KEY`` takes it (standard
base64 of 32 bytes). Its ``AWSCURRENT`` version encrypts and decrypts, ``AWSPREVIOUS`` decrypts.

Each version is fetched at most once per ``REDIS_SRE_KEY_CACHE_TTL`` per process (a failed fetch
is not repeated for a few seconds): a rotation of the secret reaches running processes within
that time. boto3 (the ``[aws]`` extra) is configured the standard way: region, credentials,
``AWS_ENDPOINT_URL_SECRETS_MANAGER``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigurationError, DecryptionError, KmsError, MasterKeyError
from ..forks import PerProcess, reset_in_children
from .aws import botocore_quiet
from .ring import ENV_MASTER_KEY, ENV_PREVIOUS_MASTER_KEYS, KeyRing, MasterKey, env_keys
from .store import DEFAULT_CACHE_TTL, cache_ttl

__all__ = ["ENV_MASTER_KEY_SECRET", "SecretsManagerKeyRing"]

ENV_MASTER_KEY_SECRET = "REDIS_SRE_MASTER_KEY_SECRET"  # noqa: S105 - a variable's name
CURRENT, PREVIOUS = "AWSCURRENT", "AWSPREVIOUS"
FAILURE_BACKOFF = 5.0  # seconds before a failed fetch is tried again (at most the TTL)

# A version stage's key (None: the secret has no such version) and when its lifetime ends, or a
# failure: its error's type and message, and when the fetch may be tried again.
_Entry = tuple[MasterKey | None, float]
_Failure = tuple[type[KmsError], str, float]


class SecretsManagerKeyRing(KeyRing):
    """Master keys from one AWS Secrets Manager secret: ``AWSCURRENT`` (``current``) and
    ``AWSPREVIOUS``, each fetched at most once per ``ttl`` seconds per process, and the
    ``decrypt_only`` keys (``from_env``: the environment's master keys, while moving from them).

    ``client`` replaces the boto3 client this ring makes (short timeouts, few retries).
    """

    __slots__ = (
        "__weakref__",
        "_clients",
        "_config",
        "_entries",
        "_failures",
        "_locks",
        "previous",
        "secret_id",
        "ttl",
    )

    def __init__(
        self,
        secret_id: str,
        *,
        ttl: float = DEFAULT_CACHE_TTL,
        decrypt_only: Iterable[MasterKey] = (),
        client: Any = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 2,
    ) -> None:
        if not secret_id or not secret_id.strip():
            raise ConfigurationError(f"{ENV_MASTER_KEY_SECRET} needs a secret id or ARN")
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ConfigurationError("the key cache lifetime must be a number of seconds above 0")
        self.secret_id = secret_id.strip()
        self.ttl = ttl
        self.previous = tuple(decrypt_only)
        self._clients = PerProcess(self._make_client, client)
        self._config = {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retries": {"total_max_attempts": max_attempts, "mode": "standard"},
        }
        self._entries: dict[str, _Entry] = {}
        self._failures: dict[str, _Failure] = {}
        self._locks = {CURRENT: threading.Lock(), PREVIOUS: threading.Lock()}
        reset_in_children(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SecretsManagerKeyRing:
        """The ring ``get_keyring()`` uses when ``REDIS_SRE_MASTER_KEY_SECRET`` is set."""
        env = os.environ if environ is None else environ
        return cls(
            env.get(ENV_MASTER_KEY_SECRET) or "", ttl=cache_ttl(env), decrypt_only=env_keys(env)
        )

    # --- the KeyRing interface -----------------------------------------------------------------

    @property
    def current(self) -> MasterKey:
        key = self._stage(CURRENT)
        if key is None:
            raise KmsError(f"AWS Secrets Manager secret {self.secret_id} has no {CURRENT} version")
        return key

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        current = self.current
        found = [current]
        for key in (self._stage(PREVIOUS), *self.previous):
            if key is not None and all(key.key_id != k.key_id for k in found):
                found.append(key)
        return tuple(found)

    @property
    def previous_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id_hex for k in self.keys[1:])

    def get(self, key_id: bytes) -> MasterKey:
        for key in (self.current, *self.previous):
            if key.key_id == key_id:
                return key
        previous = self._stage(PREVIOUS)
        if previous is not None and previous.key_id == key_id:
            return previous
        raise DecryptionError(
            f"Decryption failed: no configured master key has id {key_id.hex()} (not the "
            f"{CURRENT} or {PREVIOUS} version of secret {self.secret_id}, nor set as "
            f"{ENV_MASTER_KEY} or in {ENV_PREVIOUS_MASTER_KEYS})"
        )

    def __contains__(self, key_id: object) -> bool:
        now = time.monotonic()
        cached = [e[0] for e in self._entries.values() if e[1] > now and e[0] is not None]
        return any(k.key_id == key_id for k in (*cached, *self.previous))

    # --- fetching ------------------------------------------------------------------------------

    def _stage(self, stage: str) -> MasterKey | None:
        entry = self._entries.get(stage)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        with self._locks[stage]:  # one fetch per stage at a time; the others wait for it
            now = time.monotonic()
            entry = self._entries.get(stage)
            if entry is not None and entry[1] > now:
                return entry[0]
            # No key past its lifetime: if the fetch fails, nothing stale stays in memory.
            self._entries = {k: e for k, e in self._entries.items() if e[1] > now}
            failure = self._failures.get(stage)
            if failure is not None and failure[2] > now:
                kind, message, retry_at = failure
                raise kind(f"{message} (not asked again for {math.ceil(retry_at - now)} s)")
            try:
                key = self._fetch(stage)
            except KmsError as exc:
                retry = now + min(FAILURE_BACKOFF, self.ttl)
                self._failures = {**self._failures, stage: (type(exc), str(exc), retry)}
                raise
            self._failures = {k: f for k, f in self._failures.items() if k != stage}
            self._entries = {**self._entries, stage: (key, time.monotonic() + self.ttl)}
            return key

    def _fetch(self, stage: str) -> MasterKey | None:
        client = self._boto_client()
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with botocore_quiet():
                reply = client.get_secret_value(SecretId=self.secret_id, VersionStage=stage)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "error")
            if stage == PREVIOUS and code == "ResourceNotFoundException":
                # Never rotated: no AWSPREVIOUS version (or the secret is gone: AWSCURRENT says).
                return None
            message = error.get("Message") or ""
            detail = f"{code}: {message}" if message else code
        except BotoCoreError as exc:
            detail = f"{type(exc).__name__}: {exc}"
        else:
            text = reply.get("SecretString")
            if not isinstance(text, str):
                raise KmsError(
                    f"AWS Secrets Manager secret {self.secret_id} ({stage}) holds no secret "
                    "string: store the master key as text (standard base64 of 32 bytes)"
                )
            where = f"AWS Secrets Manager secret {self.secret_id} ({stage})"
            try:
                return MasterKey.from_base64(text, where=where)
            except MasterKeyError as exc:  # as a KmsError: one type for what the service holds
                raise KmsError(str(exc)) from None
        raise KmsError(
            f"AWS Secrets Manager GetSecretValue of {self.secret_id} ({stage}) failed: {detail}"
        )

    def _boto_client(self) -> Any:
        return self._clients.get()

    def _make_client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError
        except ImportError:
            raise KmsError(
                "AWS Secrets Manager needs boto3: pip install 'redis-encrypted-fields[aws]'"
            ) from None
        try:
            session = boto3.session.Session()
            return session.client("secretsmanager", config=Config(**self._config))
        except BotoCoreError as exc:
            raise KmsError(f"AWS Secrets Manager client: {exc}") from None

    def after_fork(self) -> None:
        # Locks held by the parent's threads at fork time would never be released in the child.
        self._locks = {CURRENT: threading.Lock(), PREVIOUS: threading.Lock()}

    def __repr__(self) -> str:
        now = time.monotonic()
        cached = ", ".join(
            f"{stage}={e[0].key_id_hex}"
            for stage, e in self._entries.items()
            if e[1] > now and e[0] is not None
        )
        return f"SecretsManagerKeyRing({self.secret_id!r}, ttl={self.ttl:g}, cached=[{cached}])"
