"""Messages that point at the cause (issue 21, item 6): each says what is wrong where the user
looks, against the real Redis."""

from __future__ import annotations

import os

import pytest
from ops_models import Account
from security_support import cli
from support import client, raw, wipe

from redis_encrypted_fields import (
    ConfigurationError,
    MaskedSecretError,
    MasterKeyError,
    set_keyring,
)
from redis_encrypted_fields.crypto.envelope import PREFIX


def test_a_target_naming_no_attribute_says_so_and_a_non_model_says_it_is_not_a_model() -> None:
    missing = cli("status", "ops_models:Acount")
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        == "error: ops_models has no attribute 'Acount' (in ops_models:Acount)"
    )
    other = cli("status", "ops_models:__name__")
    assert other.returncode == 2
    assert "ops_models:__name__ is not a redis-om model" in other.stderr


def test_an_empty_kms_key_id_is_named_not_a_missing_master_key(
    monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    wipe(Account)
    monkeypatch.setenv("REDIS_SRE_KMS_KEY_ID", "")
    monkeypatch.delenv("REDIS_SRE_MASTER_KEY")
    set_keyring(None)
    with pytest.raises(MasterKeyError, match="REDIS_SRE_KMS_KEY_ID is set but empty") as info:
        Account(name="empty-kms", password="pw").save()
    assert "REDIS_SRE_MASTER_KEY" in str(info.value)  # the other way out, named too
    status = cli("status", "ops_models:Account")
    assert status.returncode == 2
    assert "REDIS_SRE_KMS_KEY_ID is set but empty" in status.stderr
    # An empty id beside an environment key is the environment key's set-up, as before.
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", master_key)
    monkeypatch.setenv("REDIS_SRE_KMS_KEY_ID", " ")
    set_keyring(None)
    account = Account(name="env-key", password="pw")
    account.save()
    assert Account.get(account.pk).password == "pw"


def test_a_malformed_reject_plaintext_switch_is_refused_at_the_first_read_or_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wipe(Account)
    stored = Account(name="switch", password="pw")
    stored.save()  # encrypted: no plaintext anywhere to read
    assert raw(Account, stored.pk)["password"].startswith(PREFIX)
    monkeypatch.setenv("REDIS_SRE_REJECT_PLAINTEXT", "bogus")
    with pytest.raises(ConfigurationError, match="REDIS_SRE_REJECT_PLAINTEXT='bogus'"):
        Account(name="new", password="pw").save()
    with pytest.raises(ConfigurationError, match="REDIS_SRE_REJECT_PLAINTEXT='bogus'"):
        Account.get(stored.pk)
    status = cli("status", "ops_models:Account", env={**os.environ})
    assert status.returncode == 2
    assert status.stderr.startswith("error: REDIS_SRE_REJECT_PLAINTEXT='bogus' is not a valid")
    assert status.stdout == ""


def test_keeping_a_secret_whose_stored_value_is_a_mask_says_the_stored_value_is_a_mask() -> None:
    wipe(Account)
    account = Account(name="cache-1", password="real")
    account.save()
    client().hset(Account.make_primary_key(account.pk), "password", "**********")  # origin bug
    got = Account.get(account.pk)
    got.name = "cache-2"  # a PATCH of the name alone: the client sent no mask
    with pytest.raises(MaskedSecretError) as info:
        got.save()
    message = str(info.value)
    assert "the stored value is a mask ('**********')" in message
    assert "was given" not in message
    assert raw(Account, account.pk)["name"] == "cache-1"  # nothing saved
    got.password = "fresh"  # the fix the message asks for
    got.save()
    assert Account.get(account.pk).password == "fresh"


def test_counts_of_one_are_singular_and_usage_lines_name_arguments() -> None:
    wipe(Account)
    client().hset(
        Account.make_primary_key("one"), mapping={"pk": "one", "name": "n", "password": "pw"}
    )
    migrated = cli("migrate", "ops_models:Account")
    assert migrated.returncode == 0, migrated.stderr
    summary = migrated.stdout.splitlines()[-1]
    assert summary.startswith("migrate: 1 record; changed 1 value (1 encrypted"), summary
    status = cli("status", "ops_models:Account")
    (keys,) = [line for line in status.stdout.splitlines() if line.startswith("keys in use:")]
    assert keys.endswith("(current): 1 value"), keys
    assert status.stdout.splitlines()[-1].startswith("status: 1 record;")
    retire = cli("keys", "retire")
    assert retire.returncode == 2
    assert "keys retire [OPTIONS] KEY_ID TARGET" in retire.stderr
    assert "{" not in retire.stderr
    assert "status [OPTIONS] TARGET" in cli("status", "--help").stdout
