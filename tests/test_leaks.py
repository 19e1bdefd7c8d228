"""No plaintext and no key material leaves the process by logs, errors or the command line.

Every log record is captured (root at DEBUG, the audit logger at INFO, redis-om's and redis-py's
loggers included) while a full cycle runs with unique plaintexts: save, get, find, update with a
mask and with a new value, reads under a wrong key, a refused mask, plaintext read and refused,
migrate, rotate, status, the command line, repr/str/JSON of models, a failing audit hook. Then
each plaintext and each form of the master keys is searched for in every record (message, args,
attributes, formatted with its traceback), every exception (message, repr, formatted traceback,
chained exceptions) and the command line's output.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from security_support import (
    AUDIT_LOGGER,
    Capture,
    SecAccount,
    SecAsyncAccount,
    SecTenant,
    assert_absent,
    captured,
    cli,
    client,
    exception_texts,
    key_material,
    levels,
    secret,
)
from support import new_key, raw, wipe, write_raw

from redis_encrypted_fields import (
    AuditEvent,
    DecryptionError,
    EncryptedStr,
    EncryptionError,
    MaskedSecretError,
    PlaintextSecretError,
    add_audit_hook,
    decrypt_secret,
    encrypt_secret,
    get_secret_value,
    ops,
    remove_audit_hook,
    set_plaintext_reads,
)

LOGGERS = ("redis_encrypted_fields", "redis_om", "aredis_om", "redis", "asyncio")


@pytest.fixture
def logs() -> Iterator[Capture]:
    """Every record any logger emits, with everything at its most verbose."""
    verbose: dict[str | None, int] = {None: logging.DEBUG, AUDIT_LOGGER: logging.INFO}
    verbose.update(dict.fromkeys(LOGGERS, logging.DEBUG))
    with captured() as cap, levels(verbose):
        yield cap


class Failures:
    """Runs calls that must fail and keeps their exceptions for inspection."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def expect(self, exc_type: type[BaseException], call: Callable[[], Any]) -> None:
        with pytest.raises(exc_type) as info:
            call()
        self.errors.append(info.value)

    async def expect_async(self, exc_type: type[BaseException], call: Callable[[], Any]) -> None:
        with pytest.raises(exc_type) as info:
            await call()
        self.errors.append(info.value)

    def texts(self) -> list[str]:
        return [text for exc in self.errors for text in exception_texts(exc)]


async def test_a_full_cycle_leaves_no_plaintext_in_logs_errors_or_output(
    logs: Capture, master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wipe(SecAccount)
    wipe(SecTenant)
    labels = ("pw", "token", "new-token", "admin", "replica", "list-token", "async-pw", "planted")
    plaintexts = [secret(label) for label in labels]
    pw, token, new_token, admin, replica, list_token, async_pw, planted = plaintexts
    failures = Failures()
    shown: list[str] = []  # what the application might print, return or log itself

    def broken_hook(event: AuditEvent) -> None:
        raise RuntimeError(f"sink rejected {event!r}")

    add_audit_hook(broken_hook)
    try:
        # Save, get, find, update (sync hash and JSON with nesting, async hash)
        a = SecAccount(name=secret("n"), password=pw, api_token=token)
        a.save()
        t = SecTenant(
            name=secret("n"),
            admin={"user": "root", "password": admin},
            replicas=[{"user": "r", "password": replica}],
            tokens=[list_token],
        )
        t.save()
        aa = SecAsyncAccount(name=secret("n"), password=async_pw)
        await aa.save()
        got = SecAccount.get(a.pk)
        found = SecAccount.find(SecAccount.name == a.name).all()
        tenant = SecTenant.get(t.pk)
        SecTenant.find(SecTenant.name == t.name).all()
        async_got = await SecAsyncAccount.get(aa.pk)
        a.update(api_token="***")
        for m in (a, got, *found, tenant, async_got):
            shown += [repr(m), str(m), m.model_dump_json(), str(m.model_dump()), repr(vars(m))]
        a.update(api_token=new_token)  # repr(a) now shows it: see test_repr_after_assignment...
        updated = SecAccount.get(a.pk)
        assert updated.api_token == new_token
        shown += [repr(updated), str(updated), updated.model_dump_json()]
        shown += [repr(tenant.admin), repr(tenant.replicas), repr(tenant.tokens)]
        shown += [repr(got.password)]
        shown += [repr(EncryptedStr(pw)), f"{got.password!r}", str(SecTenant.get(t.pk).tokens)]

        # Refused masks, module API
        failures.expect(MaskedSecretError, lambda: SecAccount(name="n", password="***").save())
        masked_copy = a.model_copy(update={"password": "***"})
        failures.expect(MaskedSecretError, masked_copy.model_dump)
        failures.expect(DecryptionError, lambda: decrypt_secret(encrypt_secret(pw)[:-2]))
        assert get_secret_value(planted) == planted  # passes through with a warning

        # A wrong key: reads and a save that must keep a secret fail; tracebacks are kept
        monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
        failures.expect(DecryptionError, lambda: SecAccount.get(a.pk))
        failures.expect(DecryptionError, lambda: SecTenant.find(SecTenant.name == t.name).all())
        failures.expect(DecryptionError, lambda: a.update(api_token="***"))
        await failures.expect_async(DecryptionError, lambda: SecAsyncAccount.get(aa.pk))
        monkeypatch.setenv("REDIS_SRE_MASTER_KEY", master_key)

        # Damaged and misplaced values
        stored = raw(SecAccount, a.pk)
        write_raw(SecAccount, a.pk, "password", stored["api_token"])
        failures.expect(DecryptionError, lambda: SecAccount.get(a.pk))
        write_raw(SecAccount, a.pk, "password", stored["password"][:-3])
        failures.expect(DecryptionError, lambda: SecAccount.get(a.pk))

        # Plaintext left in Redis: read with a warning, refused, migrated
        client().hset(a.key(), "password", planted)
        assert SecAccount.get(a.pk).password == planted
        set_plaintext_reads(False)
        failures.expect(PlaintextSecretError, lambda: SecAccount.get(a.pk))
        set_plaintext_reads(None)
        for report in (ops.status(SecAccount), ops.migrate(SecAccount), ops.status(SecTenant)):
            shown += [repr(report), report.summary()]

        # Rotate, with and without the old key; status; the command line
        new = new_key()
        monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new)
        monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
        for report in (
            ops.rotate(SecAccount),
            ops.rotate(SecTenant),
            await ops.arotate(SecAsyncAccount),
        ):
            shown += [repr(report), report.summary()]
        for args in (("status", "security_support"), ("migrate", "security_support:SecAccount")):
            proc = cli(*args, env=dict(os.environ))
            assert proc.returncode in (0, 1), proc.stderr
            shown += [proc.stdout, proc.stderr]
        monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
        monkeypatch.delenv("REDIS_SRE_PREVIOUS_MASTER_KEYS")
        report = ops.rotate(SecTenant)
        assert report.failures
        shown += [repr(report), report.summary(), repr(report.failures)]
        proc = cli("rotate", "security_support", env=dict(os.environ))
        assert proc.returncode == 1
        assert "failed: " in proc.stderr
        shown += [proc.stdout, proc.stderr]
        monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new)

        # Validation errors (messages only; see the tests below for their details)
        failures.expect(ValidationError, lambda: SecAccount(name=["n"], password=pw.encode()))
        failures.expect(ValidationError, lambda: SecAccount(password=pw))
    finally:
        remove_audit_hook(broken_hook)

    # The capture worked: audit lines, plaintext warnings and hook failures were all seen.
    messages = [r.getMessage() for r in logs.records]
    assert any(r.name == AUDIT_LOGGER and r.getMessage().startswith("rewrap") for r in logs.records)
    assert any("is stored as plaintext" in m for m in messages)
    assert any("audit hook" in r.getMessage() and r.exc_info for r in logs.records)
    assert len(failures.errors) == 12

    forbidden = plaintexts + key_material(master_key) + key_material(new)
    assert_absent(forbidden, logs.texts(), "in a log record")
    assert_absent(forbidden, failures.texts(), "in an exception")
    assert_absent(forbidden, shown, "in output")


def test_repr_after_assignment_update_or_copy_shows_no_plaintext() -> None:
    values = [secret(label) for label in ("assigned", "updated", "copied", "nested", "listed")]
    assigned, updated, copied, nested, listed = values
    a = SecAccount(name=secret("n"), password=secret("pw"), api_token=secret("tok"))
    a.save()
    t = SecTenant(name=secret("n"), admin={"user": "u", "password": secret("admin")})
    t.save()
    a.password = assigned  # type: ignore[assignment]
    a.update(api_token=updated)
    copy = a.model_copy(update={"password": copied})
    t.admin.password = nested  # type: ignore[assignment]
    t.tokens.append(listed)  # type: ignore[arg-type]
    t.save()
    shown = [repr(a), str(a), repr(copy), str(copy), repr(t), str(t)]
    assert_absent(values, shown, "in repr")


# Validation errors


class UnboundSettings(BaseModel):
    api_key: EncryptedStr


def validation_errors(pw: str, marker: str) -> list[ValidationError]:
    """A secret of a wrong type; another field of a wrong type next to a valid secret; a missing
    field next to a valid secret (the error's input is then the whole record)."""
    out = []
    for kwargs in (
        {"name": "n", "password": pw.encode()},
        {"name": [marker], "password": pw},
        {"password": pw, "api_token": pw},
        {"name": {"x": marker}, "password": pw, "api_token": 42},
    ):
        with pytest.raises(ValidationError) as info:
            SecAccount(**kwargs)
        out.append(info.value)
    return out


def test_validation_error_messages_do_not_echo_the_input() -> None:
    pw, marker = secret("pw"), secret("other-field")
    texts = []
    for exc in validation_errors(pw, marker):
        texts += exception_texts(exc)
        texts += [repr(exc.errors(include_input=False)), exc.json(include_input=False)]
    assert_absent([pw, marker], texts, "in a validation error")


def test_validation_error_details_do_not_carry_the_input() -> None:
    pw, marker = secret("pw"), secret("other-field")
    texts = []
    for exc in validation_errors(pw, marker):
        texts += [exc.json(), repr(exc.errors())]
        texts += [str(error.get("input")) for error in exc.errors()]
    assert_absent([pw, marker], texts, "in a validation error's details")


def test_an_encrypted_field_of_a_plain_model_does_not_echo_a_wrong_type_input() -> None:
    pw = secret("pw")
    with pytest.raises(ValidationError) as info:
        UnboundSettings(api_key=pw.encode())  # type: ignore[arg-type]
    assert_absent([pw], exception_texts(info.value), "in a validation error")


def test_library_errors_are_not_wrapped_by_pydantic() -> None:
    """EncryptionError is not a ValueError: pydantic does not turn it into a ValidationError
    (whose details would carry the input)."""
    assert not issubclass(EncryptionError, ValueError)
    with pytest.raises(DecryptionError) as info:
        SecAccount(pk="p", name="n", password=encrypt_secret(secret("unbound")))
    assert not isinstance(info.value, ValidationError)
