"""The audit layer: events (``events``), the durable trail in a Redis Stream (``stream``),
OpenTelemetry metrics (``metrics``), anomaly rules (``anomalies``), where events go
(``settings``, read from the environment here) and reading the trail back (``report``).

Takes key ids, never parses an envelope; below ``keys`` and ``crypto``, knowing neither
pydantic nor redis-om.
"""

from __future__ import annotations

from .anomalies import DEFAULT_RULES, Detector, Rate, Threshold
from .events import (
    AuditEvent,
    AuditHook,
    acting_as,
    add_audit_hook,
    audit_enabled,
    current_actor,
    emit,
    remove_audit_hook,
    track,
)
from .settings import AuditConfig, audit_config, configure_audit, flush_audit
from .stream import STREAM_KEY, StreamWriter

__all__ = [
    "DEFAULT_RULES",
    "STREAM_KEY",
    "AuditConfig",
    "AuditEvent",
    "AuditHook",
    "Detector",
    "Rate",
    "StreamWriter",
    "Threshold",
    "acting_as",
    "add_audit_hook",
    "audit_config",
    "audit_enabled",
    "configure_audit",
    "current_actor",
    "emit",
    "flush_audit",
    "remove_audit_hook",
    "track",
]

configure_audit()
