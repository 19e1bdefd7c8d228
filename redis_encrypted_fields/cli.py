"""The command line: ``redis-encrypted-fields keygen | migrate | rotate | status | keys``."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from . import ops
from .errors import EncryptionError
from .keys import generate_master_key, get_keyring

app = typer.Typer(
    name="redis-encrypted-fields",
    help="Migrate, rotate and inspect EncryptedStr fields of redis-om models.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()

TargetArg = Annotated[
    str,
    typer.Argument(
        help="package.module:Model, or package.module for every model in it with encrypted "
        "fields. The current directory is importable.",
        show_default=False,
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="Redis URL (default: $REDIS_OM_URL, as redis-om uses it)."),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Write nothing; report what would change.")
]
BatchOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Records per SCAN page and pipelined batch.")
]


def load_models(target: str) -> list[type[BaseModel]]:
    """The models TARGET names: ``module:Model``, or every encrypted model of ``module``."""
    import aredis_om
    import redis_om

    from .models import plan_for

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EncryptionError(f"cannot import {module_name!r}: {exc}") from None
    bases = (redis_om.RedisModel, aredis_om.RedisModel)
    if attr:
        model = getattr(module, attr, None)
        if not (isinstance(model, type) and issubclass(model, bases)):
            raise EncryptionError(f"{target} is not a redis-om model")
        return [model]
    found: list[type[BaseModel]] = []
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, bases)
            and value not in bases
            and not getattr(getattr(value, "_meta", None), "embedded", False)
            and "abc.ABC" not in str(value.__bases__)
            and plan_for(value)
            and value not in found
        ):
            found.append(value)
    if not found:
        raise EncryptionError(f"{module_name} has no redis-om model with EncryptedStr fields")
    return found


def _client(url: str | None) -> Any:
    import redis

    return redis.Redis.from_url(
        url or os.environ.get("REDIS_OM_URL") or "redis://localhost:6379", decode_responses=True
    )


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int], None]]:
    if not err.is_terminal:
        yield lambda _n: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda n: bar.advance(task, n)


def _run(operation: ops.Operation, target: str, url: str | None, dry_run: bool, batch: int) -> None:
    if url:
        # redis-om binds a model's connection from REDIS_OM_URL when the class is defined.
        os.environ["REDIS_OM_URL"] = url
    try:
        models = load_models(target)
        client = _client(url)
        total = ops.Report(operation, dry_run)
        for model in models:
            with _progress(f"{operation.value} {model.__name__}") as advance:
                if operation is ops.Operation.STATUS:
                    report = ops.status(model, client=client, batch_size=batch, progress=advance)
                else:
                    run = ops.migrate if operation is ops.Operation.MIGRATE else ops.rotate
                    report = run(
                        model, client=client, dry_run=dry_run, batch_size=batch, progress=advance
                    )
            total.merge(report)
    except EncryptionError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if operation is ops.Operation.STATUS:
        _print_states(total)
    for failure in total.failures:
        # Plain lines (no wrapping): one failure a line, for grep.
        print(f"failed: {failure.key} {failure.field}: {failure.reason}", file=sys.stderr)
    print(total.summary())
    raise typer.Exit(0 if total.ok else 1)


def _print_states(report: ops.Report) -> None:
    current = ops.key_state(get_keyring().current.key_id)
    states = sorted({s for counts in report.states.values() for s in counts if counts[s]})
    headers = [f"{s} (current)" if s == current else s for s in states]
    table = Table("field", *headers)
    for name, counts in sorted(report.states.items()):
        table.add_row(name, *(str(counts[s]) for s in states))
    out.print(table)


@app.command()
def keygen() -> None:
    """Print a new master key: standard base64 of 32 random bytes."""
    err.print("# a new value for REDIS_SRE_MASTER_KEY; keep it in a secrets manager", markup=False)
    print(generate_master_key())


@app.command()
def migrate(
    target: TargetArg, url: UrlOpt = None, dry_run: DryRunOpt = False, batch_size: BatchOpt = 500
) -> None:
    """Encrypt plaintext values and upgrade origin v1 envelopes. Safe to run again."""
    _run(ops.Operation.MIGRATE, target, url, dry_run, batch_size)


@app.command()
def rotate(
    target: TargetArg, url: UrlOpt = None, dry_run: DryRunOpt = False, batch_size: BatchOpt = 500
) -> None:
    """Re-wrap every value under the current master key (old keys in
    REDIS_SRE_PREVIOUS_MASTER_KEYS); plaintext and v1 values are encrypted on the way."""
    _run(ops.Operation.ROTATE, target, url, dry_run, batch_size)


@app.command()
def status(target: TargetArg, url: UrlOpt = None, batch_size: BatchOpt = 500) -> None:
    """Count values per model and field: plaintext, origin v1, per key id, undecryptable."""
    _run(ops.Operation.STATUS, target, url, True, batch_size)


# --- keys: the key store (redis_encrypted_fields.keystore) ------------------------------------

keys_app = typer.Typer(
    help="Master keys in the key store, wrapped by the KMS key $REDIS_SRE_KMS_KEY_ID, kept in "
    "$REDIS_SRE_KEYSTORE_URL (default: $REDIS_OM_URL). See docs/keys.md.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


@contextmanager
def _key_errors() -> Iterator[None]:
    try:
        yield
    except EncryptionError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None


@keys_app.command("create")
def keys_create() -> None:
    """Create a new active master key (the active one becomes decrypt-only); print its key id."""
    from .keystore import KeyStore

    with _key_errors():
        record = KeyStore.from_env().create()
    err.print("# the new active key; running processes use it within REDIS_SRE_KEY_CACHE_TTL")
    print(record.key_id)


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List the keys: key id, state, creation time, KMS key."""
    from .keystore import KeyStore

    with _key_errors():
        records = KeyStore.from_env().records()
    if as_json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return
    table = Table("key id", "state", "created at", "KMS key")
    for r in records:
        table.add_row(r.key_id, r.state.value, r.created_at, r.kms_key_id)
    out.print(table)


@keys_app.command("retire")
def keys_retire(
    key_id: Annotated[str, typer.Argument(help="The key id (16 hex digits).", show_default=False)],
    target: TargetArg,
    url: UrlOpt = None,
    batch_size: BatchOpt = 500,
) -> None:
    """Retire a decrypt-only key for good (its wrapped key is deleted).

    Refused while a value of the models in TARGET is under it (run rotate first), or if it is
    the active key.
    """
    from .keystore import KeyStore

    if url:
        os.environ["REDIS_OM_URL"] = url
    with _key_errors():
        models = load_models(target)
        record = KeyStore.from_env().retire(
            key_id, models, client=_client(url), batch_size=batch_size
        )
    print(f"retired {record.key_id}")


def main() -> None:
    """Console entry point."""
    app()
