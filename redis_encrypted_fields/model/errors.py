"""The model layer's exception that is also redis-om's own: a refused query. Kept here, not in
the top-level ``errors``, so that the bottom layer imports no redis-om."""

from __future__ import annotations

from aredis_om.model.model import QueryNotSupportedError as AsyncQueryNotSupportedError
from redis_om.model.model import QueryNotSupportedError

from ..errors import EncryptionError

__all__ = ["UnsupportedQueryError"]


class UnsupportedQueryError(
    EncryptionError,
    QueryNotSupportedError,  # type: ignore[misc]  # redis_om (sync) is untyped
    AsyncQueryNotSupportedError,
):
    """A query on an encrypted field that cannot be answered exactly (``!=``, ranges, prefixes,
    full text, a field without a blind index); ``model`` and ``field`` name it. Also a
    redis-om ``QueryNotSupportedError``, of both flavours."""
