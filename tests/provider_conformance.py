"""One conformance suite for every KMS provider (``keys.kms.KmsProvider``).

A provider's test module subclasses ``ProviderConformance`` and defines its fixtures:

- ``provider``: a provider on a real (or loopback stand-in) service, with a usable key;
- ``other_provider``: the same service, another key;
- ``missing_key_provider``: the same service, a key that does not exist;
- ``unreachable_provider``: an endpoint where nothing listens (connection refused);
- ``silent_provider``: an endpoint that accepts connections and never answers
  (the ``silent_endpoint`` fixture, in conftest.py), with the provider's timeouts set short.

Every test here must hold for every provider: that is what lets the key store treat them alike.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from redis_encrypted_fields import KmsError, MasterKeyError
from redis_encrypted_fields.keys.kms import KmsProvider, WrappedKey

CONTEXT = {"purpose": "conformance", "key_id": "00112233aabbccdd"}
# A generous bound on "no hang": a provider that waits this long ignored its timeouts.
NO_HANG_SECONDS = 30.0


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ProviderConformance:
    """What every KMS provider does; subclasses supply the fixtures named in the module doc."""

    provider_name: str = ""  # as it appears in the provider's error messages, e.g. "Vault"

    def test_generate_gives_32_fresh_bytes(self, provider: KmsProvider) -> None:
        first, second = provider.generate(CONTEXT), provider.generate(CONTEXT)
        assert len(first) == len(second) == 32
        assert first != second

    def test_round_trip(self, provider: KmsProvider) -> None:
        secret = provider.generate(CONTEXT)
        wrapped = provider.wrap(secret, CONTEXT)
        assert isinstance(wrapped, WrappedKey)
        assert secret not in wrapped.blob
        assert wrapped.kms_key_id
        assert provider.unwrap(wrapped, CONTEXT) == secret

    def test_other_context_is_refused(self, provider: KmsProvider) -> None:
        wrapped = provider.wrap(bytes(range(32)), CONTEXT)
        with pytest.raises(KmsError) as caught:
            provider.unwrap(wrapped, {**CONTEXT, "key_id": "ffeeddccbbaa9988"})
        self.assert_clean(caught.value, provider)

    def test_other_key_is_refused(self, provider: KmsProvider, other_provider: KmsProvider) -> None:
        wrapped = other_provider.wrap(bytes(range(32)), CONTEXT)
        with pytest.raises(KmsError) as caught:
            provider.unwrap(wrapped, CONTEXT)
        self.assert_clean(caught.value, provider)

    def test_tampered_blob_is_refused(self, provider: KmsProvider) -> None:
        wrapped = provider.wrap(bytes(range(32)), CONTEXT)
        blob = bytearray(wrapped.blob)
        blob[len(blob) // 2] ^= 0x01
        with pytest.raises(KmsError):
            provider.unwrap(WrappedKey(bytes(blob), wrapped.kms_key_id), CONTEXT)

    def test_missing_key_is_a_kms_error_naming_provider_and_key(
        self, missing_key_provider: KmsProvider
    ) -> None:
        with pytest.raises(KmsError) as caught:
            missing_key_provider.wrap(bytes(range(32)), CONTEXT)
        assert isinstance(caught.value, MasterKeyError)
        self.assert_clean(caught.value, missing_key_provider)

    def test_unreachable_service_is_a_kms_error(self, unreachable_provider: KmsProvider) -> None:
        started = time.monotonic()
        with pytest.raises(KmsError) as caught:
            # wrap, not generate: a provider may generate locally (os.urandom), asking nothing.
            unreachable_provider.wrap(bytes(range(32)), CONTEXT)
        assert time.monotonic() - started < NO_HANG_SECONDS
        self.assert_clean(caught.value, unreachable_provider)

    def test_silent_service_times_out(self, silent_provider: KmsProvider) -> None:
        started = time.monotonic()
        with pytest.raises(KmsError) as caught:
            silent_provider.wrap(bytes(range(32)), CONTEXT)
        assert time.monotonic() - started < NO_HANG_SECONDS
        self.assert_clean(caught.value, silent_provider)

    def assert_clean(self, error: Exception, provider: Any) -> None:
        """The error names the provider and the key, and holds no key material."""
        text = str(error)
        if self.provider_name:
            assert self.provider_name in text
        assert provider.kms_key_id in text
        assert bytes(range(32)).hex() not in text
