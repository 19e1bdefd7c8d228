"""``EncryptedStr``: plaintext in the application, an envelope at rest, a mask in JSON.

Used on its own (any pydantic or redis-om model), values are encrypted without record binding.
Inside an ``EncryptedModel`` the model binds each value to its record and field (see ``mixin``).
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from ..crypto import Kind, classify, open_value, seal_value
from ..errors import MaskedSecretError
from ..keys import get_keyring

__all__ = ["DEFAULT_MASK", "EncryptedStr", "Mask", "UrlMask", "given_text", "is_star_mask"]


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
        """Whether ``value``, sent back, means "keep ``existing``".

        ``False`` stores ``value`` as a new secret; a value that is neither (``UrlMask``: a masked
        URL other than ``existing``'s rendering) raises ``MaskedSecretError``.
        """
        return is_star_mask(value)

    def __repr__(self) -> str:
        return f"Mask({self.text!r})"

    def __get_pydantic_core_schema__(
        self, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        typed = getattr(source, "__ref_typed_schema__", None)
        if typed is not None:  # Encrypted[T]: its own schema, shown as this mask
            schema: core_schema.CoreSchema = typed(self, handler)
            return schema
        return _core_schema(self)


DEFAULT_MASK = Mask()


# --- UrlMask -------------------------------------------------------------------------------------

# Separators of a URL's parts: a part made only of stars is a mask, as a whole value is for Mask.
_URL_SEPARATORS = re.compile(r"[:/@?&=#;,\[\]]")
# What render() shows; anything else makes the URL "malformed" and it shows as the plain mask.
_URL_HOST = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~-]+)?\]|[A-Za-z0-9._~-]*)(?::[0-9]*)?", re.ASCII
)
_URL_DB_PATH = re.compile(r"(?:/[0-9]*)?", re.ASCII)
_URL_SOCKET_PATH = re.compile(r"(?:[A-Za-z0-9._~/+-]|%[0-9A-Fa-f]{2})*", re.ASCII)
_URL_PARAM = re.compile(r"[A-Za-z0-9._-]+", re.ASCII)
_URL_DIGITS = re.compile(r"[0-9]+", re.ASCII)


class UrlMask(Mask):
    """A mask that hides a connection URL's credentials and shows where it points.

    ``redis://user:pw@host:6379/0?password=pw`` shows as ``redis://***:***@host:6379/0?password=***``:
    scheme, host, port, database (path or ``db=``) and socket path stay visible; the user info and
    every other query value are masked. A URL that does not parse cleanly (or another scheme than
    ``schemes``) shows as the plain mask ``text``.

    Sent back, only that exact rendering (or a plain star mask) keeps the stored URL. A URL with a
    part made only of stars (``***``) is never stored: unless it is that rendering, saving it raises
    ``MaskedSecretError`` (changing the host behind masked credentials could send them elsewhere).
    A credential that really is ``***`` is written percent-encoded, ``%2A%2A%2A``.

    Use as ``Annotated[EncryptedStr, UrlMask()]``.
    """

    __slots__ = ("schemes",)

    def __init__(self, text: str = "***", *, schemes: Iterable[str] = ("redis", "rediss", "unix")):
        super().__init__(text)
        self.schemes = tuple(scheme.lower() for scheme in schemes)

    def render(self, plaintext: str) -> str:
        shown = self._render_url(plaintext)
        return self.text if shown is None else shown

    def could_be_mask(self, value: str) -> bool:
        return any(is_star_mask(part) for part in _URL_SEPARATORS.split(value))

    def is_mask_of(self, value: str, existing: str | None) -> bool:
        if is_star_mask(value) or (existing is not None and value == self.render(existing)):
            return True
        if not self.could_be_mask(value):
            return False
        # A masked URL that is not the stored one's rendering: neither "keep" nor a secret.
        # Messages show renderings only: the value may hold a real credential next to a mask.
        if existing is None:
            raise MaskedSecretError(
                f"a masked URL ({self.render(value)!r}) was given to keep the existing secret, "
                "but there is no stored secret for it; send the full URL"
            )
        difference = self._difference(value, existing)
        raise MaskedSecretError(
            f"a masked URL keeps the stored secret only when sent back exactly as shown "
            f"({self.render(existing)!r}); the one sent differs in {difference}. "
            "To change the URL, send it in full with its credentials (a literal '*' in a "
            "credential is written %2A)"
        )

    def _difference(self, value: str, existing: str) -> str:
        """Where ``value`` (a masked URL) differs from ``existing``'s rendering, told without a
        credential: names of parts, and only the parts a rendering shows."""
        sent, stored = _url_parts(value), _url_parts(existing, stored=True)
        if sent is None:
            return "its form: it does not parse as a URL (shown here as the plain mask)"
        if stored is None or self._render_url(existing) is None:
            return "its form: the stored value is shown as the plain mask, not as a URL"
        found = []
        for part in ("scheme", "host", "port", "path"):
            if sent[part] != stored[part]:
                found.append(
                    f"its {part} ({sent[part]!r} where the stored URL has {stored[part]!r})"
                )
        if sent["userinfo"] != stored["userinfo"]:
            if stored["userinfo"] is None:
                found.append("its credentials (the stored URL has none)")
            elif sent["userinfo"] is None:
                found.append("its credentials (missing; shown as '***:***')")
            else:
                found.append("its credentials (not exactly '***:***' as shown)")
        sent_query, stored_query = sent["query"], stored["query"]
        if [name for name, _ in sent_query] != [name for name, _ in stored_query]:
            names = ", ".join(repr(name) for name, _ in sent_query) or "none"
            stored_names = ", ".join(repr(name) for name, _ in stored_query) or "none"
            found.append(f"its query parameters ({names} where the stored URL has {stored_names})")
        else:
            for (name, shown), (_, expected) in zip(sent_query, stored_query, strict=True):
                if shown != expected and "<value>" not in (shown, expected) and name == "db":
                    found.append(f"its db= ({shown!r} where the stored URL has {expected!r})")
                elif shown != expected:
                    found.append(f"the value of its query parameter {name!r} (not as shown)")
        return ", ".join(found) or "its form"

    def __repr__(self) -> str:
        return f"UrlMask({self.text!r}, schemes={self.schemes!r})"

    def _render_url(self, url: str) -> str | None:
        """The URL with its credentials masked, or ``None`` if it is not one this mask shows."""
        # Whitespace and control characters are silently dropped by urlsplit: refuse them.
        if not url.isascii() or not url.isprintable() or " " in url:
            return None
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- validates the port
        except ValueError:
            return None
        scheme = parts.scheme
        # A '#', or an '@' after the host, is most likely an unescaped character of a password
        # that urlsplit took for a separator: the "host" or "port" would be part of it.
        if (
            scheme not in self.schemes
            or url[: len(scheme) + 3].lower() != f"{scheme}://"
            or "#" in url
            or "@" in parts.path
            or "@" in parts.query
        ):
            return None
        _userinfo, at, host = parts.netloc.rpartition("@")
        path_ok = _URL_SOCKET_PATH if scheme == "unix" else _URL_DB_PATH
        if not _URL_HOST.fullmatch(host) or not path_ok.fullmatch(parts.path):
            return None
        shown = f"{scheme}://{'***:***@' if at else ''}{host}{parts.path}"
        if parts.query:
            params = []
            for param in parts.query.split("&"):
                name, eq, value = param.partition("=")
                if not eq or not _URL_PARAM.fullmatch(name):
                    return None
                visible = name == "db" and _URL_DIGITS.fullmatch(value) is not None
                params.append(f"{name}={value if visible else '***'}")
            shown += "?" + "&".join(params)
        return shown


def _url_parts(url: str, *, stored: bool = False) -> dict[str, Any] | None:
    """A URL's parts, credential-free: user info and query values other than ``db`` are
    ``***`` where they are exactly the mask (or, ``stored``, where a rendering would show it),
    else a placeholder; ``None`` when absent."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    userinfo, at, _host = parts.netloc.rpartition("@")
    query = []
    for param in parts.query.split("&") if parts.query else ():
        name, _, value = param.partition("=")
        visible = name == "db" and _URL_DIGITS.fullmatch(value) is not None
        masked = stored or value == "***"
        query.append((name, value if visible else ("***" if masked else "<value>")))
    return {
        "scheme": parts.scheme,
        "userinfo": ("***:***" if stored or userinfo == "***:***" else "<credentials>")
        if at
        else None,
        "host": parts.hostname or "",
        "port": port,
        "path": parts.path,
        "query": query,
    }


class EncryptedStr(str):
    """A secret string: a ``str`` for the application, an envelope at rest, a mask in JSON.

    ``repr()`` never shows the value; ``get_secret_value()`` mirrors pydantic's ``SecretStr``.
    ``str(value)`` and f-strings give the plaintext, as for any ``str``: that is what lets
    ``redis.Redis.from_url(model.connection_url)`` work.
    """

    # No per-instance __dict__: a page of records read from Redis holds one of these per secret.
    __slots__ = ()

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
        return _json_schema(DEFAULT_MASK, handler.mode)


class KeepExisting(EncryptedStr):
    """A mask given where a secret goes: on save, the stored secret is kept (``EncryptedModel``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EncryptedStr(<mask: keep existing>)"


class Pending:
    """An encrypted field's value during a model's own ``model_dump``: sealed by the model.

    Not a ``str``, so that a value the model did not seal can never be stored as plaintext.
    """

    __slots__ = ("mask", "plain", "value")

    def __init__(self, value: str, mask: Mask, plain: Any = None) -> None:
        self.value = value  # the envelope's plaintext
        self.mask = mask
        self.plain = plain  # an Encrypted[T] field's value (the T), else None

    def __repr__(self) -> str:
        return "Pending(<secret>)"


# Set by EncryptedModel while it validates: masks are then kept as KeepExisting, for the model
# to resolve on save, instead of being refused outright.
model_scope: contextvars.ContextVar[bool] = contextvars.ContextVar("ref_model_scope", default=False)

# Context key by which EncryptedModel.model_dump asks for Pending values instead of envelopes.
DEFER = "redis_encrypted_fields.defer"


# Rendered for the example of a masked value in output schemas.
_SAMPLE_SECRET = "redis://user:secret@host:6379/0"  # noqa: S105 -- not a real one


def _json_schema(mask: Mask = DEFAULT_MASK, mode: str = "validation") -> JsonSchemaValue:
    if mode == "serialization":
        # Output holds the mask, not the secret: what a response model shows.
        return {
            "type": "string",
            "description": "Masked; sent back unchanged, keeps the stored secret.",
            "examples": [mask.render(_SAMPLE_SECRET)],
        }
    return {"type": "string", "format": "password", "writeOnly": True}


def _where(info: core_schema.ValidationInfo) -> str:
    title = (info.config or {}).get("title") or "model"
    return f"{title}.{info.field_name}" if info.field_name else title


def given_text(value: str, mask: Mask, info: core_schema.ValidationInfo) -> str | None:
    """What an encrypted field (``EncryptedStr`` or ``Encrypted[T]``) makes of text given to it:
    a ``KeepExisting`` for a mask inside a model (``MaskedSecretError`` outside one), the
    plaintext of an envelope (opened unbound), or ``None``: the text is a new value."""
    kind = classify(value)
    if kind is Kind.PLAINTEXT and mask.could_be_mask(value):
        if model_scope.get():
            return KeepExisting(value)
        # A star mask is shown as is; anything else (a URL) only as rendered, credential-free.
        shown = value if is_star_mask(value) else mask.render(value)
        raise MaskedSecretError(
            f"{_where(info)}: a mask ({shown!r}) is not a secret; refusing to store it"
        )
    if kind is Kind.ENVELOPE or kind is Kind.LEGACY:
        title = (info.config or {}).get("title")
        return open_value(value, get_keyring(), model=title, field=info.field_name)
    return None


class _Hidden(str):
    """Stands for an input of the wrong type, which may be a secret: pydantic echoes the input it
    validated into error messages, and this is the input it then sees."""

    __slots__ = ()

    def __new__(cls) -> _Hidden:
        return super().__new__(cls, "<hidden>")

    def __repr__(self) -> str:
        return "<hidden>"


def _hide_non_str(value: Any) -> Any:
    return value if isinstance(value, str) else _Hidden()


def _core_schema(mask: Mask) -> core_schema.CoreSchema:
    def validate(value: Any, info: core_schema.ValidationInfo) -> EncryptedStr:
        if isinstance(value, EncryptedStr):
            return value
        if isinstance(value, _Hidden):
            raise PydanticCustomError("encrypted_str_type", "Input should be a valid string")
        text = given_text(value, mask, info)
        if text is None:
            return EncryptedStr(value)
        return text if isinstance(text, KeepExisting) else EncryptedStr(text)

    def serialize(value: Any, info: core_schema.SerializationInfo) -> Any:
        if info.mode == "json":
            return mask.render(value)
        context = info.context
        if context is not None and context.get(DEFER):
            return Pending(value, mask)
        if isinstance(value, KeepExisting) or mask.could_be_mask(value):
            raise MaskedSecretError("a mask is not a secret; refusing to serialize it for storage")
        return seal_value(value, get_keyring())

    # An EncryptedStr (already decrypted or accepted: redis-om validates records twice, and
    # save() validates the instance again) passes the is-instance check without a second call
    # into Python. The union sits inside _hide_non_str so that its error never holds the input.
    return core_schema.no_info_before_validator_function(
        _hide_non_str,
        core_schema.union_schema(
            [
                core_schema.is_instance_schema(EncryptedStr),
                core_schema.with_info_plain_validator_function(validate),
            ],
            mode="left_to_right",
            custom_error_type="encrypted_str_type",
            custom_error_message="Input should be a valid string",
        ),
        serialization=core_schema.plain_serializer_function_ser_schema(
            serialize, info_arg=True, when_used="always"
        ),
        metadata={
            "pydantic_js_functions": [lambda _schema, handler: _json_schema(mask, handler.mode)]
        },
    )
