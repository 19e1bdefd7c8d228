"""Master keys and where they come from: key rings (``ring``), the KMS-backed key store
(``store``), KMS providers (``kms``).

Imports neither pydantic nor redis-om.
"""
