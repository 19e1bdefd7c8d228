"""The declared dependency ranges are true: every version they admit has what the package imports.

The lowest-versions run of a release keeps the floors honest by installing them; this checks,
without a network, the floors that a known import sets.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"
CONSTRAINTS_LOWEST = Path(__file__).parent.parent / ".ci" / "constraints-lowest.txt"

# (distribution, the oldest release with what the package imports from it, what that is)
FLOORS = [
    ("redis-om", "1.2.0", "redis_om.search_reply (absent from 1.1.0)"),
    ("redis", "7.3.0", "JSON commands on an async cluster's transaction (nodes_manager)"),
    ("rich", "12.3.0", "MofNCompleteColumn (12.0), progress with total=None (12.3)"),
    ("pydantic", "2.12.0", "the floor the package is tested at"),
    # With the click pip installs beside them, 0.12-0.15 fail `CMD --help` (click 8.2: make_metavar)
    # and 0.16-0.17.4 a command run without its arguments (click 8.3); 0.17.5 caps click below 8.3.
    ("typer", "0.17.5", "usage lines and help with the click releases pip installs beside it"),
]


def declared() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = (Requirement(text) for text in project["dependencies"])
    return {r.name: r for r in requirements}


def test_every_directly_imported_distribution_is_declared_with_a_floor_that_has_what_it_uses() -> (
    None
):
    requirements = declared()
    for name, oldest, why in FLOORS:
        assert name in requirements, f"{name} is imported by the package but not declared"
        specifier = requirements[name].specifier
        admitted = [s for s in specifier if s.operator in (">=", ">")]
        assert admitted, f"{name} has no floor"
        floor = max(Version(s.version) for s in admitted)
        assert floor >= Version(oldest), f"{name}>={floor} admits releases without {why}"


def test_redis_om_1_1_is_not_admitted() -> None:
    # The newcomer run: pip resolved redis-om 1.1.0, with which the package does not import.
    assert not declared()["redis-om"].specifier.contains("1.1.0")
    assert declared()["redis-om"].specifier.contains("1.2.0")


def test_the_lowest_versions_run_pins_every_floor_that_pyproject_declares() -> None:
    # `make test-lowest` installs with .ci/constraints-lowest.txt: a floor raised in pyproject.toml
    # but not there (or the reverse) would make that run test versions no one declared.
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    texts = [*project["dependencies"], *project["optional-dependencies"]["aws"]]
    floors: dict[str, Version] = {}
    for requirement in map(Requirement, texts):
        lower = [s for s in requirement.specifier if s.operator == ">="]
        assert lower, f"{requirement.name} has no >= floor"
        floors[requirement.name] = max(Version(s.version) for s in lower)
    lines = CONSTRAINTS_LOWEST.read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert {name: Version(version) for name, version in pins.items()} == floors
