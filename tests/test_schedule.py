"""Scheduled rotation: ``keys rotate TARGET --max-age``, ``status --max-age``, key ages in
``keys list``; on the key store with AWS KMS (moto_server) and the real Redis."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from keystore_models import Vault
from support import raw, wipe

from devtools.kms_server import KmsServer
from redis_encrypted_fields import ConfigurationError, set_keyring
from redis_encrypted_fields.crypto.envelope import parse
from redis_encrypted_fields.keys.schedule import (
    create_if_due,
    format_age,
    parse_duration,
    rotation_done,
)
from redis_encrypted_fields.keys.store import STORE_KEY, KeyStore

TESTS = Path(__file__).parent
DAY = datetime.timedelta(days=1)


def cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redis_encrypted_fields", *args],
        cwd=TESTS,
        env=dict(os.environ if env is None else env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def store_env(
    kms_server: KmsServer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An empty key store wrapped by a new AWS KMS key (moto), and no Vault records."""
    url = urlunsplit(urlsplit(redis_url)._replace(path="/1"))
    client = redis.Redis.from_url(url)
    names = [STORE_KEY, f"{STORE_KEY}:rotation-lock", f"{STORE_KEY}:rotation-pending"]
    client.delete(*names)
    for name, value in kms_server.env.items():
        monkeypatch.setenv(name, value)
    alias = f"alias/sched-{uuid.uuid4().hex[:10]}"
    kms_server.create_key(alias)
    monkeypatch.setenv("REDIS_SRE_KMS_KEY_ID", alias)
    monkeypatch.setenv("REDIS_SRE_KEYSTORE_URL", url)
    monkeypatch.setenv("REDIS_SRE_KEY_CACHE_TTL", "1")
    set_keyring(None)
    wipe(Vault)
    yield url
    wipe(Vault)
    set_keyring(None)
    client.delete(*names)
    client.close()


def key_ids(pks: list[str]) -> set[str]:
    return {parse(raw(Vault, pk)["secret"]).key_id.hex() for pk in pks}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("12h", 43200), ("90d", 90 * 86400), ("2w", 14 * 86400), (" 5M ", 300)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "90", "d", "0d", "-1d", "1.5d", "90 days", "1y", "1d2h"])
def test_bad_durations_are_refused_clearly(text: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a duration: give a whole number"):
        parse_duration(text)


def test_ages_show_their_largest_unit() -> None:
    assert format_age(datetime.timedelta(days=91, hours=3)) == "91d"
    assert format_age(datetime.timedelta(hours=5, minutes=2)) == "5h"
    assert format_age(datetime.timedelta(seconds=12)) == "12s"


def test_keys_rotate_makes_a_key_only_when_due_and_rotates_values(store_env: str) -> None:
    pks = []
    first = cli("keys", "rotate", "keystore_models:Vault", "--max-age", "90d")
    assert first.returncode == 0, first.stderr  # no key at all: one is due
    (old,) = (r.key_id for r in KeyStore.from_env().records())
    for n in range(3):
        vault = Vault(name="sched", secret=f"s{n}")
        vault.save()
        pks.append(vault.pk)
    assert key_ids(pks) == {old}

    # The first run began within the new key's cache lifetime: a process may have written under
    # an older key behind its scan, so the next run re-wraps again (without a new key).
    assert "the next run re-wraps again" in first.stderr
    time.sleep(1.1)
    again = cli("keys", "rotate", "keystore_models:Vault", "--max-age", "90d")
    assert again.returncode == 0, again.stderr
    assert f"re-wrapping under {old}" in again.stderr
    done = cli("keys", "rotate", "keystore_models:Vault", "--max-age", "90d")
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stderr
    assert len(KeyStore.from_env().records()) == 1

    due = cli("keys", "rotate", "keystore_models:Vault", "--max-age", "1s")
    assert due.returncode == 0, due.stderr
    records = KeyStore.from_env().records()
    assert [r.state.value for r in records] == ["decrypt-only", "active"]
    assert key_ids(pks) == {records[1].key_id}
    assert f"created {records[1].key_id}" in due.stderr


def test_bad_max_age_is_exit_2_and_makes_nothing(store_env: str) -> None:
    bad = cli("keys", "rotate", "keystore_models:Vault", "--max-age", "90 days")
    assert bad.returncode == 2
    assert "error: '90 days' is not a duration" in bad.stderr
    assert KeyStore.from_env().records() == []


def test_runs_at_once_make_one_key(store_env: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda _: create_if_due(KeyStore.from_env(), DAY), range(4)))
    records = KeyStore.from_env().records()
    assert len(records) == 1
    assert sum(d.created for d in done) == 1
    assert {d.active.key_id for d in done} == {records[0].key_id}


def test_a_rotation_cut_short_is_finished_by_the_next_run(store_env: str) -> None:
    store = KeyStore.from_env()
    made = create_if_due(store, DAY)
    assert (made.created, made.rotate) == (True, True)
    # The run died before re-wrapping: the next one, though no key is due, re-wraps.
    assert create_if_due(store, DAY).rotate
    # A run that began within the new key's cache lifetime leaves it pending.
    assert not rotation_done(store, made.active, store.now(), ttl=300)
    assert create_if_due(store, DAY).rotate
    assert rotation_done(store, made.active, store.now(), ttl=0.001)
    later = create_if_due(store, DAY)
    assert (later.created, later.rotate) == (False, False)


def test_status_max_age_warns_and_exits_1_when_past_due(store_env: str) -> None:
    KeyStore.from_env().create()
    Vault(name="sched", secret="s").save()
    fresh = cli("status", "keystore_models:Vault", "--max-age", "90d")
    assert fresh.returncode == 0, fresh.stderr
    time.sleep(1.1)
    late = cli("status", "keystore_models:Vault", "--max-age", "1s")
    assert late.returncode == 1
    assert "past --max-age 1s" in late.stderr
    assert "keys rotate keystore_models:Vault --max-age 1s" in late.stderr


def test_keys_list_shows_provider_and_age(store_env: str) -> None:
    KeyStore.from_env().create()
    (entry,) = json.loads(cli("keys", "list", "--json").stdout)
    assert entry["provider"] == "aws"
    assert entry["age"].endswith("s")
    assert 0 <= entry["age_seconds"] < 120
    header, row = cli("keys", "list").stdout.splitlines()
    assert header.split()[:7] == ["key", "id", "state", "created", "at", "age", "provider"]
    assert row.split()[3].endswith("s")
    assert row.split()[4] == "aws"
