"""The test server really is Redis Stack (RediSearch + RedisJSON)."""

from __future__ import annotations

import os
import subprocess
import sys

import redis
from redis.commands.search.query import Query

from devtools.redis_stack import REPO_ROOT

WRAPPER = REPO_ROOT / "devtools" / "redis_stack.py"


def test_search_and_json_modules_loaded(redis_client: redis.Redis[str]) -> None:
    modules = {m["name"] for m in redis_client.module_list()}
    assert {"search", "ReJSON"} <= modules


def test_json_document_is_searchable(redis_client: redis.Redis[str]) -> None:
    redis_client.execute_command(
        "FT.CREATE", "idx:probe", "ON", "JSON", "PREFIX", "1", "probe:",
        "SCHEMA", "$.name", "AS", "name", "TAG",
    )  # fmt: skip
    redis_client.execute_command("JSON.SET", "probe:1", "$", '{"name": "alice"}')
    assert redis_client.json().get("probe:1", "$.name") == ["alice"]
    result = redis_client.ft("idx:probe").search(Query("@name:{alice}"))
    assert result.total == 1
    assert [doc.id for doc in result.docs] == ["probe:1"]


def test_redis_om_url_points_at_the_server(redis_url: str) -> None:
    assert os.environ["REDIS_OM_URL"] == redis_url
    assert redis.Redis.from_url(redis_url).ping()


def test_wrapper_starts_server_and_propagates_exit_code() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_OM_URL"}
    code = (
        "import os, sys, redis; url = os.environ['REDIS_OM_URL'];"
        "r = redis.Redis.from_url(url, decode_responses=True);"
        "print(url, r.ping(), sorted(m['name'] for m in r.module_list()));"
        "sys.exit(3)"
    )
    proc = subprocess.run(
        [sys.executable, str(WRAPPER), sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    url, pong, modules = proc.stdout.split(" ", 2)
    assert url.startswith("redis://127.0.0.1:")
    assert url != os.environ["REDIS_OM_URL"]
    assert pong == "True"
    assert modules.strip() == "['ReJSON', 'search']"
    assert not redis_is_listening(url)


def test_wrapper_reuses_existing_url(redis_url: str) -> None:
    proc = subprocess.run(
        [
            sys.executable, str(WRAPPER), sys.executable, "-c",
            "import os, sys; print(os.environ['REDIS_OM_URL']); sys.exit(5)",
        ],
        env={**os.environ, "REDIS_OM_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout.strip() == redis_url


def redis_is_listening(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.ConnectionError:
        return False
