"""Audit events: one per encrypt, decrypt, re-wrap and failed decrypt, and per KMS call and key
store change (``kms_generate``, ``kms_encrypt``, ``kms_decrypt``, ``key_created``,
``key_retired``), and per active key the key store refuses to encrypt under (``key_refused``: older
than another key, a sign of a replayed record; see ``keys.store``); anomalies (outcome
``anomaly``, see ``anomalies``).

Events go to the ``redis_encrypted_fields.audit`` logger at INFO (anomalies at WARNING), which
is set to WARNING here so that it stays silent until the application turns it on::

    logging.getLogger("redis_encrypted_fields.audit").setLevel(logging.INFO)

to every hook registered with ``add_audit_hook`` (a callable taking an ``AuditEvent``), and to
the library's own consumers that ``configure_audit`` installs (the stream, metrics, anomaly
rules). An event names the operation, model, field, record and key id and the outcome: never a
plaintext, never a key. When nothing listens, the cost is one cached level check.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from ..errors import printable
from ..forks import reset_in_children

__all__ = [
    "ANOMALY",
    "ENV_ACTOR",
    "AuditEvent",
    "AuditHook",
    "Consumer",
    "acting_as",
    "add_audit_hook",
    "audit_enabled",
    "current_actor",
    "emit",
    "logger",
    "remove_audit_hook",
    "set_consumers",
    "set_process_actor",
    "track",
]

ENV_ACTOR = "REDIS_SRE_AUDIT_ACTOR"
ANOMALY = "anomaly"  # the outcome of an anomaly event

logger = logging.getLogger("redis_encrypted_fields.audit")
# Off by default, even under an application that logs everything at INFO: audit volume is one
# line per secret touched, so it is something to switch on deliberately.
logger.setLevel(logging.WARNING)

_log = logging.getLogger("redis_encrypted_fields")


class AuditEvent(NamedTuple):
    """What happened to one secret. Holds no secret.

    A NamedTuple, not a frozen dataclass: one is built per value audited, and a frozen
    dataclass's ``__init__`` costs ten times as much.
    """

    operation: str  # "encrypt", "decrypt", "rewrap", "kms_decrypt", "key_created", ...
    outcome: str  # "ok", "failed" or "anomaly"
    model: str | None = None
    field: str | None = None
    record: str | None = None  # the record's Redis key
    key_id: str | None = None  # hex id of the master key involved
    reason: str | None = None  # why it failed: the library's own message; an anomaly's rule
    kms_key_id: str | None = None  # the KMS key of a KMS call or key store change
    error: str | None = None  # the failure's exception class: "DecryptionError", "KmsError", ...
    detail: str | None = None  # an anomaly's counts ("12 failed decrypts within 60 s")

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


_new = tuple.__new__
AuditHook = Callable[[AuditEvent], None]
# The library's own sinks (stream, metrics, anomaly rules): also given the seal/open time, in
# seconds, when the event has one.
Consumer = Callable[[AuditEvent, "float | None"], None]

_hooks: tuple[AuditHook, ...] = ()
_consumers: tuple[Consumer, ...] = ()
# Whether events are built whatever the logger's level: a hook, or a consumer that wants them.
_listening = False
_wanted = False  # set_consumers' own say in _listening


def _update() -> None:
    global _listening
    _listening = bool(_hooks) or _wanted


def add_audit_hook(hook: AuditHook) -> AuditHook:
    """Send every event to ``hook`` as well (returned, so it can be used as a decorator)."""
    global _hooks
    _hooks = (*_hooks, hook)
    _update()
    return hook


def remove_audit_hook(hook: AuditHook) -> None:
    """Stop sending events to ``hook``."""
    global _hooks
    # Equality, not identity: a bound method is a new object at every attribute access.
    _hooks = tuple(h for h in _hooks if h != hook)
    _update()


def set_consumers(consumers: tuple[Consumer, ...], *, listening: bool) -> None:
    """The library's own sinks (``configure_audit`` sets them); ``listening``: whether they
    want events built even when neither the logger nor a hook listens (an anomaly detector in
    its default mode only watches events built for others)."""
    global _consumers, _wanted
    _consumers = consumers
    _wanted = listening
    _update()


# logging's own cache of this logger's answers to isEnabledFor (emptied, never replaced, when
# levels change; isEnabledFor fills it). Read directly: this runs for every secret the public
# API touches, and the method call costs more than the answer.
_cache = getattr(logger, "_cache", None)
_answers: dict[int, bool] = _cache if isinstance(_cache, dict) else {}
_INFO = logging.INFO


def audit_enabled() -> bool:
    """Whether anything listens; callers skip building events when nothing does."""
    if _listening:
        return True
    if _answers.get(_INFO) is False:
        return False  # what isEnabledFor would answer from the same cache
    return logger.isEnabledFor(_INFO)


def emit(event: AuditEvent, duration: float | None = None) -> None:
    """Deliver ``event`` to the audit logger, the hooks and the consumers (``duration``: the
    seal or open time, for metrics). Call only if ``audit_enabled()``; anomalies always.

    The log record shows every name ``printable`` (in its message and in its ``audit`` dict,
    which formatters print too): a record key is chosen by whoever writes to Redis, and one
    holding a newline would otherwise show as an audit line of its own. Hooks get the event as
    it is: they receive data, not lines, and may need the exact key.
    """
    level = logging.WARNING if event.outcome == ANOMALY else _INFO
    # The cached answer first, as in audit_enabled: most events have no log line to make.
    if _answers.get(level) is not False and logger.isEnabledFor(level):
        shown = {k: printable(v) if isinstance(v, str) else v for k, v in event.as_dict().items()}
        where = ".".join(p for p in (shown["model"], shown["field"]) if p) or "-"
        logger.log(
            level,
            "%s %s %s record=%s key=%s%s%s%s",
            shown["operation"],
            shown["outcome"],
            where,
            shown["record"] or "-",
            shown["key_id"] or "-",
            f" kms={shown['kms_key_id']}" if shown["kms_key_id"] else "",
            f" reason={shown['reason']}" if shown["reason"] else "",
            f" ({shown['detail']})" if shown["detail"] else "",
            extra={"audit": shown},
        )
    for hook in _hooks:
        try:
            hook(event)
        except Exception:
            # An audit sink must not break reads and writes; the failure itself is logged.
            _log.exception("audit hook %r failed", hook)
    for consumer in _consumers:
        try:
            consumer(event, duration)
        except Exception:
            _log.exception("audit consumer %r failed", consumer)


def track(
    operation: str,
    *,
    model: str | None = None,
    field: str | None = None,
    record: str | None = None,
    key_id: bytes | str | None = None,
    error: BaseException | None = None,
    kms_key_id: str | None = None,
    duration: float | None = None,
) -> None:
    """Build and deliver one event, if anything listens. ``key_id``: the master key's id, as
    bytes or hex (the caller reads it: an envelope's is parsed by ``crypto.stored``);
    ``duration``: the seal or open time in seconds, for the metrics."""
    if not audit_enabled():
        return
    kid = key_id.hex() if isinstance(key_id, bytes) else key_id
    if error is None:
        # tuple.__new__ with every field: this runs for every value audited, and a NamedTuple's
        # own __new__ (Python code, keywords and defaults) costs as much as the rest of track.
        event = _new(
            AuditEvent, (operation, "ok", model, field, record, kid, None, kms_key_id, None, None)
        )
    else:
        event = AuditEvent(
            operation,
            "failed",
            model,
            field,
            record,
            kid,
            str(error),
            kms_key_id,
            type(error).__name__,
        )
    emit(event, duration)


# --- who acts: the actor of the events --------------------------------------------------------

_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "redis_encrypted_fields_audit_actor", default=None
)


class _ProcessActor:
    """``REDIS_SRE_AUDIT_ACTOR``, else ``host:pid`` (found again in a forked child)."""

    def __init__(self) -> None:
        self.name = ""
        self.given: str | None = None
        reset_in_children(self)
        self.after_fork()

    def after_fork(self) -> None:
        given = self.given if self.given is not None else os.environ.get(ENV_ACTOR, "").strip()
        self.name = given or f"{socket.gethostname()}:{os.getpid()}"


_process = _ProcessActor()


def set_process_actor(name: str | None) -> None:
    """The process's actor (``None``: ``REDIS_SRE_AUDIT_ACTOR``, else ``host:pid``)."""
    _process.given = name.strip() if name and name.strip() else None
    _process.after_fork()


def current_actor() -> str:
    """Who the events of this context are about: the innermost ``acting_as``, else the
    process's actor."""
    return _actor.get() or _process.name


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Name the actor of the events in this block (a request's user, a job's name): it goes to
    the stream and keys the per-actor rate rule. Context-local (threads, asyncio tasks)."""
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)
