"""Encrypted field types beyond ``str``: an employee record with a salary, a birth date, a bonus,
an API token, settings and an address, each encrypted as one envelope.

Run it against a Redis Stack server (``REDIS_OM_URL``; ``python devtools/redis_stack.py python
examples/payroll.py`` starts a throwaway one). It removes the records it creates and exits with
status 1 if one of its checks fails. A demo: it prints decrypted values, which real code never
should.
"""

import datetime
import json
import os
import sys
from decimal import Decimal
from typing import Annotated, Any

import redis
from pydantic import BaseModel
from redis_om import Field, JsonModel, Migrator

from redis_encrypted_fields import (
    BlindIndex,
    Encrypted,
    EncryptedBytes,
    EncryptedModel,
    Mask,
    generate_master_key,
    is_encrypted,
)


class Address(BaseModel):
    street: str
    city: str


class Employee(EncryptedModel, JsonModel, index=True):
    name: str = Field(index=True)
    salary: Annotated[Encrypted[int], BlindIndex()]
    born: Encrypted[datetime.date] | None = None
    bonus: Encrypted[Decimal] = Decimal("0")
    api_token: EncryptedBytes | None = None
    settings: Encrypted[dict[str, Any]] = Field(default_factory=dict)
    home: Encrypted[Address] | None = None
    pin: Annotated[Encrypted[int], Mask("****")] = 0

    class Meta:  # keys "demo:employee:<pk>": envelopes are bound to them
        global_key_prefix = "demo"
        model_key_prefix = "employee"


def main() -> int:
    if not os.environ.get("REDIS_SRE_MASTER_KEY"):
        os.environ["REDIS_SRE_MASTER_KEY"] = generate_master_key()
        print("REDIS_SRE_MASTER_KEY is not set: using a demo key generated for this run only.")
    Migrator().run()
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAILED") + "  " + what)
        if not ok:
            failures.append(what)

    bob = Employee(
        name="bob",
        salary="5000",  # coerced as pydantic coerces an int
        born="1990-05-17",
        bonus=Decimal("250.50"),
        api_token=b"\x8f\x00tok",
        settings={"theme": "dark", "limits": [1, 2]},
        home=Address(street="1 Main St", city="Springfield"),
        pin=4321,
    )
    ann = Employee(name="ann", salary=7200)
    bob.save()
    ann.save()
    try:
        stored = (
            redis.Redis.from_url(os.environ["REDIS_OM_URL"], decode_responses=True)
            .json()
            .get(Employee.make_primary_key(bob.pk))
        )
        fields = ["salary", "born", "bonus", "api_token", "settings", "home", "pin"]
        check(all(is_encrypted(stored[f]) for f in fields), "every typed value is an envelope")
        check("Springfield" not in json.dumps(stored), "nothing of the address shows in Redis")

        loaded = Employee.get(bob.pk)
        check(loaded.salary + 1 == 5001, "salary is an int: 5000 + 1 = 5001")
        check(loaded.born == datetime.date(1990, 5, 17), "born is a date")
        check(loaded.home is not None and loaded.home.city == "Springfield", "home is an Address")
        check(loaded.api_token == b"\x8f\x00tok", "api_token is the same bytes")
        print("  ", repr(loaded))

        shown = json.loads(loaded.model_dump_json())
        check(shown["salary"] == "***" and shown["pin"] == "****", "JSON output shows masks")
        print("  ", json.dumps(shown))

        found = Employee.find(Employee.salary == 7200).all()
        check([e.name for e in found] == ["ann"], "find(Employee.salary == 7200) finds ann")

        shown["settings"] = {"theme": "light"}  # the client changes one field, sends masks back
        Employee.model_validate(shown).save()
        again = Employee.get(bob.pk)
        check(again.salary == 5000 and again.pin == 4321, "masks sent back keep stored values")
        check(again.settings == {"theme": "light"}, "the changed field is saved")
    finally:
        Employee.delete(bob.pk)
        Employee.delete(ann.pk)
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
