"""Search results are bound to the key the reply names (issue 19, items 1 and 6).

redis-om builds a search result from the fields stored in it, its ``pk`` included, and ignores
the key the reply names for it. An attacker who can write to Redis copies a victim's envelope
into a record of their own and sets that record's ``pk`` to the victim's: without the check, the
record came back with the victim's decrypted secret (and its ``save()``/``delete()`` went to the
victim's key). Every record built from a search reply is now bound to the reply's key, and a
stored ``pk`` that disagrees with it is refused, in every way a query returns or counts records.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Optional

import pytest
import redis
import redis_om
from search_models import USER_MODELS
from support import INSTANCE_MODELS, aw, client, is_json, raw, wipe

from redis_encrypted_fields import (
    DecryptionError,
    EncryptedModel,
    EncryptedStr,
    PlaintextSecretError,
    set_plaintext_reads,
)

# ruff: noqa: UP045  (Optional[...]: redis-om maps a hash's "" to None only for typing.Optional)

VICTIM_URL = "redis://default:victim-secret-pw@db.victim.internal:6379/0"


@pytest.fixture(params=INSTANCE_MODELS, ids=lambda m: m.__name__)
def model(request: pytest.FixtureRequest) -> Any:
    wipe(request.param)
    return request.param


def plant_copy(model: Any, victim_pk: str, attacker_pk: str, **changes: Any) -> str:
    """Copy the victim's stored record to the attacker's key, keeping the victim's pk in it
    (``HSET``/``JSON.SET`` as the attacker would), with ``changes`` to its fields."""
    key = model.make_primary_key(attacker_pk)
    stored = {**raw(model, victim_pk), **changes}
    c = client()
    if is_json(model):
        c.json().set(key, "$", stored)
    else:
        c.hset(key, mapping={k: v for k, v in stored.items() if v is not None})
    return str(key)


async def victim_and_copy(model: Any, **changes: Any) -> tuple[Any, str]:
    victim = model(name="victim", connection_url=VICTIM_URL, admin_password="victim-admin-pw")
    await aw(victim.save())
    key = plant_copy(model, victim.pk, "ATTACKER", name="attacker", **changes)
    return victim, key


async def raised(run: Any) -> DecryptionError | None:
    """The ``DecryptionError`` that ``run()`` raises (awaited in the asyncio flavour), if any."""
    try:
        await aw(run())
    except DecryptionError as exc:
        return exc
    return None


def refused(exc: pytest.ExceptionInfo[DecryptionError], key: str) -> None:
    """The error names the planted key and shows no secret."""
    assert exc.value.record == key
    assert key in str(exc.value)
    assert "victim-secret-pw" not in str(exc.value)
    assert "victim-admin-pw" not in repr(exc.value)


async def test_a_record_copied_with_the_victims_pk_is_refused_by_every_query(model: Any) -> None:
    victim, key = await victim_and_copy(model)
    query = model.find(model.name == "attacker")
    runs = {
        "all": lambda: query.all(),
        "first": lambda: query.first(),
        "page": lambda: query.page(0, 10),
        "values": lambda: query.values().all(),
        "values(fields)": lambda: query.values("name", "connection_url").all(),
        "only(secret)": lambda: query.only("connection_url").all(),
        "count": lambda: query.count(),
        "find().all": lambda: model.find().all(),
        "find().count": lambda: model.find().count(),
    }
    for name, run in runs.items():
        exc = await raised(run)
        assert exc is not None, f"{name} did not raise DecryptionError"
        assert exc.record == key, name
        assert key in str(exc), name
        assert "victim-secret-pw" not in str(exc), name

    # A projection of unencrypted fields alone is RediSearch's own RETURN: nothing is opened.
    assert [r.name for r in await aw(query.only("name").all())] == ["attacker"]

    # The victim's record is untouched and still found; deleting the planted one is possible.
    assert raw(model, victim.pk)["connection_url"] != VICTIM_URL
    found = await aw(model.find(model.name == "victim").all())
    assert [r.pk for r in found] == [victim.pk]
    assert found[0].connection_url == VICTIM_URL
    assert await aw(model.find(model.name == "victim").count()) == 1
    client().delete(key)
    assert await aw(model.find().count()) == 1


async def test_a_copy_without_a_pk_or_with_a_changed_one_is_refused(model: Any) -> None:
    victim, key = await victim_and_copy(model)
    c = client()
    if is_json(model):
        c.json().delete(key, "$.pk")
    else:
        c.hdel(key, "pk")
    with pytest.raises(DecryptionError) as exc:
        await aw(model.find(model.name == "attacker").all())
    refused(exc, key)

    # With its pk made to agree with its key, the copy is the attacker's own record, whose
    # envelopes were bound to the victim's key: they do not open there.
    plant_copy(model, victim.pk, "ATTACKER", name="attacker", pk="ATTACKER")
    with pytest.raises(DecryptionError) as exc:
        await aw(model.find(model.name == "attacker").all())
    assert exc.value.record == key


async def test_records_whose_pk_agrees_with_their_key_are_built_as_before(model: Any) -> None:
    saved = [
        model(name="same", connection_url=f"redis://h{i}:6379", admin_password=None)
        for i in range(3)
    ]
    for record in saved:
        await aw(record.save())
    found = await aw(model.find(model.name == "same").sort_by("pk").all())
    assert sorted(r.pk for r in saved) == [r.pk for r in found]
    assert {r.connection_url for r in found} == {f"redis://h{i}:6379" for i in range(3)}
    assert await aw(model.find(model.name == "same").count()) == 3
    # A found record saves back to its own key.
    found[0].name = "renamed"
    await aw(found[0].save())
    assert raw(model, found[0].pk)["name"] == "renamed"


def test_a_resp2_reply_is_checked_as_well() -> None:
    """redis-py before 8 gives FT.SEARCH replies as RESP2 lists; from_redis reads them too."""
    from support import SyncHashInstance as model

    wipe(model)
    victim = model(name="victim", connection_url=VICTIM_URL)
    victim.save()
    key = plant_copy(model, victim.pk, "ATTACKER", name="attacker")
    resp2 = redis.Redis.from_url(os.environ["REDIS_OM_URL"], decode_responses=True, protocol=2)
    reply = resp2.execute_command("FT.SEARCH", model.Meta.index_name, "@name:{attacker}")
    assert isinstance(reply, list)  # the RESP2 form this test is about
    with pytest.raises(DecryptionError) as exc:
        model.from_redis(reply)
    refused(exc, key)
    good = resp2.execute_command("FT.SEARCH", model.Meta.index_name, "@name:{victim}")
    assert [r.connection_url for r in model.from_redis(good)] == [VICTIM_URL]


@pytest.fixture(params=USER_MODELS, ids=lambda m: m.__name__)
def user(request: pytest.FixtureRequest) -> Any:
    wipe(request.param)
    return request.param


async def test_blind_index_queries_refuse_a_copied_record(user: Any) -> None:
    victim = user(name="victim", email="victim@example.com")
    await aw(victim.save())
    key = plant_copy(user, victim.pk, "ATTACKER", name="attacker")
    for query in (
        user.find(user.email == "victim@example.com"),
        user.find(user.name == "attacker"),
    ):
        for run in (query.all, query.count, query.first):
            with pytest.raises(DecryptionError) as exc:
                await aw(run())
            assert exc.value.record == key


async def test_count_refuses_what_all_refuses(user: Any) -> None:
    """Issue 19 item 6: a plaintext email beside a companion copied from a real record, with
    plaintext reads refused: ``count()`` raised nothing and counted 2 while ``all()`` raised."""
    victim = user(name="victim", email="victim@example.com")
    await aw(victim.save())
    companion = raw(user, victim.pk)["email__bidx"]
    planted = user(name="planted", email="placeholder@example.com")
    await aw(planted.save())
    c = client()
    key = user.make_primary_key(planted.pk)
    if is_json(user):
        c.json().set(key, "$.email", "victim@example.com")
        c.json().set(key, "$.email__bidx", companion)
    else:
        c.hset(key, mapping={"email": "victim@example.com", "email__bidx": companion})
    set_plaintext_reads(False)
    query = user.find(user.email == "victim@example.com")
    with pytest.raises(PlaintextSecretError):
        await aw(query.all())
    with pytest.raises(PlaintextSecretError) as exc:
        await aw(query.count())
    assert exc.value.record == key
    # With plaintext tolerated (migration), both see the same two records.
    set_plaintext_reads(True)
    assert len(await aw(query.all())) == await aw(query.count()) == 2


VECTORS = redis_om.VectorFieldOptions.flat(
    type=redis_om.VectorFieldOptions.TYPE.FLOAT32,
    dimension=3,
    distance_metric=redis_om.VectorFieldOptions.DISTANCE_METRIC.L2,
)


class VectorInstance(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    connection_url: EncryptedStr
    embedding: list[float] = redis_om.Field([], vector_options=VECTORS)
    embedding_score: Optional[float] = None

    class Meta:
        model_key_prefix = "binding.vector-instance"


def test_a_knn_query_opens_its_records_bound_to_their_keys() -> None:
    model = VectorInstance
    wipe(model)
    near = model(name="near", connection_url="redis://near:6379", embedding=[1.0, 0.0, 0.0])
    far = model(name="far", connection_url="redis://far:6379", embedding=[9.0, 9.0, 9.0])
    near.save()
    far.save()
    knn = redis_om.KNNExpression(
        k=1,
        vector_field=model.embedding,
        score_field=model.embedding_score,
        reference_vector=struct.pack("<3f", 1.0, 0.0, 0.0),
    )
    found = model.find(knn=knn).all()
    assert [(r.pk, r.connection_url) for r in found] == [(near.pk, "redis://near:6379")]
    assert found[0].embedding_score == 0.0

    key = plant_copy(model, near.pk, "ATTACKER", name="attacker")
    with pytest.raises(DecryptionError) as exc:
        model.find(model.name == "attacker", knn=knn).all()
    assert exc.value.record == key
