"""Blind indexes: equality search on encrypted fields without showing the values to Redis.

``Annotated[EncryptedStr, BlindIndex()]`` stores, beside the field (``<field>__bidx``), a
*companion*: the public id of the master key it was made with, then a keyed digest of the
normalized plaintext, truncated to ``bits``::

    companion = key_id_hex || hex(truncate(HMAC-SHA256(index_key, normalize(value)), bits))
    index_key = HKDF-SHA256(master key, "redis-encrypted-fields/blind-index/v1" || model key
                prefix || field || index definition)

The index key is derived from a master key of the key ring (never from a data key), separately
for every model, field and definition, so companions are unrelated across fields and models. A
query computes the companion of the value under every key of the ring and asks RediSearch for
any of them (see ``query``); the records found are candidates, decrypted and compared before
they are returned. See ``docs/search.md`` for what the companions reveal.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..crypto.envelope import binding_part
from ..errors import BlindIndexError, EncryptionError
from ..keys import KEY_ID_SIZE, KeyRing, MasterKey, get_keyring
from .typed import TypeCodec

__all__ = [
    "COMPANION_SUFFIX",
    "DEFAULT_BITS",
    "INDEX_EMPTY",
    "INDEX_MISSING",
    "INDEX_OUTDATED",
    "INDEX_SUFFIX",
    "KEY_ID_HEX",
    "MAX_BITS",
    "PLAN_RULE",
    "BlindIndex",
    "IndexKey",
    "IndexPlan",
    "Normalizer",
    "SearchSpec",
    "casefold",
    "companion_name",
    "companion_schema",
    "companion_state",
    "domain",
    "foreign_prefixes",
    "index_key",
    "plan_index",
    "with_companions",
    "write_companions",
]

DEFAULT_BITS = 16
MAX_BITS = 64
COMPANION_SUFFIX = "__bidx"
KEY_ID_HEX = 2 * KEY_ID_SIZE
_HEX = "0123456789abcdef"
# RediSearch refuses shorter prefixes (MINPREFIX, default 2).
_MIN_PREFIX = 2
_LABEL = b"redis-encrypted-fields/blind-index/v1"

Normalizer = Callable[[str], str]


def casefold(value: str) -> str:
    """The case-insensitive form of ``value``: NFKC, case folding, NFKC again.

    ``"Alice@EXAMPLE.com"``, ``"alice@example.com"`` and the same in full-width letters have
    the same form (Unicode's compatibility caseless matching, as identifiers are compared).
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())


def _exact(value: str) -> str:
    return value


_BUILTIN: dict[str, Normalizer] = {"exact": _exact, "casefold": casefold}


def companion_name(field: str) -> str:
    """Where a field's companion is stored: a hash field, or a JSON key beside the field."""
    return field + COMPANION_SUFFIX


class BlindIndex:
    """Makes an ``EncryptedStr`` field of an ``EncryptedModel`` searchable by equality.

    Use as ``email: Annotated[EncryptedStr, BlindIndex()]``; then ``Model.find(Model.email ==
    value)`` and ``Model.email << [v1, v2]`` work, with exact results.

    ``bits``: length of the stored digest, 1 to 64 (default 16). Shorter hides more (more
    values share a companion) and makes every query decrypt more candidates; choose it with
    ``plan_index`` (``redis-encrypted-fields plan-index``). ``normalize``: ``"exact"`` (the
    default: values match when equal), ``"casefold"`` (case-insensitive, Unicode NFKC), or a
    function ``str -> str`` applied to stored values and to queried values alike. Changing
    ``bits`` or ``normalize`` is a re-index: run ``redis-encrypted-fields migrate``.
    """

    __slots__ = ("_fn", "_format", "_nbytes", "_shift", "bits", "definition", "normalize")

    def __init__(self, bits: int = DEFAULT_BITS, normalize: str | Normalizer = "exact") -> None:
        if type(bits) is not int or not 1 <= bits <= MAX_BITS:
            raise BlindIndexError(f"BlindIndex(bits=...) must be an integer from 1 to {MAX_BITS}")
        if isinstance(normalize, str):
            if normalize not in _BUILTIN:
                raise BlindIndexError(
                    "BlindIndex(normalize=...) must be 'exact', 'casefold' or a function "
                    f"str -> str, not {normalize!r}"
                )
            self._fn = _BUILTIN[normalize]
            kind = normalize
        elif callable(normalize):
            self._fn = normalize
            kind = "custom"
        else:
            raise BlindIndexError("BlindIndex(normalize=...) must be a name or a function")
        self.bits = bits
        self.normalize = normalize
        # Part of the index key's derivation: another definition gives unrelated companions.
        self.definition = f"bits={bits};normalize={kind}"
        self._nbytes = (bits + 7) // 8
        self._shift = 8 * self._nbytes - bits
        self._format = f"0{(bits + 3) // 4}x"  # hex digits for the truncated number

    def normalized(self, value: str, where: str) -> str:
        """``value`` in the form the index compares; ``where`` names the field for errors."""
        fn = self._fn
        if fn is _exact:
            return value
        try:
            result = fn(value)
        except Exception as exc:  # the user's function: its message may quote the value
            raise BlindIndexError(
                f"{where}: the BlindIndex normalize function raised {type(exc).__name__}"
            ) from None
        if not isinstance(result, str):
            raise BlindIndexError(f"{where}: the BlindIndex normalize function must return a str")
        return result

    def companion(self, key: MasterKey, domain: bytes, normalized: str) -> str:
        """The companion of an already normalized value under ``key``."""
        index = key.made_once(domain, IndexKey)
        mac = index.mac(normalized.encode("utf-8", "surrogatepass"))[: self._nbytes]
        if not self._shift:  # whole bytes (the default): their hex is the digest's
            return index.key_id_hex + mac.hex()
        return index.key_id_hex + format(int.from_bytes(mac, "big") >> self._shift, self._format)

    def companions(self, ring: KeyRing, domain: bytes, normalized: str) -> list[str]:
        """The companion of a value under every key of the ring, current first: what a query
        looks for, so that records indexed before a rotation are still found."""
        return [self.companion(key, domain, normalized) for key in ring.keys]

    def __repr__(self) -> str:
        name = self.normalize if isinstance(self.normalize, str) else "<function>"
        return f"BlindIndex(bits={self.bits}, normalize={name!r})"


@functools.lru_cache(maxsize=1024)
def domain(prefix: str, field: str, definition: str) -> bytes:
    """The HKDF info of one model's (key prefix) field under one index definition."""
    return _LABEL + binding_part(prefix) + binding_part(field) + binding_part(definition)


class IndexKey:
    """The index key of one master key for one ``domain``, ready to compute HMAC-SHA256 tags.

    The key's inner and outer pads are hashed once (RFC 2104), so a tag costs two hash copies:
    ``hmac.digest`` sets the key up again on every call, five times the cost of a tag here.
    (``tests/test_search.py`` checks the tags against ``hmac``.)
    """

    __slots__ = ("_inner", "_outer", "key_id_hex")

    def __init__(self, key: MasterKey, info: bytes) -> None:
        block = key.derive(info).ljust(64, b"\0")  # 32 bytes: within SHA-256's 64-byte block
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self.key_id_hex = key.key_id_hex

    def mac(self, message: bytes) -> bytes:
        """HMAC-SHA256(index key, message)."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def __repr__(self) -> str:
        return f"IndexKey(master key {self.key_id_hex})"


def index_key(key: MasterKey, info: bytes) -> IndexKey:
    """The index key of one master key for one ``domain``: derived once per key object and kept
    by it, so it expires with the key (never in a cache of its own: that would keep the key, and
    what is derived from it, after its ring has dropped it)."""
    return key.made_once(info, IndexKey)


class SearchSpec(NamedTuple):
    """What a model's queries and saves need to know about it (worked out once per class)."""

    blind: dict[str, BlindIndex]  # top-level fields with a blind index, by name
    encrypted: frozenset[str]  # every top-level field that holds encrypted values
    companions: frozenset[str]  # the companions' names
    # The blind-indexed Encrypted[T] fields' codecs: their values are indexed by their text.
    codecs: Mapping[str, TypeCodec]

    @classmethod
    def of(
        cls,
        blind: dict[str, BlindIndex],
        encrypted: Iterable[str],
        codecs: Mapping[str, TypeCodec] | None = None,
    ) -> SearchSpec:
        companions = frozenset(map(companion_name, blind))
        return cls(blind, frozenset(encrypted), companions, dict(codecs or {}))


def companion_schema(field: str, is_json: bool) -> str:
    """The RediSearch schema attribute of a field's companion (TAG: exact match, no stemming)."""
    name = companion_name(field)
    return f"$.{name} AS {name} TAG SEPARATOR |" if is_json else f"{name} TAG SEPARATOR |"


def with_companions(schema: str, blind: Mapping[str, BlindIndex], is_json: bool) -> str:
    """A model's RediSearch schema (redis-om's) with its companions' attributes."""
    return " ".join([schema, *(companion_schema(name, is_json) for name in blind)])


def write_companions(
    data: dict[str, Any],
    values: Mapping[str, Any],
    blind: Mapping[str, BlindIndex],
    key_prefix: str,
    model: type,
    clear: str | None,
    codecs: Mapping[str, TypeCodec],
    key: MasterKey | None = None,
) -> None:
    """Put into ``data`` (what a save writes) the companions of a record's ``values`` (masks
    already resolved), under the current master key (``key``: a scoped record's scope key).
    A field without a value gets ``clear`` ("" for a hash: it overwrites the old companion and
    is not indexed) or nothing (a JSON
    document is written whole). An ``Encrypted[T]`` value (``codecs``) is indexed by its
    text: its canonical encoding."""
    current = get_keyring().current if key is None else key
    for name, index in blind.items():
        value = values.get(name)
        if value is None:
            if clear is not None:
                data[companion_name(name)] = clear
            continue
        codec = codecs.get(name)
        text = str.__str__(value) if codec is None else codec.encode(value)
        normalized = index.normalized(text, f"{model.__name__}.{name}")
        info = domain(key_prefix, name, index.definition)
        data[companion_name(name)] = index.companion(current, info, normalized)


def foreign_prefixes(key_ids: Iterable[str]) -> list[str]:
    """TAG prefixes (at least two hex digits each, sorted) that together match exactly the
    companions not made under one of ``key_ids`` (hex): what a query looks for to learn whether
    stored companions were made under keys the ring does not hold.

    Every value under such a prefix is foreign, so one prefix whose expansion RediSearch cuts
    short (MAXPREFIXEXPANSIONS) still finds a foreign record when there is one.
    """
    known = {k.lower() for k in key_ids if len(k) == KEY_ID_HEX}
    found: list[str] = []

    def walk(prefix: str) -> None:
        for digit in _HEX:
            longer = prefix + digit
            if not any(k.startswith(longer) for k in known):
                if len(longer) >= _MIN_PREFIX:
                    found.append(longer)
                else:
                    found.extend(longer + d for d in _HEX)
            elif len(longer) < KEY_ID_HEX:
                walk(longer)

    walk("")
    return sorted(found)


# --- the state of a stored companion (for the maintenance operations) --------------------------

INDEX_MISSING = "index-missing"
INDEX_OUTDATED = "index-outdated"
INDEX_EMPTY = "empty"
INDEX_SUFFIX = " (blind index)"  # of the name the reports count a field's companions under


def companion_state(
    index: BlindIndex,
    ring: KeyRing,
    domain_info: bytes,
    plaintext: str | None,
    stored: str | None,
    where: str,
) -> tuple[str, str]:
    """How a stored companion stands against the value it indexes, and what it should be.

    Returns ``(state, expected)``: ``state`` is ``"key:<id>"`` when ``stored`` is the value's
    companion under that key of the ring, ``INDEX_MISSING``, ``INDEX_OUTDATED`` (made from
    another value or definition, or under a key not in the ring) or ``INDEX_EMPTY`` (no value,
    no companion); ``expected`` is the companion under the current key ("" for no value).
    """
    stored = stored or ""
    if plaintext is None:
        return (INDEX_EMPTY if not stored else INDEX_OUTDATED), ""
    normalized = index.normalized(plaintext, where)
    expected = index.companion(ring.current, domain_info, normalized)
    if not stored:
        return INDEX_MISSING, expected
    if hmac.compare_digest(stored, expected):
        return _state(ring.current), expected
    try:
        key = ring.get(bytes.fromhex(stored[:KEY_ID_HEX]))
    except (ValueError, EncryptionError):  # not a key id, or a key not in the ring
        return INDEX_OUTDATED, expected
    if hmac.compare_digest(stored, index.companion(key, domain_info, normalized)):
        return _state(key), expected
    return INDEX_OUTDATED, expected


def _state(key: MasterKey) -> str:
    # The same name status gives envelopes under that key, so both share a column.
    return f"key:{key.key_id_hex}"


# --- the planner ------------------------------------------------------------------------------


PLAN_RULE = (
    "sqrt(X) < 2^bits < X/2 for X distinct values (AWS Database Encryption SDK, beacon length)"
)


@dataclass(frozen=True, slots=True)
class IndexPlan:
    """The safe digest lengths for a population, by the AWS Database Encryption SDK's rule for
    beacon lengths: for ``distinct`` values X, sqrt(X) < 2^bits < X/2.

    Below the range, companions are shared by so many values that queries return a large part
    of the data; above it, most values have a companion of their own and equal companions
    reveal equal values almost exactly.
    """

    records: int
    distinct: int
    min_bits: int
    max_bits: int

    @property
    def recommended(self) -> int:
        """The longest safe length: the fewest candidates per query within the range."""
        return self.max_bits

    def candidates(self, bits: int) -> float:
        """Records an equality query is expected to fetch and decrypt: the matches (records per
        value, on average) plus the others whose companion collides."""
        per_value = self.records / self.distinct
        return per_value + (self.records - per_value) / (1 << bits)

    def values_per_companion(self, bits: int) -> float:
        """Distinct values expected to share each companion (at least 2 within the range)."""
        return self.distinct / (1 << bits)


def plan_index(records: int, distinct: int | None = None) -> IndexPlan:
    """The safe range of ``BlindIndex(bits=...)`` for ``records`` records holding ``distinct``
    distinct values (default: all distinct), by AWS's rule sqrt(X) < 2^bits < X/2.

    Raises ``BlindIndexError`` when no length is safe: too few distinct values to hide (up to 8,
    and 16), where any length either tells values apart or matches most records.
    """
    if type(records) is not int or records < 1:
        raise BlindIndexError("records must be a positive integer")
    if distinct is None:
        distinct = records
    if type(distinct) is not int or not 1 <= distinct <= records:
        raise BlindIndexError("distinct must be a positive integer, at most records")
    # sqrt(X) < 2^n  <=>  4^n > X;   2^n < X/2  <=>  2^(n+1) < X  <=>  2^(n+1) <= X - 1.
    low = 1
    while 4**low <= distinct:
        low += 1
    high = min((distinct - 1).bit_length() - 2, MAX_BITS)
    if high < low:
        raise BlindIndexError(
            f"{distinct} distinct values are too few to hide behind a blind index: no length "
            "satisfies sqrt(X) < 2^bits < X/2 (each companion would either name one value or "
            "cover most of them)"
        )
    return IndexPlan(records, distinct, low, high)
