"""Audit metrics through OpenTelemetry (issue 25), read with the SDK's in-memory reader from a
real MeterProvider: operations by operation, outcome, model, field and key id; KMS requests;
seal and open times; anomalies; nothing (and no failure) without OpenTelemetry installed."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from audit_support import fixture_audit_reset  # noqa: F401 - fixture
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from security_support import SecAccount, secret

from redis_encrypted_fields import (
    KmsError,
    MasterKey,
    configure_audit,
    decrypt_secret,
    encrypt_secret,
)
from redis_encrypted_fields.audit import Threshold, track
from redis_encrypted_fields.audit.metrics import DRAIN_AT

pytestmark = pytest.mark.usefixtures("audit_reset")


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def by_attributes(found: list[Any]) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(p.attributes.items())): p for p in found}


@pytest.fixture
def reader() -> InMemoryMetricReader:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    configure_audit(meter_provider=provider, timing_sample=1, anomalies=False)
    return reader


def test_operations_are_counted_by_operation_outcome_model_field_and_key_id(
    reader: InMemoryMetricReader, master_key: str
) -> None:
    kid = MasterKey.from_base64(master_key).key_id_hex
    m = SecAccount(name=secret("n"), password=secret("pw"), api_token=secret("t"))
    m.save()
    for _ in range(3):
        SecAccount.get(m.pk)
    operations = by_attributes(points(reader)["redis_encrypted_fields.operations"])
    where = (("key_id", kid), ("model", "SecAccount"))
    for field, encrypts, decrypts in (("password", 1, 3), ("api_token", 1, 3)):
        ok = (("field", field), *where, ("outcome", "ok"))
        assert operations[tuple(sorted((*ok, ("operation", "encrypt"))))].value >= encrypts
        assert operations[tuple(sorted((*ok, ("operation", "decrypt"))))].value >= decrypts
    before = operations[
        tuple(sorted((("field", "password"), *where, ("outcome", "ok"), ("operation", "decrypt"))))
    ].value
    SecAccount.get(m.pk)
    after = by_attributes(points(reader)["redis_encrypted_fields.operations"])
    assert (
        after[
            tuple(
                sorted((("field", "password"), *where, ("outcome", "ok"), ("operation", "decrypt")))
            )
        ].value
        == before + 1
    )

    durations = by_attributes(points(reader)["redis_encrypted_fields.crypto.duration"])
    assert durations[(("operation", "encrypt"),)].count >= 2
    assert durations[(("operation", "decrypt"),)].count >= 8
    assert 0 < durations[(("operation", "decrypt"),)].sum < 8  # seconds: a few µs each


def test_kms_requests_and_anomalies_are_counted(reader: InMemoryMetricReader) -> None:
    # What keys/store.py reports for each KMS call (tests/test_keystore.py checks that it does).
    track("kms_decrypt", key_id="00" * 8, kms_key_id="alias/app")
    track("kms_decrypt", key_id="00" * 8, kms_key_id="alias/app", error=KmsError("denied"))
    kms = by_attributes(points(reader)["redis_encrypted_fields.kms.requests"])
    base = (("kms_key_id", "alias/app"), ("operation", "kms_decrypt"))
    assert kms[(*base, ("outcome", "failed"))].value == 1
    assert kms[(*base, ("outcome", "ok"))].value == 1

    configure_audit(
        meter_provider=MeterProvider(metric_readers=[reader2 := InMemoryMetricReader()]),
        rules={"kms_errors": Threshold(2, 60)},
    )
    for _ in range(5):
        track("kms_decrypt", kms_key_id="alias/app", error=KmsError("denied"))
    anomalies = by_attributes(points(reader2)["redis_encrypted_fields.anomalies"])
    assert anomalies[(("rule", "kms_errors"),)].value == 1  # rate-limited: one alert


def test_seal_and_open_times_are_sampled_by_default(master_key: str) -> None:
    reader = InMemoryMetricReader()
    configure_audit(meter_provider=MeterProvider(metric_readers=[reader]), anomalies=False)
    for _ in range(64):
        decrypt_secret(encrypt_secret("x"))
    durations = by_attributes(points(reader)["redis_encrypted_fields.crypto.duration"])
    # One in 32 (of encrypt and decrypt together, in turn): the counter has all 128.
    assert sum(p.count for p in durations.values()) == 4
    operations = points(reader)["redis_encrypted_fields.operations"]
    assert sum(p.value for p in operations) == 128


def test_counts_and_sampled_times_add_up_across_collections(master_key: str) -> None:
    # Seals and opens are counted in batches (at each collection, and every DRAIN_AT of
    # them): each collection has every one so far, and a 1-in-8 sample runs on across them.
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    configure_audit(meter_provider=provider, timing_sample=8, anomalies=False)
    seen = []
    for rounds in (6, 2, DRAIN_AT + 3):  # 12 events, then 4 more, then more than DRAIN_AT
        for _ in range(rounds):
            decrypt_secret(encrypt_secret("x"))
        found = points(reader)
        timed = sum(p.count for p in found["redis_encrypted_fields.crypto.duration"])
        counted = sum(p.value for p in found["redis_encrypted_fields.operations"])
        seen.append((counted, timed))
    total = 2 * (6 + 2 + DRAIN_AT + 3)
    assert seen == [(12, 1), (16, 2), (total, total // 8)]


NO_OTEL = """
import logging, sys
sys.modules["opentelemetry"] = None  # as if not installed
logging.basicConfig(level=logging.WARNING)
from redis_encrypted_fields import configure_audit, decrypt_secret, encrypt_secret
config = configure_audit(metrics=True)
assert config.metrics is None
assert decrypt_secret(encrypt_secret("x")) == "x"
"""


def test_without_opentelemetry_metrics_are_off_with_a_warning(master_key: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", NO_OTEL],
        env={**os.environ, "REDIS_SRE_MASTER_KEY": master_key, "REDIS_SRE_AUDIT_METRICS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OpenTelemetry's API is not installed" in proc.stderr
    assert "redis-encrypted-fields[otel]" in proc.stderr
