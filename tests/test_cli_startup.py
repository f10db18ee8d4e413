"""The CLI starts without torch where it does not need it, and shows broken levers at run start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CliRunner, LeverDists

from esper_kernel.infra.telemetry import read_events

TINY = """
[env]
epochs = 2
train_size = 64
val_size = 32
"""


def _imports(*args: str) -> set[str]:
    """The modules ``esper ARGS`` imported, from ``python -X importtime`` (one line per module, on stderr)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "esper_kernel.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [("--help",), ("report", "--help"), ("compare", "--help"), ("levers", "--help")])
def test_help_does_not_import_torch(args: tuple[str, ...]) -> None:
    modules = _imports(*args)
    assert "click" in modules  # the measurement itself works
    assert "torch" not in modules


#: Runs one ``esper`` command in a fresh interpreter, then says whether torch got imported on the way.
_IN_PROCESS = """
import sys
from click.testing import CliRunner
from esper_kernel.cli import main
result = CliRunner().invoke(main, sys.argv[1:], catch_exceptions=False)
assert result.exit_code == 0, result.output
assert result.output.strip(), "the command printed nothing"
print("TORCH" if "torch" in sys.modules else "NO-TORCH", sorted(main.commands))
"""


@pytest.mark.parametrize(
    "args",
    [
        ("levers", "list"),
        ("levers", "list", "--json"),
        ("levers", "show", "tempo"),
        ("levers", "show", "probation", "--json"),
        ("tasks", "list"),
    ],
)
def test_listing_commands_do_not_import_torch(args: tuple[str, ...]) -> None:
    # The listings compose every lever's head and field, as a run would, from plain Python only.
    from esper_kernel.cli import main

    if args[0] not in main.commands:
        pytest.skip(f"esper {args[0]} is not a command yet")
    proc = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("NO-TORCH"), f"esper {' '.join(args)} imported torch"


def test_the_torch_probe_can_fail() -> None:
    # The probe above, with torch imported first: it must say so, or it proves nothing.
    proc = subprocess.run(
        [sys.executable, "-c", "import torch\n" + _IN_PROCESS, "levers", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("TORCH")


def test_report_of_an_eval_does_not_import_torch(tmp_path: Path) -> None:
    from test_report import EVAL

    (tmp_path / "eval.json").write_text(json.dumps(EVAL), encoding="utf-8")
    modules = _imports("report", str(tmp_path))
    assert "matplotlib" in modules
    assert "torch" not in modules
    assert (tmp_path / "report.html").is_file()


BROKEN = """
raise ImportError("needs libfoo >= 2")
"""


def test_run_shows_a_broken_lever_at_start_and_still_writes_it(
    lever_dist: LeverDists, run_esper: CliRunner, tmp_path: Path
) -> None:
    lever_dist("bad", BROKEN, dist="acme-bad", version="0.4")
    toml = tmp_path / "tiny.toml"
    toml.write_text(TINY, encoding="utf-8")
    out = tmp_path / "run"
    proc = run_esper("run", "--config", str(toml), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "failed to load" in err
    for part in ("bad", "acme-bad 0.4", "needs libfoo >= 2"):
        assert part in err
    # Shown before the run's result, not after it.
    assert err.index("failed to load") < err.index("esper run: done")
    failed = [e for e in read_events(out / "events.jsonl") if e["event"] == "plugin.failed"]
    assert [(f["name"], f["distribution"]) for f in failed] == [("bad", "acme-bad")]
