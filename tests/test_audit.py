"""The audit trail: one event per encrypt, decrypt, re-wrap and failed decrypt; never a secret.

Events go to the ``redis_encrypted_fields.audit`` logger (silent until set to INFO) and to hooks
registered with ``add_audit_hook``. Checked against the real server for models (sync/async,
hash/JSON, nested) and for the operations (migrate, rotate).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from security_support import (
    AUDIT_LOGGER,
    SecAccount,
    SecTenant,
    assert_absent,
    captured,
    client,
    key_material,
    levels,
    secret,
)
from support import INSTANCE_MODELS, aw, new_key, origin_encrypt_v1, raw, wipe, write_raw

from redis_encrypted_fields import (
    AuditEvent,
    DecryptionError,
    MasterKey,
    add_audit_hook,
    decrypt_secret,
    encrypt_secret,
    ops,
    remove_audit_hook,
)
from redis_encrypted_fields.audit import audit_enabled
from redis_encrypted_fields.ops import batch


def kid(master_key_b64: str) -> str:
    return MasterKey.from_base64(master_key_b64).key_id_hex


@pytest.fixture
def events() -> Iterator[list[AuditEvent]]:
    """Every event delivered while the test runs (through a hook)."""
    got: list[AuditEvent] = []
    hook = got.append  # one bound method object: removal is by identity
    add_audit_hook(hook)
    try:
        yield got
    finally:
        remove_audit_hook(hook)


@pytest.fixture(params=INSTANCE_MODELS, ids=lambda m: m.__name__)
def model(request: pytest.FixtureRequest) -> Any:
    return request.param


def of_record(events: list[AuditEvent], key: str) -> list[AuditEvent]:
    return sorted((e for e in events if e.record == key), key=lambda e: (e.operation, e.field))


# Models: save, get, find, update


async def test_save_emits_one_encrypt_event_per_encrypted_field(
    model: Any, events: list[AuditEvent], master_key: str
) -> None:
    m = model(name=secret("n"), connection_url=secret("url"), admin_password=secret("pw"))
    await aw(m.save())
    key = model.make_primary_key(m.pk)
    name = model.__name__
    assert of_record(events, key) == [
        AuditEvent("encrypt", "ok", name, "admin_password", key, kid(master_key)),
        AuditEvent("encrypt", "ok", name, "connection_url", key, kid(master_key)),
    ]
    events.clear()
    m.admin_password = None  # a cleared secret is not encrypted: no event for it
    await aw(m.save())
    assert [e.field for e in of_record(events, key)] == ["connection_url"]


async def test_get_and_find_emit_one_decrypt_event_per_stored_secret(
    model: Any, events: list[AuditEvent], master_key: str
) -> None:
    m = model(name=secret("n"), connection_url=secret("url"), admin_password=secret("pw"))
    await aw(m.save())
    key = model.make_primary_key(m.pk)
    expected = [
        AuditEvent("decrypt", "ok", model.__name__, "admin_password", key, kid(master_key)),
        AuditEvent("decrypt", "ok", model.__name__, "connection_url", key, kid(master_key)),
    ]
    events.clear()
    await aw(model.get(m.pk))
    assert of_record(events, key) == expected
    events.clear()
    await aw(model.find(model.name == m.name).all())
    assert of_record(events, key) == expected


async def test_update_with_a_mask_decrypts_the_kept_secret_then_encrypts_afresh(
    model: Any, events: list[AuditEvent], master_key: str
) -> None:
    m = model(name=secret("n"), connection_url=secret("url"), admin_password=secret("pw"))
    await aw(m.save())
    key = model.make_primary_key(m.pk)
    events.clear()
    await aw(m.update(admin_password="***"))
    assert [(e.operation, e.field) for e in of_record(events, key)] == [
        ("decrypt", "admin_password"),
        ("encrypt", "admin_password"),
        ("encrypt", "connection_url"),
    ]
    assert all(e.outcome == "ok" and e.key_id == kid(master_key) for e in events)


async def test_a_failed_decrypt_names_the_key_id_and_the_reason(
    model: Any, events: list[AuditEvent], master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = model(name=secret("n"), connection_url=secret("url"), admin_password=secret("pw"))
    await aw(m.save())
    key = model.make_primary_key(m.pk)
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())  # the key that wrapped it is gone
    events.clear()
    with pytest.raises(DecryptionError) as info:
        await aw(model.get(m.pk))
    (event,) = of_record(events, key)
    assert (event.operation, event.outcome, event.model) == ("decrypt", "failed", model.__name__)
    assert event.field == "connection_url"  # the first one read; reading stops there
    assert event.key_id == kid(master_key)  # the id the envelope names
    # The exception also names the value (the event has model, field and record of its own).
    assert str(info.value) == f"{event.reason} ({model.__name__}.connection_url of {key})"
    assert (info.value.record, info.value.field) == (key, "connection_url")
    assert f"no configured master key has id {kid(master_key)}" in event.reason

    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", master_key)
    stored = raw(model, m.pk)["connection_url"]
    changed = stored[:-6] + ("A" if stored[-6] != "A" else "B") + stored[-5:]
    write_raw(model, m.pk, "connection_url", changed)
    events.clear()
    with pytest.raises(DecryptionError):
        await aw(model.get(m.pk))
    (event,) = of_record(events, key)
    assert (event.outcome, event.key_id) == ("failed", kid(master_key))
    assert event.reason is not None
    assert event.reason.startswith("Decryption failed")


def test_origin_v1_reads_are_audited_without_a_key_id(
    events: list[AuditEvent], master_key: str
) -> None:
    m = SecAccount(name=secret("n"), password=secret("pw"))
    m.save()
    write_raw(SecAccount, m.pk, "password", origin_encrypt_v1(secret("v1"), master_key))
    events.clear()
    SecAccount.get(m.pk)
    (event,) = of_record(events, SecAccount.make_primary_key(m.pk))
    assert (event.operation, event.outcome, event.field, event.key_id) == (
        "decrypt",
        "ok",
        "password",
        None,  # v1 values name no key
    )


def test_nested_and_list_values_are_named_by_their_path(
    events: list[AuditEvent], master_key: str
) -> None:
    t = SecTenant(
        name=secret("n"),
        admin={"user": "root", "password": secret("admin")},
        replicas=[{"user": "a", "password": secret("r0")}, {"user": "b", "password": secret("r1")}],
        tokens=[secret("t0"), secret("t1")],
    )
    t.save()
    key = SecTenant.make_primary_key(t.pk)
    paths = ["admin.password", "replicas.0.password", "replicas.1.password", "tokens.0", "tokens.1"]
    assert [(e.operation, e.model, e.field) for e in of_record(events, key)] == [
        ("encrypt", "SecTenant", p) for p in paths
    ]
    events.clear()
    SecTenant.get(t.pk)
    assert [(e.operation, e.field) for e in of_record(events, key)] == [
        ("decrypt", p) for p in paths
    ]
    stored = raw(SecTenant, t.pk)
    client().json().set(key, "$.replicas[0].password", stored["replicas"][1]["password"])
    events.clear()
    with pytest.raises(DecryptionError):
        SecTenant.get(t.pk)
    failed = [e for e in of_record(events, key) if e.outcome == "failed"]
    assert [(e.field, e.key_id) for e in failed] == [("replicas.0.password", kid(master_key))]


# Operations: migrate (encrypt), rotate (rewrap), failures


def test_migrate_emits_encrypt_and_rotate_emits_rewrap_events(
    events: list[AuditEvent], master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wipe(SecAccount)
    c = client()
    pks = [f"audit{i}" for i in range(3)]
    for pk in pks:
        fields = {"pk": pk, "name": "n", "password": secret("pw")}
        c.hset(SecAccount.make_primary_key(pk), mapping=fields)
    c.hset(SecAccount.make_primary_key(pks[0]), "api_token", origin_encrypt_v1("t", master_key))
    keys = [SecAccount.make_primary_key(pk) for pk in pks]

    events.clear()
    assert ops.migrate(SecAccount).ok
    expected = [
        ("encrypt", "ok", "SecAccount", "api_token", keys[0], kid(master_key)),
        *(("encrypt", "ok", "SecAccount", "password", k, kid(master_key)) for k in keys),
    ]
    got = sorted((e.operation, e.outcome, e.model, e.field, e.record, e.key_id) for e in events)
    assert got == sorted(expected)

    new = new_key()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new)
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
    events.clear()
    assert ops.rotate(SecAccount).rewrapped == 4
    got = sorted((e.operation, e.outcome, e.field, e.record, e.key_id) for e in events)
    assert got == sorted(("rewrap", "ok", f, r, kid(new)) for (_, _, _, f, r, _) in expected)

    events.clear()
    assert ops.status(SecAccount).ok  # status decrypts each value to check it
    assert sorted((e.operation, e.outcome) for e in events) == [("decrypt", "ok")] * 4

    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    monkeypatch.delenv("REDIS_SRE_PREVIOUS_MASTER_KEYS")
    events.clear()
    assert not ops.rotate(SecAccount).ok
    assert len(events) == 4
    for e in events:
        assert (e.operation, e.outcome, e.model, e.key_id) == (
            "decrypt",
            "failed",
            "SecAccount",
            kid(new),
        )
        assert e.reason is not None
        assert f"no configured master key has id {kid(new)}" in e.reason
    events.clear()
    assert not ops.status(SecAccount).ok  # status emits its failures
    assert [(e.operation, e.outcome) for e in events] == [("decrypt", "failed")] * 4


def test_operation_events_describe_decisions_even_when_a_write_loses_a_race(
    events: list[AuditEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """migrate decides to encrypt a plaintext value and says so; the application saves the record
    before migrate writes; the compare-and-set refuses the stale write, the record is read and
    decided again: the application's envelope is decrypted to check it, and left as it is. The
    first event stays: events describe decisions."""
    wipe(SecAccount)
    key = SecAccount.make_primary_key("race")
    client().hset(key, mapping={"pk": "race", "name": "n", "password": secret("plain")})
    real = batch.write_request

    def racing(sha: Any, keys: Any, args: Any, *rest: Any) -> Any:
        send = real(sha, keys, args, *rest)

        def request(c: Any) -> Any:
            SecAccount(pk="race", name="n", password=secret("app")).save()
            return send(c)

        return request

    monkeypatch.setattr(batch, "write_request", racing)
    report = ops.migrate(SecAccount)
    assert (report.encrypted, report.unchanged, report.ok) == (0, 1, True)
    assert [(e.operation, e.model, e.record) for e in events] == [
        ("encrypt", "SecAccount", key),  # migrate's decision, whose write lost the race
        ("encrypt", "SecAccount", key),  # the application's save, which won
        ("decrypt", "SecAccount", key),  # migrate's retry checks what the application wrote
    ]


def test_migrate_names_nested_and_list_paths(events: list[AuditEvent], master_key: str) -> None:
    wipe(SecTenant)
    key = SecTenant.make_primary_key("audit-t")
    doc = {
        "pk": "audit-t",
        "name": "n",
        "admin": {"user": "root", "password": secret("a")},
        "replicas": [{"user": "x", "password": secret("b")}],
        "tokens": [secret("c")],
    }
    client().json().set(key, "$", doc)
    events.clear()
    assert ops.migrate(SecTenant).encrypted == 3
    assert sorted((e.operation, e.field, e.record, e.key_id) for e in events) == [
        ("encrypt", p, key, kid(master_key))
        for p in ("admin.password", "replicas.0.password", "tokens.0")
    ]


def test_the_module_api_is_audited(events: list[AuditEvent], master_key: str) -> None:
    token = encrypt_secret(secret())
    decrypt_secret(token)
    with pytest.raises(DecryptionError):
        decrypt_secret(token[:-1])
    assert [(e.operation, e.outcome, e.model, e.key_id) for e in events] == [
        ("encrypt", "ok", None, kid(master_key)),
        ("decrypt", "ok", None, kid(master_key)),
        ("decrypt", "failed", None, None),  # malformed: no key id can be read
    ]


# Delivery: silent by default, the logger, hooks


def test_silent_by_default_even_when_the_application_logs_at_debug(master_key: str) -> None:
    # The default, as a fresh process sees it (other tests may change levels in this one).
    probe = (
        "import logging, redis_encrypted_fields.audit as a; "
        f"print(logging.getLogger({AUDIT_LOGGER!r}).level, a.audit_enabled())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.split() == [str(logging.WARNING), "False"]

    m = SecAccount(name=secret("n"), password=secret("pw"))
    key = SecAccount.make_primary_key(m.pk)
    with captured() as root, levels({None: logging.DEBUG, AUDIT_LOGGER: logging.WARNING}):
        m.save()
        SecAccount.get(m.pk)
        assert root.named(AUDIT_LOGGER) == []

        with levels({AUDIT_LOGGER: logging.INFO}):
            assert audit_enabled()
            SecAccount.get(m.pk)
        (record,) = root.named(AUDIT_LOGGER)
    assert record.levelno == logging.INFO
    expected = AuditEvent("decrypt", "ok", "SecAccount", "password", key, kid(master_key))
    assert (
        record.getMessage() == f"decrypt ok SecAccount.password record={key} key={expected.key_id}"
    )
    assert record.audit == expected.as_dict()  # type: ignore[attr-defined]


def test_nothing_is_built_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    from redis_encrypted_fields.audit import events as audit

    built: list[Any] = []
    monkeypatch.setattr(audit, "_hooks", ())
    monkeypatch.setattr(audit, "_listening", False)
    monkeypatch.setattr(audit, "emit", lambda *args: built.append(args))
    with levels({AUDIT_LOGGER: logging.WARNING}):
        m = SecAccount(name=secret("n"), password=secret("pw"))
        m.save()
        SecAccount.get(m.pk)
        decrypt_secret(encrypt_secret("x"))
    assert built == []


def test_failures_are_logged_with_their_reason(
    master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = SecAccount(name=secret("n"), password=secret("pw"))
    m.save()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    with (
        captured(AUDIT_LOGGER) as cap,
        levels({AUDIT_LOGGER: logging.INFO}),
        pytest.raises(DecryptionError),
    ):
        SecAccount.get(m.pk)
    (record,) = cap.records
    message = record.getMessage()
    assert message.startswith(f"decrypt failed SecAccount.password record={m.key()} ")
    assert f"key={kid(master_key)} reason=Decryption failed: no configured master key" in message


def test_a_hook_receives_events_until_it_is_removed(master_key: str) -> None:
    got: list[AuditEvent] = []
    threads: set[int] = set()

    @add_audit_hook
    def hook(event: AuditEvent) -> None:
        got.append(event)
        threads.add(threading.get_ident())

    try:
        assert audit_enabled()
        m = SecAccount(name=secret("n"), password=secret("pw"))
        m.save()
        assert all(isinstance(e, AuditEvent) for e in got)
        assert threads == {threading.get_ident()}  # called in the thread doing the work
        assert [(e.operation, e.record) for e in got] == [("encrypt", m.key())]
    finally:
        remove_audit_hook(hook)
    SecAccount.get(m.pk)
    m.save()
    assert len(got) == 1


def test_a_bound_method_hook_can_be_removed() -> None:
    class Sink:
        def __init__(self) -> None:
            self.events: list[AuditEvent] = []

        def send(self, event: AuditEvent) -> None:
            self.events.append(event)

    sink = Sink()
    add_audit_hook(sink.send)
    remove_audit_hook(sink.send)
    try:
        encrypt_secret("x")
        assert sink.events == []
    finally:
        from redis_encrypted_fields.audit import events as audit

        for hook in audit._hooks:
            if getattr(hook, "__self__", None) is sink:
                remove_audit_hook(hook)


async def test_a_raising_hook_breaks_neither_save_nor_get(
    model: Any, events: list[AuditEvent]
) -> None:
    url, pw = secret("url"), secret("pw")

    def broken(event: AuditEvent) -> None:
        raise RuntimeError("audit sink is down")

    add_audit_hook(broken)
    after: list[AuditEvent] = []
    later = after.append
    add_audit_hook(later)
    try:
        with captured("redis_encrypted_fields") as cap:
            m = model(name=secret("n"), connection_url=url, admin_password=pw)
            await aw(m.save())
            got = await aw(model.get(m.pk))
    finally:
        remove_audit_hook(broken)
        remove_audit_hook(later)
    assert (got.connection_url, got.admin_password) == (url, pw)
    assert len(after) == 4  # the hooks after the broken one still get every event
    failures = [r for r in cap.records if r.levelno == logging.ERROR]
    assert len(failures) == 4
    assert all("audit hook" in r.getMessage() and r.exc_info for r in failures)
    assert_absent([url, pw], cap.texts(), "in the log of a failing hook")


# Events never carry a secret


async def test_no_event_or_audit_message_contains_a_plaintext_or_the_key(
    events: list[AuditEvent], master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plaintexts = [secret(label) for label in ("url", "pw", "new", "admin", "rep", "tok", "plain")]
    url, pw, new, admin, rep, tok, planted = plaintexts
    new_master = new_key()
    with captured() as root, levels({None: logging.DEBUG, AUDIT_LOGGER: logging.INFO}):
        m = SecAccount(name=secret("n"), password=url, api_token=pw)
        m.save()
        SecAccount.get(m.pk)
        SecAccount.find(SecAccount.name == m.name).all()
        m.update(api_token="***")
        m.update(api_token=new)
        t = SecTenant(
            name=secret("n"),
            admin={"user": "u", "password": admin},
            replicas=[{"user": "r", "password": rep}],
            tokens=[tok],
        )
        t.save()
        SecTenant.get(t.pk)
        client().hset(m.key(), "password", planted)
        SecAccount.get(m.pk)
        ops.migrate(SecAccount)
        monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_master)
        with pytest.raises(DecryptionError):
            SecAccount.get(m.pk)
        monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
        ops.rotate(SecAccount)
        ops.rotate(SecTenant)
        SecTenant.get(t.pk)
        decrypt_secret(encrypt_secret(pw))
    audit_records = root.named(AUDIT_LOGGER)
    operations = {e.operation for e in events}
    assert operations == {"encrypt", "decrypt", "rewrap"}
    assert {e.outcome for e in events} == {"ok", "failed"}
    assert len(audit_records) == len(events)
    texts = [repr(e) for e in events] + [str(v) for e in events for v in e.as_dict().values()]
    texts += [r.getMessage() for r in audit_records] + [repr(r.__dict__) for r in audit_records]
    forbidden = plaintexts + key_material(master_key) + key_material(new_master)
    assert_absent(forbidden, texts, "in an audit event")
