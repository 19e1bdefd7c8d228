"""``EncryptedStr``: plaintext in the application, an envelope at rest, a mask in JSON.

Used on its own (any pydantic or redis-om model), values are encrypted without record binding.
Inside an ``EncryptedModel`` the model binds each value to its record and field (see ``models``).
"""

from __future__ import annotations

import contextvars
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from .envelope import looks_like_envelope, open_envelope, seal
from .errors import MaskedSecretError
from .keys import get_keyring
from .legacy import open_legacy, parse_legacy

__all__ = ["DEFAULT_MASK", "EncryptedStr", "Mask", "is_star_mask"]


def is_star_mask(value: str) -> bool:
    """A mask is a value made only of ``*``, three or more of them."""
    return len(value) >= 3 and value.count("*") == len(value)


class Mask:
    """How an encrypted field shows in JSON output, and what counts as "keep the existing secret".

    Use as ``Annotated[EncryptedStr, Mask("**********")]``.
    """

    __slots__ = ("text",)

    def __init__(self, text: str = "***") -> None:
        if not is_star_mask(text):
            raise ValueError("a mask must be made only of '*', at least three of them")
        self.text = text

    def render(self, plaintext: str) -> str:
        """The text that stands for ``plaintext`` in JSON output."""
        return self.text

    def could_be_mask(self, value: str) -> bool:
        """Whether ``value`` may be a mask sent back (decides whether to fetch the secret)."""
        return is_star_mask(value)

    def is_mask_of(self, value: str, existing: str | None) -> bool:
        """Whether ``value``, sent back, means "keep ``existing``"."""
        return is_star_mask(value)

    def __repr__(self) -> str:
        return f"Mask({self.text!r})"

    def __get_pydantic_core_schema__(
        self, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return _core_schema(self)


DEFAULT_MASK = Mask()


class EncryptedStr(str):
    """A secret string: a ``str`` for the application, an envelope at rest, a mask in JSON.

    ``repr()`` never shows the value; ``get_secret_value()`` mirrors pydantic's ``SecretStr``.
    ``str(value)`` and f-strings give the plaintext, as for any ``str``: that is what lets
    ``redis.Redis.from_url(model.connection_url)`` work.
    """

    def get_secret_value(self) -> str:
        """The plaintext as a plain ``str``."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return "EncryptedStr('**********')"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return _core_schema(DEFAULT_MASK)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return _json_schema()


class KeepExisting(EncryptedStr):
    """A mask given where a secret goes: on save, the stored secret is kept (``EncryptedModel``)."""

    def __repr__(self) -> str:
        return "EncryptedStr(<mask: keep existing>)"


class Pending:
    """An encrypted field's value during a model's own ``model_dump``: sealed by the model.

    Not a ``str``, so that a value the model did not seal can never be stored as plaintext.
    """

    __slots__ = ("mask", "value")

    def __init__(self, value: str, mask: Mask) -> None:
        self.value = value
        self.mask = mask

    def __repr__(self) -> str:
        return "Pending(<secret>)"


# Set by EncryptedModel while it validates: masks are then kept as KeepExisting, for the model
# to resolve on save, instead of being refused outright.
model_scope: contextvars.ContextVar[bool] = contextvars.ContextVar("ref_model_scope", default=False)

# Context key by which EncryptedModel.model_dump asks for Pending values instead of envelopes.
DEFER = "redis_encrypted_fields.defer"


def _json_schema() -> JsonSchemaValue:
    return {"type": "string", "format": "password", "writeOnly": True}


def _where(info: core_schema.ValidationInfo) -> str:
    title = (info.config or {}).get("title") or "model"
    return f"{title}.{info.field_name}" if info.field_name else title


def _core_schema(mask: Mask) -> core_schema.CoreSchema:
    def validate(value: Any, info: core_schema.ValidationInfo) -> EncryptedStr:
        if isinstance(value, EncryptedStr):
            return value
        if not isinstance(value, str):
            # No input_value in the message: it may be a secret of the wrong type.
            raise PydanticCustomError("encrypted_str_type", "Input should be a valid string")
        if mask.could_be_mask(value):
            if model_scope.get():
                return KeepExisting(value)
            raise MaskedSecretError(
                f"{_where(info)}: a mask ({value!r}) is not a secret; refusing to store it"
            )
        if looks_like_envelope(value):
            return EncryptedStr(open_envelope(value, get_keyring()))
        if parse_legacy(value) is not None:
            return EncryptedStr(open_legacy(value, get_keyring()))
        return EncryptedStr(value)

    def serialize(value: Any, info: core_schema.SerializationInfo) -> Any:
        if info.mode == "json":
            return mask.render(value)
        context = info.context
        if context is not None and context.get(DEFER):
            return Pending(value, mask)
        if isinstance(value, KeepExisting) or mask.could_be_mask(value):
            raise MaskedSecretError("a mask is not a secret; refusing to serialize it for storage")
        return seal(value, get_keyring())

    return core_schema.with_info_plain_validator_function(
        validate,
        serialization=core_schema.plain_serializer_function_ser_schema(
            serialize, info_arg=True, when_used="always"
        ),
        metadata={"pydantic_js_functions": [lambda _schema, _handler: _json_schema()]},
    )
