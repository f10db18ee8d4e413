"""esper sweep on the local process pool: the grid, one directory per trial, the eval's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner as ClickRunner

from esper_kernel.cli import main
from esper_kernel.commands.sweep import build_grid, parse_lever_set
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.numerics import numerics

TINY = ["--epochs", "2", "--train-size", "64", "--val-size", "32"]
FORCES = ["--force", "tempo=FAST", "--force", "tempo=GLACIAL", "--force", "lr=CAUTIOUS", "--force", "lr=AGGRESSIVE"]


def test_grid_is_every_lever_set_policy_and_force_plus_each_sets_wait() -> None:
    cells = build_grid([("tempo", "lr"), None], ["heuristic", "random"], ["tempo=FAST", "lr=BOLD+tempo=SLOW"])
    names = [c.name for c in cells]
    assert names[:5] == [
        "[tempo,lr] wait",
        "[tempo,lr] heuristic+tempo=FAST",
        "[tempo,lr] heuristic+lr=BOLD+tempo=SLOW",
        "[tempo,lr] random+tempo=FAST",
        "[tempo,lr] random+lr=BOLD+tempo=SLOW",
    ]
    assert names[5] == "[all] wait" and len(cells) == 10
    assert [c.name for c in build_grid([None], ["heuristic"], [])] == ["[all] wait", "[all] heuristic"]
    assert parse_lever_set("all") is None and parse_lever_set("none") == ()
    with pytest.raises(EsperError, match="static-host control"):
        build_grid([None], ["static"], [])


def run_sweep(out: Path, *extra: str) -> dict[str, object]:
    args = ["sweep", "--lever-set", "tempo,lr", *FORCES, "--seeds", "0-2", *TINY, "--out", str(out), *extra]
    result = ClickRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "| [tempo,lr] heuristic+tempo=GLACIAL |" in result.output  # the table is printed
    doc: dict[str, object] = json.loads((out / "sweep.json").read_text())
    return doc


def check_sweep(doc: dict[str, object], out: Path) -> None:
    assert doc["schema"] == "esper.eval/1" and doc["seeds"] == [0, 1, 2] and doc["reference"] == "wait"
    assert doc["numerics"] == numerics()  # where its episodes were computed (docs/report.md)
    rows = doc["policies"]
    assert isinstance(rows, list)
    assert [r["name"] for r in rows] == [
        "[tempo,lr] wait",
        "[tempo,lr] heuristic+tempo=FAST",
        "[tempo,lr] heuristic+tempo=GLACIAL",
        "[tempo,lr] heuristic+lr=CAUTIOUS",
        "[tempo,lr] heuristic+lr=AGGRESSIVE",
    ]
    for row in rows:
        assert [s["seed"] for s in row["per_seed"]] == [0, 1, 2]
        assert row["vs_reference"]["final_val_accuracy"]["n"] == 3
    assert rows[2]["forced"] == {"tempo": "GLACIAL"}
    trials = sorted(p.relative_to(out).as_posix() for p in out.glob("trials/*/seed-*/trial.json"))
    assert len(trials) == 15
    one = json.loads((out / "trials" / "tempo_lr__heuristic+tempo=GLACIAL" / "seed-1" / "trial.json").read_text())
    assert one["seed"] == 1 and one["policy"] == "heuristic+tempo=GLACIAL" and one["levers"] == ["tempo", "lr"]
    assert (out / "sweep.md").read_text().count("| [tempo,lr] ") == 5


def test_sweep_on_the_local_pool_writes_trials_and_the_eval_table(tmp_path: Path) -> None:
    doc = run_sweep(tmp_path / "sweep", "--workers", "2")
    assert doc["sweep"]["engine"] == "processes"  # type: ignore[index]
    check_sweep(doc, tmp_path / "sweep")


def test_sweep_errors_are_one_line(tmp_path: Path) -> None:
    result = ClickRunner().invoke(main, ["sweep", "--force", "tempo", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["esper: error: --force: expected HEAD=CHOICE, got 'tempo'"]
