"""The formats and the stored-value codec: the v2 envelope (``envelope``), the origin's v1
values, read, and written only in the rolling-upgrade mode (``legacy``), and what every path
asks about a stored value (``stored``: classify, open, seal, re-wrap, each audited).

The layers above import from here. Imports neither pydantic nor redis-om.
"""

from .envelope import KEY_ID_SLICE, PREFIX, SCOPED_VERSION, binding, binding_part, decode
from .stored import (
    ENV_WRITE_FORMAT,
    Kind,
    classify,
    is_sealed,
    key_id_of,
    open_value,
    rewrap_value,
    seal_value,
    track_open,
    writes_v1,
)

__all__ = [
    "ENV_WRITE_FORMAT",
    "KEY_ID_SLICE",
    "PREFIX",
    "SCOPED_VERSION",
    "Kind",
    "binding",
    "binding_part",
    "classify",
    "decode",
    "is_sealed",
    "key_id_of",
    "open_value",
    "rewrap_value",
    "seal_value",
    "track_open",
    "writes_v1",
]
