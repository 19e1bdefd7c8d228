"""Never mislead the operator or the application (issue 10): secrets stay with their item, every
report tells the whole truth, every failure is one clear line."""

from __future__ import annotations

import json
import logging
import os
from typing import Annotated, Any

import pytest
import redis_om
from ops_models import Account, Tenant
from security_support import cli
from support import CLUSTER_MODELS, aw, client, dump_redis, new_key, raw, wipe

from redis_encrypted_fields import (
    ConfigurationError,
    DecryptionError,
    EncryptedModel,
    EncryptedStr,
    KeyRing,
    MaskedSecretError,
    MasterKeyError,
    PlaintextSecretError,
    StoredMaskError,
    UrlMask,
    ops,
)
from redis_encrypted_fields.keys.ring import MasterKey

# --- masks in lists -------------------------------------------------------------------------------


@pytest.fixture(params=CLUSTER_MODELS, ids=lambda m: m.__name__)
def cluster_model(request: pytest.FixtureRequest) -> Any:
    return request.param


async def saved_cluster(model: Any) -> Any:
    c = model(
        name="lists",
        primary={"username": "admin", "password": "primary-pw"},
        replicas=[{"username": "r1", "password": "r1pw"}, {"username": "r2", "password": "r2pw"}],
        tokens=["k1", "k2"],
    )
    await aw(c.save())
    return c


async def stored_secrets(model: Any, pk: str) -> tuple[list[tuple[str, str]], list[str]]:
    got = await aw(model.get(pk))
    return [(r.username, str(r.password)) for r in got.replicas], [str(t) for t in got.tokens]


@pytest.mark.parametrize(
    ("edit", "index"),
    [
        ({"replicas": "drop 0"}, "replicas[0]"),  # the issue's case: r2 would get r1's password
        ({"tokens": "drop 0"}, "tokens[0]"),  # "k1" would stay where "k2" was
        ({"replicas": "reverse"}, "replicas[0]"),
        ({"replicas": "insert"}, "replicas[0]"),  # the first mask of a reshaped list
        ({"tokens": "replace 1"}, "tokens[0]"),  # replaced, or removed and another appended?
    ],
)
async def test_a_mask_in_a_changed_list_is_refused_and_nothing_is_stored(
    cluster_model: Any, edit: dict[str, str], index: str
) -> None:
    c = await saved_cluster(cluster_model)
    payload = json.loads(c.model_dump_json())
    for name, how in edit.items():
        items = payload[name]
        if how == "drop 0":
            del items[0]
        elif how == "reverse":
            items.reverse()
        elif how == "insert":
            items.insert(1, {"username": "r9", "password": "***"})
        else:
            items[1] = "k3"
    before = dump_redis()
    with pytest.raises(MaskedSecretError) as info:
        await aw(cluster_model(**payload).save())
    assert dump_redis() == before
    assert f"{cluster_model.__name__}.{index}" in str(info.value)
    assert info.value.field == index.replace("[", ".").rstrip("]")
    assert info.value.record == cluster_model.make_primary_key(c.pk)
    assert await stored_secrets(cluster_model, c.pk) == (
        [("r1", "r1pw"), ("r2", "r2pw")],
        ["k1", "k2"],
    )


async def test_masks_in_lists_keep_their_own_items_secrets(cluster_model: Any) -> None:
    c = await saved_cluster(cluster_model)
    payload = json.loads(c.model_dump_json())
    assert payload["replicas"][0]["password"] == "***"
    await aw(cluster_model(**payload).save())  # sent back unchanged: every secret kept
    assert await stored_secrets(cluster_model, c.pk) == (
        [("r1", "r1pw"), ("r2", "r2pw")],
        ["k1", "k2"],
    )
    # One replica's password changed: the other is still told apart by its username.
    payload["replicas"][1]["password"] = "r2-new"
    payload["replicas"].append({"username": "r3", "password": "r3pw"})
    with pytest.raises(MaskedSecretError, match="the stored one 2"):
        await aw(cluster_model(**payload).save())  # an item added beside masks: refused
    del payload["replicas"][2]
    await aw(cluster_model(**payload).save())
    assert (await stored_secrets(cluster_model, c.pk))[0] == [("r1", "r1pw"), ("r2", "r2-new")]
    # Every item in full: no mask to match, any shape goes.
    payload["replicas"] = [{"username": "r2", "password": "x"}]
    payload["tokens"] = ["k9"]
    await aw(cluster_model(**payload).save())
    assert await stored_secrets(cluster_model, c.pk) == ([("r2", "x")], ["k9"])


class Urls(EncryptedModel, redis_om.JsonModel, index=True):
    urls: list[Annotated[EncryptedStr, UrlMask()]] = []

    class Meta:
        model_key_prefix = "truth.urls"


def test_a_reordered_list_of_url_masks_is_refused() -> None:
    u = Urls(urls=["redis://a:pa@h1:1/0", "redis://b:pb@h2:2/0"])
    u.save()
    payload = json.loads(u.model_dump_json())
    with pytest.raises(MaskedSecretError, match=r"urls\[0\]"):
        Urls(**{**payload, "urls": payload["urls"][::-1]}).save()
    # One replaced in full, the other still shown: kept, as its rendering names its host.
    Urls(**{**payload, "urls": [payload["urls"][0], "redis://c:pc@h3:3/0"]}).save()
    assert Urls.get(u.pk).urls == ["redis://a:pa@h1:1/0", "redis://c:pc@h3:3/0"]


# --- a mask stored in Redis ---------------------------------------------------------------------


def test_a_mask_read_from_redis_warns_and_is_an_error_once_plaintext_is_refused(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    wipe(Account)
    a = Account(name="masked", password="real")
    a.save()
    key = Account.make_primary_key(a.pk)
    client().hset(key, "password", "**********")  # the origin's bug
    with caplog.at_level(logging.WARNING, logger="redis_encrypted_fields"):
        got = Account.get(a.pk)
    (record,) = [r for r in caplog.records if "holds a mask" in r.getMessage()]
    assert "Account.password" in record.getMessage()
    assert key in record.getMessage()
    assert got.password != "real"
    with pytest.raises(MaskedSecretError, match="no stored secret"):
        got.save()  # never stored again as if it were the secret
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "1")
    with pytest.raises(StoredMaskError) as info:
        Account.get(a.pk)
    assert isinstance(info.value, PlaintextSecretError)
    assert isinstance(info.value, MaskedSecretError)
    assert (info.value.record, info.value.field) == (key, "password")
    with pytest.raises(StoredMaskError):
        Account.find(Account.name == "masked").all()


def test_an_invalid_switch_value_is_an_error_not_off(monkeypatch: pytest.MonkeyPatch) -> None:
    wipe(Account)
    client().hset(
        Account.make_primary_key("p1"), mapping={"pk": "p1", "name": "n", "password": "x"}
    )
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "bogus")
    with pytest.raises(ConfigurationError, match="REDIS_SRE_REJECT_PLAINTEXT='bogus'"):
        Account.get("p1")
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "off")
    assert Account.get("p1").password == "x"


# --- errors name their value --------------------------------------------------------------------


def test_decryption_errors_carry_record_and_field(monkeypatch: pytest.MonkeyPatch) -> None:
    wipe(Account)
    a = Account(name="rec", password="pw", api_token="tok")
    a.save()
    key = Account.make_primary_key(a.pk)
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    for read in (lambda: Account.get(a.pk), lambda: Account.find(Account.name == "rec").all()):
        with pytest.raises(DecryptionError) as info:
            read()
        assert (info.value.model, info.value.record, info.value.field) == (
            "Account",
            key,
            "password",
        )
        assert f"Account.password of {key}" in str(info.value)


def test_an_envelope_given_without_its_pk_is_explained() -> None:
    with pytest.raises(DecryptionError) as info:
        Account(name="n", password="REFv2:hello")
    message = str(info.value)
    assert "has no primary key" not in message
    assert "without the primary key" in message
    assert info.value.field == "password"


def test_key_errors_name_the_variable_and_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    good = new_key()
    with pytest.raises(MasterKeyError) as info:
        KeyRing.from_env(
            {"REDIS_SRE_MASTER_KEY": good, "REDIS_SRE_PREVIOUS_MASTER_KEYS": f"{good},bad"}
        )
    message = str(info.value)
    assert "entry 2" in message
    assert "REDIS_SRE_PREVIOUS_MASTER_KEYS" in message
    assert "keygen" not in message  # a new key cannot stand in for an old one
    with pytest.raises(MasterKeyError) as info:
        KeyRing.from_base64("bad")
    assert "REDIS_SRE_MASTER_KEY" not in str(info.value)
    assert "KeyRing.from_base64" in str(info.value)
    with pytest.raises(MasterKeyError, match="decodes to 3 bytes"):
        MasterKey.from_base64("QUJD")


def test_a_changed_masked_url_says_where_it_differs_without_credentials() -> None:
    stored = "redis://alice:Secret-Pa55@db.internal:6379/0"
    with pytest.raises(MaskedSecretError) as info:
        UrlMask().is_mask_of("redis://***:pw2@db.internal:6379/0", stored)
    message = str(info.value)
    assert "its credentials" in message
    assert "pw2" not in message
    assert "Secret-Pa55" not in message
    assert "alice" not in message
    with pytest.raises(MaskedSecretError, match="its host \\('other' where the stored URL"):
        UrlMask().is_mask_of("redis://***:***@other:6379/0", stored)


# --- the reports ------------------------------------------------------------------------------


def plant(n: int) -> None:
    wipe(Account)
    c = client()
    for i in range(n):
        key = Account.make_primary_key(f"t{i:03d}")
        c.hset(key, mapping={"pk": f"t{i:03d}", "name": "n", "password": f"pw{i}"})


def keys_env(current: str, *previous: str) -> dict[str, str]:
    env = {**os.environ, "REDIS_SRE_MASTER_KEY": current}
    env["REDIS_SRE_PREVIOUS_MASTER_KEYS"] = ",".join(previous)
    return env


def test_status_fails_while_values_are_under_a_previous_key(master_key: str) -> None:
    plant(6)
    ops.migrate(Account)
    old_id, new = MasterKey.from_base64(master_key).key_id_hex, new_key()
    new_id = MasterKey.from_base64(new).key_id_hex
    env = keys_env(new, master_key)
    proc = cli("status", "ops_models:Account", env=env)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"Account.password: 6 under key {old_id} (previous)" in lines
    assert "NOT OK" in lines[-1]
    assert "6 values not under the current key" in lines[-1]
    report = json.loads(cli("status", "ops_models:Account", "--json", env=env).stdout)
    assert report["ok"] is False
    assert report["keys"] == [{"key_id": old_id, "role": "previous", "values": 6}]
    assert cli("rotate", "ops_models:Account", env=env).returncode == 0
    proc = cli("status", "ops_models:Account", env=env)
    assert proc.returncode == 0, proc.stdout
    assert f"Account.password: 6 under key {new_id} (current)" in proc.stdout.splitlines()


def test_rotate_reports_what_is_stored_after_the_run(
    master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21, item 3: after a rotation the summary shows what is stored now (every value
    under the current key), and, apart, what the run changed; not the state it found."""
    plant(6)
    ops.migrate(Account)
    old_id, new = MasterKey.from_base64(master_key).key_id_hex, new_key()
    new_id = MasterKey.from_base64(new).key_id_hex
    env = keys_env(new, master_key)
    proc = cli("rotate", "ops_models:Account", env=env)
    assert proc.returncode == 0, proc.stderr
    *lines, summary = proc.stdout.splitlines()
    assert f"keys in use now: {new_id} (current): 6 values" in lines
    assert old_id not in proc.stdout  # the key the values were under before the run
    assert "changed 6 values (0 encrypted, 0 upgraded from origin v1, 6 re-wrapped)" in summary
    assert f"stored now: 6 under key {new_id} (current), 6 empty; OK" in summary
    # A dry run changes nothing: what is stored is what it found.
    proc = cli("rotate", "ops_models:Account", "--dry-run", env=keys_env(new_key(), new))
    assert f"keys in use: {new_id} (previous): 6 values" in proc.stdout.splitlines()
    assert f"stored now: 6 under key {new_id} (previous), 6 empty" in proc.stdout

    # The Python API: what the run found (states) and what is stored now (stored), apart.
    newer = new_key()
    newer_id = MasterKey.from_base64(newer).key_id_hex
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", newer)
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", new)
    report = ops.rotate(Account)
    assert report.ok, report.summary()
    assert report.states["Account.password"] == {f"key:{new_id}": 6}
    assert report.stored["Account.password"] == {f"key:{newer_id}": 6}
    assert report.keys_in_use() == [(newer_id, "current", 6)]
    assert report.as_dict()["keys"] == [{"key_id": newer_id, "role": "current", "values": 6}]
    assert f"stored now: 6 under key {newer_id} (current)" in report.summary()
    assert report.keys_in_use() == ops.status(Account).keys_in_use()


def test_status_groups_by_key_and_field_and_is_not_cut_when_piped(master_key: str) -> None:
    plant(30)
    ops.migrate(Account)
    c = client()
    other = new_key()
    set_keys = KeyRing.from_base64(other)
    from redis_encrypted_fields import set_keyring

    set_keyring(set_keys)
    try:
        for i in range(5):
            Account(pk=f"t{i:03d}", name="n", password="under-other").save()
    finally:
        set_keyring(None)
    c.hset(Account.make_primary_key("t010"), "password", "plain-again")
    proc = cli("status", "ops_models:Account")
    assert proc.returncode == 1
    other_id = MasterKey.from_base64(other).key_id_hex
    lines = proc.stdout.splitlines()
    (line,) = [x for x in lines if other_id in x and x.startswith("Account.password")]
    # One line for the five values: counts, not a line per value; nothing cut at 80 columns.
    assert line.startswith(f"Account.password: 5 undecryptable under key {other_id} (unknown)")
    assert "no configured master key has id" in line
    assert "Account.password: 1 plaintext" in lines
    assert len(line) > 80


def test_migrate_and_rotate_report_what_they_cannot_decrypt(master_key: str) -> None:
    plant(8)
    ops.migrate(Account)
    unknown = new_key()
    from redis_encrypted_fields import set_keyring

    set_keyring(KeyRing.from_base64(unknown))
    try:
        for i in range(3):
            Account(pk=f"t{i:03d}", name="n", password="under-unknown").save()
    finally:
        set_keyring(None)
    for command in ("migrate", "rotate"):
        proc = cli(command, "ops_models:Account")
        assert proc.returncode == 1, proc.stdout
        failed = [x for x in proc.stderr.splitlines() if x.startswith("failed:")]
        uid = MasterKey.from_base64(unknown).key_id_hex
        assert len(failed) == 1
        assert f"Account.password: 3 undecryptable under key {uid} (unknown)" in failed[0]
        assert "NOT OK" in proc.stdout.splitlines()[-1]
    report = ops.migrate(Account)
    assert not report.ok
    assert len(report.failures) == 3
    assert {f.key_id for f in report.failures} == {MasterKey.from_base64(unknown).key_id_hex}


def test_a_dry_run_with_pending_changes_exits_zero_and_counts_them() -> None:
    plant(4)
    proc = cli("migrate", "ops_models:Account", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would change 4 values" in proc.stdout
    assert raw(Account, "t000")["password"] == "pw0"


def test_a_run_over_no_records_names_where_it_looked(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/3" if redis_url.count("/") > 2 else redis_url + "/3"
    proc = cli("status", "ops_models:Account", "--url", url)
    assert proc.returncode == 0
    assert "no records of Account" in proc.stderr
    assert "/3" in proc.stderr
    assert "ops.account:*" in proc.stderr
    assert "OK" not in proc.stdout.splitlines()[-1].split(";")[-1]


# --- the command line ---------------------------------------------------------------------------


def test_errors_are_one_line_with_exit_status_two() -> None:
    proc = cli("status", "ops_models:Account", "--url", "redis://127.0.0.1:1/0")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: cannot reach Redis")
    assert "Traceback" not in proc.stderr
    proc = cli("--debug", "status", "ops_models:Account", "--url", "redis://127.0.0.1:1/0")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    env = {**os.environ, "REDIS_SRE_PREVIOUS_MASTER_KEYS": f"{new_key()},,not-a-key"}
    proc = cli("status", "ops_models:Account", env=env)
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert "entry 3" in line
    assert "REDIS_SRE_PREVIOUS_MASTER_KEYS" in line


def test_version_and_help() -> None:
    from redis_encrypted_fields import __version__

    proc = cli("--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"redis-encrypted-fields {__version__}")
    text = " ".join(cli("--help").stdout.split())
    for needle in (
        "Exit status: 0",
        "1 when",
        "2 when",
        "REDIS_SRE_MASTER_KEY",
        "REDIS_SRE_PREVIOUS_MASTER_KEYS",
        "REDIS_OM_URL",
        "REDIS_SRE_REJECT_PLAINTEXT",
    ):
        assert needle in text


def test_tenant_failures_name_list_items(master_key: str) -> None:
    wipe(Tenant)
    doc = {
        "pk": "t1",
        "name": "tenant",
        "admin": {"user": "root", "password": "**********"},
        "replicas": [{"user": "a", "password": "a-pw"}],
    }
    client().json().set(Tenant.make_primary_key("t1"), "$", doc)
    report = ops.migrate(Tenant)
    assert not report.ok
    (group,) = [g for g in report.groups() if g.failed]
    assert (group.field, group.state, group.count) == ("Tenant.admin.password", "masked", 1)
