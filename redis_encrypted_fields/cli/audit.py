"""``redis-encrypted-fields audit report | tail``: the trail in the Redis Stream
(redis_encrypted_fields.audit)."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import redis
import typer

from ..audit import STREAM_KEY
from ..audit.report import entry_line, follow, parse_since, summarize
from ..audit.settings import DEFAULT_URL, stream_url
from .common import EXIT_NOT_OK, EXIT_OK, JsonOpt, errors

audit_app = typer.Typer(
    help=f"The audit trail: the Redis Stream {STREAM_KEY} on the Redis $REDIS_SRE_AUDIT_STREAM "
    "names (a URL, or 1: $REDIS_OM_URL). See docs/security.md.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

AuditUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Redis URL of the trail (default: the one $REDIS_SRE_AUDIT_STREAM names, else "
        "$REDIS_OM_URL).",
    ),
]
StreamOpt = Annotated[str, typer.Option("--key", help="The stream's Redis key.")]


def _audit_client(url: str | None) -> Any:
    where = url or stream_url() or os.environ.get("REDIS_OM_URL") or DEFAULT_URL
    return redis.Redis.from_url(where, decode_responses=True, socket_connect_timeout=5)


@audit_app.command("report")
def audit_report(
    since: Annotated[
        str,
        typer.Option(
            "--since", help="The window: back from now (90s, 15m, 1h, 2d, 1w) or an ISO 8601 time."
        ),
    ] = "1h",
    as_json: JsonOpt = False,
    url: AuditUrlOpt = None,
    key: StreamOpt = STREAM_KEY,
) -> None:
    """Counts per key id, model, field and actor, failures, and the anomalies of a window of
    the trail. Exit status 1 when the window holds anomalies, 0 when not."""
    with errors():
        summary = summarize(_audit_client(url), key, parse_since(since))
    if as_json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print("\n".join(summary.lines()))
    raise typer.Exit(EXIT_NOT_OK if summary.anomalies else EXIT_OK)


@audit_app.command("tail")
def audit_tail(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per entry.")] = False,
    url: AuditUrlOpt = None,
    key: StreamOpt = STREAM_KEY,
) -> None:
    """Print the trail's entries as they are written, until interrupted."""
    with errors():
        try:
            for _, fields in follow(_audit_client(url), key):
                print(json.dumps(fields) if as_json else entry_line(fields), flush=True)
        except KeyboardInterrupt:
            pass
