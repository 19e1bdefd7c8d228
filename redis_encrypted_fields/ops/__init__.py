"""Maintenance: ``migrate``, ``rotate`` and ``status`` over every record of a model, streaming
and safely (``run``: the scan and the pass; ``batch``: one batch; ``layout``: the stored layout
and the Lua scripts; ``topology``: standalone or cluster; ``report``: what a run found and did).
Calls go down only, in that order: ``run`` uses ``batch`` and ``layout``, ``batch`` uses
``layout``; ``topology`` and ``report`` use none of them.
"""

from __future__ import annotations

from .run import (
    Failure,
    Group,
    Operation,
    Report,
    Scanned,
    amigrate,
    arotate,
    astatus,
    migrate,
    rotate,
    status,
)

__all__ = [
    "Failure",
    "Group",
    "Operation",
    "Report",
    "Scanned",
    "amigrate",
    "arotate",
    "astatus",
    "migrate",
    "rotate",
    "status",
]
