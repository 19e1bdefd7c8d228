"""Helpers for the audit trail's tests: a stream of the test's own, the audit settings restored
after each test. A test module imports the fixtures it uses (``fixture_NAME``, used as ``NAME``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from redis_encrypted_fields import AuditEvent, add_audit_hook, configure_audit, remove_audit_hook


@pytest.fixture(name="audit_reset")
def fixture_audit_reset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No audit variable set while the test runs; the settings read again after it."""
    for name in (
        "REDIS_SRE_AUDIT_STREAM",
        "REDIS_SRE_AUDIT_STREAM_MAXLEN",
        "REDIS_SRE_AUDIT_BUFFER",
        "REDIS_SRE_AUDIT_ACTOR",
        "REDIS_SRE_AUDIT_METRICS",
        "REDIS_SRE_AUDIT_ANOMALIES",
        "REDIS_SRE_AUDIT_RULES",
        "REDIS_SRE_AUDIT_ALERT_INTERVAL",
    ):
        monkeypatch.delenv(name, raising=False)
    yield
    monkeypatch.undo()
    configure_audit()


@pytest.fixture(name="stream_key")
def fixture_stream_key(redis_client: redis.Redis[str]) -> Iterator[str]:
    """A stream key of the test's own, deleted after it."""
    key = f"test-audit:{uuid.uuid4().hex}"
    yield key
    redis_client.delete(key)


@pytest.fixture(name="hooked")
def fixture_hooked() -> Iterator[list[AuditEvent]]:
    """Every event a hook receives while the test runs."""
    got: list[AuditEvent] = []
    hook = got.append
    add_audit_hook(hook)
    yield got
    remove_audit_hook(hook)


def entries(client: redis.Redis[str], key: str) -> list[dict[str, Any]]:
    return [fields for _, fields in client.xrange(key)]


def anomalies(events: list[AuditEvent]) -> list[AuditEvent]:
    return [e for e in events if e.outcome == "anomaly"]
