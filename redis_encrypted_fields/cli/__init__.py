"""The command line: ``redis-encrypted-fields keygen | migrate | rotate | status | plan-index |
keys | audit``.

The top-level commands are here; ``keys`` is in ``cli/keys.py``, ``audit`` in ``cli/audit.py``,
and what they share in ``cli/common.py``."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .. import ops
from ..keys import ENV_MASTER_KEY, ENV_PREVIOUS_MASTER_KEYS, generate_master_key
from ..model.blind_index import DEFAULT_BITS, PLAN_RULE
from ..model.blind_index import plan_index as plan_bits
from ..model.mixin import ENV_REJECT_PLAINTEXT
from ..ops.scopes import rotate_scope
from ..version import __version__
from .audit import audit_app
from .common import (
    ENV_DEBUG,
    EXIT_ERROR,
    EXIT_NOT_OK,
    EXIT_OK,
    AcceptOpt,
    BatchOpt,
    Command,
    DryRunOpt,
    JsonOpt,
    ScopeOpt,
    TargetArg,
    UrlOpt,
    client_for_url,
    errors,
    fail,
    load_models,
    load_models_at,
    print_report,
    run,
    scope_namespace,
    set_debug,
)
from .keys import keys_app

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
    set_debug(debug)


@app.command()
def keygen() -> None:
    """Print a new master key: standard base64 of 32 random bytes."""
    print(f"# a new value for {ENV_MASTER_KEY}; keep it in a secrets manager", file=sys.stderr)
    print(generate_master_key())


@app.command(cls=Command)
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
    run(ops.Operation.MIGRATE, target, url, dry_run, batch_size, as_json, accept_plaintext)


@app.command(cls=Command)
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
    run(ops.Operation.ROTATE, target, url, dry_run, batch_size, as_json, accept_plaintext)


def _rotate_scope(scope: str, target: str, url: str | None, batch: int, as_json: bool) -> None:
    namespace, _, value = scope.partition(":")
    with errors():
        if not namespace or not value:
            fail(f"--scope takes NAMESPACE:VALUE (e.g. tenant:acme), not {scope!r}")
        models = [m for m in load_models_at(target, url) if scope_namespace(m) == namespace]
        if not models:
            fail(f"no model in {target} has a KeyScope({namespace!r}) field")
        client = client_for_url(url) if url else None
        report = rotate_scope(namespace, value, models=models, client=client, batch_size=batch)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(report)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_NOT_OK)


@app.command(cls=Command)
def status(
    target: TargetArg,
    url: UrlOpt = None,
    batch_size: BatchOpt = 500,
    as_json: JsonOpt = False,
    max_age: Annotated[
        str | None,
        typer.Option(
            "--max-age",
            help="Also warn (exit status 1) when the key store's active key is older than this "
            "(1s, 12h, 90d, 2w).",
        ),
    ] = None,
) -> None:
    """Count values per model and field: plaintext, origin v1, per key id (current, previous,
    unknown), undecryptable. Exit status 0 only when every value decrypts and is under the
    current key (and, with --max-age, the active key is not past due)."""
    run(ops.Operation.STATUS, target, url, True, batch_size, as_json, max_age=max_age)


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
    with errors():
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


app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")


def main() -> None:
    """Console entry point."""
    app()


__all__ = ["app", "client_for_url", "load_models", "load_models_at", "main"]
