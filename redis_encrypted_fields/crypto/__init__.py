"""The formats: the v2 envelope (``envelope``), the origin's v1 values, read only (``legacy``).

Imports neither pydantic nor redis-om.
"""
