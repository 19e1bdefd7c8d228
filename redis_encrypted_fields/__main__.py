"""``python -m redis_encrypted_fields``: the command line."""

from .cli import main

main()
