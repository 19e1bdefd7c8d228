"""The threat model (docs/security.md) against the real server.

An attacker who can read and write Redis but has no master key cannot read a secret, forge one,
or move one to another record or field; a wrong key never destroys data. Each claim of the
document that is not proved elsewhere is proved here, including its stated limits.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from search_models import SyncHashUser, SyncJsonUser
from security_support import (
    AUDIT_LOGGER,
    SecAccount,
    SecAsyncAccount,
    SecTenant,
    SecUnbound,
    assert_absent,
    captured,
    cli,
    client,
    exception_texts,
    key_material,
    levels,
    secret,
    snapshot,
)
from support import (
    CLUSTER_MODELS,
    INSTANCE_MODELS,
    SyncCluster,
    SyncHashInstance,
    SyncJsonInstance,
    aw,
    dump_redis,
    is_json,
    new_key,
    origin_encrypt_v1,
    raw,
    wipe,
    write_raw,
)

from redis_encrypted_fields import (
    AuditEvent,
    ConcurrentChangeError,
    DecryptionError,
    KeyRing,
    MasterKey,
    PlaintextSecretError,
    add_audit_hook,
    decrypt_secret,
    encrypt_secret,
    get_keyring,
    get_secret_value,
    ops,
    remove_audit_hook,
    set_keyring,
    set_plaintext_reads,
)
from redis_encrypted_fields.crypto.envelope import (
    PREFIX,
    Envelope,
    binding,
    open_envelope,
    parse,
    seal,
)
from redis_encrypted_fields.errors import printable
from redis_encrypted_fields.model import saving as models
from redis_encrypted_fields.model.keep import resolve_masks

URL = "redis://default:tamper-pw@db.internal:6379/0"


def other_than(ch: str, *options: str) -> str:
    return next(o for o in options if o != ch)


def substitutions(i: int, ch: str) -> list[str]:
    """Two base64 characters and one other (mostly outside the alphabet), all different from ch."""
    odd = "-_ é*=\n."[i % 8]
    return [other_than(ch, "A", "B"), other_than(ch, "/", "9"), *([odd] if odd != ch else [])]


def read_outcome(model: Any, pk: str) -> str | None:
    """``None`` if reading fails with ``DecryptionError``; otherwise what happened instead."""
    try:
        got = model.get(pk)
    except DecryptionError:
        return None
    except Exception as exc:
        return f"raised {type(exc).__name__}: {exc}"
    return f"read {str(got.connection_url)[:40]!r}"


# (1) Tamper: every single-character change and every truncation fails


@pytest.mark.parametrize("model", [SyncHashInstance, SyncJsonInstance], ids=lambda m: m.__name__)
def test_every_substitution_and_truncation_of_a_stored_envelope_fails(model: Any) -> None:
    set_plaintext_reads(False)  # migration finished: nothing passes as plaintext
    m = model(name=secret("tamper"), connection_url=URL)
    m.save()
    original = raw(model, m.pk)["connection_url"]
    assert 150 <= len(original) <= 200
    changed = [
        original[:i] + sub + original[i + 1 :]
        for i, ch in enumerate(original)
        for sub in substitutions(i, ch)
    ]
    truncated = [original[:n] for n in range(1, len(original))]  # n = 0: see test_clearing_...
    problems = []
    for value in changed + truncated:
        write_raw(model, m.pk, "connection_url", value)
        outcome = read_outcome(model, m.pk)
        if outcome is not None:
            problems.append((value, outcome))
    assert problems == []
    assert len(changed) + len(truncated) > 600
    write_raw(model, m.pk, "connection_url", original)
    assert model.get(m.pk).connection_url == URL


def test_with_plaintext_tolerance_a_damaged_prefix_reads_as_plaintext(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stated limit: while plaintext is tolerated (migration), a value whose ``REFv2:``
    prefix was altered is plaintext, like any value an attacker writes. It is the altered text
    itself, never the secret or another secret, and is logged as plaintext; the body of an
    envelope can never be altered into anything readable."""
    m = SyncHashInstance(name=secret("tamper"), connection_url=URL)
    m.save()
    original = raw(SyncHashInstance, m.pk)["connection_url"]
    for i in range(len(PREFIX)):
        value = original[:i] + other_than(original[i], "X", "Y") + original[i + 1 :]
        write_raw(SyncHashInstance, m.pk, "connection_url", value)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="redis_encrypted_fields"):
            assert SyncHashInstance.get(m.pk).connection_url == value
        assert "stored as plaintext" in caplog.text
    for i in range(len(PREFIX), len(original), 7):
        value = original[:i] + other_than(original[i], "A", "B") + original[i + 1 :]
        write_raw(SyncHashInstance, m.pk, "connection_url", value)
        with pytest.raises(DecryptionError):
            SyncHashInstance.get(m.pk)
    set_plaintext_reads(False)
    write_raw(SyncHashInstance, m.pk, "connection_url", "X" + original[1:])
    with pytest.raises(PlaintextSecretError):
        SyncHashInstance.get(m.pk)


def test_clearing_or_deleting_a_secret_is_not_detected() -> None:
    """The stated limit: integrity covers values, not their presence."""
    m = SecAccount(name=secret("n"), password=secret("pw"), api_token=secret("tok"))
    m.save()
    client().hset(m.key(), "api_token", "")
    assert SecAccount.get(m.pk).api_token is None
    client().hdel(m.key(), "api_token")
    assert SecAccount.get(m.pk).api_token is None


def test_an_older_envelope_of_the_same_field_still_decrypts() -> None:
    """The stated limit: a value saved earlier for the same record and field can be put back
    (rollback); binding stops moves between records and fields, not replays within one."""
    old, new = secret("old"), secret("new")
    m = SecAccount(name=secret("n"), password=old)
    m.save()
    earlier = raw(SecAccount, m.pk)["password"]
    m.update(password=new)
    write_raw(SecAccount, m.pk, "password", earlier)
    assert SecAccount.get(m.pk).password == old


def test_an_envelope_made_without_the_master_key_is_refused(master_key: str) -> None:
    """An attacker who knows the format, the record and the key id but not the key."""
    m = SecAccount(name=secret("n"), password=secret("pw"))
    m.save()
    victim_id = MasterKey.from_base64(master_key).key_id
    forged = seal("attacker's choice", KeyRing(MasterKey.generate()), binding(m.key(), "password"))
    with_victim_id = parse(forged)._replace(key_id=victim_id).to_text()
    for value in (forged, with_victim_id):
        write_raw(SecAccount, m.pk, "password", value)
        with pytest.raises(DecryptionError, match="Decryption failed"):
            SecAccount.get(m.pk)


# (2) Misplacement: no envelope or part of one works anywhere else


def test_a_value_moved_between_a_hash_and_a_json_model_fails() -> None:
    h = SyncHashInstance(name=secret("n"), connection_url=URL, admin_password=secret("pw"))
    j = SyncJsonInstance(name=secret("n"), connection_url=URL, admin_password=secret("pw"))
    h.save()
    j.save()
    from_hash = raw(SyncHashInstance, h.pk)["admin_password"]
    from_json = raw(SyncJsonInstance, j.pk)["admin_password"]
    write_raw(SyncJsonInstance, j.pk, "admin_password", from_hash)
    write_raw(SyncHashInstance, h.pk, "admin_password", from_json)
    for model, pk in ((SyncHashInstance, h.pk), (SyncJsonInstance, j.pk)):
        with pytest.raises(DecryptionError):
            model.get(pk)


def cluster() -> Any:
    c = SyncCluster(
        name=secret("cluster"),
        primary={"username": "admin", "password": secret("primary")},
        replicas=[
            {"username": "r0", "password": secret("replica0")},
            {"username": "r1", "password": secret("replica1")},
        ],
        tokens=[secret("token0"), secret("token1")],
    )
    c.save()
    return c


def _swap(doc: dict[str, Any], a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    def at(path: tuple[Any, ...]) -> tuple[Any, Any]:
        holder: Any = doc
        for part in path[:-1]:
            holder = holder[part]
        return holder, path[-1]

    (ha, ka), (hb, kb) = at(a), at(b)
    ha[ka], hb[kb] = hb[kb], ha[ka]


@pytest.mark.parametrize(
    "change",
    [
        lambda d: _swap(d, ("primary", "password"), ("replicas", 0, "password")),
        lambda d: _swap(d, ("replicas", 0, "password"), ("replicas", 1, "password")),
        lambda d: _swap(d, ("tokens", 0), ("tokens", 1)),
        lambda d: d["replicas"].reverse(),  # whole items swapped, user names and all
        lambda d: d["tokens"].pop(0),  # a list item removed behind the model's back
        lambda d: d["primary"].update(password=d["replicas"][1]["password"]),
        lambda d: d["tokens"].__setitem__(0, d["primary"]["password"]),
    ],
    ids=[
        "embedded-to-list-item",
        "list-item-to-list-item",
        "list-of-str-items",
        "list-reordered",
        "list-item-removed",
        "list-item-to-embedded",
        "embedded-to-list-of-str",
    ],
)
def test_values_moved_inside_embedded_models_and_lists_fail(change: Any) -> None:
    c = cluster()
    doc = raw(SyncCluster, c.pk)
    change(doc)
    client().json().set(c.key(), "$", doc)
    with pytest.raises(DecryptionError):
        SyncCluster.get(c.pk)


def test_list_changes_made_through_the_model_re_encrypt_at_the_new_positions() -> None:
    c = cluster()
    loaded = SyncCluster.get(c.pk)
    kept_replica, kept_token = str(c.replicas[1].password), str(c.tokens[1])
    loaded.replicas.pop(0)
    loaded.tokens.reverse()
    loaded.save()
    again = SyncCluster.get(c.pk)
    assert [r.password for r in again.replicas] == [kept_replica]
    assert again.tokens[0] == kept_token


def test_list_items_moved_to_the_same_position_of_another_record_fail() -> None:
    a, b = cluster(), cluster()
    doc = raw(SyncCluster, b.pk)
    doc["tokens"][0] = raw(SyncCluster, a.pk)["tokens"][0]
    client().json().set(b.key(), "$", doc)
    with pytest.raises(DecryptionError):
        SyncCluster.get(b.pk)


def test_parts_of_envelopes_swapped_between_envelopes_fail() -> None:
    """Wrapped data key (with its header) from one envelope, data from another."""
    a = SecAccount(name=secret("n"), password=secret("a1"), api_token=secret("tok"))
    a.save()
    a1 = parse(raw(SecAccount, a.pk)["password"])
    a.save()  # the same record and field, a new data key
    a2 = parse(raw(SecAccount, a.pk)["password"])
    token = parse(raw(SecAccount, a.pk)["api_token"])
    b = SecAccount(name=secret("n"), password=secret("b"))
    b.save()
    other = parse(raw(SecAccount, b.pk)["password"])

    def mixed(header: Envelope, data: Envelope) -> str:
        return Envelope(
            header.key_id, header.dek_nonce, header.wrapped_dek, data.nonce, data.ciphertext
        ).to_text()

    cases = {
        "data key of an older save of the same field": mixed(a1, a2),
        "data key of a newer save of the same field": mixed(a2, a1),
        "data key of another field of the record": mixed(token, a2),
        "data key of the same field of another record": mixed(other, a2),
        "data of the same field of another record": mixed(a2, other),
    }
    messages = {}
    for name, value in cases.items():
        write_raw(SecAccount, a.pk, "password", value)
        with pytest.raises(DecryptionError) as info:
            SecAccount.get(a.pk)
        messages[name] = str(info.value)
    # An unwrapped data key that belongs to another envelope does not open this one's data.
    assert messages["data key of an older save of the same field"].startswith(
        "Decryption failed: corrupted data ("
    )


def test_a_renamed_record_key_no_longer_decrypts() -> None:
    """The documented trade-off of binding to the Redis key."""
    m = SecAccount(name=secret("n"), password=secret("pw"))
    m.save()
    moved = SecAccount.make_primary_key("renamed-" + m.pk)
    client().rename(m.key(), moved)
    with pytest.raises(DecryptionError):
        SecAccount.get("renamed-" + m.pk)
    client().rename(moved, m.key())
    assert SecAccount.get(m.pk).password == m.password


def test_unbound_and_bound_values_do_not_mix() -> None:
    bound = SecAccount(name=secret("n"), password=secret("pw"))
    bound.save()
    write_raw(SecAccount, bound.pk, "api_token", encrypt_secret(secret("unbound")))
    with pytest.raises(DecryptionError):
        SecAccount.get(bound.pk)
    u = SecUnbound(name=secret("n"), secret=secret("u"))
    u.save()
    write_raw(SecUnbound, u.pk, "secret", raw(SecAccount, bound.pk)["password"])
    with pytest.raises(DecryptionError):
        SecUnbound.get(u.pk)


def test_unbound_values_move_freely_between_unbound_records() -> None:
    """The stated limit: without EncryptedModel (or from encrypt_secret) there is no binding."""
    a = SecUnbound(name=secret("n"), secret=secret("a"))
    b = SecUnbound(name=secret("n"), secret=secret("b"))
    a.save()
    b.save()
    write_raw(SecUnbound, b.pk, "secret", raw(SecUnbound, a.pk)["secret"])
    assert SecUnbound.get(b.pk).secret == a.secret


def test_origin_v1_values_are_not_bound(master_key: str) -> None:
    """The stated limit: while plaintext reads are tolerated, an origin v1 value decrypts in any
    record and field; once they are refused, v1 values are refused too; ``status`` counts the v1
    values left (``origin-v1``)."""
    m = SecAccount(name=secret("n"), password=secret("pw"))
    m.save()
    other_secret = secret("from-another-record")
    write_raw(SecAccount, m.pk, "password", origin_encrypt_v1(other_secret, master_key))
    assert SecAccount.get(m.pk).password == other_secret
    assert ops.status(SecAccount).states["SecAccount.password"]["origin-v1"] >= 1
    set_plaintext_reads(False)
    with pytest.raises(DecryptionError, match="v1 format"):
        SecAccount.get(m.pk)


# (5) A wrong key never destroys data


def saved_records(master_key: str) -> tuple[Any, Any]:
    a = SecAccount(name=secret("n"), password=secret("pw"), api_token=secret("tok"))
    a.save()
    t = SecTenant(
        name=secret("n"),
        admin={"user": "root", "password": secret("admin")},
        replicas=[{"user": "r", "password": secret("rep")}],
        tokens=[secret("tok")],
    )
    t.save()
    return a, t


async def test_failed_reads_and_saves_under_a_wrong_key_change_nothing(
    master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, t = saved_records(master_key)
    token = str(a.api_token)
    aa = SecAsyncAccount(name=secret("n"), password=secret("pw"), api_token=secret("tok"))
    await aa.save()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    before = snapshot()
    with pytest.raises(DecryptionError):
        SecAccount.get(a.pk)
    with pytest.raises(DecryptionError):
        SecAccount.find(SecAccount.name == a.name).all()
    with pytest.raises(DecryptionError):
        SecTenant.get(t.pk)
    with pytest.raises(DecryptionError):
        SecTenant.find(SecTenant.name == t.name).all()
    with pytest.raises(DecryptionError):
        await SecAsyncAccount.get(aa.pk)
    with pytest.raises(DecryptionError):
        await SecAsyncAccount.find(SecAsyncAccount.name == aa.name).all()
    # A save that must keep a stored secret (a mask sent back) fails before writing anything.
    with pytest.raises(DecryptionError):
        a.update(api_token="***", name="changed")
    with pytest.raises(DecryptionError):
        t.update(admin__password="***")
    with pytest.raises(DecryptionError):
        await aa.update(password="***")
    assert snapshot() == before
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", master_key)
    assert SecAccount.get(a.pk).api_token == token


def plant_old_data(master_key: str) -> None:
    """SecAccount and SecTenant records under ``master_key`` only: v2 envelopes and v1 values."""
    wipe(SecAccount)
    wipe(SecTenant)
    saved_records(master_key)
    c = client()
    for i in range(5):
        key = SecAccount.make_primary_key(f"v1-{i}")
        v1 = origin_encrypt_v1(secret("v1"), master_key)
        c.hset(key, mapping={"pk": f"v1-{i}", "name": "n", "password": v1})


def test_failed_migrate_and_rotate_change_nothing(
    master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant_old_data(master_key)
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())  # the old key is not configured
    before = snapshot()
    for run in (ops.migrate, ops.rotate, ops.status):
        for model in (SecAccount, SecTenant):
            report = run(model)
            assert report.changed == 0
        assert not run(SecAccount).ok
    assert not ops.rotate(SecTenant).ok
    assert snapshot() == before


async def test_failed_async_rotate_changes_nothing(
    master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wipe(SecAsyncAccount)
    for _ in range(3):
        await SecAsyncAccount(name="n", password=secret("pw"), api_token=secret("t")).save()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    before = snapshot()
    report = await ops.arotate(SecAsyncAccount)
    assert (report.ok, report.changed, len(report.failures)) == (False, 0, 6)
    assert not (await ops.amigrate(SecAsyncAccount)).changed
    assert snapshot() == before


def test_failed_cli_rotate_changes_nothing(master_key: str) -> None:
    plant_old_data(master_key)
    before = snapshot()
    env = {**os.environ, "REDIS_SRE_MASTER_KEY": new_key()}
    env.pop("REDIS_SRE_PREVIOUS_MASTER_KEYS", None)
    proc = cli("rotate", "security_support", env=env)
    assert proc.returncode == 1, proc.stderr
    # One line per field, key id and reason, naming the records.
    lines = proc.stderr.splitlines()
    (line,) = [x for x in lines if x.startswith("failed: SecAccount.password: 5")]
    assert "5 origin-v1: Decryption failed" in line
    assert SecAccount.make_primary_key("v1-0") in line
    assert "NOT OK" in proc.stdout
    no_key = {k: v for k, v in env.items() if k != "REDIS_SRE_MASTER_KEY"}
    proc = cli("rotate", "security_support", env=no_key)
    assert proc.returncode == 2
    assert snapshot() == before


# (6) The plaintext switch has no bypass: once REDIS_SRE_REJECT_PLAINTEXT is on, plaintext and
# unbound (origin v1) values are refused on every path; and a value given as input is never
# opened as an origin v1 envelope (it could be any record's secret).

ATTACKER_URL = "redis://default:pw@attacker.example:6379/0"


def planted_value(kind: str, master_key: str) -> str:
    """What an attacker who can write to Redis plants: plaintext of their choice, or an origin v1
    value copied from another record (it decrypts wherever it is put)."""
    if kind == "plaintext":
        return ATTACKER_URL
    return origin_encrypt_v1(secret("another-records-secret"), master_key)


@pytest.mark.parametrize("kind", ["plaintext", "origin-v1"])
async def test_with_plaintext_refused_a_mask_sent_back_never_keeps_a_planted_value(
    kind: str, master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mask sent back (the API's PUT: ``Conn(pk=..., password="***").save()``) must not take
    a planted value for "the stored secret" and seal it into a valid, bound envelope: with the
    switch on it raises ``PlaintextSecretError`` naming the field and record, and writes
    nothing. Hash and JSON (embedded model, list items), sync and async."""
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "1")
    value = planted_value(kind, master_key)
    a = SecAccount(name=secret("n"), password=secret("pw"))
    a.save()
    b = SecAsyncAccount(name=secret("n"), password=secret("pw"))
    await b.save()
    admin, rep, tok = secret("admin"), secret("rep"), secret("tok")
    real: dict[str, Any] = {
        "admin": {"user": "root", "password": admin},
        "replicas": [{"user": "r", "password": rep}],
        "tokens": [tok],
    }
    t = SecTenant(name=secret("n"), **real)
    t.save()
    write_raw(SecAccount, a.pk, "password", value)
    write_raw(SecAsyncAccount, b.pk, "password", value)
    for path in ("admin.password", "replicas[0].password", "tokens[0]"):
        client().json().set(t.key(), f"$.{path}", value)
    before = dump_redis()

    def tenant(**masked: Any) -> Any:
        return SecTenant(pk=t.pk, name=t.name, **{**real, **masked})

    attempts: list[tuple[str, str, Any]] = [
        ("password", a.key(), lambda: SecAccount(pk=a.pk, name=a.name, password="***").save()),
        ("password", a.key(), lambda: a.update(password="***")),
        ("password", b.key(), lambda: SecAsyncAccount(pk=b.pk, name=b.name, password="***").save()),
        (
            "admin.password",
            t.key(),
            lambda: tenant(admin={"user": "root", "password": "***"}).save(),
        ),
        (
            "replicas.0.password",
            t.key(),
            lambda: tenant(replicas=[{"user": "r", "password": "***"}]).save(),
        ),
        ("tokens.0", t.key(), lambda: tenant(tokens=["***"]).save()),
    ]
    for field, record, attempt in attempts:
        with pytest.raises(PlaintextSecretError) as info:
            await aw(attempt())
        assert (info.value.field, info.value.record) == (field, record)
        assert value not in str(info.value)
    assert dump_redis() == before


@pytest.mark.parametrize("switch", ["0", "1"], ids=["plaintext-tolerated", "plaintext-refused"])
async def test_an_origin_v1_value_given_as_input_is_never_opened(
    switch: str, master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Input (construction, validation, assignment, ``update()``, nested and list values) that
    is an origin v1 envelope is refused with ``DecryptionError`` naming the field, whether
    plaintext reads are tolerated or not: unbound, it could be any record's secret. Nothing is
    written; the module API (``decrypt_secret``, ``get_secret_value``) still reads it."""
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", switch)
    other = secret("another-records-secret")
    v1 = origin_encrypt_v1(other, master_key)
    mine = secret("pw")
    a = SecAccount(name=secret("n"), password=mine)
    a.save()
    b = SecAsyncAccount(name=secret("n"), password=secret("pw"))
    await b.save()
    before = dump_redis()
    cred = {"user": "u", "password": secret("pw")}
    attempts: list[tuple[str, str | None, Any]] = [
        ("password", a.key(), lambda: SecAccount(pk=a.pk, name=a.name, password=v1)),
        (
            "password",
            a.key(),
            lambda: SecAccount.model_validate({**a.model_dump(), "password": v1}),
        ),
        ("password", None, lambda: SecAccount(name="n", password=v1)),
        ("password", a.key(), lambda: setattr(a, "password", v1)),
        ("password", a.key(), lambda: a.update(password=v1)),
        ("password", a.key(), lambda: a.model_copy(update={"password": v1}).save()),
        ("password", b.key(), lambda: b.update(password=v1)),
        ("api_token", a.key(), lambda: a.update(api_token=v1)),
        ("admin.password", None, lambda: SecTenant(name="n", admin={"user": "u", "password": v1})),
        (
            "replicas.1.password",
            None,
            lambda: SecTenant(name="n", admin=cred, replicas=[cred, {**cred, "password": v1}]),
        ),
        ("tokens.0", None, lambda: SecTenant(name="n", admin=cred, tokens=[v1])),
    ]
    for field, record, attempt in attempts:
        with pytest.raises(DecryptionError, match="origin's v1 format") as info:
            await aw(attempt())
        assert (info.value.field, info.value.record) == (field, record)
        assert other not in str(info.value)
    assert a.password == mine
    assert dump_redis() == before
    assert SecAccount.get(a.pk).password == mine
    # The explicit way to read a v1 value, unchanged.
    assert decrypt_secret(v1) == other
    assert get_secret_value(v1) == other


def plant_suspicious(master_key: str) -> tuple[Any, Any]:
    """SecAccount records: a genuine one, one with planted plaintext, one with an origin v1
    value from elsewhere. Returns the last two."""
    wipe(SecAccount)
    SecAccount(name="n", password=secret("pw")).save()
    planted = []
    for kind in ("plaintext", "origin-v1"):
        m = SecAccount(name="n", password=secret("pw"))
        m.save()
        write_raw(SecAccount, m.pk, "password", planted_value(kind, master_key))
        planted.append(m)
    return planted[0], planted[1]


def test_with_plaintext_refused_migrate_and_rotate_leave_planted_values_as_suspicious(
    master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the switch on, ``migrate`` and ``rotate`` do not encrypt planted plaintext or
    upgrade planted v1 values (which would make them look genuine): they report them as
    suspicious, counted and named by record, leave them as they are and are not OK (exit 1,
    naming ``--accept-plaintext``); ``status`` names them so too. ``accept_plaintext=True``
    (``--accept-plaintext``) encrypts them. Without the switch, ``migrate`` encrypts them
    (``test_ops.py::test_migrate_encrypts_plaintext_upgrades_v1_and_is_idempotent``)."""
    plaintext, v1 = plant_suspicious(master_key)
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "1")
    before = dump_redis()
    for run in (ops.migrate, ops.rotate, ops.status):
        report = run(SecAccount)
        assert (report.ok, report.changed, report.suspicious) == (False, 0, 2)
        assert report.states["SecAccount.password"]["suspicious"] == 2
        assert {(f.key, f.field, f.state) for f in report.failures} == {
            (plaintext.key(), "password", "suspicious"),
            (v1.key(), "password", "suspicious"),
        }
        assert any("2 values suspicious" in p for p in report.problems())
        assert ATTACKER_URL not in str(report.as_dict())
    proc = cli("migrate", "security_support:SecAccount", env=dict(os.environ))
    assert proc.returncode == 1, proc.stderr
    assert "--accept-plaintext" in proc.stderr
    failed = [x for x in proc.stderr.splitlines() if x.startswith("failed: SecAccount.password")]
    assert len(failed) == 2
    assert all(" suspicious: " in x for x in failed)
    assert plaintext.key() in "".join(failed)
    assert v1.key() in "".join(failed)
    assert ATTACKER_URL not in proc.stdout + proc.stderr
    assert dump_redis() == before

    report = ops.rotate(SecAccount, dry_run=True, accept_plaintext=True)
    assert (report.ok, report.encrypted, report.upgraded, report.suspicious) == (True, 1, 1, 0)
    proc = cli("migrate", "--accept-plaintext", "security_support:SecAccount", env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert raw(SecAccount, plaintext.pk)["password"].startswith(PREFIX)
    assert raw(SecAccount, v1.pk)["password"].startswith(PREFIX)
    assert ops.status(SecAccount).ok


# Keys and limits


class CountingAEAD:
    """Counts the AES-GCM operations made with one master key."""

    def __init__(self, key: MasterKey) -> None:
        self.inner = key.aead
        self.encrypts = 0
        self.decrypts = 0
        key.aead = self  # type: ignore[assignment]

    def encrypt(self, *args: Any) -> bytes:
        self.encrypts += 1
        return self.inner.encrypt(*args)

    def decrypt(self, *args: Any) -> bytes:
        self.decrypts += 1
        return self.inner.decrypt(*args)


def test_each_saved_secret_costs_one_master_key_wrap_and_a_new_data_key(master_key: str) -> None:
    key = MasterKey.from_base64(master_key)
    counter = CountingAEAD(key)
    set_keyring(KeyRing(key))
    t = SecTenant(
        name=secret("n"),
        admin={"user": "u", "password": secret("a")},
        replicas=[{"user": "r", "password": secret("r")}],
        tokens=[secret("t0"), secret("t1")],
    )
    t.save()
    assert counter.encrypts == 4
    first = parse(raw(SecTenant, t.pk)["tokens"][0])
    t.save()
    assert counter.encrypts == 8  # every save wraps afresh
    again = parse(raw(SecTenant, t.pk)["tokens"][0])
    assert (first.dek_nonce, first.wrapped_dek) != (again.dek_nonce, again.wrapped_dek)
    SecTenant.get(t.pk)
    assert (counter.encrypts, counter.decrypts) == (8, 4)  # reads never wrap


def test_after_rotation_the_new_key_does_all_the_wrapping(master_key: str) -> None:
    wipe(SecAccount)
    for i in range(4):
        SecAccount(pk=f"rot{i}", name="n", password=secret("pw")).save()
    old, new = MasterKey.from_base64(master_key), MasterKey.generate()
    old_count, new_count = CountingAEAD(old), CountingAEAD(new)
    set_keyring(KeyRing(new, [old]))
    assert ops.rotate(SecAccount).rewrapped == 4
    assert (old_count.encrypts, old_count.decrypts) == (0, 4)
    assert (new_count.encrypts, new_count.decrypts) == (4, 0)
    SecAccount.get("rot0").save()
    assert (old_count.encrypts, new_count.encrypts) == (0, 5)


def test_an_unknown_key_id_fails_without_trying_any_key(master_key: str) -> None:
    m = SecAccount(name=secret("n"), password=secret("pw"))
    m.save()
    keys = [MasterKey.generate(), MasterKey.generate()]
    counters = [CountingAEAD(k) for k in keys]
    set_keyring(KeyRing(keys[0], keys[1:]))
    old_id = MasterKey.from_base64(master_key).key_id_hex
    with pytest.raises(DecryptionError, match=f"no configured master key has id {old_id}"):
        SecAccount.get(m.pk)
    assert [(c.encrypts, c.decrypts) for c in counters] == [(0, 0), (0, 0)]


def test_origin_v1_values_try_each_configured_key_in_order() -> None:
    """The exception to "no trial decryption": v1 values name no key."""
    keys = [MasterKey.generate() for _ in range(3)]
    counters = [CountingAEAD(k) for k in keys]
    set_keyring(KeyRing(keys[0], keys[1:]))
    m = SecAccount(name=secret("n"), password=secret("pw"))
    m.save()
    counters[0].encrypts = 0
    plaintext = secret("v1")
    write_raw(SecAccount, m.pk, "password", origin_encrypt_v1(plaintext, keys[2].to_base64()))
    assert SecAccount.get(m.pk).password == plaintext
    assert [c.decrypts for c in counters] == [1, 1, 1]  # current first, then the previous keys
    write_raw(SecAccount, m.pk, "password", origin_encrypt_v1(plaintext, new_key()))
    with pytest.raises(DecryptionError):
        SecAccount.get(m.pk)
    assert [c.decrypts for c in counters] == [2, 2, 2]


def test_the_key_id_is_an_hmac_of_the_key_and_shows_nothing_of_it() -> None:
    key = MasterKey.generate()
    material = base64.b64decode(key.to_base64())
    expected = hmac.digest(material, b"redis-encrypted-fields/key-id/v1", hashlib.sha256)[:8]
    assert key.key_id == expected
    assert len(key.key_id) == 8
    assert key.key_id not in material
    assert parse(seal("x", KeyRing(key))).key_id == key.key_id


def test_colliding_key_ids_fail_closed() -> None:
    """Two distinct keys with one id (a configuration error, ~2^32 keys away) cannot make one
    key's envelope decrypt to anything: the ring keeps one of them and the other's envelopes
    fail to authenticate."""
    current, other = MasterKey.generate(), MasterKey.generate()
    other.key_id = current.key_id  # force the collision
    ring = KeyRing(current, [other])
    assert ring.keys == (current,)
    made_by_other = seal("secret", KeyRing(other), b"ctx")
    with pytest.raises(DecryptionError, match="Decryption failed"):
        open_envelope(made_by_other, ring, b"ctx")


@pytest.mark.parametrize("plaintext", ["", "a", "ab", "abc", "é", "✓✓", "x" * 100, "🔑" * 7])
def test_the_envelope_length_reveals_the_plaintext_length(plaintext: str) -> None:
    n = len(plaintext.encode("utf-8"))
    text = encrypt_secret(plaintext)
    assert len(text) == len(PREFIX) + 4 * math.ceil((97 + n) / 3)
    same_length = encrypt_secret("z" * n)
    assert len(same_length) == len(text)


def test_the_master_key_never_reaches_redis(
    master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant_old_data(master_key)
    new = new_key()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new)
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
    ops.migrate(SecAccount)
    ops.rotate(SecAccount)
    ops.rotate(SecTenant)
    stored = [repr(value) for value in snapshot().values()]
    assert_absent(key_material(master_key) + key_material(new), stored, "in Redis")


def test_inside_the_process_a_secret_is_an_ordinary_str() -> None:
    """The stated limit: the application (and whoever controls its process) has the plaintext;
    only repr() and JSON output hide it."""
    pw = secret("pw")
    m = SecAccount(name=secret("n"), password=pw)
    assert str(m.password) == pw
    assert f"{m.password}" == pw
    assert m.__dict__["password"] == pw
    assert pw not in repr(m)
    assert pw not in m.model_dump_json()


def test_a_plaintext_secret_that_looks_like_an_envelope_cannot_be_stored() -> None:
    """A value with the envelope prefix is always an envelope: never taken for plaintext."""
    with pytest.raises(DecryptionError):
        SecAccount(name="n", password=PREFIX + "not really")


def test_other_fields_are_neither_encrypted_nor_authenticated() -> None:
    """The stated scope: only EncryptedStr values are protected; the record's other fields are
    stored as they are and can be changed without the encrypted ones noticing."""
    pw = secret("pw")
    m = SyncHashInstance(name=secret("n"), environment="production", connection_url=URL)
    m.admin_password = pw  # type: ignore[assignment]
    m.save()
    assert raw(SyncHashInstance, m.pk)["environment"] == "production"
    write_raw(SyncHashInstance, m.pk, "environment", "attacker-chosen")
    got = SyncHashInstance.get(m.pk)
    assert (got.environment, got.admin_password) == ("attacker-chosen", pw)


# (9) Record keys cannot forge log, audit, error or report lines

# An audit line an attacker would like to add: whoever writes to Redis chooses record keys, and
# SCAN (migrate, rotate, status) and find() hand them to the library as they are.
FORGED = "rotate ok SecAccount.password record=:sec.account:forged key=0123456789abcdef"
# Each of these ends a line (or, on a terminal, rewrites one) wherever text is shown.
BREAKS = {"\n": "\\n", "\r": "\\r", "\x1b": "\\x1b", "\u2028": "\\u2028"}


def hostile_pk(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}" + "".join(
        f"{brk}{FORGED}" for brk in ("\n", "\r", "\x1b[1A\x1b[2K", "\u2028")
    )


def escaped(text: str) -> str:
    for brk, shown in BREAKS.items():
        text = text.replace(brk, shown)
    return text


def one_line(text: str) -> bool:
    return text.splitlines() == [text] and text.isprintable()


def test_record_keys_cannot_forge_log_audit_error_or_report_lines(
    master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wipe(SecAccount)
    good, plain, broken = hostile_pk("good"), hostile_pk("plain"), hostile_pk("broken")
    key = {pk: SecAccount.make_primary_key(pk) for pk in (good, plain, broken)}
    events: list[AuditEvent] = []
    hook = add_audit_hook(events.append)
    try:
        with captured() as root, levels({None: logging.DEBUG, AUDIT_LOGGER: logging.INFO}):
            SecAccount(pk=good, name="n", password=secret("pw")).save()
            assert SecAccount.get(good).pk == good
            client().hset(key[plain], mapping={"pk": plain, "name": "n", "password": "p"})
            SecAccount.get(plain)  # plaintext: a warning naming the record
            SecAccount(pk=broken, name="n", password=secret("pw")).save()
            envelope = raw(SecAccount, broken)["password"]
            write_raw(SecAccount, broken, "password", envelope[:-8] + "AAAAAAAA")
            with pytest.raises(DecryptionError) as failed:
                SecAccount.get(broken)
            monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())  # so that rotate re-wraps
            monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
            reports = [run(SecAccount) for run in (ops.migrate, ops.rotate, ops.status)]
    finally:
        remove_audit_hook(hook)
    proc = cli("status", "security_support:SecAccount")
    wipe(SecAccount)

    # Every log record of the library is one line, its audit dict too, names escaped.
    ours = [r for r in root.records if r.name.startswith("redis_encrypted_fields")]
    messages = [r.getMessage() for r in ours]
    for record, message in zip(ours, messages, strict=True):
        assert one_line(message), message
        for value in getattr(record, "audit", {}).values():
            assert not isinstance(value, str) or one_line(value), value
    for expected in (
        f"encrypt ok SecAccount.password record={escaped(key[good])} key=",
        f"decrypt ok SecAccount.password record={escaped(key[good])} key=",
        f"rewrap ok SecAccount.password record={escaped(key[good])} key=",
        f"encrypt ok SecAccount.password record={escaped(key[plain])} key=",  # migrate
        f"decrypt failed SecAccount.password record={escaped(key[broken])} key=",
        f"SecAccount.password of {escaped(key[plain])} is stored as plaintext",
    ):
        assert any(m.startswith(expected) for m in messages), expected
    assert not any(FORGED in m.split(" record=", 1)[0] for m in messages)
    # Hooks get data, not lines: the exact key.
    assert {e.record for e in events} >= {key[good], key[plain], key[broken]}

    # The error names the record escaped; its attribute holds the key as it is.
    assert one_line(str(failed.value))
    assert escaped(key[broken]) in str(failed.value)
    assert failed.value.record == key[broken]

    # Report lines, from Python and from the command line.
    for report in reports:
        lines = [g.line() for g in report.groups()] + [report.summary()]
        assert all(one_line(line) for line in lines), lines
    (failure,) = [g.line() for g in reports[2].groups() if g.failed]
    assert escaped(key[broken]) in failure
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout.splitlines() + proc.stderr.splitlines()
    assert not any(line.startswith(FORGED) for line in out), out
    assert any(escaped(key[broken]) in line for line in out), out


def test_every_character_that_breaks_or_disguises_a_line_is_escaped() -> None:
    """What ``printable`` (the one escape every log, audit, error and report line goes through)
    guarantees, over every code point: C0 and C1 controls, DEL, everything ``splitlines()``
    splits on, and the format characters that reorder text (bidi overrides) come out escaped;
    the result is one printable line; escaping twice changes nothing; printable text is kept."""
    for code in range(0x110000):
        char = chr(code)
        shown = printable(f"a{char}b")
        assert one_line(shown), hex(code)
        assert printable(shown) == shown, hex(code)
        breaks = len(f"a{char}b".splitlines()) > 1
        if breaks or code < 0x20 or 0x7F <= code <= 0x9F or code in (0x202E, 0x2066, 0x200B):
            assert char not in shown, hex(code)
            assert shown[:2] == "a\\", hex(code)
            assert shown[-1] == "b", hex(code)
    assert printable("app:conn:Zoë 1/2 \\n") == "app:conn:Zoë 1/2 \\n"
    assert printable("a\nb\r\tc\x1b[2K\u2028\U000e0001") == "a\\nb\\r\\tc\\x1b[2K\\u2028\\U000e0001"


# Races: a save that keeps a stored secret never writes over a secret changed meanwhile


def race_reads(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[], None], times: int = 1
) -> list[int]:
    """Run ``change`` (another writer) right after each of the first ``times`` reads of a save
    that keeps stored secrets, before its write; returns one item per read."""
    real = models.resolve_masks
    reads: list[int] = []

    def racing(*args: Any, **kwargs: Any) -> None:
        reads.append(1)
        if len(reads) <= times:
            change()
        real(*args, **kwargs)

    monkeypatch.setattr(models, "resolve_masks", racing)
    return reads


def stored_by_another_writer(model: Any, pk: str, path: str, plaintext: str) -> None:
    """What another process with the master key stores when it changes one secret: an envelope
    bound to the record and field, written through a connection of its own."""
    key = model.make_primary_key(pk)
    envelope = seal(plaintext, get_keyring(), binding(key, path))
    c = client()
    if is_json(model):
        steps = path.split(".")
        json_path = "$" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in steps)
        assert c.json().set(key, json_path, envelope, xx=True)
    else:
        c.hset(key, path, envelope)


@pytest.mark.parametrize("model", INSTANCE_MODELS, ids=lambda m: m.__name__)
async def test_a_save_keeping_a_secret_never_reverts_a_concurrent_change(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password changed by another writer between the read of a keep-existing save (a mask
    sent back) and its write survives: the save reads again and the mask keeps the new one.
    (The save used to write back the secret it had read: the change was lost without a word.)"""
    m = model(name=secret("n"), connection_url=URL, admin_password=secret("old"))
    await aw(m.save())
    new = secret("changed-meanwhile")
    reads = race_reads(
        monkeypatch, lambda: stored_by_another_writer(model, m.pk, "admin_password", new)
    )
    await aw(m.update(admin_password="***", environment="production"))
    got = await aw(model.get(m.pk))
    assert (got.admin_password, got.environment, got.connection_url) == (new, "production", URL)
    assert m.admin_password == new
    assert len(reads) == 2  # read, changed meanwhile, read again, written


@pytest.mark.parametrize("model", INSTANCE_MODELS, ids=lambda m: m.__name__)
async def test_a_save_keeping_a_secret_gives_up_rather_than_revert_a_secret_that_keeps_changing(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the secret changes after every read, the save gives up with ConcurrentChangeError
    (no secret in it), writes nothing, and leaves the instance with its mask: saved again
    later, it keeps the last secret stored."""
    m = model(name=secret("n"), connection_url=URL, admin_password=secret("old"))
    await aw(m.save())
    written: list[str] = []

    def change() -> None:
        written.append(secret("changed"))
        stored_by_another_writer(model, m.pk, "admin_password", written[-1])

    reads = race_reads(monkeypatch, change, times=1000)
    with pytest.raises(ConcurrentChangeError) as caught:
        await aw(m.update(admin_password="***", environment="production"))
    exc = caught.value
    assert (exc.model, exc.record) == (model.__name__, model.make_primary_key(m.pk))
    assert not any(w in text for w in written for text in exception_texts(exc))
    assert len(reads) > 1
    got = await aw(model.get(m.pk))
    assert (got.admin_password, got.environment) == (written[-1], "development")
    assert m.admin_password == "***"
    monkeypatch.setattr(models, "resolve_masks", resolve_masks)
    await aw(m.save())
    got = await aw(model.get(m.pk))
    assert (got.admin_password, got.environment) == (written[-1], "production")


@pytest.mark.parametrize("model", CLUSTER_MODELS, ids=lambda m: m.__name__)
async def test_masks_in_nested_models_and_lists_keep_a_secret_changed_meanwhile(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a record sent back whole from API output, masks in an embedded model and
    in a list, while another writer changes a list item's password."""
    m = model(
        name=secret("n"),
        primary={"username": "root", "password": secret("primary")},
        replicas=[{"username": "r0", "password": secret("r0")}],
        tokens=[secret("tok")],
    )
    await aw(m.save())
    body = m.model_dump(mode="json")
    body["name"] = "renamed"
    new = secret("changed-meanwhile")
    race_reads(
        monkeypatch, lambda: stored_by_another_writer(model, m.pk, "replicas.0.password", new)
    )
    await aw(model(**body).save())
    got = await aw(model.get(m.pk))
    assert got.name == "renamed"
    assert (got.primary.password, got.replicas[0].password) == (m.primary.password, new)
    assert got.tokens == m.tokens


@pytest.mark.parametrize("model", [SyncHashUser, SyncJsonUser], ids=lambda m: m.__name__)
def test_a_blind_index_follows_the_secret_changed_meanwhile(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other writer is the application itself (another thread, a plain save): the record
    ends with its value and the companion of that value, so a search finds the new value and
    not the old one."""
    old, new = f"{secret('old')}@example.com", f"{secret('new')}@example.com"
    m = model(name=secret("n"), email=old)
    m.save()

    def change() -> None:
        def save_elsewhere() -> None:
            other = model.get(m.pk)
            other.email = new
            other.save()

        writer = threading.Thread(target=save_elsewhere)
        writer.start()
        writer.join()

    race_reads(monkeypatch, change)
    m.update(email="***", team="ops")
    got = model.get(m.pk)
    assert (got.email, got.team) == (new, "ops")
    assert [r.pk for r in model.find(model.email == new).all()] == [m.pk]
    assert model.find(model.email == old).all() == []
