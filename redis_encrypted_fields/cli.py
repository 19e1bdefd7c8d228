"""The command line: ``redis-encrypted-fields keygen | migrate | rotate | status | plan-index |
keys``."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import aredis_om
import redis
import redis_om
import typer
from pydantic import BaseModel
from redis.cluster import RedisCluster
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from typer.core import TyperArgument, TyperCommand

from . import ops
from .errors import EncryptionError, printable
from .keys import (
    ENV_MASTER_KEY,
    ENV_PREVIOUS_MASTER_KEYS,
    KeyStore,
    deny_statement,
    generate_master_key,
)
from .model.blind_index import DEFAULT_BITS, PLAN_RULE
from .model.blind_index import plan_index as plan_bits
from .model.codec import plaintext_allowed
from .model.mixin import ENV_REJECT_PLAINTEXT, EncryptedModel
from .model.plan import plan_for
from .model.scope import scope_of
from .ops.report import counted
from .ops.scopes import rotate_scope, shred_scope
from .version import __version__

ENV_DEBUG = "REDIS_ENCRYPTED_FIELDS_DEBUG"

# Exit statuses, as --help lists them.
EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_ERROR = 2

_HELP = f"""Migrate, rotate and inspect EncryptedStr fields of redis-om models.

Exit status: {EXIT_OK} when every value is in the wanted state (a dry run: when nothing failed;
changes it would make are not failures); {EXIT_NOT_OK} when some are not (plaintext, values under
a previous or unknown key, undecryptable or masked values, suspicious values, records skipped as
changed meanwhile);
{EXIT_ERROR} when the run could not be done (bad usage, unreachable Redis, missing or malformed
master keys, a cluster the tool cannot see whole, an unexpected error).

Environment: {ENV_MASTER_KEY} (the current master key, standard base64 of 32 bytes);
{ENV_PREVIOUS_MASTER_KEYS} (older keys, comma-separated, decrypt only); REDIS_OM_URL (the Redis URL
of models without Meta.database, as redis-om uses it; --url overrides); {ENV_REJECT_PLAINTEXT} (1:
no plaintext is left: the application refuses plaintext and origin v1 values read from Redis, and
migrate and rotate report them as suspicious and leave them unless --accept-plaintext); {ENV_DEBUG}
(1: tracebacks, like --debug).
"""

app = typer.Typer(
    name="redis-encrypted-fields",
    help=_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# Progress only; messages are printed as plain lines, never wrapped (they are grepped and piped).
err = Console(stderr=True)

_debug = False

TargetArg = Annotated[
    str,
    typer.Argument(
        help="package.module:Model, or package.module for every model in it with encrypted "
        "fields. The current directory is importable.",
        metavar="TARGET",
        show_default=False,
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Redis URL, for every model (default: each model's own database, as redis-om "
        "resolves it: Meta.database, else REDIS_OM_URL). Any node of a cluster will do. The key "
        "store stays where its settings say (REDIS_SRE_KEYSTORE_URL, else REDIS_OM_URL).",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Write nothing; report what would change.")
]
BatchOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Records per SCAN page and pipelined batch.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the report as one JSON object on stdout.")
]
AcceptOpt = Annotated[
    bool,
    typer.Option(
        "--accept-plaintext",
        help=f"With {ENV_REJECT_PLAINTEXT} on, encrypt plaintext and origin v1 values found anyway "
        "(by default they are suspicious: reported and left). Find out first how they got there.",
    ),
]
ScopeOpt = Annotated[
    str | None,
    typer.Option(
        "--scope",
        metavar="NAMESPACE:VALUE",
        help="Give one key scope (e.g. tenant:acme) a new key and re-wrap its values under it.",
    ),
]


class _Command(TyperCommand):
    """A command whose usage line names its arguments as their metavars (``KEY_ID TARGET``):
    typer's own ``{key_id} {target}`` reads like a template left unformatted."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def _show_version(value: bool) -> None:
    if value:
        print(f"redis-encrypted-fields {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help=f"Show tracebacks of errors (or set {ENV_DEBUG}=1).")
    ] = False,
) -> None:
    global _debug
    _debug = debug or os.environ.get(ENV_DEBUG, "").strip().lower() in ("1", "true", "yes", "on")


def _fail(message: str) -> NoReturn:
    # One line, whatever the message quotes (a record key, a server's or a KMS's answer).
    print(f"error: {printable(message)}", file=sys.stderr)
    raise typer.Exit(EXIT_ERROR)


@contextmanager
def _errors() -> Iterator[None]:
    """Every failure as one line on stderr and exit status 2; a traceback only with --debug."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _debug:
            traceback.print_exc()
        if isinstance(exc, EncryptionError):
            _fail(str(exc))
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            # Every record is written by one atomic compare-and-set: a run cut short leaves
            # nothing half-done, and running it again completes it.
            _fail(
                f"cannot reach Redis: {exc}; nothing is half-written: run it again once the "
                f"server (or cluster) is reachable{_hint()}"
            )
        if isinstance(exc, redis.RedisError):
            _fail(f"Redis answered: {type(exc).__name__}: {exc}{_hint()}")
        _fail(f"unexpected {type(exc).__name__}: {exc}{_hint()}")


def _hint() -> str:
    return "" if _debug else f" (--debug or {ENV_DEBUG}=1 shows the traceback)"


def load_models(target: str) -> list[type[BaseModel]]:
    """The models TARGET names: ``module:Model``, or every encrypted model of ``module``."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EncryptionError(f"cannot import {module_name!r}: {exc}") from None
    bases = (redis_om.RedisModel, aredis_om.RedisModel)
    if attr:
        if not hasattr(module, attr):
            raise EncryptionError(f"{module_name} has no attribute {attr!r} (in {target})")
        model = getattr(module, attr)
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


def load_models_at(target: str, url: str | None) -> list[type[BaseModel]]:
    """``load_models(target)``, the models bound to ``url`` when given.

    redis-om binds a model to REDIS_OM_URL when its class is defined: the variable is ``url``
    while TARGET is imported, and restored after, so that the key store, which also falls back
    to REDIS_OM_URL, stays where its own settings say rather than moving with ``--url``.
    """
    if not url:
        return load_models(target)
    before = os.environ.get("REDIS_OM_URL")
    os.environ["REDIS_OM_URL"] = url
    try:
        return load_models(target)
    finally:
        if before is None:
            del os.environ["REDIS_OM_URL"]
        else:
            os.environ["REDIS_OM_URL"] = before


def client_for_url(url: str) -> Any:
    """A client for ``url``: a cluster client when the server says it is a cluster node."""
    plain = redis.Redis.from_url(url, decode_responses=True)
    if str(plain.info("cluster").get("cluster_enabled", 0)) == "1":
        plain.close()
        return RedisCluster.from_url(url, decode_responses=True)
    return plain


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int], None]]:
    if not err.is_terminal:
        yield lambda _n: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda n: bar.advance(task, n)


def _is_async(model: type[BaseModel]) -> bool:
    return issubclass(model, aredis_om.RedisModel)


def _run_models(
    operation: ops.Operation,
    models: list[type[BaseModel]],
    client: Any,
    dry_run: bool,
    batch: int,
    accept_plaintext: bool = False,
) -> ops.Report:
    total = ops.Report(operation, dry_run)
    sync = [m for m in models if client is not None or not _is_async(m)]
    for model in sync:
        with _progress(f"{operation.value} {model.__name__}") as advance:
            if operation is ops.Operation.STATUS:
                report = ops.status(model, client=client, batch_size=batch, progress=advance)
            else:
                run = ops.migrate if operation is ops.Operation.MIGRATE else ops.rotate
                report = run(
                    model,
                    client=client,
                    dry_run=dry_run,
                    batch_size=batch,
                    progress=advance,
                    accept_plaintext=accept_plaintext,
                )
        total.merge(report)
    rest = [m for m in models if m not in sync]
    if rest:
        # aredis_om models on their own (asyncio) databases: one event loop for all of them.
        total.merge(asyncio.run(_arun_models(operation, rest, dry_run, batch, accept_plaintext)))
    return total


async def _arun_models(
    operation: ops.Operation,
    models: list[type[BaseModel]],
    dry_run: bool,
    batch: int,
    accept_plaintext: bool,
) -> ops.Report:
    total = ops.Report(operation, dry_run)
    for model in models:
        with _progress(f"{operation.value} {model.__name__}") as advance:
            if operation is ops.Operation.STATUS:
                report = await ops.astatus(model, batch_size=batch, progress=advance)
            else:
                run = ops.amigrate if operation is ops.Operation.MIGRATE else ops.arotate
                report = await run(
                    model,
                    dry_run=dry_run,
                    batch_size=batch,
                    progress=advance,
                    accept_plaintext=accept_plaintext,
                )
        total.merge(report)
    return total


def _run(
    operation: ops.Operation,
    target: str,
    url: str | None,
    dry_run: bool,
    batch: int,
    as_json: bool,
    accept_plaintext: bool = False,
) -> None:
    with _errors():
        plaintext_allowed()  # a malformed switch is refused before anything is read
        models = load_models_at(target, url)
        client = client_for_url(url) if url else None
        total = _run_models(operation, models, client, dry_run, batch, accept_plaintext)
    for scanned in total.scanned:
        if not scanned.records:
            print(
                printable(
                    f"warning: no records of {scanned.model} found on {scanned.server} (keys "
                    f"matching {scanned.pattern!r}): check the server and database (--url, "
                    "REDIS_OM_URL, Meta.database) and the model's key prefix"
                ),
                file=sys.stderr,
            )
    if as_json:
        print(json.dumps(total.as_dict(), indent=2))
    else:
        _print_text(total)
    if total.suspicious:
        n = total.suspicious
        print(
            f"warning: {n} suspicious {'value' if n == 1 else 'values'} (plaintext or origin v1 "
            f"although {ENV_REJECT_PLAINTEXT} says none is left) left as "
            f"{'it is' if n == 1 else 'they are'}. A value written to Redis behind the "
            "application's back looks the same: find out how they got there (records listed "
            "above, or in the JSON report's failures); if they are genuine, run "
            f"`redis-encrypted-fields migrate --accept-plaintext {target}`",
            file=sys.stderr,
        )
    raise typer.Exit(EXIT_OK if total.ok else EXIT_NOT_OK)


def _print_text(report: ops.Report) -> None:
    groups = report.groups()
    if report.operation is ops.Operation.STATUS:
        # One line per field and state (and key id): counts, never one line per value.
        for group in groups:
            print(group.line())
    else:
        for group in groups:
            if group.failed:
                print(f"failed: {group.line()}", file=sys.stderr)
    keys = report.keys_in_use()  # what is stored once the run is over, not what it found
    if keys:
        shown = ", ".join(f"{k} ({role}): {counted(n, 'value')}" for k, role, n in keys)
        now = "" if report.operation is ops.Operation.STATUS or report.dry_run else " now"
        print(f"keys in use{now}: {shown}")
    print(report.summary())


@app.command()
def keygen() -> None:
    """Print a new master key: standard base64 of 32 random bytes."""
    print(f"# a new value for {ENV_MASTER_KEY}; keep it in a secrets manager", file=sys.stderr)
    print(generate_master_key())


@app.command(cls=_Command)
def migrate(
    target: TargetArg,
    url: UrlOpt = None,
    dry_run: DryRunOpt = False,
    batch_size: BatchOpt = 500,
    as_json: JsonOpt = False,
    accept_plaintext: AcceptOpt = False,
) -> None:
    """Encrypt plaintext values and upgrade origin v1 envelopes. Safe to run again.

    With REDIS_SRE_REJECT_PLAINTEXT on, plaintext and origin v1 values are suspicious: reported
    and left as they are (exit status 1), unless --accept-plaintext."""
    _run(ops.Operation.MIGRATE, target, url, dry_run, batch_size, as_json, accept_plaintext)


@app.command(cls=_Command)
def rotate(
    target: TargetArg,
    url: UrlOpt = None,
    dry_run: DryRunOpt = False,
    batch_size: BatchOpt = 500,
    as_json: JsonOpt = False,
    accept_plaintext: AcceptOpt = False,
    scope: ScopeOpt = None,
) -> None:
    """Re-wrap every value under the current master key (old keys in
    REDIS_SRE_PREVIOUS_MASTER_KEYS); plaintext and v1 values are encrypted on the way (with
    REDIS_SRE_REJECT_PLAINTEXT on: as migrate does). Scope keys (KeyScope) are re-wrapped, not
    the values under them; --scope NAMESPACE:VALUE gives that scope a new key instead, and
    re-wraps its values under it."""
    if scope is not None:
        _rotate_scope(scope, target, url, batch_size, as_json)
    _run(ops.Operation.ROTATE, target, url, dry_run, batch_size, as_json, accept_plaintext)


def _rotate_scope(scope: str, target: str, url: str | None, batch: int, as_json: bool) -> None:
    namespace, _, value = scope.partition(":")
    with _errors():
        if not namespace or not value:
            _fail(f"--scope takes NAMESPACE:VALUE (e.g. tenant:acme), not {scope!r}")
        models = [m for m in load_models_at(target, url) if _scope_of(m) == namespace]
        if not models:
            _fail(f"no model in {target} has a KeyScope({namespace!r}) field")
        client = client_for_url(url) if url else None
        report = rotate_scope(namespace, value, models=models, client=client, batch_size=batch)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_text(report)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_NOT_OK)


def _scope_of(model: type[BaseModel]) -> str | None:
    scope = scope_of(model) if issubclass(model, EncryptedModel) else None
    return None if scope is None else scope.namespace


@app.command(cls=_Command)
def status(
    target: TargetArg, url: UrlOpt = None, batch_size: BatchOpt = 500, as_json: JsonOpt = False
) -> None:
    """Count values per model and field: plaintext, origin v1, per key id (current, previous,
    unknown), undecryptable. Exit status 0 only when every value decrypts and is under the
    current key."""
    _run(ops.Operation.STATUS, target, url, True, batch_size, as_json)


@app.command("plan-index")
def plan_index(
    records: Annotated[
        int,
        typer.Option("--records", min=1, help="Records the model will hold.", show_default=False),
    ],
    distinct: Annotated[
        int | None,
        typer.Option("--distinct", min=1, help="Distinct values of the field (default: records)."),
    ] = None,
) -> None:
    """The safe range of BlindIndex(bits=...) for a field, by the AWS Database Encryption SDK's
    rule for beacon lengths: sqrt(X) < 2^bits < X/2 for X distinct values."""
    with _errors():
        plan = plan_bits(records, distinct)
    print(f"{plan.records:,} records, {plan.distinct:,} distinct values")
    print(f"rule: {PLAN_RULE}")
    print("bits  distinct values per companion  records fetched per query")
    for bits in range(plan.min_bits, plan.max_bits + 1):
        shared, fetched = plan.values_per_companion(bits), plan.candidates(bits)
        print(f"{bits:>4}  {shared:>29,.1f}  {fetched:>25,.1f}")
    default = "" if plan.min_bits <= DEFAULT_BITS <= plan.max_bits else ", outside this range"
    print(
        f"safe: {plan.min_bits} to {plan.max_bits} bits; recommended: "
        f"BlindIndex(bits={plan.recommended}) (the default is {DEFAULT_BITS}{default})"
    )


# --- keys: master keys in the key store (redis_encrypted_fields.keys.store) ----------------------

keys_app = typer.Typer(
    help="Master keys in the key store, wrapped by the KMS key $REDIS_SRE_KMS_KEY_ID, kept in "
    "$REDIS_SRE_KEYSTORE_URL (default: $REDIS_OM_URL). See docs/keys.md.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create() -> None:
    """Create a new active master key (the active one becomes decrypt-only); print its key id."""
    with _errors():
        record = KeyStore.from_env().create()
    print(
        "# the new active key; running processes use it within REDIS_SRE_KEY_CACHE_TTL",
        file=sys.stderr,
    )
    print(record.key_id)


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List the keys: key id, state, creation time, KMS key."""
    with _errors():
        records = KeyStore.from_env().records()
    if as_json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return
    rows = [("key id", "state", "created at", "KMS key")]
    # Creation time and KMS key come from the store's records, which whoever writes to Redis
    # can change: shown printable, so that one cannot make lines of its own.
    rows += [
        (r.key_id, r.state.value, printable(r.created_at), printable(r.kms_key_id)) for r in records
    ]
    # Plain aligned columns, not a rich table: a table fits itself to the terminal's width and
    # would wrap the ARNs of a piped, grepped listing. The last column is not padded.
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]))


@keys_app.command("retire", cls=_Command)
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
    with _errors():
        plaintext_allowed()  # a malformed switch is refused before anything is read
        store = KeyStore.from_env()
        store.retirable(key_id)  # before the data is read: a wrong id (or too soon) fails at once
        models = load_models_at(target, url)
        client = client_for_url(url) if url else None
        report = _run_models(ops.Operation.STATUS, models, client, True, batch_size)
        record = store.retire(key_id, report)
    print(f"retired {record.key_id}")
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
    with _errors():
        if not yes:
            if not sys.stdin.isatty():
                _fail("keys shred erases data for good: pass --yes to run it without a terminal")
            shown = printable(f"{namespace} {value!r}")
            if not typer.confirm(f"Destroy the keys of {shown}? Its values cannot be recovered"):
                raise typer.Exit(EXIT_NOT_OK)
        models = (
            [m for m in load_models_at(target, url) if _scope_of(m) == namespace] if target else []
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


def main() -> None:
    """Console entry point."""
    app()


__all__ = ["app", "client_for_url", "load_models", "load_models_at", "main"]
