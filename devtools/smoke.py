"""The built distributions checked as a user gets them (``make dist``, ``make smoke``).

``python devtools/smoke.py --check-dist dist`` checks what the sdist and the wheel hold: the
sdist what a build needs (pyproject.toml, README.md, LICENSE, the package) and the documents, the
wheel the package with ``py.typed`` and the licence; neither the tests nor the development tools.

``python devtools/smoke.py dist/NAME.whl`` installs the wheel into a fresh virtualenv in a
temporary directory outside the checkout and runs there, with no ``PYTHONPATH``: the import (from
the virtualenv, not the source tree), ``redis-encrypted-fields --version`` and ``keygen``, and
``examples/redis_instance.py`` copied out of the checkout, against a throwaway Redis Stack server
(``devtools/redis_stack.py``) -- the demo checks itself and exits 1 when a check fails.

This module uses the standard library only.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO = REPO_ROOT / "examples" / "redis_instance.py"
PACKAGE = "redis_encrypted_fields"

SDIST_NEEDS = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    f"{PACKAGE}/__init__.py",
    f"{PACKAGE}/py.typed",
)
SDIST_DOCUMENTS = ("CHANGELOG.md", "SECURITY.md", "CONTRIBUTING.md", "docs/security.md")
# The tests need the repository's devtools, examples and benchmarks: run them from a clone.
NOT_SHIPPED = ("tests/", "devtools/", "benchmarks/", "examples/", ".ci/")

# Run by the virtualenv's Python in place of the demo: the demo's own process must import the
# installed wheel, never a source tree.
RUN_DEMO = """\
import runpy, sys
import redis_encrypted_fields
where = redis_encrypted_fields.__file__
print(f"smoke: redis_encrypted_fields {redis_encrypted_fields.__version__} from {where}")
if not where.startswith(sys.prefix + "/"):
    sys.exit(f"smoke: imported from {where}, not from the virtualenv {sys.prefix}")
runpy.run_path("redis_instance.py", run_name="__main__")
"""


class SmokeError(Exception):
    """A check failed; the message says which."""


def check_dist(dist: Path) -> None:
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise SmokeError(f"{dist}: expected one sdist and one wheel, found {sdists + wheels}")
    with tarfile.open(sdists[0]) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        names = {name.removeprefix(f"{top}/") for name in sdist.getnames()}
    missing = [name for name in SDIST_NEEDS + SDIST_DOCUMENTS if name not in names]
    extra = sorted(name for name in names if name.startswith(NOT_SHIPPED))
    if missing or extra:
        raise SmokeError(f"{sdists[0].name}: missing {missing}, should not ship {extra}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
    info = f"{top}.dist-info"
    needs = (f"{PACKAGE}/py.typed", f"{PACKAGE}/__init__.py", f"{info}/licenses/LICENSE")
    missing = [name for name in needs if name not in names]
    extra = sorted(n for n in names if not n.startswith((f"{PACKAGE}/", f"{info}/")))
    if missing or extra:
        raise SmokeError(f"{wheels[0].name}: missing {missing}, should not ship {extra}")
    print(f"smoke: {sdists[0].name} and {wheels[0].name} hold what they should")


def run(cmd: list[str | Path], cwd: Path, env: dict[str, str]) -> str:
    print("smoke: $", " ".join(str(part) for part in cmd), flush=True)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SmokeError(f"exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.stdout


def smoke(wheel: Path) -> None:
    version = wheel.name.split("-")[1]
    with tempfile.TemporaryDirectory(prefix="ref-smoke-") as tmp:
        where = Path(tmp)
        venv = where / "venv"
        python, cli = venv / "bin" / "python", venv / "bin" / "redis-encrypted-fields"
        # Nothing of the checkout on the path: no PYTHONPATH, and the commands run in `where`.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REDIS_OM_URL")}
        run([sys.executable, "-m", "venv", venv], where, env)
        run([python, "-m", "pip", "install", "-q", wheel.resolve()], where, env)

        found = run(
            [python, "-c", f"import {PACKAGE} as p; print(p.__version__, p.__file__)"], where, env
        )
        installed, module = found.split()
        if installed != version or not Path(module).is_relative_to(venv):
            raise SmokeError(
                f"imported {PACKAGE} {installed} from {module}: not the wheel {version}"
            )
        shown = run([cli, "--version"], where, env)
        if version not in shown:
            raise SmokeError(f"`redis-encrypted-fields --version` printed {shown!r}, not {version}")
        key = run([cli, "keygen"], where, env).strip()
        if len(base64.b64decode(key, validate=True)) != 32:
            raise SmokeError("`redis-encrypted-fields keygen` did not print a 32-byte base64 key")

        shutil.copy(DEMO, where / DEMO.name)
        wrapper = REPO_ROOT / "devtools" / "redis_stack.py"
        demo = run([sys.executable, wrapper, python, "-c", RUN_DEMO], where, env)
        print(demo, end="")
        if not re.search(
            rf"^smoke: {PACKAGE} {re.escape(version)} from {re.escape(str(venv))}/", demo, re.M
        ):
            raise SmokeError("the demo did not report the installed wheel")
    print(
        f"smoke: {wheel.name}: import, --version, keygen and the demo passed outside the checkout"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "target", type=Path, help="a wheel to smoke-test, or with --check-dist the dist directory"
    )
    parser.add_argument(
        "--check-dist", action="store_true", help="check what the sdist and wheel hold"
    )
    args = parser.parse_args(argv)
    try:
        check_dist(args.target) if args.check_dist else smoke(args.target)
    except SmokeError as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
