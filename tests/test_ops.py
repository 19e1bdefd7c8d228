"""migrate / rotate / status, from Python and the command line, against the real server."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ops_models import Account, AsyncAccount, Bulk, Tenant, Unbound
from support import client, dump_redis, new_key, origin_encrypt_v1, raw, wipe

from redis_encrypted_fields import EncryptionError, ops
from redis_encrypted_fields.crypto.envelope import PREFIX, parse
from redis_encrypted_fields.keys.ring import MasterKey
from redis_encrypted_fields.ops import batch

TESTS = Path(__file__).parent


@pytest.fixture(scope="module", autouse=True)
def _drop_bulk_records() -> Any:
    """The large runs leave tens of thousands of records; later tests scan the whole database."""
    yield
    wipe(Bulk)


def plant_accounts(n: int, model: Any = Account, **extra: str) -> dict[str, str]:
    """Plaintext records, as the origin stored them before encryption; returns pk -> password."""
    wipe(model)
    c = client()
    pipe = c.pipeline(transaction=False)
    passwords = {}
    for i in range(n):
        pk = f"acc{i:06d}"
        passwords[pk] = f"password-{i}-{random.random()}"
        fields = {"pk": pk, "name": f"account {i}", "password": passwords[pk], **extra}
        pipe.hset(model.make_primary_key(pk), mapping=fields)
    pipe.execute()
    return passwords


def use_keys(monkeypatch: pytest.MonkeyPatch, current: str, *previous: str) -> None:
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", current)
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", ",".join(previous))


def model_dump_of(model: Any) -> dict[str, Any]:
    prefix = model.make_key("")
    return {k: v for k, v in dump_redis().items() if k.startswith(prefix)}


# Migration


def test_migrate_encrypts_plaintext_upgrades_v1_and_is_idempotent(master_key: str) -> None:
    passwords = plant_accounts(40)
    c = client()
    for i, pk in enumerate(list(passwords)[:10]):
        c.hset(Account.make_primary_key(pk), "api_token", origin_encrypt_v1(f"tok-{i}", master_key))
    report = ops.migrate(Account, batch_size=7)
    assert (report.records, report.encrypted, report.upgraded, report.failures) == (40, 40, 10, [])
    assert report.ok
    for pk, password in passwords.items():
        stored = raw(Account, pk)
        assert stored["password"].startswith(PREFIX)
        assert Account.get(pk).password == password
    assert Account.get("acc000003").api_token == "tok-3"
    assert raw(Account, "acc000003")["api_token"].startswith(PREFIX)

    before = model_dump_of(Account)
    again = ops.migrate(Account)
    assert (again.changed, again.unchanged) == (0, 50)
    assert model_dump_of(Account) == before


def test_migrate_binds_embedded_and_list_values_to_their_paths() -> None:
    wipe(Tenant)
    c = client()
    doc = {
        "pk": "t1",
        "name": "tenant",
        "admin": {"user": "root", "password": "root-pw"},
        "replicas": [{"user": "a", "password": "a-pw"}, {"user": "b", "password": "b-pw"}],
    }
    c.json().set(Tenant.make_primary_key("t1"), "$", doc)
    report = ops.migrate(Tenant, client=c)  # c decodes JSON replies itself (c.json() was used)
    assert (report.encrypted, report.ok) == (3, True)
    stored = raw(Tenant, "t1")
    assert stored["admin"]["password"].startswith(PREFIX)
    assert stored["admin"]["user"] == "root"
    got = Tenant.get("t1")
    assert (got.admin.password, [r.password for r in got.replicas]) == ("root-pw", ["a-pw", "b-pw"])


def test_dry_run_writes_nothing_and_reports_what_would_change() -> None:
    plant_accounts(12)
    before = model_dump_of(Account)
    report = ops.migrate(Account, dry_run=True)
    assert (report.dry_run, report.encrypted, report.records) == (True, 12, 12)
    assert model_dump_of(Account) == before


def test_records_are_found_with_scan_never_keys() -> None:
    plant_accounts(30)
    c = client()
    before = c.info("commandstats")
    ops.migrate(Account, batch_size=10)
    after = c.info("commandstats")
    assert after.get("cmdstat_keys", {}).get("calls", 0) == before.get("cmdstat_keys", {}).get(
        "calls", 0
    )
    assert after["cmdstat_scan"]["calls"] > before.get("cmdstat_scan", {}).get("calls", 0)
    # One compare-and-set script call per batch (at most 10 records; SCAN pages vary), not one
    # per record.
    evalsha = after["cmdstat_evalsha"]["calls"] - before.get("cmdstat_evalsha", {}).get("calls", 0)
    assert 3 <= evalsha <= 10


# Rotation


def test_rotate_rewraps_only_the_data_key(monkeypatch: pytest.MonkeyPatch, master_key: str) -> None:
    passwords = plant_accounts(25, api_token="token")
    ops.migrate(Account)
    old_envelopes = {pk: parse(raw(Account, pk)["password"]) for pk in passwords}
    new = new_key()
    use_keys(monkeypatch, new, master_key)
    report = ops.rotate(Account, batch_size=10)
    assert (report.rewrapped, report.failures, report.ok) == (50, [], True)
    new_id = MasterKey.from_base64(new).key_id
    for pk, old in old_envelopes.items():
        env = parse(raw(Account, pk)["password"])
        assert env.key_id == new_id
        assert (env.nonce, env.ciphertext) == (old.nonce, old.ciphertext)
        assert env.wrapped_dek != old.wrapped_dek
    use_keys(monkeypatch, new)  # the old key is dropped: everything still reads
    assert all(Account.get(pk).password == pw for pk, pw in passwords.items())
    state = ops.status(Account)
    assert state.states["Account.password"] == {f"key:{new_id.hex()}": 25}
    assert state.ok


def test_rotate_without_the_old_key_changes_nothing_and_reports_each_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plant_accounts(5)
    ops.migrate(Account)
    before = model_dump_of(Account)
    use_keys(monkeypatch, new_key())
    report = ops.rotate(Account)
    assert not report.ok
    assert sorted((f.key, f.field) for f in report.failures) == sorted(
        (Account.make_primary_key(f"acc{i:06d}"), "password") for i in range(5)
    )
    assert all("Decryption failed" in f.reason for f in report.failures)
    assert model_dump_of(Account) == before


def test_corrupt_and_masked_values_are_left_untouched_and_reported() -> None:
    plant_accounts(4)
    ops.migrate(Account)
    c = client()
    corrupt = raw(Account, "acc000001")["password"][:-6]
    c.hset(Account.make_primary_key("acc000001"), "password", corrupt)
    c.hset(Account.make_primary_key("acc000002"), "password", "**********")
    before = model_dump_of(Account)
    for run in (ops.migrate, ops.rotate, ops.status):
        report = run(Account)
        assert not report.ok
        assert {(f.key.rsplit(":", 1)[1], f.field) for f in report.failures} == {
            ("acc000001", "password"),
            ("acc000002", "password"),
        }
    assert model_dump_of(Account) == before
    state = ops.status(Account)
    assert (
        state.states["Account.password"]["undecryptable"],
        state.states["Account.password"]["masked"],
    ) == (1, 1)


def test_unbound_models_rotate_too(monkeypatch: pytest.MonkeyPatch, master_key: str) -> None:
    wipe(Unbound)
    for i in range(3):
        Unbound(pk=f"u{i}", name="n", secret=f"s{i}").save()
    use_keys(monkeypatch, new_key(), master_key)
    assert ops.rotate(Unbound).rewrapped == 3
    monkeypatch.delenv("REDIS_SRE_PREVIOUS_MASTER_KEYS")
    assert [Unbound.get(f"u{i}").secret for i in range(3)] == ["s0", "s1", "s2"]


def test_status_counts_each_state(master_key: str) -> None:
    plant_accounts(6)
    c = client()
    c.hset(Account.make_primary_key("acc000000"), "api_token", origin_encrypt_v1("t", master_key))
    ops.migrate(Account, batch_size=2)
    c.hset(Account.make_primary_key("acc000001"), "password", "plain-again")
    c.hset(Account.make_primary_key("acc000002"), "api_token", origin_encrypt_v1("t", master_key))
    report = ops.status(Account)
    key = f"key:{MasterKey.from_base64(master_key).key_id.hex()}"
    assert report.states["Account.password"] == {key: 5, "plaintext": 1}
    assert report.states["Account.api_token"] == {key: 1, "origin-v1": 1, "empty": 4}
    assert not report.ok
    assert "plain-again" not in report.summary()


async def test_async_api(monkeypatch: pytest.MonkeyPatch, master_key: str) -> None:
    passwords = plant_accounts(8, model=AsyncAccount)
    assert (await ops.amigrate(AsyncAccount)).encrypted == 8
    use_keys(monkeypatch, new_key(), master_key)
    assert (await ops.arotate(AsyncAccount)).rewrapped == 8
    assert (await ops.astatus(AsyncAccount)).ok
    assert (await AsyncAccount.get("acc000004")).password == passwords["acc000004"]


def test_design_note_flow_load_change_env_save(monkeypatch: pytest.MonkeyPatch) -> None:
    wipe(Account)
    Account(pk="dn1", name="n", password="design-note").save()
    loaded = [Account.get(pk) for pk in Account.all_pks()]
    new = new_key()
    os.environ["REDIS_SRE_MASTER_KEY"] = new  # what the design note's script does
    for instance in loaded:
        instance.save()
    assert parse(raw(Account, "dn1")["password"]).key_id == MasterKey.from_base64(new).key_id
    assert Account.get("dn1").password == "design-note"


# Concurrency and crashes


def test_a_value_changed_between_read_and_write_is_not_overwritten(
    monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    plant_accounts(10)
    ops.migrate(Account)
    use_keys(monkeypatch, new_key(), master_key)
    real = batch.write_request

    def racing(sha: Any, keys: Any, args: Any, *rest: Any) -> Any:
        send = real(sha, keys, args, *rest)

        def request(c: Any) -> Any:
            # The application saves a new password in the window between rotate's read and write.
            if any(k.endswith("acc000003") for k in keys):
                Account(pk="acc000003", name="x", password="changed-by-app").save()
            return send(c)

        return request

    monkeypatch.setattr(batch, "write_request", racing)
    report = ops.rotate(Account, batch_size=4)
    assert report.ok
    assert Account.get("acc000003").password == "changed-by-app"


def test_rotate_alongside_a_live_writer_loses_no_update(
    monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    n = 20_000
    passwords = plant_accounts(n, model=Bulk)
    ops.migrate(Bulk, batch_size=1000)
    use_keys(monkeypatch, new_key(), master_key)
    expected = dict(passwords)
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        rng = random.Random(7)
        while not stop.is_set():
            pk = f"acc{rng.randrange(n):06d}"
            value = f"app-write-{writes}"
            Bulk(pk=pk, name="w", password=value).save()
            expected[pk] = value
            writes += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        report = ops.rotate(Bulk, batch_size=200)
    finally:
        stop.set()
        thread.join()
    assert writes > 50
    assert report.ok, report.summary()
    assert report.records == n
    use_keys(monkeypatch, os.environ["REDIS_SRE_MASTER_KEY"])  # only the new key from now on
    for pk, value in expected.items():
        assert Bulk.get(pk).password == value


def cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "redis_encrypted_fields", *args],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def rotated(key: str, key_id: bytes) -> bool:
    value = client().hget(key, "password")
    return isinstance(value, str) and value.startswith(PREFIX) and parse(value).key_id == key_id


def wait_until(condition: Any, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the condition held"
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def test_sigkill_at_any_moment_then_rerun_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    n = 20_000
    passwords = plant_accounts(n, model=Bulk)
    ops.migrate(Bulk, batch_size=1000)
    new = new_key()
    use_keys(monkeypatch, new, master_key)
    new_id = MasterKey.from_base64(new).key_id
    new_state = f"key:{new_id.hex()}"
    # The first keys SCAN returns are the first ones rotate reaches (same order): the first kill
    # comes as soon as they carry the new key, mid-run on any machine; the others at set times.
    first = client().scan(0, match=f"{Bulk.make_key('')}*", count=1000)[1][:20]
    partial = []
    for delay in (None, 1.4, 2.0):
        proc = cli("rotate", "ops_models:Bulk", "--batch-size", "50")
        if delay is None:
            wait_until(lambda: any(rotated(key, new_id) for key in first), proc)
        else:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        partial.append(ops.status(Bulk).states["Bulk.password"][new_state])
    assert any(0 < done < n for done in partial), partial
    final = cli("rotate", "ops_models:Bulk")
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr
    use_keys(monkeypatch, new)
    state = ops.status(Bulk)
    assert state.states["Bulk.password"] == {new_state: n}
    for pk, password in passwords.items():
        assert Bulk.get(pk).password == password  # decrypts once to the original: never twice


# The command line


def test_cli_keygen_prints_a_key_as_last_line() -> None:
    proc = cli("keygen")
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    MasterKey.from_base64(stdout.strip().splitlines()[-1])


def test_cli_migrate_status_and_exit_codes(redis_url: str) -> None:
    passwords = plant_accounts(6)
    env = {**os.environ, "REDIS_OM_URL": "redis://127.0.0.1:1"}  # --url must win
    proc = cli("status", "ops_models", "--url", redis_url, env=env)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "Account.password" in stdout
    proc = cli("migrate", "ops_models:Account", "--dry-run", "--url", redis_url, env=env)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "would change 6 values" in stdout
    assert raw(Account, "acc000000")["password"] == passwords["acc000000"]
    proc = cli("migrate", "ops_models:Account", "--url", redis_url, env=env)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert stdout.strip().splitlines()[-1].startswith("migrate: 6 records; changed 6 values")
    for text in (stdout, stderr):
        assert not any(p in text for p in passwords.values())
    proc = cli("status", "ops_models:Account", "--url", redis_url, env=env)
    proc.communicate(timeout=120)
    assert proc.returncode == 0


def test_cli_reports_bad_targets_and_missing_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = cli("status", "no_such_module")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "cannot import" in stderr
    env = {k: v for k, v in os.environ.items() if k != "REDIS_SRE_MASTER_KEY"}
    proc = cli("status", "ops_models:Account", env=env)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "REDIS_SRE_MASTER_KEY environment variable not set" in stderr


def test_sync_functions_refuse_an_async_model_clearly() -> None:
    with pytest.raises(EncryptionError, match="use the a-prefixed function"):
        ops.status(AsyncAccount)


def test_status_emits_a_decrypt_event_per_value_checked() -> None:
    from redis_encrypted_fields import AuditEvent, add_audit_hook, remove_audit_hook

    plant_accounts(3)
    ops.migrate(Account)
    events: list[AuditEvent] = []
    hook = add_audit_hook(events.append)
    try:
        ops.status(Account)
    finally:
        remove_audit_hook(hook)
    assert (
        sorted((e.operation, e.outcome, e.field) for e in events)
        == [("decrypt", "ok", "password")] * 3
    )
