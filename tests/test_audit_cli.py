"""``redis-encrypted-fields audit report`` and ``audit tail`` (issue 25): counts of a window of
the trail, its anomalies and exit status; entries followed live."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest
import redis
from audit_support import fixture_audit_reset, fixture_stream_key  # noqa: F401 - fixtures
from security_support import TESTS, cli

from redis_encrypted_fields import AuditEvent
from redis_encrypted_fields.audit.stream import entry_fields

pytestmark = pytest.mark.usefixtures("audit_reset")

KID_A, KID_B = "aa" * 8, "bb" * 8


def add(client: redis.Redis[str], key: str, event: AuditEvent, actor: str, ago: float = 0) -> None:
    when = time.time() - ago
    entry_id = f"{int(when * 1000)}-*" if ago else "*"
    client.xadd(key, entry_fields(when, actor, event), id=entry_id)  # type: ignore[arg-type]


def report(redis_url: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_SRE_AUDIT")}
    return cli("audit", "report", "--url", redis_url, "--key", key, *args, env=env)


def test_report_counts_a_window_and_exits_1_when_it_holds_anomalies(
    redis_url: str, redis_client: redis.Redis[str], stream_key: str
) -> None:
    key = stream_key
    add(redis_client, key, AuditEvent("decrypt", "ok", "Old", "f", "r", KID_A), "old", ago=7200)
    for _ in range(3):
        add(
            redis_client,
            key,
            AuditEvent("decrypt", "ok", "Account", "password", "a:1", KID_A),
            "api",
        )
    add(redis_client, key, AuditEvent("encrypt", "ok", "Account", "token", "a:1", KID_B), "api")
    failed = AuditEvent(
        "decrypt",
        "failed",
        "Account",
        "password",
        "a:\n2",
        KID_A,
        "Decryption failed: corrupted data",
        error="DecryptionError",
    )
    add(redis_client, key, failed, "job")

    quiet = report(redis_url, key, "--since", "1h", "--json")
    assert quiet.returncode == 0, quiet.stderr
    summary = json.loads(quiet.stdout)
    assert (summary["events"], summary["failures"], summary["anomalies"]) == (5, 1, [])
    assert summary["by_key_id"] == {KID_A: 4, KID_B: 1}
    assert summary["by_actor"] == {"api": 4, "job": 1}
    assert summary["by_model"] == {"Account": 5}
    assert summary["by_field"] == {"Account.password": 4, "Account.token": 1}
    assert report(redis_url, key, "--since", "3h", "--json").stdout.count('"Old"') == 1

    anomaly = AuditEvent(
        "decrypt",
        "anomaly",
        "Account",
        "password",
        "a:\n2",
        KID_A,
        "decrypt_failures",
        detail="10 within 60 s (threshold 10)",
    )
    add(redis_client, key, anomaly, "job")
    alarmed = report(redis_url, key, "--since", "30m", "--json")
    assert alarmed.returncode == 1, alarmed.stderr
    (found,) = json.loads(alarmed.stdout)["anomalies"]
    assert (found["rule"], found["actor"], found["record"]) == ("decrypt_failures", "job", "a:\n2")

    text = report(redis_url, key, "--since", "30m")
    assert text.returncode == 1
    assert "events: 5, failures: 1, dropped: 0, anomalies: 1" in text.stdout
    assert "decrypt_failures actor=job decrypt Account.password record=a:\\n2" in text.stdout
    assert "a:\n2" not in text.stdout  # a record key cannot make a line of its own


def test_report_refuses_a_window_it_cannot_read(redis_url: str, stream_key: str) -> None:
    proc = report(redis_url, stream_key, "--since", "yesterday")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --since 'yesterday': give a duration")


def test_tail_follows_the_stream_live(
    redis_url: str, redis_client: redis.Redis[str], stream_key: str
) -> None:
    add(redis_client, stream_key, AuditEvent("decrypt", "ok", "Before", "f", "r", KID_A), "x")
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "redis_encrypted_fields",
            "audit",
            "tail",
            "--url",
            redis_url,
            "--key",
            stream_key,
        ],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in tail.stdout or ()])
    reader.start()
    try:
        # XREAD from "$" starts once the process runs: write until its first line comes.
        event = AuditEvent(
            "decrypt",
            "failed",
            "Account",
            "password",
            "a:1",
            KID_A,
            "Decryption failed: corrupted data",
            error="DecryptionError",
        )
        deadline = time.monotonic() + 60
        first = None
        while first is None and time.monotonic() < deadline:
            add(redis_client, stream_key, event, "api-1")
            with contextlib.suppress(queue.Empty):
                first = lines.get(timeout=0.5)
        assert first is not None, tail.stderr
        assert " api-1 decrypt failed Account.password record=a:1 " in first
        assert f"key={KID_A} error=DecryptionError reason=Decryption failed: corrupted" in first
        assert "Before" not in first
    finally:
        tail.terminate()
        tail.wait(30)
        reader.join(30)
