"""Per-tenant keys (KeyScope) and crypto-shredding, in the four flavours."""

from __future__ import annotations

import base64
import os
import signal
import threading
import uuid
from typing import Annotated, Any

import pytest
import redis_om
from audit_support import anomalies, fixture_audit_reset, fixture_hooked  # noqa: F401
from scope_models import VAULT_MODELS, SyncHashNote, SyncHashVault
from support import aw, client, raw, write_raw

from redis_encrypted_fields import (
    AuditEvent,
    DecryptionError,
    EncryptedModel,
    EncryptedStr,
    KeyScope,
    ScopeValueError,
    ShreddedKeyError,
    UnsupportedQueryError,
    add_audit_hook,
    configure_audit,
    remove_audit_hook,
    shred_scope,
)
from redis_encrypted_fields.crypto import decode
from redis_encrypted_fields.keys.scope import ScopeKeys, scope_keys, scope_redis_key


@pytest.fixture(params=VAULT_MODELS, ids=lambda m: m.__name__)
def model(request: pytest.FixtureRequest) -> Any:
    return request.param


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def saved(model: Any, tenant_id: str, password: str = "hunter2-secret", **more: Any) -> Any:  # noqa: S107
    record = model(tenant_id=tenant_id, name=f"n-{uuid.uuid4().hex[:8]}", password=password, **more)
    await aw(record.save())
    return record


def scope_hash(value: str) -> dict[str, str]:
    return client().hgetall(scope_redis_key("tenant", value))  # type: ignore[return-value]


async def test_values_are_sealed_under_the_tenants_scope_key(model: Any) -> None:
    acme = tenant()
    record = await saved(model, acme, pin=1234)
    stored = raw(model, record.pk)
    blob = decode(stored["password"])
    assert blob[0] == 0x82  # a scoped envelope
    keys = scope_hash(acme)
    # The envelope names the active scope key; Redis holds that key only wrapped.
    assert blob[1:9].hex() == keys["active"]
    assert set(keys) == {"active", f"k:{keys['active']}"}
    assert "hunter2-secret" not in str(keys)
    back = await aw(model.get(record.pk))
    assert back.password.get_secret_value() == "hunter2-secret"
    assert back.pin == 1234


async def test_models_of_one_namespace_share_the_tenants_key(model: Any) -> None:
    acme = tenant()
    await saved(model, acme)
    note = SyncHashNote(tenant_id=acme, body="note-secret")
    note.save()
    assert decode(client().hget(note.key(), "body"))[1:9].hex() == scope_hash(acme)["active"]
    assert SyncHashNote.get(note.pk).body.get_secret_value() == "note-secret"


async def test_a_value_moved_to_another_tenant_or_a_changed_scope_does_not_decrypt(
    model: Any,
) -> None:
    acme, globex = tenant(), tenant()
    victim = await saved(model, acme)
    thief = await saved(model, globex, password="thief-secret")
    write_raw(model, thief.pk, "password", raw(model, victim.pk)["password"])
    with pytest.raises(DecryptionError) as moved:
        await aw(model.get(thief.pk))
    assert "hunter2-secret" not in str(moved.value)
    # The scope field changed in place (HSET ... tenant_id globex): not the record's scope.
    write_raw(model, victim.pk, "tenant_id", globex)
    with pytest.raises(DecryptionError):
        await aw(model.get(victim.pk))
    write_raw(model, victim.pk, "tenant_id", acme)
    assert (await aw(model.get(victim.pk))).password.get_secret_value() == "hunter2-secret"


async def test_shred_erases_one_tenant_and_names_it(model: Any) -> None:
    acme, globex = tenant(), tenant()
    gone = await saved(model, acme)
    await saved(model, acme)
    kept = await saved(model, globex, password="globex-secret")
    events: list[AuditEvent] = []
    hook = add_audit_hook(events.append)
    try:
        result = shred_scope("tenant", acme, models=[model])
        assert result.records == {model.__name__: 2}
        assert len(result.key_ids) == 1
        assert [e.operation for e in events] == ["scope_key_shredded"]
        assert events[0].record == scope_redis_key("tenant", acme)
        # Only a tombstone is left: the wrapped key is gone from Redis.
        assert set(scope_hash(acme)) == {f"x:{result.key_ids[0]}"}
        events.clear()
        with pytest.raises(ShreddedKeyError) as err:
            await aw(model.get(gone.pk))
        assert isinstance(err.value, DecryptionError)
        assert acme in str(err.value)
        assert "tenant" in str(err.value)
        assert err.value.record == model.make_primary_key(gone.pk)
        assert "hunter2-secret" not in str(err.value)
        assert [(e.operation, e.outcome) for e in events] == [("shredded_key_read", "failed")]
    finally:
        remove_audit_hook(hook)
    with pytest.raises(ShreddedKeyError):
        await aw(model.find(model.tenant_id == acme).all())
    assert (await aw(model.get(kept.pk))).password.get_secret_value() == "globex-secret"
    # A new save makes a new key; the old values stay unreadable.
    fresh = await saved(model, acme, password="fresh-secret")
    assert (await aw(model.get(fresh.pk))).password.get_secret_value() == "fresh-secret"
    assert scope_hash(acme)["active"] != result.key_ids[0]
    with pytest.raises(ShreddedKeyError):
        await aw(model.get(gone.pk))


async def test_an_empty_scope_value_is_refused_and_nothing_written(model: Any) -> None:
    record = model(tenant_id="", name="empty", password="never-written")
    with pytest.raises(ScopeValueError) as err:
        await aw(record.save())
    assert "tenant_id" in str(err.value)
    assert "never-written" not in str(err.value)
    assert not raw(model, record.pk)


async def test_first_save_audits_the_scope_key_created(model: Any) -> None:
    events: list[AuditEvent] = []
    hook = add_audit_hook(events.append)
    try:
        acme = tenant()
        await saved(model, acme)
    finally:
        remove_audit_hook(hook)
    created = [e for e in events if e.operation == "scope_key_created"]
    assert len(created) == 1
    assert created[0].key_id == scope_hash(acme)["active"]


async def test_blind_indexes_are_keyed_per_tenant(model: Any) -> None:
    acme, globex = tenant(), tenant()
    mine = await saved(model, acme, email="same@example.com")
    theirs = await saved(model, globex, email="same@example.com")
    companions = [raw(model, r.pk)["email__bidx"] for r in (mine, theirs)]
    # Made under each tenant's scope key: equal values say nothing across tenants.
    assert companions[0] != companions[1]
    assert companions[0][:16] == scope_hash(acme)["active"]
    found = await aw(
        model.find((model.tenant_id == acme) & (model.email == "same@example.com")).all()
    )
    assert [r.pk for r in found] == [mine.pk]
    assert found[0].email.get_secret_value() == "same@example.com"
    none = await aw(model.find((model.tenant_id == tenant()) & (model.email == "x@y")).all())
    assert none == []


async def test_a_blind_index_query_without_the_scope_is_refused(model: Any) -> None:
    with pytest.raises(UnsupportedQueryError) as err:
        await aw(model.find(model.email == "same@example.com").all())
    assert "email" in str(err.value)
    assert "tenant_id" in str(err.value)


def test_two_key_scopes_on_one_model_are_refused() -> None:
    with pytest.raises(TypeError, match="more than one KeyScope"):

        class Twice(EncryptedModel, redis_om.HashModel):
            tenant_id: Annotated[str, KeyScope("tenant")]
            region: Annotated[str, KeyScope("region")]
            password: EncryptedStr


def test_first_use_of_a_tenant_is_one_redis_read_shared_by_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acme = tenant()
    record = SyncHashVault(tenant_id=acme, name="x", password="p-secret")
    record.save()
    scope_keys.clear()
    reads: list[str] = []
    real = ScopeKeys.read
    gate = threading.Event()

    def counted(self: ScopeKeys, *args: Any) -> Any:
        reads.append(args[2])
        gate.wait(1)  # every thread asks while the first read is in flight
        return real(self, *args)

    monkeypatch.setattr(ScopeKeys, "read", counted)
    got: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: got.append(SyncHashVault.get(record.pk).password.get_secret_value())
        )
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert got == ["p-secret"] * 6
    assert reads == ["tenant"]  # one read of the scope, no more
    SyncHashVault.get(record.pk)  # warm: no read at all
    assert len(reads) == 1


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    c = client()
    from redis_encrypted_fields import get_keyring

    cache = ScopeKeys(size=2)
    names = [tenant() for _ in range(3)]
    for name in names:
        cache.ring(c, get_keyring(), "tenant", name, create=True)
    assert len(cache) == 2
    assert [slot[2] for slot in cache._entries] == names[1:]


def test_a_scope_key_is_kept_only_wrapped(master_key: str) -> None:
    acme = tenant()
    SyncHashVault(tenant_id=acme, name="x", password="p-secret").save()
    ring = scope_keys.ring(
        client(), __import__("redis_encrypted_fields").get_keyring(), "tenant", acme
    )
    material = base64.b64decode(ring.scope_current().to_base64())
    stored = str(scope_hash(acme)).encode()
    assert material not in stored
    assert base64.b64encode(material) not in stored


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_inherit_a_held_cache_lock() -> None:
    acme = tenant()
    record = SyncHashVault(tenant_id=acme, name="x", password="p-secret")
    record.save()
    scope_keys.clear()
    with scope_keys._lock:  # another thread is loading a scope when the process forks
        pid = os.fork()
        if pid == 0:  # the child: reads the tenant (loading its key) without deadlocking
            signal.alarm(20)
            try:
                ok = SyncHashVault.get(record.pk).password.get_secret_value() == "p-secret"
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


async def test_a_mask_sent_back_keeps_the_tenants_secret(model: Any) -> None:
    acme = tenant()
    record = await saved(model, acme)
    again = await aw(model.get(record.pk))
    again.password = "***"  # a form sent back with the mask it was shown
    await aw(again.save())
    assert (await aw(model.get(record.pk))).password.get_secret_value() == "hunter2-secret"
    assert decode(raw(model, record.pk)["password"])[0] == 0x82


def test_a_scoped_envelope_is_bound_to_its_scope_even_under_the_same_key() -> None:
    from redis_encrypted_fields import get_keyring
    from redis_encrypted_fields.crypto import binding, open_value, seal_value
    from redis_encrypted_fields.keys import MasterKey
    from redis_encrypted_fields.keys.scope import Scope, ScopeRing, scope_binding

    key, master = MasterKey.generate(), get_keyring()

    def ring(value: str) -> ScopeRing:
        part = scope_binding("tenant", value)
        return ScopeRing(
            master, Scope("tenant", value, part, {key.key_id: key}, key, frozenset(), 0, {}, {})
        )

    context = binding("rec:1", "password")
    sealed = seal_value("bound-secret", ring("acme"), context)
    assert open_value(sealed, ring("acme"), context) == "bound-secret"
    # The same scope key, another scope: the associated data differs.
    with pytest.raises(DecryptionError):
        open_value(sealed, ring("globex"), context)


def test_a_scope_key_copied_to_another_scope_does_not_unwrap() -> None:
    acme, globex = tenant(), tenant()
    SyncHashVault(tenant_id=acme, name="x", password="p-secret").save()
    b = SyncHashVault(tenant_id=globex, name="y", password="q-secret")
    b.save()
    c = client()
    mine, theirs = scope_hash(acme), scope_hash(globex)
    # acme's wrapped key put in globex's place (its id too): the wrap is bound to acme's scope.
    c.delete(scope_redis_key("tenant", globex))
    c.hset(
        scope_redis_key("tenant", globex),
        mapping={"active": mine["active"], f"k:{mine['active']}": mine[f"k:{mine['active']}"]},
    )
    scope_keys.clear()
    with pytest.raises(DecryptionError, match="moved from another scope"):
        SyncHashVault.get(b.pk)
    assert theirs  # (globex had its own key before)


def test_reading_a_shredded_tenants_value_is_an_anomaly(
    audit_reset: None, hooked: list[AuditEvent]
) -> None:
    configure_audit(anomalies=True)
    acme = tenant()
    record = SyncHashVault(tenant_id=acme, name="n", password="acme-secret")
    record.save()
    shred_scope("tenant", acme, models=[SyncHashVault])
    with pytest.raises(ShreddedKeyError):
        SyncHashVault.get(record.pk)
    [alert] = anomalies(hooked)
    assert alert.reason == "shredded_key"
    assert alert.record == SyncHashVault.make_primary_key(record.pk)
    assert "acme-secret" not in repr(alert)
