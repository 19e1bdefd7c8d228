"""The redis-om integration: field types and masks (``fields``), where a model's secrets are
(``plan``), the per-class field map (``field_map``), a record's values in and out of Redis
(``codec``), keep-existing (``keep``), blind indexes (``blind_index``), search (``query``, its
refusal in ``errors``), and the ``EncryptedModel`` mixin (``mixin``, its save transaction in
``saving``).
"""
