"""``redis-encrypted-fields keys create | list | rotate | retire | shred``: master keys in the key
store (redis_encrypted_fields.keys.store), and a key scope's keys destroyed (``shred``)."""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Annotated

import typer

from .. import ops
from ..errors import printable
from ..keys import KeyStore, deny_statement
from ..keys.schedule import create_if_due, format_age, parse_duration, rotation_done
from ..keys.store import KeyRecord, cache_ttl, instant
from ..model.policy import plaintext_allowed
from ..ops.report import counted
from ..ops.scopes import shred_scope
from .common import (
    EXIT_NOT_OK,
    EXIT_OK,
    BatchOpt,
    Command,
    JsonOpt,
    TargetArg,
    UrlOpt,
    client_for_url,
    errors,
    fail,
    load_models_at,
    run,
    run_models,
    scope_namespace,
)

keys_app = typer.Typer(
    help="Master keys in the key store, wrapped by the KMS key $REDIS_SRE_KMS_KEY_ID, kept in "
    "$REDIS_SRE_KEYSTORE_URL (default: $REDIS_OM_URL). See docs/keys.md.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@keys_app.command("create")
def keys_create() -> None:
    """Create a new active master key (the active one becomes decrypt-only); print its key id."""
    with errors():
        record = KeyStore.from_env().create()
    print(
        f"# the new active key ({record.provider} KMS key {printable(record.kms_key_id)}); "
        "running processes use it within REDIS_SRE_KEY_CACHE_TTL",
        file=sys.stderr,
    )
    print(record.key_id)


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List the keys: key id, state, creation time, age, provider, KMS key."""
    with errors():
        store = KeyStore.from_env()
        records = store.records()
        now = store.now() if records else None
        ages = [now - instant(r.created_at) for r in records if now is not None]
    if as_json:
        listed = [
            {**r.as_dict(), "age": format_age(a), "age_seconds": int(a.total_seconds())}
            for r, a in zip(records, ages, strict=True)
        ]
        print(json.dumps(listed, indent=2))
        return
    rows = [("key id", "state", "created at", "age", "provider", "KMS key")]
    # Creation time and KMS key come from the store's records, which whoever writes to Redis
    # can change: shown printable, so that one cannot make lines of its own.
    rows += [
        (
            r.key_id,
            r.state.value,
            printable(r.created_at),
            format_age(a),
            r.provider,
            printable(r.kms_key_id),
        )
        for r, a in zip(records, ages, strict=True)
    ]
    # Plain aligned columns, not a rich table: a table fits itself to the terminal's width and
    # would wrap the ARNs of a piped, grepped listing. The last column is not padded.
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]))


@keys_app.command("rotate", cls=Command)
def keys_rotate(
    target: TargetArg,
    max_age: Annotated[
        str,
        typer.Option(
            "--max-age",
            help="How old the active key may get: 1s, 12h, 90d, 2w.",
            show_default=False,
        ),
    ],
    url: UrlOpt = None,
    batch_size: BatchOpt = 500,
    as_json: JsonOpt = False,
) -> None:
    """Scheduled rotation: when the active key is older than --max-age, create a new one and
    re-wrap TARGET's values under it (as rotate does); otherwise do nothing (exit status 0).

    Safe from cron or a Kubernetes CronJob: runs at the same time make one key (a lock in the
    key store's Redis), and a run cut short is completed by the next one.
    """
    with errors():
        limit = parse_duration(max_age)
        plaintext_allowed()
        load_models_at(target, url)  # a wrong TARGET fails before a key is made
        store = KeyStore.from_env()
        due = create_if_due(store, limit)
    key_id = due.active.key_id
    with errors():
        started = store.now()
    if due.created:
        print(f"created {key_id}", file=sys.stderr)
    elif due.rotate:
        print(f"# re-wrapping under {key_id}: its rotation is not complete yet", file=sys.stderr)
    else:
        print(
            f"the active master key {key_id} is {format_age(due.age)} old, not past --max-age "
            f"{max_age}: nothing to do",
            file=sys.stderr,
        )
        raise typer.Exit(EXIT_OK)
    run(
        ops.Operation.ROTATE,
        target,
        url,
        False,
        batch_size,
        as_json,
        when_ok=lambda: _rotated(store, due.active, started),
    )


def _rotated(store: KeyStore, record: KeyRecord, started: datetime.datetime) -> None:
    if not rotation_done(store, record, started, cache_ttl()):
        print(
            f"# processes may have encrypted under the previous key since this run began "
            f"(REDIS_SRE_KEY_CACHE_TTL after {record.key_id} was created): the next run "
            "re-wraps again",
            file=sys.stderr,
        )


@keys_app.command("retire", cls=Command)
def keys_retire(
    key_id: Annotated[
        str,
        typer.Argument(help="The key id (16 hex digits).", metavar="KEY_ID", show_default=False),
    ],
    target: TargetArg,
    url: UrlOpt = None,
    batch_size: BatchOpt = 500,
) -> None:
    """Retire a decrypt-only key (its wrapped key is deleted from the store), and print the KMS
    key policy statement that denies unwrapping it from a backup of its record.

    Refused while status finds a value of the models in TARGET under it (run rotate first), if it
    is the active key, or until it has been inactive for REDIS_SRE_KEY_CACHE_TTL seconds.
    """
    with errors():
        plaintext_allowed()  # a malformed switch is refused before anything is read
        store = KeyStore.from_env()
        store.retirable(key_id)  # before the data is read: a wrong id (or too soon) fails at once
        models = load_models_at(target, url)
        client = client_for_url(url) if url else None
        report = run_models(ops.Operation.STATUS, models, client, True, batch_size)
        record = store.retire(key_id, report)
    print(f"retired {record.key_id}")
    if record.provider != "aws":
        # The deny statement is an AWS KMS key policy; see docs/keys.md for the others.
        print(
            f"# a backup of its key store record still unwraps while {record.provider} KMS key "
            f"{printable(record.kms_key_id)} decrypts it: see docs/keys.md, retiring for good",
            file=sys.stderr,
        )
        return
    print(
        f"# a backup of its key store record still unwraps with kms:Decrypt: add this statement "
        f"to the key policy of {record.kms_key_id} to make retiring it final (docs/keys.md)",
        file=sys.stderr,
    )
    print(json.dumps(deny_statement(record.key_id), indent=2))


@keys_app.command("shred")
def keys_shred(
    namespace: Annotated[str, typer.Argument(help="The KeyScope namespace, e.g. tenant.")],
    value: Annotated[str, typer.Argument(help="The scope value, e.g. the tenant id.")],
    target: Annotated[
        str | None,
        typer.Argument(help="module or module:Model, to count the records left", metavar="TARGET"),
    ] = None,
    url: UrlOpt = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask (required without a terminal).")
    ] = False,
) -> None:
    """Destroy the keys of one scope (crypto-shredding): every value sealed under them is
    unreadable for good. Asks first on a terminal; refuses without one unless --yes."""
    with errors():
        if not yes:
            if not sys.stdin.isatty():
                fail("keys shred erases data for good: pass --yes to run it without a terminal")
            shown = printable(f"{namespace} {value!r}")
            if not typer.confirm(f"Destroy the keys of {shown}? Its values cannot be recovered"):
                raise typer.Exit(EXIT_NOT_OK)
        models = (
            [m for m in load_models_at(target, url) if scope_namespace(m) == namespace]
            if target
            else []
        )
        client = client_for_url(url) if url else None
        if client is None and not models:
            client = client_for_url(os.environ.get("REDIS_OM_URL") or "redis://localhost:6379")
        result = shred_scope(namespace, value, models=models, client=client)
    ids = ", ".join(result.key_ids) or "none (no key)"
    print(printable(f"shredded the keys of {namespace} {value!r}: {ids}"))
    for name, n in sorted(result.records.items()):
        print(f"{name}: {counted(n, 'record')} still holding values under them (unreadable)")
    if not target:
        print("records left not counted: give TARGET (the models) to count them", file=sys.stderr)
