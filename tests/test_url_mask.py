"""UrlMask: credentials hidden, where the URL points shown; only the unchanged rendering keeps.

The first part needs no server; the round trips run through redis-om models on the real server.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import quote

import aredis_om
import pydantic
import pytest
import redis
import redis_om
from hypothesis import given
from hypothesis import strategies as st
from support import aw, dump_redis, raw

from redis_encrypted_fields import EncryptedModel, EncryptedStr, MaskedSecretError, UrlMask
from redis_encrypted_fields.crypto.envelope import PREFIX

MASK = UrlMask()


# --- render ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://alice:pw@host:6379/0", "redis://***:***@host:6379/0"),
        ("redis://:pw@host:6379", "redis://***:***@host:6379"),  # password only
        ("redis://alice@host", "redis://***:***@host"),  # user only: which one is not told
        ("redis://@host/1", "redis://***:***@host/1"),
        (
            "rediss://alice:pw@cache.example.com:6380/15",
            "rediss://***:***@cache.example.com:6380/15",
        ),
        ("REDIS://alice:pw@Host:1/", "redis://***:***@Host:1/"),
        ("redis://al:p@ss@host:1", "redis://***:***@host:1"),  # unescaped '@' in the password
        ("redis://alice:pw@[::1]:6379/0", "redis://***:***@[::1]:6379/0"),
        ("redis://:pw@[fe80::1%25eth0]:6379", "redis://***:***@[fe80::1%25eth0]:6379"),
        ("redis://[2001:db8::7]", "redis://[2001:db8::7]"),
        ("redis://my_redis-1.internal", "redis://my_redis-1.internal"),
        # Nothing to hide: the URL shows as it is (and sent back, it is the same URL).
        ("redis://localhost:6379", "redis://localhost:6379"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://", "redis://"),
        # Every query value but the database's can carry a credential.
        ("redis://host?password=pw", "redis://host?password=***"),
        (
            "rediss://u:p@host:6380/0?password=pw&db=2&ssl_cert_reqs=none",
            "rediss://***:***@host:6380/0?password=***&db=2&ssl_cert_reqs=***",
        ),
        ("redis://host?db=two", "redis://host?db=***"),
        ("redis://host?db=", "redis://host?db=***"),
        ("unix:///var/run/redis.sock", "unix:///var/run/redis.sock"),
        (
            "unix:///var/run/redis.sock?db=1&password=pw",
            "unix:///var/run/redis.sock?db=1&password=***",
        ),
        ("unix://:pw@/var/run/redis-7.sock?db=0", "unix://***:***@/var/run/redis-7.sock?db=0"),
    ],
)
def test_render_hides_credentials_and_shows_where_the_url_points(url: str, shown: str) -> None:
    assert MASK.render(url) == shown
    assert MASK.render(shown) == shown  # a rendering renders as itself


@pytest.mark.parametrize(
    "value",
    [
        "",
        "secret123",
        "localhost:6379",  # no scheme
        "redis:localhost",  # no "//"
        "http://alice:pw@host",  # not a Redis scheme
        "https://hooks.example.com/services/T0/B0/XXXXXXXX",  # a path that is a credential
        "redis://alice:pw@host:port/0",  # bad port
        "redis://alice:pw@host:99999",  # port out of range
        "redis://alice:pw@[::1",  # unbalanced bracket
        "redis://alice:pw@[not-an-ip]:1",
        "redis://alice:pw@host/not-a-db",
        "redis://alice:pw@host/0/1",
        "redis://alice:p#w@host",  # unescaped '#': the "port" would be part of the password
        "redis://:12#word@host",
        "redis://alice:12/word@host",  # unescaped '/': '@' after the host
        "redis://alice:12?word@host",  # unescaped '?': '@' in the query
        "redis://host/0#fragment",
        "redis://host?flag",  # a parameter without '='
        "redis://host?a=1&&b=2",
        "redis://host?pass word=1",
        "redis://alice:pw@%68ost",  # an escaped host
        "redis://alice:pw@hōst",  # not ASCII
        "redis://alice:pw@host\n",  # a newline: urlsplit would drop it silently
        "redis://alice:p w@host",
        "unix://alice:pw@/tmp/my socket",
        "unix:///tmp/r.sock;pw",
    ],
)
def test_anything_but_a_clean_redis_url_renders_as_the_plain_mask(value: str) -> None:
    assert MASK.render(value) == "***"
    assert UrlMask("**********").render(value) == "**********"


def test_schemes_can_be_narrowed() -> None:
    mask = UrlMask(schemes=["REDISS"])
    assert mask.render("rediss://u:p@host") == "rediss://***:***@host"
    assert mask.render("redis://u:p@host") == "***"
    assert repr(mask) == "UrlMask('***', schemes=('rediss',))"


def test_the_plain_mask_must_be_stars() -> None:
    with pytest.raises(ValueError, match="only of '\\*'"):
        UrlMask("hidden")


_host = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True) | st.sampled_from(
    ["[::1]", "[2001:db8::1]", "127.0.0.1"]
)
_credential = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@given(
    scheme=st.sampled_from(["redis", "rediss"]),
    user=_credential,
    password=_credential,
    host=_host,
    port=st.none() | st.integers(0, 65535),
    db=st.none() | st.integers(0, 15),
)
def test_a_well_formed_url_renders_without_its_credentials(
    scheme: str, user: str, password: str, host: str, port: int | None, db: int | None
) -> None:
    marked = f"PW{password}"  # uppercase: cannot come from the generated host
    netloc = f"{quote(user, safe='')}:{quote(marked, safe='')}@{host}"
    url = f"{scheme}://{netloc}{'' if port is None else f':{port}'}{'' if db is None else f'/{db}'}"
    shown = MASK.render(url)
    assert shown == url.replace(netloc, f"***:***@{host}")
    assert quote(marked, safe="") not in shown
    assert redis.connection.parse_url(url)["password"] == marked  # what redis-py would use
    assert MASK.could_be_mask(shown)
    assert MASK.is_mask_of(shown, url)
    assert not MASK.could_be_mask(url) or "***" in password or "***" in user


@given(st.text(max_size=60) | st.from_regex(r"(rediss?|unix)://[^ ]{0,40}", fullmatch=True))
def test_render_never_fails_is_stable_and_its_output_keeps(value: str) -> None:
    shown = MASK.render(value)
    assert MASK.render(shown) == shown
    assert MASK.is_mask_of(shown, value)
    assert "#" not in shown


# --- could_be_mask: a URL part made only of stars marks a mask ------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "***",
        "**********",
        "redis://***:***@host:6379/0",
        "redis://alice:***@host",  # a real user, a masked password
        "redis://***:Pa55@host",  # a masked user next to a real password
        "redis://***@host",
        "redis://***:***@attacker.example:6379/0",
        "redis://host?password=***",
        "unix://***:***@/tmp/r.sock",
        "redis://***:***@host/not-a-db",  # malformed, still a mask
    ],
)
def test_values_with_a_part_made_of_stars_could_be_masks(value: str) -> None:
    assert MASK.could_be_mask(value)


@pytest.mark.parametrize(
    "value",
    [
        "redis://alice:pw@host:6379/0",
        "redis://localhost:6379",
        "redis://alice:pa***ss@host",  # stars inside a password: a real password
        "redis://alice:%2A%2A%2A@host",  # a password that is "***", percent-encoded
        "redis://alice:x***@host",
        "**",
        "x***",
    ],
)
def test_values_without_a_part_made_of_stars_are_secrets(value: str) -> None:
    assert not MASK.could_be_mask(value)


# --- is_mask_of: only the unchanged rendering (or a plain star mask) keeps -----------------------

STORED = "redis://alice:Stored-Pa55@db.internal:6379/0"
STORED_SHOWN = "redis://***:***@db.internal:6379/0"


@pytest.mark.parametrize("value", [STORED_SHOWN, "***", "**********"])
def test_the_rendering_or_a_star_mask_keeps_the_stored_url(value: str) -> None:
    assert MASK.is_mask_of(value, STORED)


@pytest.mark.parametrize(
    "value",
    [
        "redis://***:***@attacker.example:6379/0",
        "redis://***:***@db.internal:6380/0",
        "redis://***:***@db.internal:6379/1",
        "redis://***:***@db.internal:6379/0?password=***",
        "redis://alice:***@db.internal:6379/0",
        "redis://***:Other-Pa55@db.internal:6379/0",
        "rediss://***:***@db.internal:6379/0",
        "redis://***:***@db.internal:6379/0/x",  # malformed
    ],
)
def test_any_other_masked_url_is_refused_without_showing_a_credential(value: str) -> None:
    with pytest.raises(MaskedSecretError, match="only when sent back exactly as shown") as info:
        MASK.is_mask_of(value, STORED)
    message = str(info.value)
    assert STORED_SHOWN in message
    for credential in ("alice", "Pa55"):
        assert credential not in message


def test_a_masked_url_with_nothing_stored_is_refused() -> None:
    with pytest.raises(MaskedSecretError, match="no stored secret"):
        MASK.is_mask_of(STORED_SHOWN, None)
    # A plain star mask is left to the model, which refuses it with the field's name.
    assert MASK.is_mask_of("***", None)


def test_a_stored_url_without_credentials_is_kept_only_by_its_own_rendering() -> None:
    assert MASK.is_mask_of("redis://db.internal:6379/0", "redis://db.internal:6379/0")
    with pytest.raises(MaskedSecretError):
        MASK.is_mask_of(STORED_SHOWN, "redis://db.internal:6379/0")


def test_a_malformed_stored_url_is_kept_by_its_plain_mask() -> None:
    assert MASK.render("not a url") == "***"
    assert MASK.is_mask_of("***", "not a url")
    with pytest.raises(MaskedSecretError):
        MASK.is_mask_of(STORED_SHOWN, "not a url")


def test_a_value_that_is_no_mask_is_not_taken_for_one() -> None:
    assert not MASK.is_mask_of("redis://alice:New-Pa55@db.internal:6379/0", STORED)


# --- outside a model: EncryptedStr with UrlMask -------------------------------------------------


class Standalone(pydantic.BaseModel):
    url: Annotated[EncryptedStr, UrlMask()]


def test_standalone_json_shows_the_rendering_and_a_mask_is_refused_unechoed() -> None:
    assert Standalone(url=STORED).model_dump(mode="json") == {"url": STORED_SHOWN}
    with pytest.raises(MaskedSecretError) as info:
        Standalone(url="redis://alice:***@db.internal:6379/0")
    assert "alice" not in str(info.value)
    assert STORED_SHOWN in str(info.value)


def test_json_schemas_write_only_in_input_rendering_in_output() -> None:
    assert Standalone.model_json_schema()["properties"]["url"] == {
        "type": "string",
        "format": "password",
        "writeOnly": True,
        "title": "Url",
    }
    output = Standalone.model_json_schema(mode="serialization")["properties"]["url"]
    assert output["type"] == "string"
    assert output["examples"] == ["redis://***:***@host:6379/0"]
    assert "writeOnly" not in output


# --- through redis-om models, on the server -----------------------------------------------------


class SyncHashUrl(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    url: Annotated[EncryptedStr, UrlMask()]


class SyncJsonUrl(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    url: Annotated[EncryptedStr, UrlMask()]


class AsyncHashUrl(EncryptedModel, aredis_om.HashModel, index=True):
    name: str = aredis_om.Field(index=True)
    url: Annotated[EncryptedStr, UrlMask()]


class AsyncJsonUrl(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    url: Annotated[EncryptedStr, UrlMask()]


@pytest.fixture(
    params=[SyncHashUrl, SyncJsonUrl, AsyncHashUrl, AsyncJsonUrl], ids=lambda m: m.__name__
)
def model(request: pytest.FixtureRequest) -> Any:
    return request.param


async def saved(model: Any, url: str = STORED) -> Any:
    m = model(name=f"url-{uuid.uuid4().hex[:12]}", url=url)
    await aw(m.save())
    return m


async def stored_url(model: Any, pk: str) -> str:
    return str((await aw(model.get(pk))).url)


async def test_round_trip_the_rendering_sent_back_keeps_the_url(model: Any) -> None:
    m = await saved(model)
    before = raw(model, m.pk)["url"]
    assert before.startswith(PREFIX)
    assert "Stored-Pa55" not in str(dump_redis())

    body = (await aw(model.get(m.pk))).model_dump(mode="json")  # what an API returns
    assert body["url"] == STORED_SHOWN
    body["name"] = "renamed"
    await aw(model(**body).save())

    after = raw(model, m.pk)
    assert after["url"].startswith(PREFIX)
    assert after["url"] != before  # sealed afresh
    assert after["name"] == "renamed"
    assert await stored_url(model, m.pk) == STORED


async def test_round_trip_by_update_and_by_star_mask(model: Any) -> None:
    m = await saved(model)
    await aw(m.update(url=STORED_SHOWN))
    assert await stored_url(model, m.pk) == STORED
    await aw(m.update(url="***"))
    assert await stored_url(model, m.pk) == STORED


@pytest.mark.parametrize(
    "value",
    [
        "redis://***:***@attacker.example:6379/0",
        "redis://alice:***@db.internal:6379/0",
        "redis://***:***@db.internal:6379/0?password=***",
    ],
)
async def test_round_trip_a_changed_masked_url_is_refused_and_nothing_written(
    model: Any, value: str
) -> None:
    m = await saved(model)
    before = dump_redis()
    body = {**(await aw(model.get(m.pk))).model_dump(mode="json"), "url": value}
    with pytest.raises(MaskedSecretError, match="only when sent back exactly as shown"):
        await aw(model(**body).save())
    assert dump_redis() == before
    assert await stored_url(model, m.pk) == STORED


async def test_round_trip_a_masked_url_for_a_new_record_is_refused(model: Any) -> None:
    new = model(name="new", url=STORED_SHOWN)
    with pytest.raises(MaskedSecretError, match="no stored secret"):
        await aw(new.save())
    assert raw(model, new.pk) in ({}, None)


async def test_round_trip_new_urls_replace_the_stored_one(model: Any) -> None:
    m = await saved(model)
    for url in (
        "rediss://bob:New-Pa55@other.internal:6380/3",
        "redis://bob:%2A%2A%2A@other.internal:6380/3",  # the password "***", percent-encoded
        "redis://other.internal:6380",  # no credentials any more
    ):
        await aw(m.update(url=url))
        assert await stored_url(model, m.pk) == url
        assert raw(model, m.pk)["url"].startswith(PREFIX)


async def test_round_trip_a_url_without_credentials(model: Any) -> None:
    m = await saved(model, url="redis://db.internal:6379/0")
    body = (await aw(model.get(m.pk))).model_dump(mode="json")
    assert body["url"] == "redis://db.internal:6379/0"  # nothing hidden, nothing to hide
    assert raw(model, m.pk)["url"].startswith(PREFIX)  # still encrypted at rest
    await aw(model(**body).save())
    assert await stored_url(model, m.pk) == "redis://db.internal:6379/0"
