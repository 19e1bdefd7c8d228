"""Where audit events go besides the logger and hooks: the stream, the metrics, the anomaly
rules. Read from the environment when the package is imported; ``configure_audit`` changes it
in code (each argument not given is read from the environment again).

- ``REDIS_SRE_AUDIT_STREAM``: ``1``, the trail in a Redis Stream on the models' Redis
  (``REDIS_OM_URL``); a ``redis://``, ``rediss://`` or ``unix://`` URL, on that server; unset
  or ``0``, none.
- ``REDIS_SRE_AUDIT_STREAM_MAXLEN``: entries kept (approximately; default 1,000,000).
- ``REDIS_SRE_AUDIT_BUFFER``: events buffered while the audit Redis is slow or away (default
  10,000; then the oldest are dropped, and counted).
- ``REDIS_SRE_AUDIT_ACTOR``: who the process is, in the stream (default ``host:pid``).
- ``REDIS_SRE_AUDIT_METRICS``: ``1``, OpenTelemetry metrics (the ``otel`` extra).
- ``REDIS_SRE_AUDIT_ANOMALIES``: ``1``, anomaly rules on; ``0``, off; unset, on with the stream
  or the metrics.
- ``REDIS_SRE_AUDIT_RULES``: ``rule=setting,...``, each ``off`` or ``COUNT/SECONDS``
  (``decrypt_rate``: ``MINIMUM/SECONDS/FACTORx``).
- ``REDIS_SRE_AUDIT_ALERT_INTERVAL``: seconds between two alerts of one rule (default 300).
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from ..errors import ConfigurationError
from .anomalies import DEFAULT_ALERT_INTERVAL, Detector, Rule, parse_rules
from .events import Consumer, set_consumers, set_process_actor
from .metrics import DEFAULT_TIMING_SAMPLE, Metrics, otel_available
from .stream import DEFAULT_BUFFER, DEFAULT_MAXLEN, STREAM_KEY, StreamWriter, client_for

__all__ = [
    "ENV_ALERT_INTERVAL",
    "ENV_ANOMALIES",
    "ENV_BUFFER",
    "ENV_METRICS",
    "ENV_RULES",
    "ENV_STREAM",
    "ENV_STREAM_MAXLEN",
    "FROM_ENV",
    "AuditConfig",
    "audit_config",
    "configure_audit",
    "flush_audit",
    "stream_url",
]

ENV_STREAM = "REDIS_SRE_AUDIT_STREAM"
ENV_STREAM_MAXLEN = "REDIS_SRE_AUDIT_STREAM_MAXLEN"
ENV_BUFFER = "REDIS_SRE_AUDIT_BUFFER"
ENV_METRICS = "REDIS_SRE_AUDIT_METRICS"
ENV_ANOMALIES = "REDIS_SRE_AUDIT_ANOMALIES"
ENV_RULES = "REDIS_SRE_AUDIT_RULES"
ENV_ALERT_INTERVAL = "REDIS_SRE_AUDIT_ALERT_INTERVAL"
DEFAULT_URL = "redis://localhost:6379"  # redis-om's, without REDIS_OM_URL

_ON = ("1", "on", "true", "yes")
_OFF = ("", "0", "off", "false", "no")
_SCHEMES = ("redis://", "rediss://", "unix://")
_log = logging.getLogger("redis_encrypted_fields")


class FromEnv(enum.Enum):
    FROM_ENV = "from the environment"


FROM_ENV = FromEnv.FROM_ENV


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The consumers in force (``None``: off)."""

    stream: StreamWriter | None = None
    metrics: Metrics | None = None
    detector: Detector | None = None


_config = AuditConfig()


def _flag(name: str, text: str, *, auto: bool = False) -> bool | None:
    flag = text.strip().lower()
    if flag in _ON:
        return True
    if flag in _OFF and not (auto and flag == ""):
        return False
    if auto and flag in ("", "auto"):
        return None
    choices = "1 or 0" + (" (unset: auto)" if auto else "")
    raise ConfigurationError(f"{name}={text[:40]!r} is not valid: use {choices}")


def _number(name: str, default: float, *, integer: bool) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(f"{name}={text[:40]!r} is not valid: use a number above 0")
    return value


def stream_url(text: str | None = None) -> str | None:
    """The audit Redis URL ``REDIS_SRE_AUDIT_STREAM`` (or ``text``) names, ``None`` for off."""
    raw = os.environ.get(ENV_STREAM, "") if text is None else text
    value = raw.strip()
    if value.startswith(_SCHEMES):
        return value
    if value.lower() in _ON:
        return os.environ.get("REDIS_OM_URL") or DEFAULT_URL
    if value.lower() in _OFF:
        return None
    # Not shown: a mistyped URL may hold a password.
    raise ConfigurationError(
        f"{ENV_STREAM} is not valid: use 1 (the models' Redis, REDIS_OM_URL), a redis://, "
        "rediss:// or unix:// URL, or 0"
    )


def configure_audit(
    *,
    stream: str | bool | redis.Redis[Any] | FromEnv | None = FROM_ENV,
    stream_key: str = STREAM_KEY,
    stream_maxlen: int | FromEnv = FROM_ENV,
    buffer: int | FromEnv = FROM_ENV,
    metrics: bool | FromEnv = FROM_ENV,
    meter_provider: Any = None,
    timing_sample: int = DEFAULT_TIMING_SAMPLE,
    anomalies: bool | FromEnv | None = FROM_ENV,
    rules: Mapping[str, Rule | None] | FromEnv = FROM_ENV,
    alert_interval: float | FromEnv = FROM_ENV,
    actor: str | FromEnv | None = FROM_ENV,
) -> AuditConfig:
    """Set where events go; an argument not given is read from its environment variable.

    ``stream``: ``True`` (the models' Redis), a URL or a client, or ``None``/``False`` (off);
    ``metrics``: OpenTelemetry metrics on ``meter_provider`` (default: the global one; giving
    one turns metrics on), its seal/open time histogram recording one value in
    ``timing_sample``; ``anomalies``: ``True``, ``False`` or ``None`` (on with the stream
    or the metrics); ``rules``: settings by rule name (``Threshold``,
    ``Rate``, or ``None`` for off; others keep their defaults); ``actor``: the process's actor.
    The previous stream writer is closed (its buffer sent) when replaced.
    """
    global _config
    env = os.environ
    if actor is FROM_ENV:
        actor = None
    set_process_actor(actor)

    writer: StreamWriter | None = None
    connect: Callable[[], redis.Redis[Any]] | None = None
    if stream is FROM_ENV:
        stream = stream_url()
    if isinstance(stream, bool):
        stream = stream_url("1") if stream else None
    if isinstance(stream, str):
        url = stream_url(stream)
        if url is None:
            raise ConfigurationError("configure_audit(stream=...): give True, a URL or None")
        connect = lambda: client_for(url)  # noqa: E731
    elif stream is not None:
        client = stream
        connect = lambda: client  # noqa: E731
    if connect is not None:
        writer = StreamWriter(
            connect,
            key=stream_key,
            maxlen=int(
                _number(ENV_STREAM_MAXLEN, DEFAULT_MAXLEN, integer=True)
                if stream_maxlen is FROM_ENV
                else stream_maxlen
            ),
            buffer=int(
                _number(ENV_BUFFER, DEFAULT_BUFFER, integer=True) if buffer is FROM_ENV else buffer
            ),
        )

    if metrics is FROM_ENV:
        metrics = bool(_flag(ENV_METRICS, env.get(ENV_METRICS, "")))
    counter: Metrics | None = None
    if metrics or meter_provider is not None:
        if otel_available():
            dropped = (lambda: writer.dropped) if writer else None
            counter = Metrics(meter_provider, dropped, timing_sample)
        else:
            _log.warning(
                "audit metrics asked for, but OpenTelemetry's API is not installed: "
                "pip install 'redis-encrypted-fields[otel]'"
            )

    if anomalies is FROM_ENV:
        anomalies = _flag(ENV_ANOMALIES, env.get(ENV_ANOMALIES, ""), auto=True)
    detector: Detector | None = None
    if anomalies is None:
        anomalies = writer is not None or counter is not None
    if anomalies:
        if rules is FROM_ENV:
            rules = parse_rules(env.get(ENV_RULES, ""), ENV_RULES)
        interval = (
            _number(ENV_ALERT_INTERVAL, DEFAULT_ALERT_INTERVAL, integer=False)
            if alert_interval is FROM_ENV
            else alert_interval
        )
        detector = Detector(rules, alert_interval=interval)

    old, _config = _config, AuditConfig(writer, counter, detector)
    # The detector last: an anomaly it raises reaches the others after the event that tripped it.
    consumers: tuple[Consumer, ...] = tuple(c for c in (counter, writer, detector) if c)
    set_consumers(consumers, listening=bool(writer or counter or anomalies))
    if old.stream is not None:
        old.stream.close()
    return _config


def audit_config() -> AuditConfig:
    """The consumers in force."""
    return _config


def flush_audit(timeout: float = 5.0) -> bool:
    """Send the stream's buffered events now; whether all were sent within ``timeout`` s."""
    writer = _config.stream
    return True if writer is None else writer.flush(timeout)
