"""EncryptedStr in redis-om models against the real Redis Stack server: sync/async, hash/JSON.

Each test runs once per flavour (the async flavour's calls are awaited by ``aw``).
"""

from __future__ import annotations

import copy
import datetime
import enum
import logging
import uuid
from typing import Any, Literal

import aredis_om
import pytest
import redis
import redis_om
from support import (
    CLUSTER_MODELS,
    INSTANCE_MODELS,
    all_pks,
    aw,
    client,
    dump_redis,
    is_json,
    raw,
    write_raw,
)

from redis_encrypted_fields import (
    DecryptionError,
    EncryptedModel,
    EncryptedStr,
    MaskedSecretError,
    PlaintextSecretError,
    get_keyring,
    set_plaintext_reads,
)
from redis_encrypted_fields.crypto.envelope import PREFIX, binding, parse
from redis_encrypted_fields.crypto.stored import open_value

URL = "redis://default:hunter2-url@db.internal:6379/0"
PASSWORD = "s3cret-Pa55"


def decrypt_stored(value: str, *, context: bytes) -> str:
    """A stored value opened with the environment's key ring, as the library reads it."""
    return open_value(value, get_keyring(), context)


@pytest.fixture(params=INSTANCE_MODELS, ids=lambda m: m.__name__)
def model(request: pytest.FixtureRequest) -> Any:
    return request.param


def unique(prefix: str = "inst") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def saved(model: Any, **fields: Any) -> Any:
    values = {"name": unique(), "connection_url": URL, "admin_password": PASSWORD, **fields}
    instance = model(**values)
    await aw(instance.save())
    return instance


# 1. Only envelopes at rest; plaintext from get, find and all_pks; fresh key and nonce each time


async def test_save_stores_only_envelopes_and_reads_return_plaintext(model: Any) -> None:
    token = uuid.uuid4().hex
    url, password = f"redis://u:pw{token}@host{token}:6379/0", f"admin{token}"
    m = await saved(model, connection_url=url, admin_password=password)
    stored = raw(model, m.pk)
    assert stored["connection_url"].startswith(PREFIX)
    assert stored["admin_password"].startswith(PREFIX)
    everything = str(dump_redis())
    for fragment in (token, token[:8], token[-8:]):
        assert fragment not in everything

    got = await aw(model.get(m.pk))
    assert got.connection_url == url
    assert got.admin_password == password

    found = await aw(model.find(model.name == m.name).all())
    assert [(f.pk, f.connection_url, f.admin_password) for f in found] == [(m.pk, url, password)]

    assert m.pk in await all_pks(model)
    assert (await aw(model.get(m.pk))).connection_url == url


async def test_building_a_page_leaves_the_search_reply_as_redis_sent_it(model: Any) -> None:
    # from_redis opens a page's envelopes as redis-om reads them: the plaintext goes into the
    # records only, never into the reply a caller may still hold (and log).
    name = f"page-{uuid.uuid4().hex}"
    secrets = {}
    for i in range(3):
        m = await saved(model, name=name, admin_password=f"admin-{i}-{uuid.uuid4().hex}")
        secrets[m.pk] = m.admin_password
    query = model.find(model.name == name)
    reply = await aw(query.execute(exhaust_results=False, return_raw_result=True))
    before = copy.deepcopy(reply)
    records = model.from_redis(reply)
    assert {r.pk: r.admin_password for r in records} == secrets
    assert reply == before
    assert not any(secret in str(reply) for secret in secrets.values())


async def test_every_save_uses_a_fresh_data_key_and_nonce(model: Any) -> None:
    a = await saved(model)
    b = await saved(model)
    first = raw(model, a.pk)["admin_password"]
    await aw(a.save())
    again = raw(model, a.pk)["admin_password"]
    other = raw(model, b.pk)["admin_password"]
    envelopes = [parse(v) for v in (first, again, other)]
    assert len({e.ciphertext for e in envelopes}) == 3
    assert len({e.wrapped_dek for e in envelopes}) == 3
    assert len({e.nonce for e in envelopes}) == 3
    assert len({e.dek_nonce for e in envelopes}) == 3


# 2. A str for the application, SecretStr-compatible, never shown by repr


async def test_value_is_a_usable_str_and_never_shown_by_repr(model: Any, redis_url: str) -> None:
    m = await saved(model, connection_url=redis_url)
    got = await aw(model.get(m.pk))
    assert isinstance(got.connection_url, str)
    assert redis.Redis.from_url(got.connection_url).ping() is True
    secret = got.admin_password.get_secret_value()
    assert secret == PASSWORD
    assert type(secret) is str
    for text in (repr(got), str(got), repr(got.admin_password), repr(got.connection_url)):
        assert PASSWORD not in text
        assert redis_url not in text


# 3. Python dump is the envelope, JSON is the mask, the schema says write-only password


async def test_dumps_give_envelope_in_python_mode_and_mask_in_json(model: Any) -> None:
    m = await saved(model)
    python = m.model_dump()
    assert python["admin_password"].startswith(PREFIX)
    assert python["connection_url"].startswith(PREFIX)
    assert m.model_dump(mode="json")["admin_password"] == "***"
    assert m.model_dump(mode="json")["connection_url"] == "**********"
    text = m.model_dump_json()
    assert '"admin_password":"***"' in text
    assert '"connection_url":"**********"' in text
    assert PASSWORD not in text
    assert URL not in text


def test_json_schema_says_write_only_password(model: Any) -> None:
    props = model.model_json_schema()["properties"]
    assert props["connection_url"] == {
        "type": "string",
        "format": "password",
        "writeOnly": True,
        "title": "Connection Url",
    }
    admin = props["admin_password"]["anyOf"][0]
    assert admin == {"type": "string", "format": "password", "writeOnly": True}


# 4. Keep-existing: a mask sent back keeps the stored secret


async def test_update_with_mask_keeps_the_secret(model: Any) -> None:
    m = await saved(model)
    await aw(m.update(admin_password="***", environment="production"))
    got = await aw(model.get(m.pk))
    assert got.admin_password == PASSWORD
    assert got.environment == "production"


async def test_assign_mask_and_save_keeps_the_secret(model: Any) -> None:
    m = await saved(model)
    loaded = await aw(model.get(m.pk))
    loaded.admin_password = "***"
    loaded.connection_url = "**********"
    loaded.environment = "staging"
    await aw(loaded.save())
    got = await aw(model.get(m.pk))
    assert (got.admin_password, got.connection_url, got.environment) == (PASSWORD, URL, "staging")


async def test_model_copy_with_mask_keeps_the_secret(model: Any) -> None:
    m = await saved(model)
    loaded = await aw(model.get(m.pk))
    await aw(loaded.model_copy(update={"admin_password": "***", "environment": "qa"}).save())
    got = await aw(model.get(m.pk))
    assert (got.admin_password, got.environment) == (PASSWORD, "qa")


async def test_a_fresh_instance_built_from_masked_api_output_keeps_the_secrets(model: Any) -> None:
    m = await saved(model)
    body = m.model_dump(mode="json")  # exactly what a GET returns
    body["environment"] = "from-put"
    await aw(model(**body).save())
    got = await aw(model.get(m.pk))
    assert (got.connection_url, got.admin_password, got.environment) == (URL, PASSWORD, "from-put")


async def test_a_real_new_value_replaces_the_secret(model: Any) -> None:
    m = await saved(model)
    await aw(m.update(admin_password="new-password"))
    assert (await aw(model.get(m.pk))).admin_password == "new-password"


@pytest.mark.parametrize("password", ["pa***ss", "***x", "**", "x***"])
async def test_a_password_containing_stars_is_a_real_password(model: Any, password: str) -> None:
    m = await saved(model)
    await aw(m.update(admin_password=password))
    assert (await aw(model.get(m.pk))).admin_password == password


def calls(command: str) -> int:
    """How many times the server has run ``command``."""
    stats = client().info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_save_keeping_a_secret_is_one_transaction_and_other_saves_are_as_before(
    model: Any,
) -> None:
    """With a mask, the read and the write are one transaction on the record key (WATCH, then
    MULTI/EXEC): a secret changed in between is never written over (test_security.py, Races).
    Without one, the save is redis-om's own: no WATCH, no transaction, no extra round trip."""
    m = await saved(model)
    watch, exec_ = calls("watch"), calls("exec")
    m.environment = "plain"
    await aw(m.save())
    assert (calls("watch"), calls("exec")) == (watch, exec_)
    await aw(m.update(admin_password="***", environment="masked"))
    assert (calls("watch"), calls("exec")) == (watch + 1, exec_ + 1)
    got = await aw(model.get(m.pk))
    assert (got.admin_password, got.environment) == (PASSWORD, "masked")


async def test_a_save_keeping_a_secret_honours_nx_and_xx(model: Any) -> None:
    """nx and xx are decided inside the transaction (redis-om's HashModel refuses them in a
    pipeline): xx writes the existing record, nx leaves it alone and returns None."""
    m = await saved(model)
    m.admin_password = "***"  # type: ignore[assignment]
    m.environment = "xx"
    assert await aw(m.save(xx=True)) is m
    got = await aw(model.get(m.pk))
    assert (got.admin_password, got.environment) == (PASSWORD, "xx")
    before = raw(model, m.pk)
    m.admin_password = "***"  # type: ignore[assignment]
    m.environment = "nx"
    assert await aw(m.save(nx=True)) is None
    assert raw(model, m.pk) == before
    with pytest.raises(ValueError, match="nx and xx"):
        await aw(m.save(nx=True, xx=True))


async def test_a_save_keeping_a_secret_keeps_field_expirations(model: Any) -> None:
    """HSET drops a hash field's TTL; redis-om puts it back when it writes itself, and so does
    the transaction of a save that keeps a secret."""
    if is_json(model):
        pytest.skip("field expiration is a hash feature")
    m = await saved(model)
    key = model.make_primary_key(m.pk)
    c = client()
    c.hexpire(key, 1000, "environment", "admin_password")
    await aw(m.update(admin_password="***", environment="still-expiring"))
    assert all(900 < t <= 1000 for t in c.httl(key, "environment", "admin_password"))
    assert c.httl(key, "name") == [-1]


async def test_a_save_into_your_pipeline_keeps_the_secret_stored_when_it_is_queued(
    model: Any,
) -> None:
    """With your own pipeline (save(pipeline=...), add()), the write is sent when you execute
    the pipeline, which no transaction of the library can cover: masks are resolved when the
    save is queued, and a secret changed before you execute is written over (docs: Masks and
    keep-existing)."""
    m = await saved(model)
    pipe = model.db().pipeline(transaction=False)
    m.admin_password = "***"  # type: ignore[assignment]
    await aw(m.save(pipeline=pipe))
    assert m.admin_password == PASSWORD
    await aw(pipe.execute())
    assert (await aw(model.get(m.pk))).admin_password == PASSWORD


# 5. A mask is never persisted


async def test_mask_without_existing_secret_is_refused_and_nothing_written(model: Any) -> None:
    new = model(name=unique(), connection_url="**********")
    with pytest.raises(MaskedSecretError, match="no stored secret"):
        await aw(new.save())
    assert raw(model, new.pk) == {}

    m = await saved(model, admin_password=None)
    before = raw(model, m.pk)
    m.admin_password = "***"
    m.environment = "changed"
    with pytest.raises(MaskedSecretError):
        await aw(m.save())
    assert raw(model, m.pk) == before


# 6. None removes the stored secret


async def test_setting_none_removes_the_stored_secret(
    model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    m = await saved(model)
    m.admin_password = None
    await aw(m.save())
    assert raw(model, m.pk).get("admin_password") in (None, "")
    set_plaintext_reads(False)  # a cleared secret is not plaintext
    with caplog.at_level(logging.WARNING, logger="redis_encrypted_fields"):
        assert (await aw(model.get(m.pk))).admin_password is None
        found = await aw(model.find(model.name == m.name).all())
    assert [f.admin_password for f in found] == [None]
    assert caplog.records == []


# 7. Record binding: a value copied to another record or field does not decrypt


async def test_value_copied_to_another_record_fails(model: Any) -> None:
    a = await saved(model)
    b = await saved(model, admin_password="other")
    write_raw(model, b.pk, "admin_password", raw(model, a.pk)["admin_password"])
    with pytest.raises(DecryptionError, match="Decryption failed"):
        await aw(model.get(b.pk))


async def test_value_swapped_between_fields_fails(model: Any) -> None:
    a = await saved(model)
    stored = raw(model, a.pk)
    write_raw(model, a.pk, "admin_password", stored["connection_url"])
    write_raw(model, a.pk, "connection_url", stored["admin_password"])
    with pytest.raises(DecryptionError, match="Decryption failed"):
        await aw(model.get(a.pk))


async def test_value_moved_to_another_model_fails(model: Any) -> None:
    other = next(m for m in INSTANCE_MODELS if m is not model and is_json(m) == is_json(model))
    a = await saved(model)
    b = await saved(other, admin_password="other")
    write_raw(other, b.pk, "admin_password", raw(model, a.pk)["admin_password"])
    with pytest.raises(DecryptionError):
        await aw(other.get(b.pk))


# 9. Failed reads raise the library's own error and change nothing


@pytest.mark.parametrize(
    "damage",
    [
        lambda v: v[:-4],  # truncated
        lambda v: v[:20] + ("A" if v[20] != "A" else "B") + v[21:],  # tampered header
        lambda v: v[:-10] + ("A" if v[-10] != "A" else "B") + v[-9:],  # tampered ciphertext
        lambda v: PREFIX + "garbage",  # not base64
    ],
    ids=["truncated", "tampered-header", "tampered-ciphertext", "malformed"],
)
async def test_damaged_envelope_raises_decryption_error_and_changes_nothing(
    model: Any, damage: Any
) -> None:
    m = await saved(model)
    write_raw(model, m.pk, "admin_password", damage(raw(model, m.pk)["admin_password"]))
    before = dump_redis()
    with pytest.raises(DecryptionError, match="Decryption failed") as info:
        await aw(model.get(m.pk))
    assert PASSWORD not in str(info.value)
    assert dump_redis() == before


async def test_wrong_master_key_raises_decryption_error(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support import new_key

    m = await saved(model)
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    before = dump_redis()
    with pytest.raises(DecryptionError, match="Decryption failed"):
        await aw(model.get(m.pk))
    with pytest.raises(DecryptionError):
        await aw(model.find(model.name == m.name).all())
    assert dump_redis() == before


# 10. Migration through re-save


async def test_plaintext_in_redis_is_read_with_a_warning_and_encrypted_on_save(
    model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    m = await saved(model)
    write_raw(model, m.pk, "admin_password", "legacy-plain-pw")
    with caplog.at_level(logging.WARNING, logger="redis_encrypted_fields"):
        got = await aw(model.get(m.pk))
    assert got.admin_password == "legacy-plain-pw"
    warnings = [r.getMessage() for r in caplog.records]
    assert any(model.__name__ in w and "admin_password" in w for w in warnings)
    assert all("legacy-plain-pw" not in w for w in warnings)

    await aw(got.save())
    assert raw(model, m.pk)["admin_password"].startswith(PREFIX)
    assert (await aw(model.get(m.pk))).admin_password == "legacy-plain-pw"


async def test_constructing_a_model_from_plaintext_does_not_warn(
    model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="redis_encrypted_fields"):
        model(name=unique(), connection_url=URL, admin_password=PASSWORD)
    assert caplog.records == []


async def test_plaintext_reads_can_be_refused(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    m = await saved(model)
    write_raw(model, m.pk, "admin_password", "legacy-plain-pw")
    set_plaintext_reads(False)
    with pytest.raises(PlaintextSecretError) as info:
        await aw(model.get(m.pk))
    assert "legacy-plain-pw" not in str(info.value)
    set_plaintext_reads(None)
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "1")
    with pytest.raises(PlaintextSecretError):
        await aw(model.get(m.pk))
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "0")
    assert (await aw(model.get(m.pk))).admin_password == "legacy-plain-pw"


# 11. The origin's v1 envelopes are read and re-written in the current format


async def test_origin_v1_values_decrypt_and_are_rewritten_on_save(
    model: Any, master_key: str
) -> None:
    from support import origin_encrypt_v1

    m = await saved(model)
    write_raw(model, m.pk, "admin_password", origin_encrypt_v1("from-origin", master_key))
    got = await aw(model.get(m.pk))
    assert got.admin_password == "from-origin"
    await aw(got.save())
    assert raw(model, m.pk)["admin_password"].startswith(PREFIX)
    assert (await aw(model.get(m.pk))).admin_password == "from-origin"


# Nested: embedded models and lists are bound to their path


@pytest.fixture(params=CLUSTER_MODELS, ids=lambda m: m.__name__)
def cluster_model(request: pytest.FixtureRequest) -> Any:
    return request.param


async def new_cluster(cluster_model: Any) -> Any:
    c = cluster_model(
        name=unique("cluster"),
        primary={"username": "admin", "password": "primary-pw"},
        replicas=[
            {"username": "r1", "password": "replica-pw-1"},
            {"username": "r2", "password": "replica-pw-2"},
        ],
        tokens=["token-a", "token-b"],
    )
    await aw(c.save())
    return c


async def test_embedded_models_and_lists_are_encrypted(cluster_model: Any) -> None:
    c = await new_cluster(cluster_model)
    stored = raw(cluster_model, c.pk)
    assert stored["primary"]["password"].startswith(PREFIX)
    assert stored["primary"]["username"] == "admin"
    assert all(r["password"].startswith(PREFIX) for r in stored["replicas"])
    assert all(t.startswith(PREFIX) for t in stored["tokens"])
    everything = str(dump_redis())
    for plaintext in ("primary-pw", "replica-pw-1", "replica-pw-2", "token-a", "token-b"):
        assert plaintext not in everything
    got = await aw(cluster_model.get(c.pk))
    assert got.primary.password == "primary-pw"
    assert [r.password for r in got.replicas] == ["replica-pw-1", "replica-pw-2"]
    assert got.tokens == ["token-a", "token-b"]
    found = await aw(cluster_model.find(cluster_model.name == c.name).all())
    assert found[0].replicas[1].password == "replica-pw-2"
    assert "replica-pw" not in got.model_dump_json()


async def test_embedded_values_swapped_between_list_items_fail(cluster_model: Any) -> None:
    c = await new_cluster(cluster_model)
    key = cluster_model.make_primary_key(c.pk)
    from support import client

    stored = raw(cluster_model, c.pk)
    client().json().set(key, "$.replicas[0].password", stored["replicas"][1]["password"])
    with pytest.raises(DecryptionError):
        await aw(cluster_model.get(c.pk))


async def test_nested_update_with_mask_keeps_the_secret(cluster_model: Any) -> None:
    c = await new_cluster(cluster_model)
    got = await aw(cluster_model.get(c.pk))
    await aw(got.update(primary__password="***", primary__username="root"))
    again = await aw(cluster_model.get(c.pk))
    assert (again.primary.username, again.primary.password) == ("root", "primary-pw")


async def test_refusing_plaintext_also_refuses_unbound_origin_v1_values(
    model: Any, master_key: str
) -> None:
    from support import origin_encrypt_v1

    m = await saved(model)
    write_raw(model, m.pk, "admin_password", origin_encrypt_v1("from-origin", master_key))
    set_plaintext_reads(False)
    with pytest.raises(PlaintextSecretError, match="v1 format"):
        await aw(model.get(m.pk))


# The record binding is the key redis-om really uses, however a model makes it


class _PrefixedKeys(EncryptedModel, redis_om.HashModel, index=True):
    secret: EncryptedStr

    class Meta:
        global_key_prefix = "binding-test"
        model_key_prefix = "prefixed"


class _OwnKeys(EncryptedModel, redis_om.HashModel, index=True):
    secret: EncryptedStr

    @classmethod
    def make_key(cls, part: str) -> str:
        return f"own-keys/{part}"


@pytest.mark.parametrize("keyed", [_PrefixedKeys, _OwnKeys], ids=["prefixes", "own-make_key"])
def test_values_are_bound_to_the_key_redis_om_writes(keyed: Any) -> None:
    """Including after the key's prefix changes at run time (``_meta`` is redis-om's to change)."""
    original = keyed._meta.global_key_prefix
    try:
        for prefix in (original, "binding-test-moved"):
            keyed._meta.global_key_prefix = prefix
            record = keyed(secret=PASSWORD)
            record.save()
            key = keyed.make_primary_key(record.pk)
            stored = client().hget(key, "secret")
            assert stored is not None
            assert decrypt_stored(stored, context=binding(key, "secret")) == PASSWORD
            assert keyed.get(record.pk).secret == PASSWORD
    finally:
        keyed._meta.global_key_prefix = original


# 13. find() builds what redis-om builds: its read conversions where a model needs them


class Kind(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"


class _SyncEvent(redis_om.EmbeddedJsonModel):
    at: datetime.datetime
    payload: bytes


class _AsyncEvent(aredis_om.EmbeddedJsonModel):
    at: datetime.datetime
    payload: bytes


class _SyncStampedHash(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    secret: EncryptedStr
    created: datetime.datetime
    token: bytes


class _AsyncStampedHash(EncryptedModel, aredis_om.HashModel, index=True):
    name: str = aredis_om.Field(index=True)
    secret: EncryptedStr
    created: datetime.datetime
    token: bytes


class _SyncStampedJson(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    secret: EncryptedStr
    created: datetime.datetime
    token: bytes
    events: list[_SyncEvent] = []


class _AsyncStampedJson(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    secret: EncryptedStr
    created: datetime.datetime
    token: bytes
    events: list[_AsyncEvent] = []


@pytest.mark.parametrize(
    "stamped",
    [_SyncStampedHash, _AsyncStampedHash, _SyncStampedJson, _AsyncStampedJson],
    ids=lambda m: m.__name__,
)
async def test_find_reads_datetime_and_bytes_fields_back(stamped: Any) -> None:
    """Timestamps and base64 are turned back into ``datetime`` and ``bytes``, as redis-om does."""
    created = datetime.datetime(2026, 11, 30, 9, 15, 30, 250000, tzinfo=datetime.UTC)
    values: dict[str, Any] = {"name": unique("stamped"), "secret": PASSWORD, "created": created}
    values["token"] = b"\x00\xffbinary token"
    if is_json(stamped):
        event = stamped.model_fields["events"].annotation.__args__[0]
        values["events"] = [event(at=created, payload=b"\x01\x02")]
    await aw(stamped(**values).save())
    (found,) = await aw(stamped.find(stamped.name == values["name"]).all())
    assert found.secret == PASSWORD
    assert found.created == created
    assert found.token == values["token"]
    if is_json(stamped):
        assert found.events == values["events"]


class _SyncVaried(redis_om.EmbeddedJsonModel):
    label: str
    weight: float


class _SyncWideJson(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    secret: EncryptedStr
    password: EncryptedStr | None = None
    count: int = 0
    ratio: float = 0.5
    active: bool = False
    kind: Kind = Kind.PRIMARY
    level: Literal["low", "high"] = "low"
    tags: list[str] = []
    extra: dict[str, Any] = {}
    parts: list[_SyncVaried] = []
    note: str | None = None


class _SyncWideHash(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    secret: EncryptedStr
    password: EncryptedStr | None = None
    count: int = 0
    ratio: float = 0.5
    active: bool = False
    kind: Kind = Kind.PRIMARY
    level: Literal["low", "high"] = "low"


@pytest.mark.parametrize("wide", [_SyncWideHash, _SyncWideJson], ids=lambda m: m.__name__)
def test_find_builds_the_records_redis_om_builds(wide: Any) -> None:
    """The same records as redis-om's own ``from_redis`` builds from the same reply (find()
    leaves out its conversion passes for a model they would not change)."""
    name = unique("wide")
    values: dict[str, Any] = {"secret": URL, "count": 7, "ratio": 2.25, "active": True}
    values |= {"kind": Kind.REPLICA, "level": "high"}
    if is_json(wide):
        values |= {"tags": ["a", "b"], "extra": {"k": [1, "x", None]}}
        values["parts"] = [_SyncVaried(label="p", weight=1.5)]
    records = [wide(name=name, **values), wide(name=name, password=PASSWORD, **values)]
    for record in records:
        record.save()
    reply = wide.find(wide.name == name).execute(exhaust_results=False, return_raw_result=True)
    found = sorted(wide.find(wide.name == name).all(), key=lambda r: r.pk)
    own = sorted(super(EncryptedModel, wide).from_redis(reply), key=lambda r: r.pk)
    assert found == own == sorted(records, key=lambda r: r.pk)
    assert [type(r.secret) for r in found] == [EncryptedStr, EncryptedStr]
