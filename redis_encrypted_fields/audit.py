"""Audit trail: one structured event per encrypt, decrypt, re-wrap and failed decrypt, and per
KMS call and key store change (``kms_generate``, ``kms_encrypt``, ``kms_decrypt``, ``key_created``,
``key_retired``), and per active key the key store refuses to encrypt under (``key_refused``: older
than another key, a sign of a replayed record; see ``keys.store``).

Events go to the ``redis_encrypted_fields.audit`` logger at INFO, which is set to WARNING here so
that it stays silent until the application turns it on::

    logging.getLogger("redis_encrypted_fields.audit").setLevel(logging.INFO)

and to every hook registered with ``add_audit_hook`` (a callable taking an ``AuditEvent``). An
event names the operation, model, field, record and key id and the outcome: never a plaintext,
never a key. When neither the logger nor a hook listens, the cost is one cached level check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .errors import printable

__all__ = [
    "AuditEvent",
    "AuditHook",
    "add_audit_hook",
    "audit_enabled",
    "remove_audit_hook",
]

logger = logging.getLogger("redis_encrypted_fields.audit")
# Off by default, even under an application that logs everything at INFO: audit volume is one
# line per secret touched, so it is something to switch on deliberately.
logger.setLevel(logging.WARNING)

_log = logging.getLogger("redis_encrypted_fields")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened to one secret. Holds no secret."""

    operation: str  # "encrypt", "decrypt", "rewrap", "kms_decrypt", "key_created", ...
    outcome: str  # "ok" or "failed"
    model: str | None = None
    field: str | None = None
    record: str | None = None  # the record's Redis key
    key_id: str | None = None  # hex id of the master key involved
    reason: str | None = None  # why it failed: the library's own message
    kms_key_id: str | None = None  # the KMS key of a KMS call or key store change

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


AuditHook = Callable[[AuditEvent], None]
_hooks: tuple[AuditHook, ...] = ()


def add_audit_hook(hook: AuditHook) -> AuditHook:
    """Send every event to ``hook`` as well (returned, so it can be used as a decorator)."""
    global _hooks
    _hooks = (*_hooks, hook)
    return hook


def remove_audit_hook(hook: AuditHook) -> None:
    """Stop sending events to ``hook``."""
    global _hooks
    # Equality, not identity: a bound method is a new object at every attribute access.
    _hooks = tuple(h for h in _hooks if h != hook)


# logging's own cache of this logger's answers to isEnabledFor (emptied, never replaced, when
# levels change; isEnabledFor fills it). Read directly: this runs for every secret the public
# API touches, and the method call costs more than the answer.
_cache = getattr(logger, "_cache", None)
_answers: dict[int, bool] = _cache if isinstance(_cache, dict) else {}
_INFO = logging.INFO


def audit_enabled() -> bool:
    """Whether anything listens; callers skip building events when nothing does."""
    if _hooks:
        return True
    if _answers.get(_INFO) is False:
        return False  # what isEnabledFor would answer from the same cache
    return logger.isEnabledFor(_INFO)


def emit(event: AuditEvent) -> None:
    """Deliver ``event`` to the audit logger and the hooks. Call only if ``audit_enabled()``.

    The log record shows every name ``printable`` (in its message and in its ``audit`` dict,
    which formatters print too): a record key is chosen by whoever writes to Redis, and one
    holding a newline would otherwise show as an audit line of its own. Hooks get the event as
    it is: they receive data, not lines, and may need the exact key.
    """
    if logger.isEnabledFor(logging.INFO):
        shown = {k: printable(v) if isinstance(v, str) else v for k, v in event.as_dict().items()}
        where = ".".join(p for p in (shown["model"], shown["field"]) if p) or "-"
        logger.info(
            "%s %s %s record=%s key=%s%s%s",
            shown["operation"],
            shown["outcome"],
            where,
            shown["record"] or "-",
            shown["key_id"] or "-",
            f" kms={shown['kms_key_id']}" if shown["kms_key_id"] else "",
            f" reason={shown['reason']}" if shown["reason"] else "",
            extra={"audit": shown},
        )
    for hook in _hooks:
        try:
            hook(event)
        except Exception:
            # An audit sink must not break reads and writes; the failure itself is logged.
            _log.exception("audit hook %r failed", hook)


def track(
    operation: str,
    *,
    model: str | None = None,
    field: str | None = None,
    record: str | None = None,
    key_id: bytes | str | None = None,
    error: BaseException | None = None,
    kms_key_id: str | None = None,
) -> None:
    """Build and deliver one event, if anything listens. ``key_id``: the master key's id, as
    bytes or hex (the caller reads it: an envelope's is parsed by ``crypto.stored``)."""
    if not audit_enabled():
        return
    kid = key_id.hex() if isinstance(key_id, bytes) else key_id
    emit(
        AuditEvent(
            operation=operation,
            outcome="failed" if error is not None else "ok",
            model=model,
            field=field,
            record=record,
            key_id=kid,
            reason=str(error) if error is not None else None,
            kms_key_id=kms_key_id,
        )
    )
