"""Encrypted[T]: secrets of other types than str, in the four flavours, against Redis Stack."""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import pydantic
import pytest
import redis_om
from hypothesis import given
from hypothesis import strategies as st
from support import aw, client, is_json, raw, write_raw
from typed_models import PAYROLL_MODELS, TEAM_MODELS, Profile, SyncHashPayroll, SyncJsonPayroll

from redis_encrypted_fields import (
    BlindIndex,
    DecryptionError,
    Encrypted,
    EncryptedBytes,
    EncryptedModel,
    EncryptedStr,
    MaskedSecretError,
    PlaintextSecretError,
    StoredTypeError,
    UnsupportedQueryError,
    ValueTypeError,
    ops,
    set_plaintext_reads,
)
from redis_encrypted_fields.crypto.envelope import PREFIX
from redis_encrypted_fields.model.typed import codec_for

UTC = datetime.UTC
VALUES: dict[str, Any] = {
    "salary": 5000,
    "rate": 0.1,
    "bonus": Decimal("1.10"),
    "active": False,
    "born": datetime.date(1990, 5, 17),
    "seen_at": datetime.datetime(2024, 1, 2, 3, 4, 5, 678, tzinfo=UTC),
    "token": b"\x00\xff-tok-secret",
    "extra": {"api_key": "k-123-secret", "n": [1, 2]},
    "tags": ["alpha-secret", "beta"],
    "profile": Profile(team="core-secret", level=3),
    "pin": 4321,
}
# What must never show in Redis, a log, a repr or JSON output.
SECRETS = [
    "5000",
    "0.1",
    "1.10",
    "1990-05-17",
    "2024-01-02",
    "tok-secret",
    "k-123-secret",
    "alpha-secret",
    "core-secret",
    "4321",
]


@pytest.fixture(params=PAYROLL_MODELS, ids=lambda m: m.__name__)
def model(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(params=TEAM_MODELS, ids=lambda m: m.__name__)
def team(request: pytest.FixtureRequest) -> Any:
    return request.param


def unique() -> str:
    return f"pay-{uuid.uuid4().hex[:12]}"


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


async def saved(model: Any, **changes: Any) -> Any:
    record = model(name=unique(), **{**VALUES, **changes})
    await aw(record.save())
    return record


# --- at rest and back --------------------------------------------------------------------------


async def test_round_trip_keeps_each_type(model: Any) -> None:
    record = await saved(model)
    stored = raw(model, record.pk)
    for name in VALUES:
        assert isinstance(stored[name], str), name
        assert stored[name].startswith(PREFIX), name
    assert_no_secret(json.dumps(stored))
    for got in [
        await aw(model.get(record.pk)),
        *await aw(model.find(model.name == record.name).all()),
    ]:
        for name, value in VALUES.items():
            assert getattr(got, name) == value, name
            assert type(getattr(got, name)) is type(value), name


async def test_falsy_values_round_trip(model: Any) -> None:
    falsy = {"salary": 0, "rate": 0.0, "active": False, "token": b"", "extra": {}, "tags": []}
    record = await saved(model, **falsy)
    got = await aw(model.get(record.pk))
    for name, value in falsy.items():
        assert getattr(got, name) == value, name
        assert type(getattr(got, name)) is type(value), name
        assert raw(model, record.pk)[name].startswith(PREFIX), name


async def test_output_masks_every_type(model: Any) -> None:
    record = await aw(model.get((await saved(model)).pk))
    shown = json.loads(record.model_dump_json())
    for name in VALUES:
        assert shown[name] == ("****" if name == "pin" else "***"), name
    assert record.model_dump(mode="json")["salary"] == "***"
    assert_no_secret(repr(record))
    assert_no_secret(str(record))
    dumped = record.model_dump()  # python mode: what redis-om stores
    assert all(dumped[name].startswith(PREFIX) for name in VALUES)


async def test_none_clears_an_optional_value(model: Any) -> None:
    record = await saved(model)
    record.token = None
    record.profile = None
    await aw(record.save())
    got = await aw(model.get(record.pk))
    assert got.token is None
    assert got.profile is None
    assert got.salary == 5000


async def test_validation_coerces_as_pydantic_and_hides_the_input(model: Any) -> None:
    record = model(name=unique(), salary="5000", born="1990-05-17", active="yes", bonus="1.10")
    assert record.salary == 5000
    assert record.born == datetime.date(1990, 5, 17)
    assert record.active is True
    assert record.bonus == Decimal("1.10")
    with pytest.raises(pydantic.ValidationError) as caught:
        model(name=unique(), salary="12ab-not-a-number-secret")
    assert "not-a-number-secret" not in str(caught.value)
    assert "not-a-number-secret" not in caught.value.json()
    assert caught.value.errors()[0]["loc"] == ("salary",)


def test_standalone_pydantic_model_masks_and_seals() -> None:
    class Form(pydantic.BaseModel):
        salary: Encrypted[int]
        token: EncryptedBytes

    form = Form(salary="77", token=b"\x01\x02")
    assert form.salary == 77
    assert form.token == b"\x01\x02"
    assert json.loads(form.model_dump_json()) == {"salary": "***", "token": "***"}
    sealed = form.model_dump()
    assert sealed["salary"].startswith(PREFIX)
    again = Form.model_validate(sealed)
    assert again.salary == 77
    assert again.token == b"\x01\x02"
    with pytest.raises(pydantic.ValidationError) as caught:
        Form(salary="secret-text", token=b"")
    assert "secret-text" not in str(caught.value)


def test_json_schema_is_write_only_and_takes_the_mask() -> None:
    schema = SyncHashPayroll.model_json_schema()["properties"]["salary"]
    assert schema["writeOnly"] is True
    assert {"type": "integer"} in schema["anyOf"]
    masks = [s for s in schema["anyOf"] if s.get("type") == "string"]
    assert masks
    assert masks[0]["pattern"] == r"^\*{3,}$"
    shown = SyncHashPayroll.model_json_schema(mode="serialization")["properties"]["salary"]
    assert shown["type"] == "string"


# --- keep-existing ------------------------------------------------------------------------------


async def test_a_mask_sent_back_keeps_the_stored_value(model: Any) -> None:
    record = await saved(model)
    sent = json.loads((await aw(model.get(record.pk))).model_dump_json())
    sent["name"] = "renamed-" + record.name
    back = model.model_validate(sent)
    await aw(back.save())
    got = await aw(model.get(record.pk))
    assert got.name == "renamed-" + record.name
    for name, value in VALUES.items():
        assert getattr(got, name) == value, name


async def test_keep_existing_in_lists_and_embedded_models(team: Any) -> None:
    badge = team.model_fields["badge"].annotation.__args__[0]
    record = team(name=unique(), codes=[11, 22], badge=badge(label="a", code=33))
    await aw(record.save())
    sent = json.loads((await aw(team.get(record.pk))).model_dump_json())
    assert sent["codes"] == ["***", "***"]
    assert sent["badge"]["code"] == "***"
    sent["name"] = "renamed"
    await aw(team.model_validate(sent).save())
    got = await aw(team.get(record.pk))
    assert got.name == "renamed"
    assert got.codes == [11, 22]
    assert got.badge.code == 33
    sent["codes"] = ["***"]  # an item removed: the mask cannot be matched with certainty
    with pytest.raises(MaskedSecretError):
        await aw(team.model_validate(sent).save())
    sent["codes"] = ["***", 44]  # the other item changed: neither can this one
    with pytest.raises(MaskedSecretError):
        await aw(team.model_validate(sent).save())
    assert (await aw(team.get(record.pk))).codes == [11, 22]


# --- binding and type changes ---------------------------------------------------------------------


async def test_a_value_copied_to_another_record_or_field_does_not_decrypt(model: Any) -> None:
    one, two = await saved(model), await saved(model, salary=1)
    write_raw(model, two.pk, "salary", raw(model, one.pk)["salary"])
    with pytest.raises(DecryptionError):
        await aw(model.get(two.pk))
    write_raw(model, one.pk, "pin", raw(model, one.pk)["salary"])
    with pytest.raises(DecryptionError):
        await aw(model.get(one.pk))


def test_a_value_read_through_another_type_names_record_and_field() -> None:
    class Was(EncryptedModel, redis_om.HashModel, index=True):
        name: str
        secret: EncryptedStr

        class Meta:
            model_key_prefix = "typed-change"

    class Now(EncryptedModel, redis_om.HashModel, index=True):
        name: str
        secret: Encrypted[int]

        class Meta:
            model_key_prefix = "typed-change"

    was = Was(name="x", secret="api-token-secret")
    was.save()
    with pytest.raises(StoredTypeError) as caught:
        Now.get(was.pk)
    message = str(caught.value)
    assert "api-token-secret" not in message
    assert "secret" in message
    assert was.pk in message
    assert "int" in message
    assert caught.value.field == "secret"
    assert was.pk in caught.value.record
    now = Now(name="y", secret=5000)
    now.save()
    with pytest.raises(StoredTypeError) as back:
        Was.get(now.pk)
    assert "5000" not in str(back.value)
    assert "int" in str(back.value)


class Inner(pydantic.BaseModel):
    secret: EncryptedStr


def test_a_model_with_encrypted_fields_cannot_be_one_envelope() -> None:
    with pytest.raises(TypeError, match="encrypted fields of its own"):

        class Outer(EncryptedModel, redis_om.JsonModel):
            inner: Encrypted[Inner]


# --- search ---------------------------------------------------------------------------------------


async def test_blind_index_finds_typed_values_exactly(model: Any) -> None:
    a, b, c = await saved(model, salary=7100), await saved(model, salary=7200), await saved(model)
    found = await aw(model.find(model.salary == 7100).all())
    assert [r.pk for r in found] == [a.pk]
    found = await aw(model.find(model.salary << [7100, 7200]).all())
    assert sorted(r.pk for r in found) == sorted([a.pk, b.pk])
    # Compared as the field validates: "7200" is 7200.
    assert [r.pk for r in await aw(model.find(model.salary == "7200").all())] == [b.pk]
    assert c.pk not in [r.pk for r in await aw(model.find(model.salary == 7100).all())]
    with pytest.raises(UnsupportedQueryError) as caught:
        await aw(model.find(model.salary == "not-a-number-secret").all())
    assert "not-a-number-secret" not in str(caught.value)


async def test_values_and_only_give_plain_typed_values(model: Any) -> None:
    record = await saved(model, salary=7300)
    [row] = await aw(model.find(model.salary == 7300).values("salary", "born").all())
    assert row == {"salary": 7300, "born": VALUES["born"]}
    assert record.pk


# --- maintenance ----------------------------------------------------------------------------------


def test_migrate_encrypts_typed_plaintext_and_backfills_the_index() -> None:
    c = client()
    hash_key = SyncHashPayroll.make_primary_key("plain-h-" + uuid.uuid4().hex[:8])
    c.hset(
        hash_key,
        mapping={
            "pk": hash_key.rsplit(":", 1)[1],
            "name": "h",
            "salary": "5100",
            "born": "1990-05-17",
            "active": "true",
        },
    )
    pk_json = "plain-j-" + uuid.uuid4().hex[:8]
    c.json().set(
        SyncJsonPayroll.make_primary_key(pk_json),
        "$",
        {"pk": pk_json, "name": "j", "salary": 5100, "extra": {"k": "v"}, "active": True},
    )
    for model, pk in [(SyncHashPayroll, hash_key.rsplit(":", 1)[1]), (SyncJsonPayroll, pk_json)]:
        key = model.make_primary_key(pk)
        report = ops.migrate(model)
        assert not [f for f in report.failures if f.key == key]
        stored = raw(model, pk)
        assert stored["salary"].startswith(PREFIX)
        assert stored["active"].startswith(PREFIX)
        got = model.get(pk)
        assert got.salary == 5100
        assert got.active is True
        assert [r.pk for r in model.find(model.salary == 5100).all() if r.pk == pk] == [pk]
        assert not [f for f in ops.status(model).failures if f.key == key]


def test_migrate_reports_plaintext_that_is_not_of_the_field_type() -> None:
    pk = "bad-" + uuid.uuid4().hex[:8]
    key = SyncHashPayroll.make_primary_key(pk)
    client().hset(key, mapping={"pk": pk, "name": "b", "salary": "12ab-secret"})
    report = ops.migrate(SyncHashPayroll)
    failed = [f for f in report.failures if f.key == key]
    assert failed
    assert failed[0].field == "salary"
    assert "int" in failed[0].reason
    assert "12ab-secret" not in failed[0].reason
    assert raw(SyncHashPayroll, pk)["salary"] == "12ab-secret"  # left as it was
    client().delete(key)


def test_rotate_covers_typed_fields(monkeypatch: pytest.MonkeyPatch, master_key: str) -> None:
    from redis_encrypted_fields import generate_master_key, set_keyring
    from redis_encrypted_fields.crypto.envelope import parse

    record = SyncJsonPayroll(name=unique(), **VALUES)
    record.save()
    new = generate_master_key()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new)
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
    set_keyring(None)
    report = ops.rotate(SyncJsonPayroll)
    key = SyncJsonPayroll.make_primary_key(record.pk)
    assert not [f for f in report.failures if f.key == key]
    ids = {parse(v).key_id for k, v in raw(SyncJsonPayroll, record.pk).items() if k in VALUES}
    assert len(ids) == 1
    got = SyncJsonPayroll.get(record.pk)
    assert all(getattr(got, n) == v for n, v in VALUES.items())


async def test_plaintext_json_number_is_refused_when_plaintext_reads_are(model: Any) -> None:
    if not is_json(model):
        pytest.skip("a hash holds text only")
    record = await saved(model)
    write_raw(model, record.pk, "salary", 5000)
    set_plaintext_reads(False)
    with pytest.raises(PlaintextSecretError):
        await aw(model.get(record.pk))
    set_plaintext_reads(True)
    assert (await aw(model.get(record.pk))).salary == 5000


# --- the canonical encodings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "value", "text"),
    [
        (int, -5000, "\x00int\x00-5000"),
        (bool, True, "\x00bool\x00true"),
        (float, 0.1, "\x00float\x000.1"),
        (float, float("inf"), "\x00float\x00inf"),
        (Decimal, Decimal("1.10"), "\x00decimal\x001.10"),
        (datetime.date, datetime.date(2024, 2, 29), "\x00date\x002024-02-29"),
        (
            datetime.datetime,
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            "\x00datetime\x002024-01-02T03:04:05+00:00",
        ),
        (bytes, b"\x00\xff", "\x00bytes\x00AP8="),
        (dict[str, Any], {"b": 1, "a": "é"}, '\x00json\x00{"a":"é","b":1}'),
        (Profile, Profile(team="t", level=1), '\x00json\x00{"level":1,"team":"t"}'),
    ],
)
def test_canonical_encoding(source: Any, value: Any, text: str) -> None:
    codec = codec_for(source)
    assert codec.encode(value) == text
    assert codec.decode(text) == value


def test_equal_values_that_encode_differently() -> None:
    # Documented in docs/format.md: a blind index finds what encodes the same.
    decimal = codec_for(Decimal)
    assert decimal.encode(Decimal("1.0")) != decimal.encode(Decimal("1.00"))
    floats = codec_for(float)
    assert floats.encode(0.0) != floats.encode(-0.0)
    with pytest.raises(ValueTypeError):
        codec_for(int).decode("\x00float\x005.0")


def test_typed_values_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    record = SyncHashPayroll(name=unique(), **VALUES)
    record.save()
    SyncHashPayroll.get(record.pk)
    assert_no_secret(caplog.text)


def test_typed_field_metadata_in_annotated() -> None:
    class Box(EncryptedModel, redis_om.HashModel):
        name: str
        amount: Annotated[Encrypted[int], BlindIndex(bits=8)]

    assert Box(name="x", amount="3").amount == 3


@given(
    st.one_of(
        st.tuples(st.just(int), st.integers()),
        st.tuples(st.just(float), st.floats(allow_nan=False)),
        st.tuples(st.just(bool), st.booleans()),
        st.tuples(st.just(bytes), st.binary()),
        st.tuples(st.just(datetime.date), st.dates()),
        st.tuples(st.just(datetime.datetime), st.datetimes(timezones=st.none() | st.timezones())),
        st.tuples(st.just(Decimal), st.decimals(allow_nan=False)),
        st.tuples(
            st.just(dict[str, Any]),
            st.dictionaries(st.text(), st.integers() | st.text() | st.booleans(), max_size=4),
        ),
    )
)
def test_every_value_reads_back_as_itself(case: tuple[Any, Any]) -> None:
    source, value = case
    codec = codec_for(source)
    text = codec.encode(value)
    back = codec.decode(text)
    assert back == value or (isinstance(value, Decimal) and back.compare_total(value) == 0)
    assert type(back) is type(value)
    assert codec.encode(back) == text  # one text per value


def test_the_example_runs(redis_url: str) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "payroll.py"
    env = {**os.environ, "REDIS_OM_URL": redis_url}
    done = subprocess.run(
        [sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
