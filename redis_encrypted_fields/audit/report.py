"""Reading the trail back: what a window of the audit stream holds (``summarize``, for
``redis-encrypted-fields audit report``) and its entries as they come (``follow``, for
``audit tail``), each entry shown as one line (``entry_line``)."""

from __future__ import annotations

import datetime
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, printable
from .events import ANOMALY
from .stream import DROPPED

__all__ = ["Summary", "entry_line", "follow", "parse_since", "read_window", "summarize"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_Entry = tuple[str, Mapping[str, str]]


def parse_since(text: str, now: float | None = None) -> float:
    """The Unix time ``text`` names: a duration back from now (``90s``, ``15m``, ``1h``,
    ``2d``, ``1w``) or an ISO 8601 time (UTC unless it says otherwise)."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip().lower())
    if match:
        return now - float(match[1]) * _UNITS[match[2]]
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"--since {text[:40]!r}: give a duration (90s, 15m, 1h, 2d, 1w) or an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def iso(when: float) -> str:
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time(fields: Mapping[str, str]) -> float:
    try:
        return float(fields.get("time", ""))
    except ValueError:
        return 0.0


def read_window(client: Any, key: str, since: float, page: int = 10_000) -> Iterator[_Entry]:
    """The entries of stream ``key`` whose event time is ``since`` or later. An entry's id is
    when it was written, never before its event (the writer may hold events back while the
    audit Redis is away): ids from ``since`` on cover the window."""
    start = f"{max(0, int(since * 1000))}-0"
    while True:
        entries = client.xrange(key, min=start, max="+", count=page)
        for entry_id, fields in entries:
            if _time(fields) >= since:
                yield entry_id, fields
        if len(entries) < page:
            return
        start = "(" + entries[-1][0]


@dataclass(slots=True)
class Summary:
    """Counts over a window of the trail."""

    key: str
    since: float
    until: float
    events: int = 0
    failures: int = 0
    dropped: int = 0
    by_operation: Counter[str] = field(default_factory=Counter)
    by_key_id: Counter[str] = field(default_factory=Counter)
    by_actor: Counter[str] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    by_field: Counter[str] = field(default_factory=Counter)
    anomalies: list[dict[str, str]] = field(default_factory=list)

    def add(self, fields: Mapping[str, str]) -> None:
        operation = fields.get("operation", "")
        if operation == DROPPED:
            self.dropped += int(fields.get("count", "0") or 0)
            return
        if fields.get("outcome") == ANOMALY:
            anomaly = {"rule": fields.get("reason", ""), "time": iso(_time(fields))}
            for name in ("actor", "operation", "model", "field", "record", "key_id", "detail"):
                if fields.get(name):
                    anomaly[name] = fields[name]
            self.anomalies.append(anomaly)
            return
        self.events += 1
        if fields.get("outcome") == "failed":
            self.failures += 1
        self.by_operation[operation] += 1
        for counter, name in ((self.by_key_id, "key_id"), (self.by_actor, "actor")):
            if fields.get(name):
                counter[fields[name]] += 1
        model = fields.get("model")
        if model:
            self.by_model[model] += 1
            if fields.get("field"):
                self.by_field[f"{model}.{fields['field']}"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.key,
            "since": iso(self.since),
            "until": iso(self.until),
            "events": self.events,
            "failures": self.failures,
            "dropped": self.dropped,
            "by_operation": dict(self.by_operation.most_common()),
            "by_key_id": dict(self.by_key_id.most_common()),
            "by_actor": dict(self.by_actor.most_common()),
            "by_model": dict(self.by_model.most_common()),
            "by_field": dict(self.by_field.most_common()),
            "anomalies": self.anomalies,
        }

    def lines(self) -> list[str]:
        """The summary as text, every name from the stream shown ``printable``."""
        out = [
            f"audit trail {printable(self.key)}, {iso(self.since)} to {iso(self.until)}",
            f"events: {self.events}, failures: {self.failures}, dropped: {self.dropped}, "
            f"anomalies: {len(self.anomalies)}",
        ]
        for title, counter in (
            ("by operation", self.by_operation),
            ("by key id", self.by_key_id),
            ("by model", self.by_model),
            ("by field", self.by_field),
            ("by actor", self.by_actor),
        ):
            if counter:
                out.append(f"{title}:")
                out += [f"  {n:>9}  {printable(name)}" for name, n in counter.most_common()]
        if self.anomalies:
            out.append("anomalies:")
            for a in self.anomalies:
                where = ".".join(a[n] for n in ("model", "field") if a.get(n)) or "-"
                text = (
                    f"  {a['time']} {a['rule']} actor={a.get('actor', '-')} "
                    f"{a.get('operation', '-')} {where} record={a.get('record', '-')} "
                    f"key={a.get('key_id', '-')}" + (f" ({a['detail']})" if "detail" in a else "")
                )
                out.append(printable(text))
        return out


def summarize(client: Any, key: str, since: float, until: float | None = None) -> Summary:
    """What the trail holds from ``since`` on."""
    summary = Summary(key, since, time.time() if until is None else until)
    for _, fields in read_window(client, key, since):
        summary.add(fields)
    return summary


def follow(client: Any, key: str, start: str = "$", block: int = 1000) -> Iterator[_Entry]:
    """The entries written to stream ``key`` after ``start`` (an id; ``$``: from now on), as
    they come (``XREAD BLOCK``), forever."""
    last = start
    while True:
        reply = client.xread({key: last}, block=block, count=500)
        for _, entries in reply or ():
            for entry_id, fields in entries:
                last = entry_id
                yield entry_id, fields


def entry_line(fields: Mapping[str, str]) -> str:
    """One entry as one line (names ``printable``)."""
    if fields.get("operation") == DROPPED:
        return printable(
            f"{iso(_time(fields))} {fields.get('actor', '-')} {DROPPED}: "
            f"{fields.get('count', '?')} events dropped (audit buffer full)"
        )
    where = ".".join(fields[n] for n in ("model", "field") if fields.get(n)) or "-"
    text = (
        f"{iso(_time(fields))} {fields.get('actor', '-')} {fields.get('operation', '-')} "
        f"{fields.get('outcome', '-')} {where} record={fields.get('record') or '-'} "
        f"key={fields.get('key_id') or '-'}"
    )
    for name in ("kms_key_id", "error", "reason"):
        if fields.get(name):
            text += f" {name.split('_')[0] if name == 'kms_key_id' else name}={fields[name]}"
    if fields.get("detail"):
        text += f" ({fields['detail']})"
    return printable(text)
