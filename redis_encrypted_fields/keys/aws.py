"""AWS KMS as a key store's KMS provider (``kms.KmsProvider``), through boto3 (``pip install
redis-encrypted-fields[aws]``), imported here and only here, on first use."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from ..errors import KmsError
from ..forks import PerProcess
from .kms import WrappedKey
from .sdk_logs import SdkLogGuard

__all__ = ["AwsKms", "botocore_quiet"]


# botocore logs request parameters and response bodies at DEBUG (``botocore.endpoint``,
# ``botocore.parsers``): with KMS that is key material in the clear, in the log of any application
# that turns DEBUG on. Records emitted by this thread during one of our calls are dropped.
_logs = SdkLogGuard("botocore", "boto3", "urllib3")


def botocore_quiet() -> AbstractContextManager[None]:
    """No DEBUG record of botocore, boto3 or urllib3 from this thread meanwhile: for calls whose
    requests or responses hold key material (KMS, Secrets Manager)."""
    return _logs.quiet()


class AwsKms:
    """AWS KMS through boto3, configured the standard boto3 way (region, credentials,
    ``AWS_ENDPOINT_URL_KMS``).

    ``key_id`` is a KMS key id, ARN or alias. Timeouts are short and retries few, so that a KMS
    that does not answer is an error within seconds, never a hang. ``client`` replaces the boto3
    client this provider makes (its own timeouts then apply).
    """

    def __init__(
        self,
        key_id: str,
        *,
        client: Any = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 2,
    ) -> None:
        if not key_id or not key_id.strip():
            raise KmsError("AwsKms needs a KMS key id, ARN or alias")
        self._key_id = key_id.strip()
        self._clients = PerProcess(self._make_client, client)
        self._config = {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retries": {"total_max_attempts": max_attempts, "mode": "standard"},
        }

    @property
    def kms_key_id(self) -> str:
        return self._key_id

    @property
    def client(self) -> Any:
        """The boto3 KMS client, made on first use."""
        return self._clients.get()

    def _make_client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError
        except ImportError:
            raise KmsError(
                "the AWS KMS provider needs boto3: pip install 'redis-encrypted-fields[aws]'"
            ) from None
        try:
            client = boto3.session.Session().client("kms", config=Config(**self._config))
        except BotoCoreError as exc:
            raise KmsError(f"AWS KMS client: {exc}") from None
        return client

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        client = self.client
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        try:
            with _logs.quiet():
                return dict(getattr(client, operation)(**params))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "error")
            message = error.get("Message") or ""
            detail = f"{code}: {message}" if message else code
        except ParamValidationError:
            # Its message quotes the parameters, which may be key material.
            detail = "invalid request parameters"
        except BotoCoreError as exc:
            detail = f"{type(exc).__name__}: {exc}"
        name = "".join(part.capitalize() for part in operation.split("_"))
        raise KmsError(f"AWS KMS {name} with {self._key_id} failed: {detail}")

    def generate(self, context: Mapping[str, str]) -> bytes:
        response = self._call(
            "generate_data_key",
            KeyId=self._key_id,
            KeySpec="AES_256",
            EncryptionContext=dict(context),
        )
        return bytes(response["Plaintext"])

    def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
        response = self._call(
            "encrypt", KeyId=self._key_id, Plaintext=plaintext, EncryptionContext=dict(context)
        )
        return WrappedKey(bytes(response["CiphertextBlob"]), str(response["KeyId"]))

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        # KeyId is the configured key, not the one the record names: a record written by someone
        # with Redis access, wrapped under a KMS key of theirs, is refused by KMS itself.
        response = self._call(
            "decrypt",
            KeyId=self._key_id,
            CiphertextBlob=wrapped.blob,
            EncryptionContext=dict(context),
        )
        return bytes(response["Plaintext"])

    def __repr__(self) -> str:
        return f"AwsKms({self._key_id!r})"
