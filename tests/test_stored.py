"""The stored-value codec (``crypto.stored``): what a stored value is, and opening, sealing and
re-wrapping one with its audit event (no server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import origin_encrypt_v1

from redis_encrypted_fields import (
    AuditEvent,
    DecryptionError,
    KeyRing,
    MasterKey,
    add_audit_hook,
    remove_audit_hook,
)
from redis_encrypted_fields.crypto import (
    Kind,
    binding,
    classify,
    decode,
    is_sealed,
    key_id_of,
    open_value,
    rewrap_value,
    seal_value,
)

KEY = MasterKey.generate()
RING = KeyRing(KEY)
CONTEXT = binding("acct:1", "secret")


@pytest.fixture
def events() -> Iterator[list[AuditEvent]]:
    got: list[AuditEvent] = []
    hook = got.append
    add_audit_hook(hook)
    try:
        yield got
    finally:
        remove_audit_hook(hook)


def v1(plaintext: str) -> str:
    return origin_encrypt_v1(plaintext, KEY.to_base64())


def test_classify_tells_the_four_kinds_apart() -> None:
    assert classify("") is Kind.EMPTY
    assert classify(seal_value("s", RING, auditing=False)) is Kind.ENVELOPE
    assert classify("REFv2:not base64") is Kind.ENVELOPE  # judged by the prefix: fails on open
    assert classify(v1("s")) is Kind.LEGACY
    for text in ("hunter2", "***", "redis://***:***@h:1/0", "eyJub3QiOiAidjEifQ=="):
        assert classify(text) is Kind.PLAINTEXT


def test_is_sealed_checks_structure() -> None:
    assert is_sealed(seal_value("s", RING, auditing=False))
    assert is_sealed(v1("s"))
    assert not is_sealed("REFv2:not base64")
    assert not is_sealed(None)


def test_open_and_seal_round_trip_bound_and_audited(events: list[AuditEvent]) -> None:
    envelope = seal_value("s3cret", RING, CONTEXT, model="M", field="secret", record="acct:1")
    assert open_value(envelope, RING, CONTEXT, model="M", field="secret", record="acct:1") == (
        "s3cret"
    )
    kid = KEY.key_id.hex()
    assert [(e.operation, e.outcome, e.model, e.field, e.record, e.key_id) for e in events] == [
        ("encrypt", "ok", "M", "secret", "acct:1", kid),
        ("decrypt", "ok", "M", "secret", "acct:1", kid),
    ]
    assert key_id_of(envelope) == kid


def test_a_failed_open_is_audited_and_located(events: list[AuditEvent]) -> None:
    envelope = seal_value("s3cret", RING, CONTEXT, auditing=False)
    with pytest.raises(DecryptionError) as info:
        open_value(envelope, RING, binding("acct:2", "secret"), model="M", record="acct:2")
    assert "(M of acct:2)" in str(info.value)
    with pytest.raises(DecryptionError) as bare:
        open_value(envelope, RING, b"", model="M", locate=False)
    assert "(M" not in str(bare.value)
    assert [(e.operation, e.outcome, e.key_id) for e in events] == [
        ("decrypt", "failed", KEY.key_id.hex())
    ] * 2


def test_origin_v1_values_open_without_a_key_id(events: list[AuditEvent]) -> None:
    assert open_value(v1("old"), RING) == "old"
    assert [(e.operation, e.key_id) for e in events] == [("decrypt", None)]


def test_success_events_follow_the_callers_switch(events: list[AuditEvent]) -> None:
    envelope = seal_value("s", RING, auditing=False)
    open_value(envelope, RING, auditing=False)
    assert events == []


def test_rewrap_value_moves_the_data_key_to_the_current_key(events: list[AuditEvent]) -> None:
    old = KeyRing(MasterKey.generate())
    envelope = seal_value("s", old, CONTEXT, auditing=False)
    ring = KeyRing(KEY, [old.current])
    new = rewrap_value(envelope, decode(envelope), ring, CONTEXT, auditing=True, record="r")
    assert key_id_of(new) == KEY.key_id.hex()
    assert open_value(new, RING, CONTEXT, auditing=False) == "s"
    assert [(e.operation, e.record, e.key_id) for e in events] == [
        ("rewrap", "r", KEY.key_id.hex())
    ]
