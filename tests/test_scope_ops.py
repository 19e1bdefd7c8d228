"""Maintenance of scoped models: migrate, status and rotate (master key, one scope), in the four
flavours."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aredis_om
import pytest
from scope_models import LEDGER_MODELS, SyncHashLedger
from support import aw, client, new_key, raw, wipe, write_raw

from redis_encrypted_fields import (
    ShreddedKeyError,
    ops,
    rotate_scope,
    set_keyring,
    shred_scope,
)
from redis_encrypted_fields.crypto import binding, decode, seal_value
from redis_encrypted_fields.keys import get_keyring
from redis_encrypted_fields.keys.scope import scope_keys, scope_redis_key


@pytest.fixture(params=LEDGER_MODELS, ids=lambda m: m.__name__)
def model(request: pytest.FixtureRequest) -> Any:
    wipe(request.param)
    return request.param


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def is_async(model: Any) -> bool:
    return issubclass(model, aredis_om.RedisModel)


async def run(name: str, model: Any, **kwargs: Any) -> ops.Report:
    if is_async(model):
        report: ops.Report = await getattr(ops, f"a{name}")(model, **kwargs)
        return report
    report = getattr(ops, name)(model, **kwargs)
    return report


async def saved(model: Any, tenant_id: str, password: str = "pw-secret") -> Any:  # noqa: S107
    record = model(tenant_id=tenant_id, password=password, email=f"{password}@example.com")
    await aw(record.save())
    return record


def active(value: str) -> str:
    return client().hget(scope_redis_key("tenant", value), "active")  # type: ignore[return-value]


async def test_migrate_moves_values_sealed_before_the_scope_under_it(model: Any) -> None:
    acme = tenant()
    record = await saved(model, acme)
    key = model.make_primary_key(record.pk)
    # As a model without a KeyScope wrote it: a v2 envelope under the master key, and plaintext.
    write_raw(
        model,
        record.pk,
        "password",
        seal_value("old-secret", get_keyring(), binding(key, "password")),
    )
    assert (await aw(model.get(record.pk))).password.get_secret_value() == "old-secret"
    before = await run("status", model)
    assert "not under their scope's key" in before.summary()
    report = await run("migrate", model)
    assert report.ok, report.summary()
    assert report.upgraded == 1
    blob = decode(raw(model, record.pk)["password"])
    assert blob[0] == 0x82
    assert blob[1:9].hex() == active(acme)
    assert (await aw(model.get(record.pk))).password.get_secret_value() == "old-secret"
    again = await run("migrate", model)  # resumable: nothing left to do
    assert again.changed == 0
    assert again.ok


async def test_status_is_ok_for_scoped_values(model: Any) -> None:
    await saved(model, tenant())
    await saved(model, tenant())
    report = await run("status", model)
    assert report.ok, report.summary()
    assert report.states[f"{model.__name__}.password"]["scope-key"] == 2


async def test_shredded_values_are_counted_left_and_reported(model: Any) -> None:
    acme, globex = tenant(), tenant()
    gone = await saved(model, acme)
    await saved(model, globex)
    result = shred_scope("tenant", acme, models=[model])
    assert result.remaining == 1
    status = await run("status", model)
    assert not status.ok
    shredded = [g for g in status.groups() if g.state == "shredded"]
    # Per field: each value, and the companion that indexed it.
    name = model.__name__
    assert {(g.field, g.count) for g in shredded} == {
        (f"{name}.password", 1),
        (f"{name}.email", 1),
        (f"{name}.email (blind index)", 1),
    }
    assert "shredded" in status.summary()
    stored = raw(model, gone.pk)["password"]
    for name in ("migrate", "rotate"):
        report = await run(name, model)
        assert any(f.state == "shredded" and f.field == "password" for f in report.failures)
        assert raw(model, gone.pk)["password"] == stored  # left as it is


async def test_master_rotation_rewraps_scope_keys_and_leaves_values(
    model: Any, monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    acme = tenant()
    record = await saved(model, acme)
    envelope = raw(model, record.pk)["password"]
    new = new_key()
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new)
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
    set_keyring(None)
    report = await run("rotate", model)
    # Other tests' scope keys in this database may be under keys this ring lacks: reported.
    assert [f for f in report.failures if f.field != "scope key"] == []
    assert scope_redis_key("tenant", acme) not in {f.key for f in report.failures}
    assert report.scope_keys_rewrapped >= 1
    assert report.rewrapped == 0
    assert "scope key" in report.summary()
    assert raw(model, record.pk)["password"] == envelope  # byte for byte
    # The old master key can go: the scope key is wrapped by the new one.
    monkeypatch.delenv("REDIS_SRE_PREVIOUS_MASTER_KEYS")
    set_keyring(None)
    scope_keys.clear()
    assert (await aw(model.get(record.pk))).password.get_secret_value() == "pw-secret"


async def test_rotate_scope_gives_one_tenant_a_new_key(model: Any) -> None:
    acme, globex = tenant(), tenant()
    mine = await saved(model, acme)
    theirs = await saved(model, globex)
    old, other = active(acme), raw(model, theirs.pk)["password"]
    report = rotate_scope("tenant", acme, models=[model])
    assert report.ok, report.summary()
    assert report.rewrapped == 2  # password and email: acme's values only
    assert report.indexed == 1  # the companion, under the new key
    assert active(acme) != old
    assert decode(raw(model, mine.pk)["password"])[1:9].hex() == active(acme)
    assert raw(model, theirs.pk)["password"] == other
    # The old key is gone once nothing is under it.
    assert f"k:{old}" not in client().hgetall(scope_redis_key("tenant", acme))
    scope_keys.clear()
    back = await aw(model.get(mine.pk))
    assert back.password.get_secret_value() == "pw-secret"
    found = await aw(
        model.find((model.tenant_id == acme) & (model.email == "pw-secret@example.com")).all()
    )
    assert [r.pk for r in found] == [mine.pk]


async def test_a_shredded_tenant_reads_fail_but_others_work(model: Any) -> None:
    acme, globex = tenant(), tenant()
    gone = await saved(model, acme)
    kept = await saved(model, globex, "kept-secret")
    shred_scope("tenant", acme, models=[model])
    with pytest.raises(ShreddedKeyError):
        await aw(model.get(gone.pk))
    assert (await aw(model.get(kept.pk))).password.get_secret_value() == "kept-secret"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redis_encrypted_fields", *args],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def test_cli_keys_shred_asks_for_yes_without_a_terminal_and_counts_records(
    redis_url: str,
) -> None:
    wipe(SyncHashLedger)
    acme = tenant()
    record = SyncHashLedger(tenant_id=acme, password="cli-secret")
    record.save()
    refused = cli("keys", "shred", "tenant", acme, "scope_models", "--url", redis_url)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert active(acme)  # nothing destroyed
    done = cli("keys", "shred", "tenant", acme, "scope_models", "--url", redis_url, "--yes")
    assert done.returncode == 0, done.stderr
    assert "SyncHashLedger: 1 record still holding values" in done.stdout
    assert "cli-secret" not in done.stdout + done.stderr
    scope_keys.clear()
    with pytest.raises(ShreddedKeyError):
        SyncHashLedger.get(record.pk)


def test_cli_rotate_scope(redis_url: str) -> None:
    wipe(SyncHashLedger)
    acme = tenant()
    record = SyncHashLedger(tenant_id=acme, password="cli-secret")
    record.save()
    old = active(acme)
    proc = cli(
        "rotate", "scope_models:SyncHashLedger", "--scope", f"tenant:{acme}", "--url", redis_url
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert active(acme) != old
    assert decode(raw(SyncHashLedger, record.pk)["password"])[1:9].hex() == active(acme)
    bad = cli("rotate", "scope_models", "--scope", "tenant", "--url", redis_url)
    assert bad.returncode == 2
