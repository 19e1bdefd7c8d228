"""``Encrypted[T]``: a secret of another type than ``str`` (numbers, dates, bytes, JSON values,
pydantic models), encrypted as one envelope like an ``EncryptedStr``.

In the application the attribute holds the plain value of type ``T`` (an ``int`` is an
``int``). At rest, the envelope's plaintext is the value's canonical text (``TypeCodec``) after
a type tag, ``"\\x00<tag>\\x00"``, so that a value read through a field that now declares another
type is refused (``StoredTypeError``), never taken for garbage. docs/format.md lists every
encoding.

Type checkers see ``Encrypted[int]`` as ``int``; at run time it is a class of its own (made once
per ``T``), so that redis-om's conversions by annotation (timestamps, base64, its refusal of
containers in a ``HashModel``) leave the stored envelope alone.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import json
import threading
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeAlias, TypeVar

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from ..crypto import seal_value
from ..errors import MaskedSecretError, ValueTypeError
from ..keys import get_keyring
from .fields import DEFAULT_MASK, DEFER, EncryptedStr, KeepExisting, Mask, Pending, given_text

__all__ = [
    "TAG",
    "Encrypted",
    "EncryptedBytes",
    "EncryptedType",
    "Opened",
    "TypeCodec",
    "is_typed",
    "stored_type",
]

TAG = "\x00"  # starts and ends a typed plaintext's tag: "\x00int\x00" + "5000"


def _display(source: Any) -> str:
    if isinstance(source, type) and not typing.get_args(source):
        return source.__name__
    return repr(source).replace("typing.", "")


class TypeCodec:
    """How values of one type ``T`` are checked (as pydantic validates ``T``) and written as the
    plaintext of an envelope: ``tag`` + canonical text, and back."""

    __slots__ = (
        "_adapter",
        "_dump",
        "_load",
        "_lock",
        "display",
        "exact",
        "name",
        "prefix",
        "source",
    )

    def __init__(
        self,
        name: str,
        source: Any,
        dump: Callable[[Any], str],
        load: Callable[[str], Any],
        exact: type | None,
    ) -> None:
        self.name = name  # the tag, and what messages call the type
        self.prefix = TAG + name + TAG
        self.source = source  # T
        self.display = _display(source)  # T as repr() shows it
        self.exact = exact  # values of exactly this type need no validation
        self._dump, self._load = dump, load
        self._adapter: TypeAdapter[Any] | None = None
        self._lock = threading.Lock()

    @property
    def adapter(self) -> TypeAdapter[Any]:
        """pydantic's validator of ``T``, made on first use."""
        adapter = self._adapter
        if adapter is None:
            with self._lock:
                if self._adapter is None:
                    self._adapter = TypeAdapter(self.source)
                adapter = self._adapter
        return adapter

    def coerce(self, value: Any) -> Any:
        """``value`` as a ``T``, coerced as pydantic coerces input for ``T``; ``ValueTypeError``
        (without the value) if it is not one."""
        if type(value) is self.exact:
            return value
        try:
            return self.adapter.validate_python(value)
        except PydanticValidationError as exc:
            raise ValueTypeError(_explained(exc)) from None

    def encode(self, value: Any) -> str:
        """The envelope plaintext of ``value`` (coerced first): tag, then canonical text."""
        if isinstance(value, KeepExisting):
            raise MaskedSecretError(
                "a mask is not a secret; save() keeps the stored value for a mask, "
                "model_dump() cannot"
            )
        return self.prefix + self._dump(self.coerce(value))

    def decode(self, plaintext: str) -> Any:
        """The value an envelope's plaintext holds; ``ValueTypeError`` naming the stored type (never
        the value) if it holds another type or is malformed."""
        if not plaintext.startswith(self.prefix):
            raise ValueTypeError(f"holds a value of type {stored_type(plaintext)}, not {self.name}")
        try:
            return self._load(plaintext[len(self.prefix) :])
        except (ValueError, TypeError, PydanticValidationError, decimal.DecimalException):
            raise ValueTypeError(f"holds a malformed {self.name} value") from None

    def __repr__(self) -> str:
        return f"TypeCodec({self.name!r})"


def _explained(exc: PydanticValidationError) -> str:
    """pydantic's messages for ``exc``, without the inputs."""
    parts = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(str(p) for p in error["loc"])
        parts.append(f"{loc}: {error['msg']}" if loc else error["msg"])
    return "; ".join(parts[:3]) + ("; ..." if len(parts) > 3 else "")


# --- the canonical encodings (docs/format.md) ------------------------------------------------


def _load_int(text: str) -> int:
    if not text or not (text.isascii() and text.lstrip("-").isdigit()):
        raise ValueError("not an int")
    return int(text)


def _load_bool(text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise ValueError("not a bool")


def _load_float(text: str) -> float:
    if not text.isascii() or text.strip() != text:
        raise ValueError("not a float")
    return float(text)


def _load_decimal(text: str) -> decimal.Decimal:
    if not text.isascii() or text.strip() != text:
        raise ValueError("not a decimal")
    return decimal.Decimal(text)


def _dump_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _load_bytes(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64") from None


def _json_codec(source: Any) -> TypeCodec:
    codec: TypeCodec

    def dump(value: Any) -> str:
        plain = codec.adapter.dump_python(value, mode="json", by_alias=True)
        # Sorted keys, no spaces: equal values give equal text (blind indexes compare it).
        return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def load(text: str) -> Any:
        return codec.adapter.validate_json(text)

    exact = source if isinstance(source, type) and issubclass(source, BaseModel) else None
    codec = TypeCodec("json", source, dump, load, exact)
    return codec


def _scalar(name: str, source: type, dump: Callable[[Any], str], load: Any) -> TypeCodec:
    return TypeCodec(name, source, dump, load, source)


_SCALARS: dict[Any, TypeCodec] = {
    bool: _scalar("bool", bool, lambda v: "true" if v else "false", _load_bool),
    int: _scalar("int", int, str, _load_int),
    float: _scalar("float", float, repr, _load_float),
    decimal.Decimal: _scalar("decimal", decimal.Decimal, str, _load_decimal),
    datetime.datetime: _scalar(
        "datetime", datetime.datetime, datetime.datetime.isoformat, datetime.datetime.fromisoformat
    ),
    datetime.date: _scalar(
        "date", datetime.date, datetime.date.isoformat, datetime.date.fromisoformat
    ),
    bytes: _scalar("bytes", bytes, _dump_bytes, _load_bytes),
}
_TAGS = frozenset(codec.name for codec in _SCALARS.values()) | {"json"}


def stored_type(plaintext: str) -> str:
    """The type a decrypted plaintext holds, by its tag: ``"str"`` for an untagged one."""
    if plaintext.startswith(TAG):
        end = plaintext.find(TAG, 1, 12)
        if end > 0 and plaintext[1:end] in _TAGS:
            return plaintext[1:end]
    return "str"


def codec_for(source: Any) -> TypeCodec:
    """The codec of ``T``: a scalar's own, else JSON through pydantic."""
    scalar = _SCALARS.get(source)
    return scalar if scalar is not None else _json_codec(source)


# --- the field type ------------------------------------------------------------------------------


class Opened:
    """An ``Encrypted[T]`` value decrypted from a search reply, boxed until its field validates
    it: redis-om's ``from_redis`` converts the values of a reply (bytes to text, by annotation)
    before it builds the record, and must not touch a decrypted value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Opened(<secret>)"


class _Carried:
    """Input that is not yet a ``T``: pydantic echoes the input it validated into error
    messages, and this is the input it then sees."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<hidden>"


def typed_schema(
    codec: TypeCodec, mask: Mask, handler: GetCoreSchemaHandler
) -> core_schema.CoreSchema:
    """The pydantic schema of an ``Encrypted[T]`` field shown as ``mask``."""
    exact = codec.exact

    def carry(value: Any) -> Any:
        kind = type(value)
        if kind is exact:
            return value
        return value.value if kind is Opened else _Carried(value)

    def validate(value: Any, info: core_schema.ValidationInfo) -> Any:
        if type(value) is not _Carried:
            return value  # a T already (read from Redis, or validated before)
        value = value.value
        if isinstance(value, KeepExisting):
            return value
        if isinstance(value, str):
            text = given_text(value, mask, info)
            if isinstance(text, KeepExisting):
                return text
            if text is not None:  # an envelope, opened
                try:
                    return codec.decode(text)
                except ValueTypeError as exc:
                    raise PydanticCustomError(
                        "encrypted_type", "Stored value {why}", {"why": str(exc)}
                    ) from None
        try:
            return codec.coerce(value)
        except ValueTypeError as exc:
            raise PydanticCustomError("encrypted_type", "{why}", {"why": str(exc)}) from None

    def serialize(value: Any, info: core_schema.SerializationInfo) -> Any:
        if info.mode == "json":
            return mask.text
        if isinstance(value, KeepExisting):
            raise MaskedSecretError("a mask is not a secret; refusing to serialize it for storage")
        context = info.context
        if context is not None and context.get(DEFER):
            return Pending(codec.encode(value), mask, value)
        return seal_value(codec.encode(value), get_keyring())

    def json_schema(schema: core_schema.CoreSchema, inner: GetJsonSchemaHandler) -> JsonSchemaValue:
        if inner.mode == "serialization":
            return {
                "type": "string",
                "description": "Masked; sent back unchanged, keeps the stored value.",
                "examples": [mask.text],
            }
        shown = dict(inner(schema))
        shown["writeOnly"] = True
        return shown

    given = core_schema.union_schema(
        [
            handler.generate_schema(codec.source),
            core_schema.str_schema(pattern=r"^\*{3,}$"),
        ]
    )
    return core_schema.no_info_before_validator_function(
        carry,
        core_schema.with_info_plain_validator_function(validate, json_schema_input_schema=given),
        serialization=core_schema.plain_serializer_function_ser_schema(
            serialize, info_arg=True, when_used="always"
        ),
        metadata={"pydantic_js_functions": [json_schema]},
    )


class EncryptedType:
    """The run-time class behind ``Encrypted[T]`` (one subclass per ``T``): a secret of type
    ``T`` -- ``salary: Encrypted[int]``, ``born: Encrypted[date]``, ``token: Encrypted[bytes]``,
    ``creds: Encrypted[dict[str, Any]]``, ``profile: Encrypted[Profile]`` (a pydantic model, as
    one envelope). ``Encrypted[str]`` is ``EncryptedStr``.

    The attribute holds the plain ``T``; the stored value is an envelope; JSON output shows the
    mask (``Annotated[Encrypted[int], Mask("****")]`` for another).
    """

    __slots__ = ()
    __ref_codec__: ClassVar[TypeCodec]

    def __class_getitem__(cls, item: Any) -> Any:
        return typed_class(item)

    def __init__(self) -> None:
        raise TypeError("Encrypted[T] is a field type; its values are the plain T")

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return cls.__ref_typed_schema__(DEFAULT_MASK, handler)

    @classmethod
    def __ref_typed_schema__(
        cls, mask: Mask, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        codec = getattr(cls, "__ref_codec__", None)
        if codec is None:
            raise TypeError("use Encrypted[T] with a type, e.g. Encrypted[int]")
        return typed_schema(codec, mask, handler)


_classes: dict[Any, Any] = {}
_classes_lock = threading.Lock()


def typed_class(source: Any) -> Any:
    """The class ``Encrypted[source]`` stands for (one per type)."""
    if source is str:
        return EncryptedStr
    if isinstance(source, TypeVar):
        raise TypeError("Encrypted[T] needs a concrete type, e.g. Encrypted[int]")
    try:
        found = _classes.get(source)
    except TypeError:  # unhashable: no cache
        found = None
    if found is not None:
        return found
    name = f"Encrypted[{_display(source)}]"
    made = type(
        name,
        (EncryptedType,),
        {"__ref_codec__": codec_for(source), "__slots__": (), "__module__": __name__},
    )
    made.__qualname__ = name
    with _classes_lock:
        try:
            return _classes.setdefault(source, made)
        except TypeError:
            return made


def is_typed(annotation: Any) -> TypeCodec | None:
    """The codec of an ``Encrypted[T]`` class, or ``None`` for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, EncryptedType):
        codec: TypeCodec | None = getattr(annotation, "__ref_codec__", None)
        return codec
    return None


_T = TypeVar("_T")

if TYPE_CHECKING:
    # For type checkers the attribute is a T: ``Encrypted[int]`` is an ``int``.
    Encrypted: TypeAlias = Annotated[_T, "encrypted"]
    EncryptedBytes: TypeAlias = bytes
else:
    Encrypted = EncryptedType
    EncryptedBytes = Encrypted[bytes]
