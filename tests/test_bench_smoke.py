"""The benchmark suite runs end to end on its cheap figures (a smoke check: no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_runs_and_prints_its_table() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "policy,masking,registry,floor"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Exit 1 only means a figure missed its target, which a loaded test machine may well cause.
    assert proc.returncode in (0, 1), proc.stderr
    out = proc.stdout
    assert "| figure" in out
    for figure in (
        "policy decisions/s, batch 1",
        "masked vs unmasked policy step",
        "lever work via registry",
        # The floor figure raises unless esper run --policy wait and its plain loop end at the same accuracy.
        "esper run --policy wait vs plain loop",
        "plain loop adding the same modules",
    ):
        assert figure in out, out
    assert out.count("PASS") + out.count("MISS") >= 6
