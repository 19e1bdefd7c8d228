"""The benchmark runner works: ``python -m benchmarks --quick`` completes and writes every section.

No timing is asserted (project rule): the quick run's figures are meaningless by design.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import BENCHMARKS
from benchmarks.harness import Comparison, Section
from benchmarks.report import render
from devtools.redis_stack import REPO_ROOT


def test_quick_run_writes_every_section(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        env={**os.environ, "REDIS_OM_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    for heading in ("## How to run", "## Machine", "## Summary", "## Notes"):
        assert heading in text
    for spec in BENCHMARKS.values():
        assert f"## {spec.title}" in text
    if importlib.util.find_spec("benchmarks.rotation") is None:
        assert "pending: operations issue" in text
    assert "Smoke run" in text
    # every goal of the issue has its line in the summary: 4 round trips, 2 envelopes, 8 bulk
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert summary.count("| Round trip, ") == 4
    assert summary.count("| Envelope, ") == 2
    assert summary.count("| Bulk ") == 8
    assert summary.count("| Peak RSS, ") == 2
    assert "cleanup: removed" in proc.stderr


def test_hand_written_blocks_survive_a_rewrite(tmp_path: Path) -> None:
    previous = tmp_path / "BENCHMARKS.md"
    previous.write_text(
        "<!-- keep:header -->\n# Mine\n<!-- /keep:header -->\nold figures\n"
        "<!-- keep:notes -->\n## Notes\nhand-written analysis\n<!-- /keep:notes -->\n"
    )
    figure = Comparison("x", encrypted=[2.0], plain=[1.0], goal=1.1)
    # floor ratio 1.1: the library's glue (1.3 - 1.1) is twice the AES-GCM work (0.1)
    floored = Comparison("y", encrypted=[1.3], plain=[1.0], goal=1.35, floor=0.1)
    section = Section("roundtrip", "1. Round trip", goals=[("x", figure), ("y", floored)])
    text = render([section], quick=False, argv=[], elapsed=1.0, machine_rows=[], keep_from=previous)
    assert text.startswith("<!-- keep:header -->\n# Mine\n<!-- /keep:header -->")
    assert "hand-written analysis" in text
    assert "old figures" not in text
    assert "| x | 2.00 s vs 1.00 s | 2.000 | - | - | ≤ 1.10 | **no** |" in text
    assert "| y | 1.30 s vs 1.00 s | 1.300 | 1.100 | 2.00 | ≤ 1.35 | yes |" in text
