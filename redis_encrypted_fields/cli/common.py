"""What the commands share: exit statuses, the debug switch, error handling, loading TARGET's
models, the runs of migrate, rotate and status, and the options they take."""

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

from .. import ops
from ..errors import EncryptionError, printable
from ..keys import KeyStore
from ..keys.schedule import format_age, key_age, parse_duration
from ..model.mixin import ENV_REJECT_PLAINTEXT, EncryptedModel
from ..model.plan import plan_for
from ..model.policy import plaintext_allowed
from ..model.scope import scope_of
from ..ops.report import counted

ENV_DEBUG = "REDIS_ENCRYPTED_FIELDS_DEBUG"

# Exit statuses, as --help lists them.
EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_ERROR = 2

# Progress only; messages are printed as plain lines, never wrapped (they are grepped and piped).
err = Console(stderr=True)

_debug = False


def set_debug(flag: bool) -> None:
    """Tracebacks of errors on (``--debug``, or ENV_DEBUG set) or off."""
    global _debug
    _debug = flag or os.environ.get(ENV_DEBUG, "").strip().lower() in ("1", "true", "yes", "on")


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


class Command(TyperCommand):
    """A command whose usage line names its arguments as their metavars (``KEY_ID TARGET``):
    typer's own ``{key_id} {target}`` reads like a template left unformatted."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


ScopeOpt = Annotated[
    str | None,
    typer.Option(
        "--scope",
        metavar="NAMESPACE:VALUE",
        help="Give one key scope (e.g. tenant:acme) a new key and re-wrap its values under it.",
    ),
]


def scope_namespace(model: type[BaseModel]) -> str | None:
    """The namespace of ``model``'s ``KeyScope`` field, if it has one."""
    scope = scope_of(model) if issubclass(model, EncryptedModel) else None
    return None if scope is None else scope.namespace


def fail(message: str) -> NoReturn:
    """Print ``message`` as one ``error:`` line on stderr and exit with status 2."""
    # One line, whatever the message quotes (a record key, a server's or a KMS's answer).
    print(f"error: {printable(message)}", file=sys.stderr)
    raise typer.Exit(EXIT_ERROR)


@contextmanager
def errors() -> Iterator[None]:
    """Every failure as one line on stderr and exit status 2; a traceback only with --debug."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _debug:
            traceback.print_exc()
        if isinstance(exc, EncryptionError):
            fail(str(exc))
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            # Every record is written by one atomic compare-and-set: a run cut short leaves
            # nothing half-done, and running it again completes it.
            fail(
                f"cannot reach Redis: {exc}; nothing is half-written: run it again once the "
                f"server (or cluster) is reachable{_hint()}"
            )
        if isinstance(exc, redis.RedisError):
            fail(f"Redis answered: {type(exc).__name__}: {exc}{_hint()}")
        fail(f"unexpected {type(exc).__name__}: {exc}{_hint()}")


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


def run_models(
    operation: ops.Operation,
    models: list[type[BaseModel]],
    client: Any,
    dry_run: bool,
    batch: int,
    accept_plaintext: bool = False,
) -> ops.Report:
    """Run ``operation`` over ``models`` (on ``client``, else each model's own database)."""
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


def run(
    operation: ops.Operation,
    target: str,
    url: str | None,
    dry_run: bool,
    batch: int,
    as_json: bool,
    accept_plaintext: bool = False,
    *,
    max_age: str | None = None,
    when_ok: Callable[[], None] | None = None,
) -> None:
    """Run ``operation`` over TARGET's models, print the report, exit with its status.
    ``max_age`` (status): also exit 1 if the key store's active key is older. ``when_ok``: run
    once every value is in the wanted state."""
    with errors():
        plaintext_allowed()  # a malformed switch is refused before anything is read
        limit = None if max_age is None else parse_duration(max_age)
        models = load_models_at(target, url)
        client = client_for_url(url) if url else None
        total = run_models(operation, models, client, dry_run, batch, accept_plaintext)
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
        print_report(total)
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
    ok = total.ok
    if limit is not None:
        with errors():
            store = KeyStore.from_env()
            active = store.active()
            age = key_age(store, active)
        if age > limit:
            ok = False
            print(
                f"warning: the active master key {active.key_id} is {format_age(age)} old, past "
                f"--max-age {max_age}: run `redis-encrypted-fields keys rotate {target} "
                f"--max-age {max_age}`",
                file=sys.stderr,
            )
    if ok and when_ok is not None:
        with errors():
            when_ok()
    raise typer.Exit(EXIT_OK if ok else EXIT_NOT_OK)


def print_report(report: ops.Report) -> None:
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
