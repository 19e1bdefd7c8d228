"""FT.SEARCH replies in the forms redis-py gives them (a RESP2 list before redis-py 8, else a
dict): the results in the dict form whatever the form (``reply_results``, what a ``find()``
page builds its records from), the documents with the fields a filter reads (``documents``), a
reply cut to some of its documents (``only_results``), and the keys of a NOCONTENT reply
(``reply_keys``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis_om.search_reply import pairs_to_dict, search_document_keys, string_keyed, to_string

__all__ = ["Doc", "documents", "only_results", "reply_keys", "reply_results"]


# --- candidates as RediSearch returns them ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Doc:
    key: str
    fields: dict[str, Any]  # the fields the filter reads (hash), or the JSON document
    position: int  # in the reply's results


def _str_keyed(value: Mapping[Any, Any]) -> Mapping[str, Any]:
    # redis-py gives str keys with decode_responses (redis-om's default), bytes otherwise.
    return value if isinstance(next(iter(value), ""), str) else string_keyed(value)


def _content(payload: Any, names: Sequence[str]) -> dict[str, Any]:
    if isinstance(payload, (list, tuple)):
        payload = pairs_to_dict(payload)
    elif isinstance(payload, Mapping):
        payload = _str_keyed(payload)
    else:
        return {}  # expired meanwhile: redis-om skips it too
    document = payload.get("$")
    if document is not None:
        parsed = json.loads(document)
        return parsed if isinstance(parsed, dict) else {}
    return {name: to_string(payload.get(name)) for name in names}


def _results(raw: Mapping[Any, Any]) -> list[Any]:
    return list(_str_keyed(raw).get("results") or [])


def documents(raw: Any, names: Sequence[str]) -> list[Doc]:
    """The documents of an FT.SEARCH reply (redis-py's RESP2 list or RESP3 dict), with the
    fields ``names`` (a hash's) or the whole document (JSON)."""
    if isinstance(raw, Mapping):
        items = [_str_keyed(item) for item in _results(raw)]
        return [
            Doc(str(to_string(item.get("id"))), _content(item.get("extra_attributes"), names), i)
            for i, item in enumerate(items)
        ]
    if not raw:
        return []
    pairs = zip(raw[1::2], raw[2::2], strict=False)
    return [Doc(str(to_string(k)), _content(p, names), i) for i, (k, p) in enumerate(pairs)]


def only_results(raw: Any, positions: Sequence[int]) -> Any:
    """The reply with the documents at ``positions`` only (what redis-om's ``from_redis`` reads)."""
    if isinstance(raw, Mapping):
        results = _results(raw)
        return {"results": [results[i] for i in positions]}
    return [raw[0], *(x for i in positions for x in raw[1 + 2 * i : 3 + 2 * i])]


def reply_keys(raw: Any) -> set[str]:
    """The record keys of an FT.SEARCH NOCONTENT reply."""
    if isinstance(raw, Mapping):
        return set(search_document_keys(raw))
    return {str(to_string(key)) for key in raw[1:]} if raw else set()


def reply_results(res: Any) -> list[Any] | None:
    """The results of an FT.SEARCH reply with content, in redis-py's dict form (``{"id": key,
    "extra_attributes": fields}`` each) whichever form redis-py gave (a RESP2 list before
    redis-py 8); ``None`` for a reply of neither form."""
    if isinstance(res, Mapping):
        results = res.get("results") if type(res) is dict else string_keyed(res).get("results")
        return results if type(results) is list else None
    if not isinstance(res, (list, tuple)):
        return None
    results = []
    for i in range(1, len(res) - 1, 2):
        payload = res[i + 1]
        if isinstance(payload, (str, bytes)):
            break  # a NOCONTENT reply: keys only
        if payload is not None:
            fields = pairs_to_dict(payload)
            results.append({"id": to_string(res[i]), "extra_attributes": fields})
    return results
