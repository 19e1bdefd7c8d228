"""The FastAPI example (examples/fastapi_app.py, examples/worker.py) against the real Redis Stack.

Each call is followed by a look at what Redis really holds: envelopes only, the right secret
behind them, and nothing written when a call is refused.
"""

from __future__ import annotations

import logging
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

try:
    from fastapi.testclient import TestClient
except (ImportError, RuntimeError):  # RuntimeError: Starlette's TestClient without its HTTP client
    pytest.skip("the examples extra is not installed", allow_module_level=True)

from redis_encrypted_fields import encrypt_secret, set_keyring
from redis_encrypted_fields.crypto.envelope import PREFIX

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import fastapi_app  # noqa: E402
import worker  # noqa: E402
from fastapi_app import RedisInstance  # noqa: E402

# The design note's request.
NOTE_BODY = {
    "name": "My Redis",
    "connection_url": "redis://localhost:6379",
    "admin_password": "secret123",
}
URL = "redis://default:Url-Pa55-q7@db.internal:6380/2"
URL_SHOWN = "redis://***:***@db.internal:6380/2"
PASSWORD = "Admin-Pa55-z9"
BODY = {"name": "orders", "connection_url": URL, "admin_password": PASSWORD}
SECRETS = ("connection_url", "admin_password")


@pytest.fixture
def api() -> Iterator[TestClient]:
    with TestClient(fastapi_app.app) as client:  # runs the lifespan (master key check)
        yield client


@pytest.fixture(autouse=True)
def _no_instances(redis_client: redis.Redis[str]) -> Iterator[None]:
    """Each test starts and ends without records of the example's model."""

    def wipe() -> None:
        for key in redis_client.scan_iter(f"{key_of('')}*", _type="HASH"):
            redis_client.delete(key)

    wipe()
    yield
    wipe()


def key_of(pk: str) -> str:
    return str(RedisInstance.make_primary_key(pk))


def stored(redis_client: redis.Redis[str], pk: str) -> dict[str, str]:
    return redis_client.hgetall(key_of(pk))


def everything(redis_client: redis.Redis[str]) -> dict[str, dict[str, str]]:
    keys = redis_client.scan_iter(f"{key_of('')}*", _type="HASH")
    return {k: redis_client.hgetall(k) for k in keys}


def assert_sealed(raw: dict[str, str], *plaintexts: str) -> None:
    """Secrets are envelopes, and no plaintext (nor a fragment of one) is anywhere in the hash."""
    assert raw["connection_url"].startswith(PREFIX)
    assert raw["admin_password"] == "" or raw["admin_password"].startswith(PREFIX)
    text = str(raw)
    for plaintext in plaintexts:
        for fragment in (plaintext, plaintext[:8], plaintext[-8:]):
            assert fragment not in text


def decrypted(pk: str) -> tuple[str, str | None]:
    got = RedisInstance.get(pk)
    return got.connection_url, got.admin_password


def create(api: TestClient, **fields: Any) -> dict[str, Any]:
    response = api.post("/instances", json={**BODY, **fields})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- create, read ------------------------------------------------------------------------------


def test_the_design_notes_request_is_stored_encrypted_and_read_back_masked(
    api: TestClient, redis_client: redis.Redis[str]
) -> None:
    response = api.post("/instances", json=NOTE_BODY)
    assert response.status_code == 201
    body = response.json()
    pk = body["pk"]
    # No credentials in this URL: nothing to hide, host and port are shown as they are.
    assert body == {
        "pk": pk,
        "name": "My Redis",
        "description": "",
        "connection_url": "redis://localhost:6379",
        "admin_password": "***",
    }
    raw = stored(redis_client, pk)
    assert_sealed(raw, "secret123", "redis://localhost:6379")
    assert raw["name"] == "My Redis"
    assert decrypted(pk) == ("redis://localhost:6379", "secret123")

    assert api.get(f"/instances/{pk}").json() == body
    assert api.get("/instances").json() == [body]


def test_credentials_in_the_url_are_masked_and_the_rest_is_shown(
    api: TestClient, redis_client: redis.Redis[str]
) -> None:
    url = "rediss://app:Url-Pa55-q7@[2001:db8::7]:6390/3?password=Q-Pa55-x1&db=3"
    created = create(api, connection_url=url)
    shown = "rediss://***:***@[2001:db8::7]:6390/3?password=***&db=3"
    assert created["connection_url"] == shown
    for response in (api.get(f"/instances/{created['pk']}"), api.get("/instances")):
        assert shown in response.text
        assert "Pa55" not in response.text
    assert_sealed(stored(redis_client, created["pk"]), url, "Url-Pa55-q7", "Q-Pa55-x1")
    assert decrypted(created["pk"]) == (url, PASSWORD)


def test_list_shows_every_instance_masked(api: TestClient) -> None:
    a = create(api, name="b-second")
    b = create(api, name="a-first", admin_password=None)
    listed = api.get("/instances").json()
    assert [i["pk"] for i in listed] == [b["pk"], a["pk"]]  # by name
    assert [i["admin_password"] for i in listed] == [None, "***"]
    assert {i["connection_url"] for i in listed} == {URL_SHOWN}


# --- update: masks sent back keep the secrets ---------------------------------------------------


@pytest.mark.parametrize("method", ["put", "patch"])
def test_a_gets_output_sent_back_keeps_the_secrets(
    api: TestClient, redis_client: redis.Redis[str], method: str
) -> None:
    pk = create(api)["pk"]
    before = stored(redis_client, pk)
    body = api.get(f"/instances/{pk}").json()
    assert (body["connection_url"], body["admin_password"]) == (URL_SHOWN, "***")
    body["description"] = "edited"
    response = getattr(api, method)(f"/instances/{pk}", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == body

    after = stored(redis_client, pk)
    assert_sealed(after, URL, PASSWORD)
    assert after["description"] == "edited"
    # Kept, and sealed afresh: same plaintext, new envelopes.
    assert decrypted(pk) == (URL, PASSWORD)
    assert after["connection_url"] != before["connection_url"]
    assert after["admin_password"] != before["admin_password"]


def test_put_with_new_plaintext_replaces_the_secrets(
    api: TestClient, redis_client: redis.Redis[str]
) -> None:
    pk = create(api)["pk"]
    new_url = "redis://default:New-Pa55-k3@db2.internal:6379/0"
    body = {"name": "orders", "connection_url": new_url, "admin_password": "New-Admin-8"}
    response = api.put(f"/instances/{pk}", json=body)
    assert response.status_code == 200
    assert response.json()["connection_url"] == "redis://***:***@db2.internal:6379/0"
    assert_sealed(stored(redis_client, pk), new_url, "New-Admin-8", URL, PASSWORD)
    assert decrypted(pk) == (new_url, "New-Admin-8")


def test_put_replaces_the_whole_record_so_an_absent_password_is_cleared(
    api: TestClient, redis_client: redis.Redis[str]
) -> None:
    pk = create(api)["pk"]
    shown = api.get(f"/instances/{pk}").json()
    del shown["admin_password"]
    response = api.put(f"/instances/{pk}", json=shown)
    assert response.status_code == 200
    assert response.json()["admin_password"] is None
    assert stored(redis_client, pk)["admin_password"] == ""
    assert decrypted(pk) == (URL, None)


def test_patch_changes_only_what_it_is_given(
    api: TestClient, redis_client: redis.Redis[str]
) -> None:
    pk = create(api)["pk"]
    assert api.patch(f"/instances/{pk}", json={"description": "d1"}).status_code == 200
    assert decrypted(pk) == (URL, PASSWORD)

    assert api.patch(f"/instances/{pk}", json={"admin_password": "***"}).status_code == 200
    assert decrypted(pk) == (URL, PASSWORD)

    assert api.patch(f"/instances/{pk}", json={"admin_password": "Patched-1"}).status_code == 200
    assert decrypted(pk) == (URL, "Patched-1")
    assert_sealed(stored(redis_client, pk), URL, "Patched-1")

    response = api.patch(f"/instances/{pk}", json={"admin_password": None})
    assert response.json()["admin_password"] is None
    assert stored(redis_client, pk)["admin_password"] == ""
    assert decrypted(pk) == (URL, None)
    assert stored(redis_client, pk)["description"] == "d1"


# --- refusals: a mask is never stored ------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"admin_password": "***"},
        {"connection_url": "***"},
        {"connection_url": URL_SHOWN},
        {"connection_url": "redis://default:***@db.internal:6380/2"},
    ],
    ids=["password-mask", "url-star-mask", "url-rendered-mask", "url-password-stars"],
)
def test_create_with_a_mask_is_422_and_stores_nothing(
    api: TestClient, redis_client: redis.Redis[str], fields: dict[str, str]
) -> None:
    response = api.post("/instances", json={**BODY, **fields})
    assert response.status_code == 422
    assert "no stored secret" in response.json()["detail"]
    assert PASSWORD not in response.text
    assert everything(redis_client) == {}


@pytest.mark.parametrize("method", ["put", "patch"])
def test_a_mask_for_a_record_without_that_secret_is_422_and_changes_nothing(
    api: TestClient, redis_client: redis.Redis[str], method: str
) -> None:
    pk = create(api, admin_password=None)["pk"]
    before = stored(redis_client, pk)
    body = {**api.get(f"/instances/{pk}").json(), "admin_password": "***", "name": "renamed"}
    response = getattr(api, method)(f"/instances/{pk}", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "RedisInstance.admin_password" in detail
    assert "no stored secret" in detail
    assert stored(redis_client, pk) == before


@pytest.mark.parametrize(
    "masked_url",
    [
        "redis://***:***@attacker.example:6380/2",  # new host behind the masked credentials
        "redis://***:***@db.internal:6380/5",  # another database
        "redis://default:***@db.internal:6380/2",  # a real user, a masked password
        "redis://***:***@db.internal:6380/2?password=***",  # a mask of another URL
    ],
)
@pytest.mark.parametrize("method", ["put", "patch"])
def test_a_changed_url_behind_masked_credentials_is_422_and_changes_nothing(
    api: TestClient, redis_client: redis.Redis[str], method: str, masked_url: str
) -> None:
    pk = create(api)["pk"]
    before = stored(redis_client, pk)
    body = {**api.get(f"/instances/{pk}").json(), "connection_url": masked_url}
    response = getattr(api, method)(f"/instances/{pk}", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "only when sent back exactly as shown" in detail
    assert URL_SHOWN in detail
    assert "Url-Pa55" not in detail
    assert stored(redis_client, pk) == before
    assert decrypted(pk) == (URL, PASSWORD)


def test_a_star_password_written_percent_encoded_is_a_real_password(
    api: TestClient, redis_client: redis.Redis[str]
) -> None:
    pk = create(api)["pk"]
    url = "redis://default:%2A%2A%2A@db.internal:6380/2"
    response = api.patch(f"/instances/{pk}", json={"connection_url": url})
    assert response.status_code == 200
    assert response.json()["connection_url"] == URL_SHOWN
    assert decrypted(pk) == (url, PASSWORD)
    assert redis.connection.parse_url(url)["password"] == "***"


# --- validation: clear 422s that never repeat a secret ------------------------------------------


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        ({"connection_url": URL, "admin_password": PASSWORD}, "name", "Field required"),
        ({**BODY, "connection_url": f"http://user:{PASSWORD}@host"}, "connection_url", "redis://"),
        ({**BODY, "connection_url": PASSWORD}, "connection_url", "redis://"),
        ({**BODY, "admin_password": ""}, "admin_password", "at least 1"),
        ({**BODY, "name": ["x", PASSWORD]}, "name", "valid string"),
    ],
    ids=["missing-name", "http-url", "not-a-url", "empty-password", "bad-type"],
)
def test_invalid_requests_are_422_without_echoing_secrets(
    api: TestClient, redis_client: redis.Redis[str], body: dict[str, Any], where: str, says: str
) -> None:
    response = api.post("/instances", json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"][-1] == where and says in e["msg"] for e in errors), errors
    assert PASSWORD not in response.text
    assert "Url-Pa55" not in response.text
    assert everything(redis_client) == {}


@pytest.mark.parametrize(
    "envelope",
    [lambda: PREFIX + "x" * 40, lambda: encrypt_secret(PASSWORD)],
    ids=["malformed", "unbound"],
)
def test_an_envelope_sent_as_a_secret_is_422(
    api: TestClient, redis_client: redis.Redis[str], envelope: Any
) -> None:
    response = api.post("/instances", json={**BODY, "admin_password": envelope()})
    assert response.status_code == 422
    assert response.json() == {"detail": "an encrypted value is not accepted; send the plaintext"}
    assert everything(redis_client) == {}
    pk = create(api)["pk"]
    before = stored(redis_client, pk)
    assert api.patch(f"/instances/{pk}", json={"admin_password": envelope()}).status_code == 422
    assert stored(redis_client, pk) == before


def test_patch_cannot_null_a_required_field(api: TestClient) -> None:
    pk = create(api)["pk"]
    response = api.patch(f"/instances/{pk}", json={"connection_url": None})
    assert response.status_code == 422
    assert "connection_url cannot be null" in response.text
    assert decrypted(pk) == (URL, PASSWORD)


def test_a_body_pk_other_than_the_urls_is_422(api: TestClient) -> None:
    a, b = create(api), create(api)
    body = {**api.get(f"/instances/{a['pk']}").json(), "name": "moved"}
    assert api.put(f"/instances/{b['pk']}", json=body).status_code == 422
    assert api.patch(f"/instances/{b['pk']}", json=body).status_code == 422
    assert RedisInstance.get(b["pk"]).name == "orders"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/instances/nope"),
        ("put", "/instances/nope"),
        ("patch", "/instances/nope"),
        ("delete", "/instances/nope"),
        ("post", "/instances/nope/ping"),
    ],
)
def test_unknown_instances_are_404(
    api: TestClient, redis_client: redis.Redis[str], method: str, path: str
) -> None:
    kwargs = {"json": BODY} if method in ("put", "patch") else {}
    response = api.request(method.upper(), path, **kwargs)
    assert response.status_code == 404
    assert response.json() == {"detail": "instance not found"}
    assert everything(redis_client) == {}


def test_delete_removes_the_record(api: TestClient, redis_client: redis.Redis[str]) -> None:
    pk = create(api)["pk"]
    assert api.delete(f"/instances/{pk}").status_code == 204
    assert everything(redis_client) == {}


# --- failures to decrypt: 500, details only in the operator's log -------------------------------


def corrupt(redis_client: redis.Redis[str], pk: str, field: str = "admin_password") -> None:
    """One character of a stored envelope changed by hand, as a damaged record would have it."""
    envelope = stored(redis_client, pk)[field]
    flipped = "A" if envelope[-10] != "A" else "B"
    redis_client.hset(key_of(pk), field, envelope[:-10] + flipped + envelope[-9:])


def test_a_tampered_secret_is_a_500_without_details(
    api: TestClient, redis_client: redis.Redis[str], caplog: pytest.LogCaptureFixture
) -> None:
    pk = create(api)["pk"]
    corrupt(redis_client, pk)
    with caplog.at_level(logging.ERROR, logger="redis_instances_api"):
        response = api.get(f"/instances/{pk}")
        assert response.status_code == 500
        assert response.json() == {"detail": "internal error"}
    assert any("DecryptionError" in r.getMessage() for r in caplog.records)
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_the_list_shows_the_readable_records_and_names_an_unreadable_one(
    api: TestClient, redis_client: redis.Redis[str], caplog: pytest.LogCaptureFixture
) -> None:
    good = create(api, name="a-good")
    bad = create(api, name="b-bad")["pk"]
    corrupt(redis_client, bad)
    with caplog.at_level(logging.ERROR, logger="redis_instances_api"):
        response = api.get("/instances")
    assert response.status_code == 200
    assert response.json() == [
        good,
        {"pk": bad, "name": "b-bad", "error": fastapi_app.UNREADABLE},
    ]
    assert PASSWORD not in response.text
    assert "Url-Pa55" not in response.text
    assert PREFIX not in response.text  # no envelope either
    messages = [r.getMessage() for r in caplog.records]
    assert any(bad in m and "DecryptionError" in m for m in messages)
    assert all(PASSWORD not in m for m in messages)


@pytest.mark.parametrize(
    ("field", "fresh"),
    [("admin_password", "Fresh-Pa55-k2"), ("connection_url", "redis://:Fresh-Pa55-k2@db:6379/1")],
)
def test_a_patch_with_a_fresh_secret_replaces_a_corrupted_one(
    api: TestClient, redis_client: redis.Redis[str], field: str, fresh: str
) -> None:
    pk = create(api, description="kept")["pk"]
    corrupt(redis_client, pk, field)
    before = stored(redis_client, pk)
    # A PATCH that keeps the unreadable secret cannot succeed, and changes nothing.
    assert api.patch(f"/instances/{pk}", json={"name": "renamed"}).status_code == 500
    assert stored(redis_client, pk) == before

    response = api.patch(f"/instances/{pk}", json={field: fresh})
    assert response.status_code == 200, response.text
    assert response.json()["description"] == "kept"
    expected = {"connection_url": URL, "admin_password": PASSWORD, field: fresh}
    assert decrypted(pk) == (expected["connection_url"], expected["admin_password"])
    assert_sealed(stored(redis_client, pk), fresh, URL, PASSWORD)
    assert stored(redis_client, pk)["description"] == "kept"
    assert api.get(f"/instances/{pk}").status_code == 200
    assert api.get("/instances").json()[0]["pk"] == pk


def test_a_wrong_master_key_is_a_500_without_details(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support import new_key

    pk = create(api)["pk"]
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    set_keyring(None)
    response = api.get(f"/instances/{pk}")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}


def test_the_service_does_not_start_without_a_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from redis_encrypted_fields import MasterKeyError

    monkeypatch.delenv("REDIS_SRE_MASTER_KEY")
    set_keyring(None)
    with pytest.raises(MasterKeyError), TestClient(fastapi_app.app):
        pass


# --- the plaintext is used inside the service: ping ---------------------------------------------


@pytest.fixture
def credentialed_url(redis_client: redis.Redis[str], redis_url: str) -> Iterator[str]:
    """A URL of the test server with a user and password (an ACL user that may only PING)."""
    user, password = f"example-{secrets.token_hex(4)}", f"Ping-{secrets.token_hex(8)}"
    redis_client.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], commands=["-@all", "+ping", "+client"]
    )
    host_port = redis_url.split("://", 1)[1].rstrip("/")
    try:
        yield f"redis://{user}:{password}@{host_port}/0"
    finally:
        redis_client.acl_deluser(user)


def test_ping_connects_with_the_stored_url_and_never_returns_it(
    api: TestClient, redis_client: redis.Redis[str], credentialed_url: str, redis_url: str
) -> None:
    password = credentialed_url.split(":")[2].split("@")[0]
    created = create(api, connection_url=credentialed_url)
    pk = created["pk"]
    host_port = redis_url.split("://", 1)[1].rstrip("/")
    assert created["connection_url"] == f"redis://***:***@{host_port}/0"
    assert_sealed(stored(redis_client, pk), credentialed_url, password)

    response = api.post(f"/instances/{pk}/ping")
    assert response.json() == {"pk": pk, "reachable": True, "error": None}
    assert password not in response.text

    # The masked URL sent back keeps the credentials: the ping still authenticates.
    body = {**api.get(f"/instances/{pk}").json(), "description": "still reachable"}
    assert api.put(f"/instances/{pk}", json=body).status_code == 200
    assert api.post(f"/instances/{pk}/ping").json()["reachable"] is True
    assert decrypted(pk)[0] == credentialed_url


def test_ping_reports_an_unreachable_or_refusing_server(
    api: TestClient, credentialed_url: str
) -> None:
    dead = create(api, connection_url=f"redis://u:Dead-Pa55@127.0.0.1:{free_port()}/0")["pk"]
    wrong = create(api, connection_url=credentialed_url.replace("@", "x@", 1))["pk"]
    started = time.monotonic()
    assert api.post(f"/instances/{dead}/ping").json() == {
        "pk": dead,
        "reachable": False,
        "error": "ConnectionError",
    }
    refused = api.post(f"/instances/{wrong}/ping").json()
    assert refused["reachable"] is False
    assert refused["error"] in ("AuthenticationError", "AuthenticationWrongNumberOfArgsError")
    assert time.monotonic() - started < 10


# --- OpenAPI ------------------------------------------------------------------------------------


def schema_of(openapi: dict[str, Any], ref_holder: dict[str, Any]) -> dict[str, Any]:
    name = ref_holder["$ref"].rsplit("/", 1)[1]
    return openapi["components"]["schemas"][name]  # type: ignore[no-any-return]


def password_of(prop: dict[str, Any]) -> dict[str, Any]:
    """The string branch of a property (``anyOf`` for an optional one)."""
    return next((p for p in prop.get("anyOf", [prop]) if p.get("type") == "string"), {})


def test_openapi_shows_secrets_as_write_only_passwords_and_responses_as_masks(
    api: TestClient,
) -> None:
    openapi = api.get("/openapi.json").json()
    paths = openapi["paths"]
    requests = [
        paths["/instances"]["post"],
        paths["/instances/{pk}"]["put"],
        paths["/instances/{pk}"]["patch"],
    ]
    for operation in requests:
        body = schema_of(openapi, operation["requestBody"]["content"]["application/json"]["schema"])
        for field in ("connection_url", "admin_password"):
            prop = password_of(body["properties"][field])
            assert prop["type"] == "string"
            assert prop["format"] == "password"
            assert prop["writeOnly"] is True

    # The stored model, as responses show it: masked strings, not write-only.
    responses = [
        paths["/instances"]["post"]["responses"]["201"],
        paths["/instances/{pk}"]["get"]["responses"]["200"],
        paths["/instances/{pk}"]["put"]["responses"]["200"],
    ]
    for response in responses:
        model = schema_of(openapi, response["content"]["application/json"]["schema"])
        url, password = (password_of(model["properties"][f]) for f in SECRETS)
        assert url["type"] == password["type"] == "string"
        assert "writeOnly" not in url
        assert "writeOnly" not in password
        assert url["examples"] == ["redis://***:***@host:6379/0"]
        assert password["examples"] == ["***"]
    listing = paths["/instances"]["get"]["responses"]["200"]["content"]["application/json"]
    # The list: records as GET shows them, or a record that cannot be decrypted, named.
    record, unreadable = listing["schema"]["items"]["anyOf"]
    assert schema_of(openapi, record) is model
    assert set(schema_of(openapi, unreadable)["properties"]) == {"pk", "name", "error"}


# --- logs: the service and the worker never log a secret ----------------------------------------


def test_neither_the_service_nor_the_worker_logs_a_secret(
    api: TestClient, credentialed_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    password = credentialed_url.split(":")[2].split("@")[0]
    with caplog.at_level(logging.DEBUG):
        up = create(api, connection_url=credentialed_url)
        down = create(
            api, name="dead", connection_url=f"redis://:Dead-Pa55@127.0.0.1:{free_port()}"
        )
        body = api.get(f"/instances/{up['pk']}").json()
        api.put(f"/instances/{up['pk']}", json=body)
        api.patch(f"/instances/{up['pk']}", json={"admin_password": "Patched-Pa55"})
        api.post(f"/instances/{up['pk']}/ping")
        results = worker.ping_all()
    assert results == {up["pk"]: True, down["pk"]: False}
    messages = [r.getMessage() for r in caplog.records]
    worker_lines = [m for m in messages if "redis://***:***@" in m]
    assert len(worker_lines) == 2
    assert any(": up" in m for m in worker_lines)
    assert any("down (ConnectionError)" in m for m in worker_lines)
    for secret in (password, credentialed_url, "Dead-Pa55", PASSWORD, "Patched-Pa55"):
        assert all(secret not in m for m in messages)


def test_the_worker_runs_a_round_from_its_command_line(
    api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    create(api, connection_url=f"redis://:Dead-Pa55@127.0.0.1:{free_port()}")
    with caplog.at_level(logging.INFO, logger="redis_instances_worker"):
        assert worker.main(["--once"]) == 0
    assert any("0 of 1 instances up" in r.getMessage() for r in caplog.records)
