"""AWS KMS (``AwsKms``) through the provider conformance suite, on moto_server (loopback)."""

from __future__ import annotations

import pytest
from provider_conformance import (
    ProviderConformance,
    closed_port,
)

from devtools.kms_server import AWS_TEST_ENV, KmsServer
from redis_encrypted_fields import AwsKms


@pytest.fixture
def aws_env(kms_server: KmsServer, monkeypatch: pytest.MonkeyPatch) -> KmsServer:
    for name, value in kms_server.env.items():
        monkeypatch.setenv(name, value)
    return kms_server


class TestAwsConformance(ProviderConformance):
    provider_name = "AWS KMS"

    @pytest.fixture
    def provider(self, aws_env: KmsServer) -> AwsKms:
        return AwsKms(aws_env.create_key())

    @pytest.fixture
    def other_provider(self, aws_env: KmsServer) -> AwsKms:
        return AwsKms(aws_env.create_key())

    @pytest.fixture
    def missing_key_provider(self, aws_env: KmsServer) -> AwsKms:
        return AwsKms("alias/does-not-exist")

    @pytest.fixture
    def unreachable_provider(self, monkeypatch: pytest.MonkeyPatch) -> AwsKms:
        for name, value in AWS_TEST_ENV.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", f"http://127.0.0.1:{closed_port()}")
        return AwsKms("alias/app", connect_timeout=1, read_timeout=1, max_attempts=1)

    @pytest.fixture
    def silent_provider(
        self, silent_endpoint: tuple[str, int], monkeypatch: pytest.MonkeyPatch
    ) -> AwsKms:
        host, port = silent_endpoint
        for name, value in AWS_TEST_ENV.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", f"http://{host}:{port}")
        return AwsKms("alias/app", connect_timeout=1, read_timeout=1, max_attempts=1)
