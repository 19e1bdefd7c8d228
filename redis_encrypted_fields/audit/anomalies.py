"""Anomaly rules, evaluated in-process over sliding windows of the audit events.

An anomaly is an ``AuditEvent`` with outcome ``anomaly``, the rule's name as ``reason`` and its
counts as ``detail``, naming the operation, model, field, record and key id of the event that
tripped it; it goes wherever events go (the audit logger at WARNING, hooks, the stream, the
metrics). Alerts are rate-limited: after one, the same rule (for the same actor, for
``decrypt_rate``) stays silent for ``alert_interval`` seconds, and its next alert says how many
it held back, so that an attack makes a few alerts, not a flood.

The rules, with what they watch (``RULES``; defaults in ``DEFAULT_RULES``):

- ``decrypt_failures``: failed decrypts (``decrypt`` events, outcome ``failed``): 10 in 60 s;
- ``decrypt_rate``: successful decrypts by one actor: at least ``minimum`` within ``window``
  seconds and ``factor`` times its average per window over the previous ``baseline`` seconds
  (an actor without history is held to ``minimum``): 1000 in 60 s, 10x the last hour's rate;
- ``unknown_key``: values read under a key id the ring does not hold, or that the key store has
  retired (error ``UnknownKeyError``): 1 in 60 s;
- ``plaintext_refused``: plaintext read while plaintext reads are refused (error
  ``PlaintextSecretError``): 1 in 60 s;
- ``kms_errors``: failed KMS calls (``kms_*`` events, outcome ``failed``): 1 in 60 s;
- ``key_refused``: an active key refused as older than another (a replayed key store record):
  1 in 60 s;
- ``shredded_key``: a value or key under a shredded (crypto-erased) key touched: any event with
  error ``ShreddedKeyError`` (the error per-tenant keys will raise): 1 in 60 s.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import ConfigurationError
from .events import ANOMALY, AuditEvent, current_actor, emit

__all__ = [
    "DEFAULT_ALERT_INTERVAL",
    "DEFAULT_RULES",
    "RULES",
    "Detector",
    "Rate",
    "Rule",
    "Threshold",
    "parse_rules",
]

DEFAULT_ALERT_INTERVAL = 300.0
SHREDDED_KEY_ERROR = "ShreddedKeyError"
_SLICES = 6  # a rate window is counted in this many buckets: it slides by a sixth


@dataclass(frozen=True, slots=True)
class Threshold:
    """``count`` matching events within ``window`` seconds."""

    count: int
    window: float = 60.0

    def __post_init__(self) -> None:
        if self.count < 1 or not self.window > 0:
            raise ConfigurationError(
                f"an anomaly threshold needs a count >= 1 and a window > 0 s, not "
                f"{self.count}/{self.window}"
            )


@dataclass(frozen=True, slots=True)
class Rate:
    """At least ``minimum`` decrypts by one actor within ``window`` seconds, and ``factor``
    times its average per window over the ``baseline`` seconds before."""

    minimum: int = 1000
    window: float = 60.0
    factor: float = 10.0
    baseline: float = 3600.0

    def __post_init__(self) -> None:
        if self.minimum < 1 or not self.window > 0 or not self.factor > 0:
            raise ConfigurationError(
                f"the decrypt_rate rule needs a minimum >= 1, a window > 0 s and a factor > 0, "
                f"not {self.minimum}/{self.window}/{self.factor}x"
            )
        if self.baseline < self.window:
            raise ConfigurationError("the decrypt_rate rule's baseline must be >= its window")


Rule = Threshold | Rate


def _failed(event: AuditEvent) -> bool:
    return event.outcome == "failed"


# What each threshold rule counts (decrypt_rate counts successful decrypts per actor).
RULES: dict[str, Callable[[AuditEvent], bool]] = {
    "decrypt_failures": lambda e: e.operation == "decrypt" and _failed(e),
    "unknown_key": lambda e: e.error == "UnknownKeyError",
    "plaintext_refused": lambda e: e.error == "PlaintextSecretError",
    "kms_errors": lambda e: e.operation.startswith("kms_") and _failed(e),
    "key_refused": lambda e: e.operation == "key_refused" and _failed(e),
    "shredded_key": lambda e: e.error == SHREDDED_KEY_ERROR,
}
RATE_RULE = "decrypt_rate"

DEFAULT_RULES: dict[str, Rule] = {
    "decrypt_failures": Threshold(10, 60.0),
    RATE_RULE: Rate(),
    "unknown_key": Threshold(1, 60.0),
    "plaintext_refused": Threshold(1, 60.0),
    "kms_errors": Threshold(1, 60.0),
    "key_refused": Threshold(1, 60.0),
    "shredded_key": Threshold(1, 60.0),
}


def parse_rules(text: str, variable: str) -> dict[str, Rule | None]:
    """Rule settings from ``rule=setting,...``: ``off``; ``COUNT/SECONDS`` for a threshold
    rule; ``MINIMUM/SECONDS/FACTORx`` for ``decrypt_rate``. ConfigurationError naming
    ``variable`` for anything else (the value is a setting, not a secret: it may be shown)."""
    rules: dict[str, Rule | None] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, setting = (p.strip() for p in item.partition("="))
        if not sep or name not in DEFAULT_RULES:
            raise ConfigurationError(
                f"{variable}: {item.strip()[:60]!r} is not rule=setting with a rule of "
                f"{', '.join(DEFAULT_RULES)}"
            )
        off = setting.lower() in ("off", "0", "no", "false")
        rules[name] = None if off else _parse_setting(name, setting, variable)
    return rules


def _parse_setting(name: str, setting: str, variable: str) -> Rule:
    parts = setting.split("/")
    try:
        if name == RATE_RULE and len(parts) == 3 and parts[2].lower().endswith("x"):
            return Rate(int(parts[0]), float(parts[1]), float(parts[2][:-1]))
        if name != RATE_RULE and len(parts) == 2:
            return Threshold(int(parts[0]), float(parts[1]))
    except ValueError:
        pass
    form = "MINIMUM/SECONDS/FACTORx (1000/60/10x)" if name == RATE_RULE else "COUNT/SECONDS (10/60)"
    raise ConfigurationError(f"{variable}: {name}={setting[:40]!r}: use off or {form}")


class _Actor:
    """One actor's decrypts, in buckets of a sixth of the rate window."""

    __slots__ = ("bucket", "current", "first", "held", "history", "limit", "quiet", "recent")

    def __init__(self, bucket: int, limit: float) -> None:
        self.bucket = bucket  # the bucket being counted
        self.current = 0  # its count
        self.recent = 0  # the window's other buckets, counted
        self.first = bucket
        self.history: deque[tuple[int, int]] = deque()  # (bucket, count), completed
        self.limit = limit  # what recent + current may reach before the rule fires
        self.quiet = -math.inf  # no alert for this actor before then (the last one's interval)
        self.held = 0  # trips since its last alert


class Detector:
    """An audit consumer that evaluates ``rules`` (name: ``Rule``, or ``None`` to switch it
    off; the others keep their defaults) and emits anomalies, at most one per rule (and actor)
    per ``alert_interval`` seconds."""

    def __init__(
        self,
        rules: Mapping[str, Rule | None] | None = None,
        *,
        alert_interval: float = DEFAULT_ALERT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        max_actors: int = 10_000,
    ) -> None:
        unknown = set(rules or ()) - set(DEFAULT_RULES)
        if unknown:
            raise ConfigurationError(
                f"unknown anomaly rule(s) {sorted(unknown)}: the rules are {list(DEFAULT_RULES)}"
            )
        merged = {**DEFAULT_RULES, **(rules or {})}
        self.rules = {name: rule for name, rule in merged.items() if rule is not None}
        self.alert_interval = alert_interval
        self.clock = clock
        self.max_actors = max_actors
        self._thresholds = [
            (name, RULES[name], rule)
            for name, rule in self.rules.items()
            if isinstance(rule, Threshold)
        ]
        rate = self.rules.get(RATE_RULE)
        self._rate = rate if isinstance(rate, Rate) else None
        self._width = self._rate.window / _SLICES if self._rate else 1.0
        self._seen: dict[str, deque[float]] = {name: deque() for name, _, _ in self._thresholds}
        self._actors: dict[str, _Actor] = {}
        self._last: dict[tuple[str, str], float] = {}  # (rule, scope): time of its last alert
        self._held: dict[tuple[str, str], int] = {}  # alerts held back since
        self._lock = threading.Lock()

    def __call__(self, event: AuditEvent, duration: float | None = None) -> None:
        outcome = event.outcome
        if outcome == "ok":
            if self._rate is not None and event.operation == "decrypt":
                self._count_decrypt(event)
            return
        if outcome == ANOMALY:
            return
        now = self.clock()
        for name, matches, rule in self._thresholds:
            if not matches(event):
                continue
            with self._lock:
                seen = self._seen[name]
                seen.append(now)
                while seen and seen[0] <= now - rule.window:
                    seen.popleft()
                count = len(seen)
            if count >= rule.count:
                self._alert(
                    name,
                    "",
                    event,
                    f"{count} within {rule.window:g} s (threshold {rule.count})",
                    now,
                )

    # --- decrypt_rate ------------------------------------------------------------------------

    def _count_decrypt(self, event: AuditEvent) -> None:
        actor = current_actor()
        bucket = int(self.clock() / self._width)
        state = self._actors.get(actor)
        if state is None or state.bucket != bucket:
            state = self._roll(actor, bucket)
        state.current += 1
        if state.recent + state.current >= state.limit:
            now = self.clock()
            if now < state.quiet:
                state.held += 1  # an ongoing burst: counted, not alerted (nor locked for)
                return
            rate = self._rate
            assert rate is not None
            total = state.recent + state.current
            held, state.held = state.held, 0
            state.quiet = self._alert(
                RATE_RULE,
                actor,
                event,
                f"{total} decrypts by this actor within {rate.window:g} s (limit "
                f"{math.ceil(state.limit)}: at least {rate.minimum}, {rate.factor:g}x its "
                f"average over the previous {rate.baseline:g} s)",
                now,
                held,
            )

    def _roll(self, actor: str, bucket: int) -> _Actor:
        """The actor's state with ``bucket`` as its current bucket: the finished one kept,
        the window's sum and the limit worked out again (once per bucket, not per decrypt)."""
        rate = self._rate
        assert rate is not None
        with self._lock:
            state = self._actors.get(actor)
            if state is None:
                if len(self._actors) >= self.max_actors:
                    self._forget(bucket)
                state = self._actors[actor] = _Actor(bucket, rate.minimum)
                return state
            if state.bucket == bucket:
                return state
            if state.current:
                state.history.append((state.bucket, state.current))
            span = math.ceil(rate.baseline / self._width)
            window_start = bucket - _SLICES + 1  # first bucket of the window ending now
            history = state.history
            while history and history[0][0] < window_start - span:
                history.popleft()
            state.recent = sum(c for b, c in history if b >= window_start)
            before = sum(c for b, c in history if b < window_start)
            # The average per window over the baseline before this window, counted from the
            # actor's first event: a new actor has no rate of its own yet (only the minimum).
            buckets = min(span, max(0, window_start - state.first))
            average = before * _SLICES / buckets if buckets else 0.0
            state.limit = max(rate.minimum, rate.factor * average)
            state.bucket = bucket
            state.current = 0
            return state

    def _forget(self, bucket: int) -> None:
        # Called with the lock held: the actors idle longest go first.
        by_age = sorted(self._actors.items(), key=lambda item: item[1].bucket)
        for name, _ in by_age[: max(1, len(by_age) // 10)]:
            del self._actors[name]

    # --- alerts ------------------------------------------------------------------------------

    def _alert(
        self, rule: str, scope: str, event: AuditEvent, detail: str, now: float, held: int = 0
    ) -> float:
        """Emit the anomaly unless the rule alerted for ``scope`` less than ``alert_interval``
        ago (``held``: trips counted elsewhere meanwhile); when it may alert again."""
        key = (rule, scope)
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.alert_interval:
                self._held[key] = self._held.get(key, 0) + 1 + held
                return last + self.alert_interval
            self._last[key] = now
            held += self._held.pop(key, 0)
        if held:
            detail += f"; tripped {held} more times since its last alert"
        emit(
            AuditEvent(
                operation=event.operation,
                outcome=ANOMALY,
                model=event.model,
                field=event.field,
                record=event.record,
                key_id=event.key_id,
                reason=rule,
                kms_key_id=event.kms_key_id,
                detail=detail,
            )
        )
        return now + self.alert_interval

    def __repr__(self) -> str:
        return f"Detector(rules={sorted(self.rules)})"
