"""Anomaly rules over sliding windows (issue 25): each rule's trigger, its window and its
switch; an anomaly is an audit event (outcome ``anomaly``, the rule in ``reason``) logged at
WARNING, given to hooks and written to the stream; alerts are rate-limited."""

from __future__ import annotations

import logging

import pytest
import redis
from audit_support import (  # noqa: F401
    anomalies,
    entries,
    fixture_audit_reset,
    fixture_hooked,
    fixture_stream_key,
)
from security_support import AUDIT_LOGGER, SecAccount, captured, client, secret
from support import new_key

from redis_encrypted_fields import (
    AuditEvent,
    ConfigurationError,
    DecryptionError,
    EncryptionError,
    KmsError,
    PlaintextSecretError,
    ShreddedKeyError,
    acting_as,
    configure_audit,
    flush_audit,
)
from redis_encrypted_fields.audit import Detector, Rate, Threshold, track
from redis_encrypted_fields.audit.anomalies import parse_rules

pytestmark = pytest.mark.usefixtures("audit_reset")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def failed_decrypt(record: str = "r") -> AuditEvent:
    return AuditEvent(
        "decrypt",
        "failed",
        "M",
        "f",
        record,
        "00" * 8,
        "Decryption failed: x",
        error="DecryptionError",
    )


def test_a_burst_of_failed_decrypts_is_one_alert_not_a_flood(
    hooked: list[AuditEvent], master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_audit(anomalies=True)  # the defaults: 10 failed decrypts within 60 s
    m = SecAccount(name=secret("n"), password=secret("pw"))
    m.save()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    with captured(AUDIT_LOGGER) as cap:
        for _ in range(9):
            with pytest.raises(DecryptionError):
                SecAccount.get(m.pk)
        assert [a.reason for a in anomalies(hooked)] == ["unknown_key"]  # from the first read
        for _ in range(200):
            with pytest.raises(DecryptionError):
                SecAccount.get(m.pk)
    alerts = anomalies(hooked)
    assert [a.reason for a in alerts] == ["unknown_key", "decrypt_failures"]
    alert = alerts[1]
    assert (alert.operation, alert.model, alert.field, alert.record) == (
        "decrypt",
        "SecAccount",
        "password",
        m.key(),
    )
    assert alert.detail == "10 within 60 s (threshold 10)"
    warnings = [r for r in cap.records if r.levelno == logging.WARNING]
    assert [r.audit["reason"] for r in warnings] == ["unknown_key", "decrypt_failures"]  # type: ignore[attr-defined]
    assert "decrypt anomaly SecAccount.password" in warnings[1].getMessage()


def test_a_window_slides_and_alerts_resume_after_the_interval() -> None:
    clock = Clock()
    got: list[AuditEvent] = []
    detector = Detector({"decrypt_failures": Threshold(3, 10)}, alert_interval=100, clock=clock)
    from redis_encrypted_fields.audit import add_audit_hook, remove_audit_hook

    add_audit_hook(got.append)
    try:
        for _ in range(2):
            detector(failed_decrypt())
            clock.now += 6
        detector(failed_decrypt())  # 3 events, but the first is 12 s old: 2 within 10 s
        assert got == []
        detector(failed_decrypt())
        assert [a.reason for a in got] == ["decrypt_failures"]
        for _ in range(50):
            clock.now += 1
            detector(failed_decrypt())
        assert len(got) == 1  # held back for alert_interval
        clock.now += 60
        for _ in range(2):
            detector(failed_decrypt())
        assert len(got) == 1  # a new burst needs the threshold again: 2 within 10 s
        detector(failed_decrypt())
        assert len(got) == 2
        assert "tripped 50 more times" in str(got[1].detail)
    finally:
        remove_audit_hook(got.append)


def test_a_decrypt_rate_far_above_the_actors_own_is_an_anomaly(
    hooked: list[AuditEvent],
) -> None:
    clock = Clock()
    rule = Rate(minimum=50, window=60, factor=5, baseline=600)
    detector = Detector({"decrypt_rate": rule}, alert_interval=1000, clock=clock)
    ok = AuditEvent("decrypt", "ok", "M", "f", "r", "00" * 8)
    for _ in range(10 * 6):  # ten minutes at 12 decrypts a minute, by the batch job
        clock.now += 10
        with acting_as("batch"):
            for _ in range(2):
                detector(ok)
    with acting_as("newcomer"):
        for _ in range(40):  # below the minimum: a new actor is held to it
            detector(ok)
    with acting_as("batch"):
        for _ in range(47):  # 47 + the last minute's 12 = 59 within 60 s; limit max(50, 5x12)
            detector(ok)
        assert anomalies(hooked) == []
        detector(ok)
    (alert,) = anomalies(hooked)
    assert alert.reason == "decrypt_rate"
    assert str(alert.detail).startswith("60 decrypts by this actor")
    with acting_as("newcomer"):
        for _ in range(10):
            detector(ok)
    assert [a.reason for a in anomalies(hooked)] == ["decrypt_rate", "decrypt_rate"]


def test_plaintext_read_while_refused_is_an_anomaly(
    hooked: list[AuditEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_audit(anomalies=True)
    m = SecAccount(name=secret("n"), password=secret("pw"))
    m.save()
    client().hset(m.key(), "password", "planted")
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "1")
    with pytest.raises(PlaintextSecretError):
        SecAccount.get(m.pk)
    (failed,) = [e for e in hooked if e.outcome == "failed"]
    assert (failed.operation, failed.error, failed.record) == (
        "decrypt",
        "PlaintextSecretError",
        m.key(),
    )
    assert "planted" not in repr(hooked)
    assert [a.reason for a in anomalies(hooked)] == ["plaintext_refused"]


def test_kms_errors_rolled_back_keys_and_shredded_keys_are_anomalies(
    hooked: list[AuditEvent],
) -> None:
    configure_audit(anomalies=True)
    track("kms_decrypt", key_id="11" * 8, kms_key_id="alias/a", error=KmsError("denied"))
    track("key_refused", key_id="22" * 8, error=EncryptionError("older than another key"))
    track(
        "decrypt",
        model="M",
        field="f",
        record="r",
        key_id="33" * 8,
        error=ShreddedKeyError("tenant key shredded", record="r"),
    )
    assert [(a.reason, a.key_id) for a in anomalies(hooked)] == [
        ("kms_errors", "11" * 8),
        ("key_refused", "22" * 8),
        ("shredded_key", "33" * 8),
    ]


def test_each_rule_can_be_switched_off_or_tuned(
    hooked: list[AuditEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_SRE_AUDIT_ANOMALIES", "1")
    monkeypatch.setenv(
        "REDIS_SRE_AUDIT_RULES", "kms_errors=off, decrypt_failures=3/30,decrypt_rate=100/30/4x"
    )
    detector = configure_audit().detector
    assert detector is not None
    assert "kms_errors" not in detector.rules
    assert detector.rules["decrypt_failures"] == Threshold(3, 30)
    assert detector.rules["decrypt_rate"] == Rate(100, 30, 4)
    track("kms_decrypt", kms_key_id="alias/a", error=KmsError("denied"))
    for _ in range(3):
        track("decrypt", error=DecryptionError("x"))
    assert [a.reason for a in anomalies(hooked)] == ["decrypt_failures"]

    monkeypatch.setenv("REDIS_SRE_AUDIT_ANOMALIES", "0")
    assert configure_audit().detector is None
    for bad, message in (
        ("decrypt_failure=3/30", "not rule=setting with a rule of decrypt_failures"),
        ("decrypt_failures=3", "decrypt_failures='3': use off or COUNT/SECONDS"),
        ("decrypt_rate=100/30", "use off or MINIMUM/SECONDS/FACTORx"),
        ("unknown_key=0/60", "count >= 1"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            parse_rules(bad, "REDIS_SRE_AUDIT_RULES")
    monkeypatch.setenv("REDIS_SRE_AUDIT_ANOMALIES", "maybe")
    with pytest.raises(ConfigurationError, match="REDIS_SRE_AUDIT_ANOMALIES='maybe'"):
        configure_audit()


def test_anomalies_go_to_the_stream(
    redis_url: str, redis_client: redis.Redis[str], stream_key: str
) -> None:
    configure_audit(
        stream=redis_url, stream_key=stream_key, rules={"decrypt_failures": Threshold(2, 60)}
    )
    for _ in range(2):
        track(
            "decrypt",
            model="M",
            field="f",
            record="r",
            key_id="44" * 8,
            error=DecryptionError("Decryption failed: corrupted data"),
        )
    assert flush_audit()
    got = entries(redis_client, stream_key)
    assert [(e["operation"], e["outcome"]) for e in got] == [
        ("decrypt", "failed"),
        ("decrypt", "failed"),
        ("decrypt", "anomaly"),
    ]
    assert (got[2]["reason"], got[2]["key_id"]) == ("decrypt_failures", "44" * 8)
    assert got[2]["detail"] == "2 within 60 s (threshold 2)"
