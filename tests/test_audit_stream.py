"""The durable audit trail in a Redis Stream (issue 25): what an entry holds, never a secret;
written off the hot path, so that an unreachable audit Redis neither blocks nor fails reads and
writes; a full buffer drops the oldest events and says so; sent at exit; fork-safe."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis
from audit_support import entries, fixture_audit_reset, fixture_hooked, fixture_stream_key  # noqa: F401 - fixtures
from provider_conformance import NO_HANG_SECONDS, closed_port
from security_support import SecAccount, assert_absent, key_material, secret
from support import new_key

from redis_encrypted_fields import (
    ConfigurationError,
    DecryptionError,
    MasterKey,
    acting_as,
    configure_audit,
    decrypt_secret,
    encrypt_secret,
    flush_audit,
)
from redis_encrypted_fields.audit import STREAM_KEY, StreamWriter, audit_config
from redis_encrypted_fields.audit.stream import DROPPED, client_for

pytestmark = pytest.mark.usefixtures("audit_reset")


def kid(master_key_b64: str) -> str:
    return MasterKey.from_base64(master_key_b64).key_id_hex


def test_entries_say_who_did_what_under_which_key_and_never_a_secret(
    redis_url: str,
    redis_client: redis.Redis[str],
    stream_key: str,
    master_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_audit(stream=redis_url, stream_key=stream_key, metrics=False, anomalies=False)
    password = secret("pw")
    m = SecAccount(name=secret("n"), password=password)
    m.save()
    assert SecAccount.get(m.pk).password == password
    with acting_as("billing-job"):
        SecAccount.get(m.pk)
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    with pytest.raises(DecryptionError):
        SecAccount.get(m.pk)
    assert flush_audit()

    got = [e for e in entries(redis_client, stream_key) if e["record"] == m.key()]
    assert [(e["operation"], e["outcome"]) for e in got] == [
        ("encrypt", "ok"),
        ("decrypt", "ok"),
        ("decrypt", "ok"),
        ("decrypt", "failed"),
    ]
    host_pid = f"{socket.gethostname()}:{os.getpid()}"
    assert [e["actor"] for e in got] == [host_pid, host_pid, "billing-job", host_pid]
    for e in got:
        assert (e["model"], e["field"], e["key_id"]) == ("SecAccount", "password", kid(master_key))
        assert abs(float(e["time"]) - time.time()) < 60
        assert re.fullmatch(r"\d{10}\.\d{6}", e["time"]), e["time"]  # Unix seconds, to the µs
    assert "reason" not in got[0]
    assert got[3]["reason"].startswith("Decryption failed: no configured master key has id")
    assert got[3]["error"] == "UnknownKeyError"
    texts = [f"{k}={v}" for e in entries(redis_client, stream_key) for k, v in e.items()]
    assert_absent([password, *key_material(master_key)], texts, "in the audit stream")


def test_the_environment_turns_the_stream_on_in_the_models_redis(
    redis_url: str, redis_client: redis.Redis[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_OM_URL", redis_url)
    monkeypatch.setenv("REDIS_SRE_AUDIT_STREAM", "1")
    monkeypatch.setenv("REDIS_SRE_AUDIT_ACTOR", "api-7")
    monkeypatch.setenv("REDIS_SRE_AUDIT_STREAM_MAXLEN", "5000")
    config = configure_audit()
    assert config.stream is not None
    assert (config.stream.key, config.stream.maxlen) == (STREAM_KEY, 5000)
    assert config.detector is not None  # anomaly rules come with the stream
    marker = secret("marker")
    encrypt_secret(marker[:8])  # the module API: an encrypt event, no model
    with acting_as(marker):
        decrypt_secret(encrypt_secret("x"))
    assert flush_audit()
    mine = [e for _, e in redis_client.xrevrange(STREAM_KEY, count=50) if e["actor"] == marker]
    assert [e["operation"] for e in mine] == ["decrypt", "encrypt"]

    monkeypatch.setenv("REDIS_SRE_AUDIT_STREAM", "redis://u:hunter2@127.0.0.1:1/0")
    assert configure_audit().stream is not None
    for bad in ("yes please", "http://u:hunter2@example.com"):
        monkeypatch.setenv("REDIS_SRE_AUDIT_STREAM", bad)
        with pytest.raises(ConfigurationError, match="REDIS_SRE_AUDIT_STREAM") as info:
            configure_audit()
        assert "hunter2" not in str(info.value)
    monkeypatch.setenv("REDIS_SRE_AUDIT_STREAM", "0")
    monkeypatch.setenv("REDIS_SRE_AUDIT_STREAM_MAXLEN", "lots")
    assert configure_audit().stream is None  # the length is read only for a stream
    monkeypatch.setenv("REDIS_SRE_AUDIT_STREAM", "1")
    with pytest.raises(ConfigurationError, match="REDIS_SRE_AUDIT_STREAM_MAXLEN='lots'"):
        configure_audit()


def test_the_stream_is_trimmed_to_about_its_maximum_length(
    redis_url: str, redis_client: redis.Redis[str], stream_key: str
) -> None:
    configure_audit(stream=redis_url, stream_key=stream_key, stream_maxlen=100, anomalies=False)
    for _ in range(1200):
        encrypt_secret("x")
    assert flush_audit()
    # Approximate trimming removes whole nodes of the stream (100 entries each by default).
    assert 100 <= redis_client.xlen(stream_key) <= 300


@pytest.mark.parametrize("endpoint", ["closed", "silent"])
def test_an_unreachable_audit_redis_neither_blocks_nor_fails_reads_and_writes(
    endpoint: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    # silent_endpoint: a port that accepts connections and never answers.
    port = closed_port() if endpoint == "closed" else request.getfixturevalue("silent_endpoint")[1]
    config = configure_audit(
        stream=f"redis://:hunter2@127.0.0.1:{port}/0", buffer=50, anomalies=False
    )
    writer = config.stream
    assert writer is not None
    saved: list[str] = []

    def work() -> None:
        # 200 events; written in line, each would wait for a timeout (1 s) or a refusal.
        for _ in range(100):
            m = SecAccount(name="n", password=secret("pw"))
            m.save()
            assert SecAccount.get(m.pk).password == m.password
            saved.append(m.pk)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(NO_HANG_SECONDS)
    assert not worker.is_alive(), "reads and writes waited for the audit Redis"
    assert len(saved) == 100
    assert writer.pending == 50  # the newest, kept for when the server is back
    assert writer.dropped == 150  # every event is either buffered or counted as dropped
    assert not writer.flush(timeout=0.5)
    deadline = time.monotonic() + NO_HANG_SECONDS  # the first attempt may still be waiting
    while "audit stream unreachable" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "audit stream unreachable" in caplog.text
    assert "hunter2" not in caplog.text


def test_a_full_buffer_drops_the_oldest_events_and_the_trail_says_how_many(
    redis_url: str, redis_client: redis.Redis[str], stream_key: str
) -> None:
    up = threading.Event()

    def connect() -> redis.Redis[str]:
        if not up.is_set():
            raise redis.ConnectionError("audit Redis down")
        return client_for(redis_url)

    writer = StreamWriter(connect, key=stream_key, buffer=10, interval=0.05)
    try:
        from redis_encrypted_fields import AuditEvent

        for n in range(30):
            writer(AuditEvent("decrypt", "ok", "M", "f", f"record:{n}", "00" * 8))
        assert (writer.pending, writer.dropped) == (10, 20)
        up.set()
        assert writer.flush(timeout=NO_HANG_SECONDS)
    finally:
        writer.close()
    got = entries(redis_client, stream_key)
    assert got[0]["operation"] == DROPPED
    assert got[0]["count"] == "20"
    assert [e["record"] for e in got[1:]] == [f"record:{n}" for n in range(20, 30)]


EXITING = """
import sys
from redis_encrypted_fields import configure_audit, encrypt_secret
configure_audit(stream=sys.argv[1], stream_key=sys.argv[2])
for _ in range(300):
    encrypt_secret("x")
"""


def test_buffered_events_are_sent_when_the_process_exits(
    redis_url: str, redis_client: redis.Redis[str], stream_key: str, master_key: str
) -> None:
    env = {**os.environ, "REDIS_SRE_MASTER_KEY": master_key}
    subprocess.run(
        [sys.executable, "-c", EXITING, redis_url, stream_key],
        env=env,
        check=True,
        timeout=120,
    )
    assert redis_client.xlen(stream_key) == 300


def test_a_forked_child_writes_its_own_events_not_its_parents(
    redis_url: str, redis_client: redis.Redis[str], stream_key: str
) -> None:
    config = configure_audit(stream=redis_url, stream_key=stream_key, anomalies=False)
    assert config.stream is not None
    encrypt_secret("before")  # starts the parent's writer thread
    assert flush_audit()
    config.stream.interval = 60.0  # what the parent buffers now stays buffered until flushed
    encrypt_secret("buffered in the parent")
    pid = os.fork()
    if pid == 0:  # the child: a fresh buffer, its own actor, its own writer thread
        status = 1
        try:
            encrypt_secret("in the child")
            status = 0 if flush_audit(timeout=20) else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert flush_audit()
    actors = [e["actor"] for e in entries(redis_client, stream_key)]
    me = f"{socket.gethostname()}:{os.getpid()}"
    child = f"{socket.gethostname()}:{pid}"
    assert sorted(actors) == sorted([me, me, child])


def test_a_writer_shows_no_url(redis_url: str) -> None:
    config = configure_audit(stream="redis://:hunter2@127.0.0.1:1/0", anomalies=False)
    assert "hunter2" not in repr(config) + repr(audit_config())


def test_any_record_key_is_written_one_that_is_not_utf8_escaped(
    redis_url: str, redis_client: redis.Redis[str], stream_key: str
) -> None:
    configure_audit(stream=redis_url, stream_key=stream_key, anomalies=False)
    from redis_encrypted_fields.audit import track

    for record in ("plain:1", "new\nline", "lone\udc80surrogate", "plain:1"):
        track("decrypt", model="M", field="f", record=record, key_id="00" * 8)
    track("decrypt", record="lone\udc80again", error=DecryptionError("x"))
    assert flush_audit()
    assert [e["record"] for e in entries(redis_client, stream_key)] == [
        "plain:1",
        "new\nline",
        "lone\\udc80surrogate",
        "plain:1",
        "lone\\udc80again",
    ]


def test_a_stream_key_holding_something_else_loses_no_event(
    redis_url: str,
    redis_client: redis.Redis[str],
    stream_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Redis answers each XADD with an error: the events stay buffered, and are written once
    # the key is a stream again (nothing dropped, nothing lost, no error for the application).
    redis_client.set(stream_key, "not a stream")
    writer = StreamWriter(lambda: client_for(redis_url), key=stream_key, interval=0.05)
    try:
        from redis_encrypted_fields import AuditEvent

        for n in range(5):
            writer(AuditEvent("decrypt", "ok", "M", "f", f"record:{n}", "00" * 8))
        assert not writer.flush(timeout=0.3)
        # (Pending or in a batch being retried: the writer keeps trying.)
        assert (writer.dropped, writer.written) == (0, 0)
        assert "audit stream unreachable (ResponseError)" in caplog.text
        redis_client.delete(stream_key)
        assert writer.flush(timeout=NO_HANG_SECONDS)
    finally:
        writer.close()
    assert [e["record"] for e in entries(redis_client, stream_key)] == [
        f"record:{n}" for n in range(5)
    ]
    assert writer.written == 5
