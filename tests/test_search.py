"""Equality search on encrypted fields (blind indexes), against the real Redis Stack server.

Each flavour test runs for sync/async x hash/JSON. ``Collide*`` models index with 2 bits: four
companions for every value, so nearly every candidate RediSearch finds is a false positive and
only the exact filtering keeps results right.

(No ``from __future__ import annotations`` here: ``EagerUser`` below is declared with
annotations evaluated at class creation; the models of ``search_models`` with strings.)
"""

import gc
import hashlib
import hmac
import json
import os
import uuid
import weakref
from typing import Annotated, Any, Optional

import aredis_om
import pytest
import redis_om
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis_om.search_reply import index_field_schema, search_total
from search_models import (
    BEFORE,
    COLLIDE_MODELS,
    USER_MODELS,
    AsyncHashCollide,
    SyncHashCollide,
    SyncHashUser,
    SyncHashUserBefore,
    SyncHashUserExact,
    SyncJsonCollide,
    SyncJsonUser,
)
from support import (
    INSTANCE_MODELS,
    aw,
    client,
    is_json,
    new_key,
    origin_encrypt_v1,
    raw,
    wipe,
    write_raw,
)
from typer.testing import CliRunner

from redis_encrypted_fields import (
    BlindIndex,
    BlindIndexError,
    DecryptionError,
    EncryptedModel,
    EncryptedStr,
    EncryptionError,
    IndexKeyError,
    KeyRing,
    MasterKey,
    PlaintextSecretError,
    UnsupportedQueryError,
    UrlMask,
    get_keyring,
    ops,
    plan_index,
    set_keyring,
)
from redis_encrypted_fields.cli import app
from redis_encrypted_fields.crypto.envelope import PREFIX, binding_part
from redis_encrypted_fields.model.blind_index import companion_name

# ruff: noqa: UP045  (Optional[...] on purpose, see search_models)


class EagerUser(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    email: Annotated[EncryptedStr, BlindIndex()]
    phone: Optional[Annotated[EncryptedStr, BlindIndex()]] = None

    class Meta:
        model_key_prefix = "search.eager-user"


@pytest.fixture(params=USER_MODELS, ids=lambda m: m.__name__)
def model(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(params=COLLIDE_MODELS, ids=lambda m: m.__name__)
def collide(request: pytest.FixtureRequest) -> Any:
    return request.param


def email(i: int) -> str:
    return f"User{i}@Example.com"


async def users(model: Any, n: int = 8) -> list[Any]:
    """``n`` records, saved in one pipeline: even ones have a phone, team a/b alternating."""
    wipe(model)
    records = [
        model(
            name=f"user-{i}",
            team="ab"[i % 2],
            email=email(i),
            phone=f"+1-555-{i:04d}" if i % 2 == 0 else None,
            login=f"login{i}@Host.Example",
            note=f"note {i}",
        )
        for i in range(n)
    ]
    await aw(model.add(records))
    return records


async def names(query: Any) -> list[str]:
    return sorted(r.name for r in await aw(query.all()))


def companion(model: Any, pk: str, field: str = "email") -> Any:
    return raw(model, pk).get(f"{field}__bidx")


# 1. One annotation: the companion lives beside the field, never as a pydantic field


async def test_the_companion_is_stored_beside_the_field_and_nowhere_else(model: Any) -> None:
    a, b, *_ = await users(model, 2)
    stored = raw(model, a.pk)
    key_id = get_keyring().current.key_id_hex
    assert stored["email"].startswith(PREFIX)
    assert stored["email__bidx"].startswith(key_id)
    assert len(stored["email__bidx"]) == len(key_id) + 4  # 16 bits, in hex
    assert "User0" not in str(stored)
    # no phone: no companion (a hash keeps "", which RediSearch does not index)
    assert companion(model, b.pk, "phone") in (None, "")

    for dumped in (a.model_dump(), a.model_dump(mode="json"), a.model_dump_json()):
        assert "__bidx" not in str(dumped)
    for mode in ("validation", "serialization"):
        assert "__bidx" not in str(model.model_json_schema(mode=mode))
    assert not any("__bidx" in name for name in model.model_fields)

    # Not accepted as input: a companion given to the constructor is dropped, and the one
    # stored is computed from the value.
    forged = model(name="forged", email="x@example.com", email__bidx="f" * 20)
    assert "email__bidx" not in forged.model_dump()
    assert not hasattr(forged, "email__bidx")
    await aw(forged.save())
    assert companion(model, forged.pk) != "f" * 20
    got = await aw(model.get(forged.pk))
    assert "__bidx" not in repr(got) + str(got.model_dump())


async def test_the_migrator_indexes_the_companion_as_a_tag(model: Any) -> None:
    info = client().execute_command("FT.INFO", model.Meta.index_name)
    attributes = {name: spec["type"] for name, spec in index_field_schema(info).items()}
    assert {"email__bidx", "phone__bidx", "login__bidx"} <= set(attributes)
    assert attributes["email__bidx"] == "TAG"
    assert "email" not in attributes  # never the envelopes
    assert "note" not in attributes


async def test_a_model_with_eager_annotations_and_optional_fields_is_searchable() -> None:
    wipe(EagerUser)
    EagerUser.add([EagerUser(name=f"e{i}", email=f"e{i}@x", phone=None) for i in range(3)])
    EagerUser(name="p", email="p@x", phone="+44").save()
    assert [u.name for u in EagerUser.find(EagerUser.email == "e1@x").all()] == ["e1"]
    assert [u.name for u in EagerUser.find(EagerUser.phone == "+44").all()] == ["p"]


def test_blind_index_definition_errors() -> None:
    with pytest.raises(
        TypeError, match="BlindIndex goes on an EncryptedStr or Encrypted\\[T\\] field"
    ):

        class OnAStr(EncryptedModel, redis_om.HashModel, index=True):
            name: Annotated[str, BlindIndex()]

    with pytest.raises(TypeError, match="top-level"):

        class InAList(EncryptedModel, redis_om.JsonModel, index=True):
            tokens: list[Annotated[EncryptedStr, BlindIndex()]] = []

    class Inner(redis_om.EmbeddedJsonModel):
        secret: Annotated[EncryptedStr, BlindIndex()]

    with pytest.raises(TypeError, match=r"inner\.secret: BlindIndex is supported on top-level"):

        class Nested(EncryptedModel, redis_om.JsonModel, index=True):
            inner: Inner

    with pytest.raises(TypeError, match="cannot be indexed"):

        class AlsoIndexed(EncryptedModel, redis_om.HashModel, index=True):
            email: Annotated[EncryptedStr, BlindIndex()] = redis_om.Field(index=True)

    with pytest.raises(TypeError, match="stored as 'email__bidx', which is also a field"):

        class Clash(EncryptedModel, redis_om.HashModel, index=True):
            email: Annotated[EncryptedStr, BlindIndex()]
            email__bidx: str = ""

    for bad in ({"bits": 0}, {"bits": 65}, {"bits": 8.0}, {"normalize": "lower"}):
        with pytest.raises(BlindIndexError):
            BlindIndex(**bad)


class Endpoint(redis_om.EmbeddedJsonModel):  # no mixin: its plan is made after redis-om's metaclass
    url: Annotated[EncryptedStr, UrlMask()]


class Service(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    endpoint: Endpoint

    class Meta:
        model_key_prefix = "search.service"


def test_annotations_of_embedded_models_are_read_from_the_class() -> None:
    """redis-om's metaclass drops the Annotated metadata of fields declared without Field(): the
    placement check above and the masks of embedded models read the class's annotations."""
    service = Service(name="svc", endpoint={"url": "redis://u:pw@cache:6379/0"})
    service.save()
    got = Service.get(service.pk)
    got.endpoint.url = "redis://***:***@cache:6379/0"  # the UrlMask rendering, sent back
    got.save()
    assert Service.get(service.pk).endpoint.url == "redis://u:pw@cache:6379/0"


# 2. redis-om's own query syntax, exact results


async def test_equality_and_membership_with_every_entry_point(model: Any) -> None:
    await users(model)
    f = model.find
    assert await names(f(model.email == "user3@example.COM")) == ["user-3"]  # casefold
    assert await names(f(model.email << [email(1), email(6), "nobody@x"])) == ["user-1", "user-6"]
    assert await names(f(model.email << [])) == []
    assert await names(f((model.email << [email(1), email(2)]) & (model.team == "b"))) == ["user-1"]
    assert await names(f((model.email == email(1)) | (model.name == "user-4"))) == [
        "user-1",
        "user-4",
    ]
    assert await names(f(model.email == email(2), model.phone == "+1-555-0002")) == ["user-2"]
    assert await names(f(model.phone == "+1-555-0003")) == []  # odd users have no phone
    assert await names(f(model.login == "login5@host.example")) == ["user-5"]  # user function
    assert await names(f(model.login == "LOGIN5@host.example")) == []  # local part: exact

    query = f(model.email << [email(i) for i in range(0, 8, 2)])
    assert await aw(query.count()) == 4
    assert (await aw(query.first())).name in {"user-0", "user-2", "user-4", "user-6"}
    ordered = query.sort_by("name")
    pages = [await aw(ordered.page(offset=o, limit=3)) for o in (0, 3)]
    assert [[r.name for r in page] for page in pages] == [
        ["user-0", "user-2", "user-4"],
        ["user-6"],
    ]
    with pytest.raises((redis_om.NotFoundError, aredis_om.NotFoundError)):
        await aw(f(model.email == "nobody@example.com").first())

    iterated = []
    if hasattr(query, "__aiter__"):
        iterated = [r.name async for r in f(model.email == email(5))]
    else:
        iterated = [r.name for r in f(model.email == email(5))]
    assert iterated == ["user-5"]

    assert await aw(f(model.email << [email(1), email(3)]).delete()) == 2
    assert await names(f(model.team == "b")) == ["user-5", "user-7"]


async def collisions(model: Any) -> dict[str, list[str]]:
    """40 records, codes code-0..39, code-7 three times: pk lists by code."""
    wipe(model)
    codes = [f"code-{i}" for i in range(40)] + ["code-7", "code-7"]
    records = [model(name=f"n-{i}", code=code) for i, code in enumerate(codes)]
    await aw(model.add(records))
    by_code: dict[str, list[str]] = {}
    for r in records:
        by_code.setdefault(r.code, []).append(r.pk)
    return by_code


async def test_collisions_never_reach_results(collide: Any) -> None:
    by_code = await collisions(collide)
    sevens = sorted(by_code["code-7"])
    query = collide.find(collide.code == "code-7")
    candidates = await aw(query.execute(exhaust_results=False, return_raw_result=True))
    assert search_total(candidates) > 3  # the 2-bit index finds false positives...

    async def pks(q: Any) -> list[str]:
        return sorted(r.pk for r in await aw(q.all()))

    assert await pks(query) == sevens  # ...which never reach a result
    assert await aw(query.count()) == 3
    assert (await aw(query.first())).code == "code-7"
    pages = [await aw(query.page(offset=o, limit=2)) for o in (0, 2, 4)]
    assert sorted(r.pk for page in pages for r in page) == sevens
    assert [len(page) for page in pages] == [2, 1, 0]
    assert await aw(query.values("code").all()) == [{"code": "code-7"}] * 3

    # An | with a plain field: a false positive of the code stays out unless its name matches.
    seven_tag = companion(collide, sevens[0], "code")
    bucket = [pk for pks_ in by_code.values() for pk in pks_ if pk not in sevens]
    inside = next(pk for pk in bucket if companion(collide, pk, "code") == seven_tag)
    outside = next(pk for pk in bucket if companion(collide, pk, "code") != seven_tag)
    for pk in (inside, outside):
        name = (await aw(collide.get(pk))).name
        either = collide.find((collide.code == "code-7") | (collide.name == name))
        assert await pks(either) == sorted([*sevens, pk])
        assert await aw(either.count()) == 4
    both = collide.find((collide.code == "code-7") & (collide.name == "n-7"))
    assert [r.pk for r in await aw(both.all())] == [by_code["code-7"][0]]

    # update() and delete() act on the true matches only
    await aw(query.update(name="seven"))
    assert await pks(collide.find(collide.name == "seven")) == sevens
    assert await aw(query.delete()) == 3
    assert await aw(collide.find().count()) == 39


@pytest.mark.parametrize(
    "build",
    [
        lambda m: m.email != "a@b",
        lambda m: m.email >> ["a@b"],
        lambda m: m.email.startswith("a"),
        lambda m: m.email.endswith("b"),
        lambda m: m.email.contains("@"),
        lambda m: m.email % "a*",
        lambda m: m.email < "b",
        lambda m: ~(m.email == "a@b"),
        lambda m: ~((m.email << ["a@b"]) & (m.team == "a")),
        lambda m: (m.team == "a") | ~(m.email == "a@b"),
        lambda m: m.email == 5,
    ],
    ids=["!=", ">>", "startswith", "endswith", "contains", "%", "<", "~==", "~&", "|~", "int"],
)
async def test_what_a_blind_index_cannot_answer_exactly_is_refused(model: Any, build: Any) -> None:
    query = model.find(build(model))
    for run in (query.all, query.count, query.first):
        with pytest.raises(UnsupportedQueryError, match=rf"{model.__name__}\.email") as info:
            await aw(run())
        assert isinstance(info.value, EncryptionError)
        assert isinstance(info.value, redis_om.QueryNotSupportedError)
        assert isinstance(info.value, aredis_om.QueryNotSupportedError)
        assert "a@b" not in str(info.value)


async def test_an_encrypted_field_without_blind_index_is_refused_with_the_fix(model: Any) -> None:
    with pytest.raises(UnsupportedQueryError, match=r"\.note is encrypted and has no blind index"):
        await aw(model.find(model.note == "note 1").all())


# 3. Keys: derived from the master keys, found under every key of the ring


async def test_companions_are_keyed_per_model_field_and_master_key(master_key: str) -> None:
    same = "same@example.com"
    for model in (SyncHashUser, SyncJsonUser):
        wipe(model)
        model.add([model(name=f"k{i}", email=same, login=same) for i in range(2)])
    tags = {
        (m.__name__, f, pk): companion(m, pk, f)
        for m in (SyncHashUser, SyncJsonUser)
        for pk in [r.pk for r in m.find().all()]
        for f in ("email", "login")
    }
    # Equal values of one field share a companion (fresh data keys notwithstanding)...
    for m in ("SyncHashUser", "SyncJsonUser"):
        for f in ("email", "login"):
            assert len({v for (mm, ff, _), v in tags.items() if (mm, ff) == (m, f)}) == 1
    # ...and no two fields or models do.
    assert len(set(tags.values())) == 4

    # The documented construction: HKDF of the master key, per key prefix, field, definition.
    pk = SyncHashUser.find().first().pk
    info = (
        b"redis-encrypted-fields/blind-index/v1"
        + binding_part(SyncHashUser.make_key(""))
        + binding_part("email")
        + binding_part("bits=16;normalize=casefold")
    )
    import base64

    index_key = HKDF(hashes.SHA256(), 32, None, info).derive(base64.b64decode(master_key))
    digest = hmac.new(index_key, same.encode(), hashlib.sha256).digest()[:2].hex()
    assert companion(SyncHashUser, pk) == MasterKey.from_base64(master_key).key_id_hex + digest


def check_exact(model: Any, by_code: dict[str, list[str]]) -> None:
    for code in ("code-7", "code-12", "code-30"):
        found = sorted(r.pk for r in model.find(model.code == code).all())
        assert found == sorted(by_code[code]), code
    assert model.find(model.code << ["code-7", "code-3"]).count() == 4


@pytest.mark.parametrize("model", [SyncHashCollide, SyncJsonCollide], ids=["hash", "json"])
async def test_search_stays_exact_before_during_and_after_a_rotation(
    model: Any, monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    by_code = await collisions(model)
    check_exact(model, by_code)
    new = new_key()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new)
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
    check_exact(model, by_code)
    fresh = model(name="fresh", code="code-12")  # written under the new key meanwhile
    fresh.save()
    by_code["code-12"].append(fresh.pk)
    old_state = f"key:{MasterKey.from_base64(master_key).key_id_hex}"
    new_state = f"key:{MasterKey.from_base64(new).key_id_hex}"
    before = ops.status(model).states[f"{model.__name__}.code (blind index)"]
    assert (before[old_state], before[new_state]) == (42, 1)

    checks = []

    def during(_done: int) -> None:  # after every batch of the rotation
        check_exact(model, by_code)
        checks.append(1)

    report = ops.rotate(model, batch_size=5, progress=during)
    assert report.ok, report.summary()
    assert report.indexed == 42
    assert len(checks) >= 5
    after = ops.status(model)
    assert after.ok
    assert after.states[f"{model.__name__}.code (blind index)"] == {new_state: 43}
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", "")  # the old key is gone
    check_exact(model, by_code)


async def test_async_search_through_a_rotation() -> None:
    by_code = await collisions(AsyncHashCollide)
    ring = KeyRing(MasterKey.generate(), [get_keyring().current])
    set_keyring(ring)
    query = AsyncHashCollide.find(AsyncHashCollide.code == "code-7")
    assert sorted(r.pk for r in await query.all()) == sorted(by_code["code-7"])
    report = await ops.arotate(AsyncHashCollide, batch_size=7)
    assert report.indexed == 42
    set_keyring(KeyRing(ring.current))  # the old key is gone
    assert sorted(r.pk for r in await query.all()) == sorted(by_code["code-7"])
    assert await query.count() == 3


def test_no_master_key_or_index_key_outlives_the_ring_of_the_environment(
    monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    """Once the variables describe another ring, nothing of the library keeps the old ring's
    key objects (the blind index's keys derived from them are kept by them, so they go too),
    and search finds every record under the keys the variables name now."""

    def found() -> list[str]:
        query = SyncHashUser.find(SyncHashUser.email == "ada@example.org")
        return sorted(u.pk for u in query.all())

    wipe(SyncHashUser)
    first = SyncHashUser(name="first", email="Ada@Example.org")
    first.save()
    assert found() == [first.pk]
    old = weakref.ref(get_keyring().current)

    # A rotation begins: a new current key, the old one decrypt-only.
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
    second = SyncHashUser(name="second", email="ADA@example.org")
    second.save()
    both = sorted([first.pk, second.pk])
    assert found() == both
    gc.collect()
    assert old() is None, "the master key of a replaced ring is still referenced"

    # It ends: everything re-wrapped, the old key removed from the environment.
    ring = get_keyring()
    current, previous = weakref.ref(ring.current), weakref.ref(ring.previous[0])
    del ring
    assert ops.rotate(SyncHashUser).ok
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", "")
    assert found() == both
    gc.collect()
    assert current() is None, "the current key of a replaced ring is still referenced"
    assert previous() is None, "the previous key of a replaced ring is still referenced"
    wipe(SyncHashUser)


@pytest.mark.parametrize("model", list(BEFORE), ids=["hash", "json"])
def test_migrate_backfills_records_saved_before_the_blind_index(model: Any) -> None:
    before = BEFORE[model]
    wipe(model)
    old = [before(name=f"old-{i}", email=email(i)) for i in range(6)]
    before.add(old)
    model(name="new", email="new@example.com").save()
    assert model.find(model.email == email(2)).all() == []  # not searchable yet...
    assert [u.name for u in model.find(model.email == "new@example.com").all()] == ["new"]
    status = ops.status(model)
    assert status.states[f"{model.__name__}.email (blind index)"]["index-missing"] == 6
    assert not status.ok

    report = ops.migrate(model)
    assert (report.indexed, report.ok) == (6, True), report.summary()
    assert [u.name for u in model.find(model.email == email(2)).all()] == ["old-2"]  # ...now it is
    assert ops.status(model).ok
    assert ops.migrate(model).indexed == 0


def test_the_command_line_reports_and_backfills_companions() -> None:
    wipe(SyncHashUser)
    SyncHashUserBefore(name="old", email="old@example.com").save()
    target = "search_models:SyncHashUser"
    result = CliRunner().invoke(app, ["status", target])
    assert result.exit_code == 1, result.output
    assert "SyncHashUser.email (blind index): 1 index-missing" in result.output
    assert "1 blind-index companion missing" in result.output
    result = CliRunner().invoke(app, ["migrate", target, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["indexed"] == 1
    assert CliRunner().invoke(app, ["status", target]).exit_code == 0


def test_a_normalization_change_is_a_reindex_that_migrate_performs() -> None:
    wipe(SyncHashUser)
    SyncHashUser(name="alice", email="Alice@Example.com").save()
    exact = SyncHashUserExact
    assert exact.find(exact.email == "Alice@Example.com").all() == []
    assert ops.status(exact).states["SyncHashUserExact.email (blind index)"]["index-outdated"] == 1
    assert ops.migrate(exact).indexed == 1
    assert [u.name for u in exact.find(exact.email == "Alice@Example.com").all()] == ["alice"]
    assert exact.find(exact.email == "alice@example.com").all() == []
    ops.migrate(SyncHashUser)  # and back
    assert [u.name for u in SyncHashUser.find(SyncHashUser.email == "ALICE@example.com").all()] == [
        "alice"
    ]


# 4. Leakage chosen on purpose: the planner


def test_the_planner_follows_the_aws_beacon_length_rule() -> None:
    plan = plan_index(100_000)
    assert (plan.min_bits, plan.max_bits, plan.recommended) == (9, 15, 15)
    assert plan_index(1_000_000, 1_000).max_bits == 8
    for distinct in (9, 17, 100, 5_000, 123_456, 10**9):
        p = plan_index(distinct * 3, distinct)
        for bits in range(1, 64):
            safe = distinct**0.5 < 2**bits < distinct / 2
            assert safe == (p.min_bits <= bits <= p.max_bits), (distinct, bits)
    assert plan.candidates(15) == pytest.approx(1 + 99_999 / 2**15)
    for bad in ((8, None), (16, None), (10, 11), (0, None)):
        with pytest.raises(BlindIndexError):
            plan_index(*bad)
    assert BlindIndex().bits == 16


def test_cli_plan_index() -> None:
    result = CliRunner().invoke(app, ["plan-index", "--records", "100000"])
    assert result.exit_code == 0, result.output
    assert "safe: 9 to 15 bits; recommended: BlindIndex(bits=15)" in result.output
    assert "AWS" in result.output
    result = CliRunner().invoke(app, ["plan-index", "--records", "1000000", "--distinct", "1000"])
    assert "safe: 5 to 8 bits" in result.output
    result = CliRunner().invoke(app, ["plan-index", "--records", "5"])
    assert result.exit_code == 2
    assert "too few to hide" in result.output


# 5. Writes keep the companion true


async def test_every_write_keeps_the_companion_true(model: Any) -> None:
    a, *_ = await users(model, 3)
    tag = companion(model, a.pk)
    await aw(a.update(email="changed@example.com"))
    assert companion(model, a.pk) != tag
    assert await names(model.find(model.email == email(0))) == []
    assert await names(model.find(model.email == "CHANGED@example.com")) == ["user-0"]

    await aw(a.update(email="***", team="c"))  # a mask keeps the secret, and its companion
    assert (await aw(model.get(a.pk))).email == "changed@example.com"
    assert await names(model.find(model.email == "changed@example.com")) == ["user-0"]
    body = (await aw(model.get(a.pk))).model_dump(mode="json")  # masked API output sent back
    await aw(model(**{**body, "name": "renamed"}).save())
    assert await names(model.find(model.email == "changed@example.com")) == ["renamed"]

    loaded = await aw(model.get(a.pk))
    loaded.phone = None  # clearing the secret clears its companion
    await aw(loaded.save())
    assert companion(model, a.pk, "phone") in (None, "")
    assert await names(model.find(model.phone == "+1-555-0000")) == []

    await aw(model.find(model.team == "b").update(phone="+1-999"))  # FindQuery.update
    assert await names(model.find(model.phone == "+1-999")) == ["user-1"]

    db = model.db()
    pipeline = db.pipeline(transaction=False)
    await aw(model.add([model(name="piped", email="piped@example.com")], pipeline=pipeline))
    await aw(pipeline.execute())
    assert await names(model.find(model.email == "piped@example.com")) == ["piped"]


async def test_a_forged_companion_only_makes_a_candidate(model: Any) -> None:
    a, b, *_ = await users(model, 3)
    forged = companion(model, a.pk)
    key = model.make_primary_key(b.pk)
    if is_json(model):
        client().json().set(key, "$.email__bidx", forged)
    else:
        client().hset(key, "email__bidx", forged)
    query = model.find(model.email == email(0))
    candidates = await aw(query.execute(exhaust_results=False, return_raw_result=True))
    assert search_total(candidates) == 2
    assert [r.pk for r in await aw(query.all())] == [a.pk]
    assert await aw(query.count()) == 1


# 6. values() and only(): plaintext, as all() shows it


async def test_values_and_only_return_plaintext(model: Any) -> None:
    await users(model, 3)
    found = await aw(model.find(model.email == email(2)).values().all())
    assert len(found) == 1
    assert (found[0]["email"], found[0]["phone"], found[0]["note"]) == (
        email(2),
        "+1-555-0002",
        "note 2",
    )
    assert isinstance(found[0]["email"], EncryptedStr)
    assert "__bidx" not in str(found[0])
    assert "User2" not in repr(found)  # repr stays masked
    projected = await aw(model.find(model.name == "user-1").values("name", "note").all())
    assert projected == [{"name": "user-1", "note": "note 1"}]
    (partial,) = await aw(model.find(model.email == email(1)).only("email", "note").all())
    assert (partial.email, partial.note) == (email(1), "note 1")
    with pytest.raises(AttributeError):
        partial.name  # noqa: B018


@pytest.mark.parametrize("model", INSTANCE_MODELS, ids=lambda m: m.__name__)
async def test_values_are_plaintext_for_models_without_a_blind_index(model: Any) -> None:
    token = uuid.uuid4().hex
    m = model(name=f"v-{token}", connection_url=f"redis://u:{token}@h:1/0", admin_password="pw")
    await aw(m.save())
    (values,) = await aw(model.find(model.name == m.name).values().all())
    assert values["connection_url"] == f"redis://u:{token}@h:1/0"
    assert values["admin_password"] == "pw"
    (values,) = await aw(model.find(model.name == m.name).values("admin_password").all())
    assert values == {"admin_password": "pw"}
    (partial,) = await aw(model.find(model.name == m.name).only("connection_url").all())
    assert partial.connection_url == f"redis://u:{token}@h:1/0"


def test_no_secret_or_query_value_in_reprs_and_errors() -> None:
    query = SyncHashUser.find(SyncHashUser.email == "secret-query@example.com")
    assert "secret-query" not in query.query  # RediSearch sees companions only
    assert os.environ["REDIS_SRE_MASTER_KEY"] not in repr(BlindIndex())


def test_both_shapes_of_redisearch_replies_are_read() -> None:
    """redis-py 8 parses FT.SEARCH into a dict; older versions (and RESP2 callers) give a list."""
    from redis_encrypted_fields.model.replies import documents as _documents
    from redis_encrypted_fields.model.replies import only_results as _only

    hash_fields = ["pk", "1", "email", "REFv2:x", "email__bidx", "ab"]
    listed = [2, "k:1", hash_fields, "k:2", ["$", '{"pk": "2", "email": "REFv2:y"}']]
    docs = _documents(listed, ["email", "pk"])
    assert [(d.key, d.fields.get("email"), d.position) for d in docs] == [
        ("k:1", "REFv2:x", 0),
        ("k:2", "REFv2:y", 1),
    ]
    assert _only(listed, [1]) == [2, "k:2", listed[4]]
    mapped = {
        b"total_results": 2,
        b"results": [
            {b"id": b"k:1", b"extra_attributes": {b"pk": b"1", b"email": b"REFv2:x"}},
            {b"id": b"k:2", b"extra_attributes": None},  # expired meanwhile
        ],
    }
    docs = _documents(mapped, ["email", "pk"])
    assert [(d.key, d.fields) for d in docs] == [
        ("k:1", {"email": "REFv2:x", "pk": "1"}),
        ("k:2", {}),
    ]
    assert _only(mapped, [0]) == {"results": [mapped[b"results"][0]]}


@pytest.mark.parametrize("kind", ["plaintext", "origin-v1"])
def test_with_plaintext_refused_search_filter_and_count_refuse_planted_values(
    kind: str, master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted value given the companion of a genuine record with the queried value (equal
    values share companions) is a candidate; once plaintext is refused, the filter refuses it
    as a read does: all() and count() raise PlaintextSecretError."""
    wipe(SyncHashUser)
    email = "alice@example.com"
    genuine = SyncHashUser(name="alice", email=email)
    genuine.save()
    planted = SyncHashUser(name="mallory", email="mallory@example.com")
    planted.save()
    value = email if kind == "plaintext" else origin_encrypt_v1(email, master_key)
    write_raw(SyncHashUser, planted.pk, "email", value)
    field = companion_name("email")
    write_raw(SyncHashUser, planted.pk, field, raw(SyncHashUser, genuine.pk)[field])
    assert SyncHashUser.find(SyncHashUser.email == email).count() == 2  # tolerated
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "1")
    with pytest.raises(PlaintextSecretError) as info:
        SyncHashUser.find(SyncHashUser.email == email).all()
    assert (info.value.field, info.value.record) == ("email", planted.key())
    with pytest.raises(PlaintextSecretError) as info:
        SyncHashUser.find(SyncHashUser.email == email).count()
    assert (info.value.field, info.value.record) == ("email", planted.key())


# Issue 21, item 1: a key ring that cannot compute the stored companions is an error, not [].


async def test_a_wrong_or_missing_master_key_raises_instead_of_an_empty_search(
    model: Any, monkeypatch: pytest.MonkeyPatch, master_key: str, request: pytest.FixtureRequest
) -> None:
    written = await users(model, 4)
    # Records left under keys other tests' rings do not hold would make their searches raise.
    request.addfinalizer(lambda: wipe(model))
    old_id = MasterKey.from_base64(master_key).key_id_hex
    query = model.find(model.email == email(1))
    assert [r.pk for r in await aw(query.all())] == [written[1].pk]
    # A value no record holds: the ring holds every key in use, so [] is the true answer.
    assert await aw(model.find(model.email == "nobody@example.com").all()) == []
    assert await aw(model.find(model.email == "nobody@example.com").count()) == 0

    def refused(what: str, ring_id: str) -> None:
        # The cause, both key ids, and a record: never the value searched for.
        for expected in (old_id, ring_id, model.__name__, "REDIS_SRE_MASTER_KEY"):
            assert expected in what
        assert "user1@example.com" not in what.lower()

    # A valid but wrong master key.
    wrong = new_key()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", wrong)
    wrong_id = MasterKey.from_base64(wrong).key_id_hex
    for run in (lambda q: q.all(), lambda q: q.count(), lambda q: q.first()):
        with pytest.raises(IndexKeyError) as caught:
            await aw(run(model.find(model.email == email(1))))
        refused(str(caught.value), wrong_id)
        assert isinstance(caught.value, DecryptionError)  # as find(name == ...) raises
        assert caught.value.model == model.__name__
    with pytest.raises(IndexKeyError):
        await aw(model.find(model.email << [email(1), email(2)]).all())

    # After a rotation that re-indexed one record only, the previous key missing: a value
    # whose record is still indexed under it cannot be found, and says so.
    new = new_key()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new)
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
    moved = await aw(model.get(written[2].pk))
    await aw(moved.save())  # re-indexed under the new key
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", "")
    assert [r.pk for r in await aw(model.find(model.email == email(2)).all())] == [moved.pk]
    for run in (lambda q: q.all(), lambda q: q.count()):
        with pytest.raises(IndexKeyError) as caught:
            await aw(run(model.find(model.email == email(1))))
        refused(str(caught.value), MasterKey.from_base64(new).key_id_hex)
    # With the previous key back, the same queries answer.
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
    assert await aw(model.find(model.email == email(1)).count()) == 1
    assert await aw(model.find(model.email == "nobody@example.com").all()) == []
