"""Where a run's numbers were computed: every record says it, and what mixes two machines says so.

One config on another CPU gives other floats (torch picks other vector kernels), so a user who sees two
runs of one config differ needs the record of each to tell a machine from a bug.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from conftest import CliRunner as SubprocessEsper

from esper_kernel.cli import main
from esper_kernel.commands.evaluate import PolicySpec, evaluate
from esper_kernel.episode.env import EnvConfig
from esper_kernel.infra.telemetry import read_events

TINY = ["--epochs", "2", "--train-size", "48", "--val-size", "24", "--batch-size", "16"]
OTHER_MACHINE = {"torch": "2.0.0", "cpu_kernels": "AVX2", "cpu": "Some Other CPU"}


def esper(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def here() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu_kernels": torch.backends.cpu.get_cpu_capability()}


def _has_this_machine(record: dict[str, str]) -> None:
    assert {k: record[k] for k in ("torch", "cpu_kernels")} == here()
    assert record["cpu"]


def test_run_train_and_eval_each_record_the_torch_and_kernels_they_ran_with(tmp_path: Path) -> None:
    run = esper("run", "--task", "pairs", *TINY, "--out", str(tmp_path / "run"), "--quiet")
    assert run.exit_code == 0, run.output
    _has_this_machine(json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))["numerics"])
    (started,) = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "run.started"]
    _has_this_machine(started["numerics"])
    train = esper("train", "--task", "pairs", *TINY, "--episodes", "2", "--envs", "2", "--eval-every", "0",
                  "--out", str(tmp_path / "train"))  # fmt: skip
    assert train.exit_code == 0, train.output
    _has_this_machine(json.loads((tmp_path / "train" / "train_summary.json").read_text(encoding="utf-8"))["numerics"])
    ev = esper("eval", "--task", "pairs", *TINY, "--seeds", "0", "--policies", "wait,heuristic",
               "--out", str(tmp_path / "eval"))  # fmt: skip
    assert ev.exit_code == 0, ev.output
    _has_this_machine(json.loads((tmp_path / "eval" / "eval.json").read_text(encoding="utf-8"))["numerics"])


def test_the_record_names_the_kernels_torch_was_made_to_use(tmp_path: Path, run_esper: SubprocessEsper) -> None:
    # ATEN_CPU_CAPABILITY is how torch is told to use other kernels: the numbers change, and so does the record.
    done = run_esper("run", "--task", "pairs", *TINY, "--out", str(tmp_path), "--quiet",
                     env={"ATEN_CPU_CAPABILITY": "default"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))["numerics"]["cpu_kernels"] == "DEFAULT"


def test_an_eval_resumed_from_another_machines_journal_replays_it_and_says_so(tmp_path: Path) -> None:
    env = EnvConfig(epochs=2, train_size=48, val_size=24, batch_size=16)
    journal = tmp_path / "episodes.jsonl"
    specs = [PolicySpec("wait")]
    evaluate(env, specs, [0], journal=journal)
    header, *episodes = journal.read_text(encoding="utf-8").splitlines()
    _has_this_machine(json.loads(header)["numerics"])
    notes: list[str] = []
    same = evaluate(env, specs, [0, 1], journal=journal, on_note=notes.append)
    assert notes == [] and "journal_numerics" not in same
    journal.write_text(json.dumps({**json.loads(header), "numerics": OTHER_MACHINE}) + "\n" + episodes[0] + "\n")
    doc = evaluate(env, specs, [0, 1], journal=journal, on_note=notes.append)
    (said,) = notes
    assert "its 1 episodes were played with torch 2.0.0, AVX2 kernels, Some Other CPU" in said
    assert f"this machine has torch {torch.__version__}, {here()['cpu_kernels']} kernels" in said
    assert doc["journal_numerics"] == OTHER_MACHINE
    assert [r["seed"] for r in doc["policies"][0]["per_seed"]] == [0, 1]  # seed 0 replayed, seed 1 played here


def _summary(root: Path, name: str, seed: int, numerics: dict[str, str]) -> Path:
    d = root / name
    d.mkdir()
    summary = {
        "run_id": name, "final_val_accuracy": 0.5 + seed / 10, "best_val_accuracy": 0.6, "return": 0.2,
        "params": 100, "base_params": 100, "seeds": [], "levers": [], "numerics": numerics,
        "config": {"policy": "heuristic", "levers": None, "seed": seed, "out": str(d), "env": {"task": "pairs"}},
    }  # fmt: skip
    (d / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return d


@pytest.mark.parametrize("other", [False, True])
def test_compare_says_when_its_runs_were_computed_on_different_machines(tmp_path: Path, other: bool) -> None:
    mine = {**here(), "cpu": "This CPU"}
    dirs = [_summary(tmp_path, "a", 0, mine), _summary(tmp_path, "b", 1, OTHER_MACHINE if other else mine)]
    result = CliRunner().invoke(main, ["compare", *map(str, dirs)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert ("computed on 2 kinds of machine" in said) is other
    if other:
        assert "2.0.0/AVX2/Some Other CPU" in said
