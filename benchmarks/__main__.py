"""``python -m benchmarks [NAME ...] [--quick] [--out FILE] [--rounds N] [--records N]``.

Needs ``REDIS_OM_URL`` (a Redis Stack server): use ``make bench``, or wrap the command with
``devtools/redis_stack.py``. All benchmarks, full size: the report goes to ``BENCHMARKS.md``.
A selection or ``--quick``: the report goes to stdout unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import BENCHMARKS
from .harness import Section, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "BENCHMARKS.md"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Encrypted versus plain redis-om models, side by side (issue 5).",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run, of: {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny counts, meaningless figures"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write the report here (default: BENCHMARKS.md for a full run of all, else stdout)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per comparison (overrides the default)")
    parser.add_argument(
        "--records", type=int, help="records for the bulk and per-tenant key benchmarks"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {list(BENCHMARKS)}")
    return args


def _progress(message: str) -> None:
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


async def _run(names: Sequence[str], settings: Settings) -> list[Section]:
    from .models import cleanup, ensure_indexes

    await ensure_indexes()
    # Everything imported and defined so far is long-lived: out of the collector's way, so that a
    # gc.collect() before each timed batch is cheap and collections inside it scan only new work.
    gc.collect()
    gc.freeze()
    sections: list[Section] = []
    try:
        for name in names:
            spec = BENCHMARKS[name]
            try:
                module = importlib.import_module(spec.module)
            except ModuleNotFoundError as exc:
                if exc.name != spec.module:
                    raise
                _progress(f"{name}: {spec.pending}")
                sections.append(Section(name, spec.title, pending=spec.pending))
                continue
            _progress(f"{name}: running")
            start = time.perf_counter()
            section: Section = await module.run(settings)
            for label, c in section.goals:
                _progress(f"  {label}: ratio {c.ratio:.3f} (goal ≤ {c.goal})")
            _progress(f"{name}: done in {time.perf_counter() - start:.0f} s")
            sections.append(section)
    finally:
        removed = cleanup()
        _progress(f"cleanup: removed {removed} keys and this run's indexes")
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if not os.environ.get("REDIS_OM_URL"):
        print(
            "python -m benchmarks needs a Redis Stack server in REDIS_OM_URL; run `make bench` or "
            "`.venv/bin/python devtools/redis_stack.py .venv/bin/python -m benchmarks`",
            file=sys.stderr,
        )
        return 2
    if not os.environ.get("REDIS_SRE_MASTER_KEY"):
        from redis_encrypted_fields import generate_master_key

        os.environ["REDIS_SRE_MASTER_KEY"] = generate_master_key()
    logging.basicConfig(level=logging.WARNING)

    names = args.names or list(BENCHMARKS)
    settings = Settings.for_run(quick=args.quick, rounds=args.rounds, records=args.records)
    full = not args.names and not args.quick and args.rounds is None and args.records is None
    out: Path | None = args.out or (DEFAULT_OUT if full else None)

    from .report import machine, render, write

    machine_rows = machine()  # before the run: the load average is the one we started with
    start = time.perf_counter()
    sections = asyncio.run(_run(names, settings))
    text = render(
        sections,
        quick=args.quick,
        argv=sys.argv[1:] if argv is None else list(argv),
        elapsed=time.perf_counter() - start,
        machine_rows=machine_rows,
        keep_from=out if out is not None else DEFAULT_OUT,
    )
    if out is None:
        print(text)
    else:
        write(out, text)
        _progress(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
