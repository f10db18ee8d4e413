"""Where a run's numbers were computed: every record says it, and what mixes two machines says so.

One config on another CPU gives other floats (torch picks other vector kernels), so a user who sees two
runs of one config differ needs the record of each to tell a machine from a bug.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from conftest import CliRunner as SubprocessEsper

import esper_kernel.commands.evaluate as ev
from esper_kernel.cli import main
from esper_kernel.commands.evaldoc import write_outputs
from esper_kernel.commands.evaluate import EvalJob, PolicySpec, evaluate
from esper_kernel.episode.env import EnvConfig
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.telemetry import read_events

TINY = ["--epochs", "2", "--train-size", "48", "--val-size", "24", "--batch-size", "16"]
ENV = EnvConfig(epochs=2, train_size=48, val_size=24, batch_size=16)
OTHER_MACHINE = {"torch": "2.0.0", "cpu_kernels": "AVX2", "cpu": "Some Other CPU", "cpu_flags": "0123456789ab"}


def esper(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _has_this_machine(record: dict[str, str]) -> None:
    assert record["torch"] == torch.__version__
    assert record["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert record["cpu"] and record["cpu_flags"]


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def test_run_train_and_eval_each_record_the_torch_and_kernels_they_ran_with(tmp_path: Path) -> None:
    run = esper("run", "--task", "pairs", *TINY, "--out", str(tmp_path / "run"), "--quiet")
    assert run.exit_code == 0, run.output
    _has_this_machine(_read(tmp_path / "run" / "summary.json")["numerics"])
    events = read_events(tmp_path / "run" / "events.jsonl")
    for name in ("run.started", "run.finished"):
        (event,) = [e for e in events if e["event"] == name]
        _has_this_machine(event["numerics"])
    train = esper("train", "--task", "pairs", *TINY, "--episodes", "2", "--envs", "2", "--eval-every", "0",
                  "--out", str(tmp_path / "train"))  # fmt: skip
    assert train.exit_code == 0, train.output
    _has_this_machine(_read(tmp_path / "train" / "train_summary.json")["numerics"])
    evaluated = esper("eval", "--task", "pairs", *TINY, "--seeds", "0", "--policies", "wait,heuristic",
                      "--out", str(tmp_path / "eval"))  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    _has_this_machine(_read(tmp_path / "eval" / "eval.json")["numerics"])
    _, *episodes = (tmp_path / "eval" / "episodes.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(episodes) == 2
    for line in episodes:
        _has_this_machine(json.loads(line)["numerics"])
    # The report of each says it in its summary table.
    for name in ("run", "train", "eval"):
        assert esper("report", str(tmp_path / name)).exit_code == 0
        page = (tmp_path / name / "report.html").read_text(encoding="utf-8")
        assert f"<td>computed on</td><td>torch {torch.__version__}, " in page, name


def test_the_record_names_the_kernels_torch_was_made_to_use(tmp_path: Path, run_esper: SubprocessEsper) -> None:
    done = run_esper("run", "--task", "pairs", *TINY, "--out", str(tmp_path), "--quiet",
                     env={"ATEN_CPU_CAPABILITY": "default"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _read(tmp_path / "summary.json")["numerics"]["cpu_kernels"] == "DEFAULT"


def _rewrite(journal: Path, numerics_of: dict[int, dict[str, str] | None]) -> None:
    """Give each episode line of ``journal`` the numerics named for its seed (None: no record, an old line)."""
    header, *lines = journal.read_text(encoding="utf-8").splitlines()
    out = [header]
    for line in lines:
        rec = json.loads(line)
        if rec["seed"] in numerics_of:
            rec.pop("numerics")
            if (where := numerics_of[rec["seed"]]) is not None:
                rec["numerics"] = where
        out.append(json.dumps(rec))
    journal.write_text("\n".join(out) + "\n", encoding="utf-8")


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    played: list[int] = []
    real = ev.play_episode

    def counting(job: EvalJob) -> ev.EpisodeResult:
        played.append(job.seed)
        return real(job)

    monkeypatch.setattr(ev, "play_episode", counting)
    return played


def test_journal_episodes_from_another_machine_are_used_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, specs, notes = tmp_path / "episodes.jsonl", [PolicySpec("wait")], []
    evaluate(ENV, specs, [0, 1], journal=journal)
    played = _counting(monkeypatch)
    same = evaluate(ENV, specs, [0, 1], journal=journal, on_note=notes.append)
    assert (played, notes) == ([], []) and "journal_numerics" not in same
    _rewrite(journal, {0: OTHER_MACHINE})
    doc = evaluate(ENV, specs, [0, 1], journal=journal, on_note=notes.append)
    assert played == []  # used as recorded, not played again
    (said,) = notes
    assert "1 episode(s) used here were played with torch 2.0.0, AVX2 kernels, Some Other CPU" in said
    assert f"this machine has torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()} kernels" in said
    assert doc["journal_numerics"] == [{"numerics": OTHER_MACHINE, "episodes": 1}]
    write_outputs(doc, tmp_path / "out")
    assert esper("report", str(tmp_path / "out")).exit_code == 0
    assert "1 on torch 2.0.0, AVX2 kernels, Some Other CPU" in (tmp_path / "out" / "report.html").read_text("utf-8")
    # An eval that does not use that episode has nothing to say.
    notes.clear()
    assert "journal_numerics" not in evaluate(ENV, specs, [1], journal=journal, on_note=notes.append)
    assert notes == []


def test_a_journal_written_before_numerics_were_kept_resumes_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, specs, notes = tmp_path / "episodes.jsonl", [PolicySpec("wait")], []
    first = evaluate(ENV, specs, [0, 1], journal=journal)
    _rewrite(journal, {0: None, 1: None})
    played = _counting(monkeypatch)
    again = evaluate(ENV, specs, [0, 1], journal=journal, on_note=notes.append)
    assert (played, notes) == ([], []) and "journal_numerics" not in again
    assert again["policies"] == first["policies"]
    # Another configuration is still refused, wherever its episodes ran.
    with pytest.raises(EsperError, match="another configuration"):
        evaluate(EnvConfig(epochs=3, train_size=48, val_size=24, batch_size=16), specs, [0], journal=journal)


def _header_journal(tmp_path: Path, where: dict[str, str]) -> tuple[Path, list[PolicySpec], list[str]]:
    """A journal of two `wait` episodes whose header, not its lines, says they were played ``where``."""
    journal = tmp_path / "episodes.jsonl"
    evaluate(ENV, [PolicySpec("wait")], [0, 1], journal=journal)
    _rewrite(journal, {0: None, 1: None})
    header, *lines = journal.read_text(encoding="utf-8").splitlines()
    journal.write_text("\n".join([json.dumps({**json.loads(header), "numerics": where}), *lines]) + "\n")
    return journal, [PolicySpec("wait")], []


def test_a_journal_that_kept_its_machine_in_the_header_resumes_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # For a while a journal's header said where its episodes ran, and its lines did not.
    journal, specs, notes = _header_journal(tmp_path, OTHER_MACHINE)
    played = _counting(monkeypatch)
    doc = evaluate(ENV, specs, [0, 1], journal=journal, on_note=notes.append)
    assert played == [] and doc["journal_numerics"] == [{"numerics": OTHER_MACHINE, "episodes": 2}]
    assert len(notes) == 1 and "2 episode(s) used here were played with torch 2.0.0" in notes[0]


def test_a_header_from_this_machine_without_the_flags_is_not_taken_for_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Those headers came before the CPU flags were kept: what they hold matches this machine's, so nothing to say.
    from esper_kernel.infra.numerics import describe, differs, numerics

    era = {k: v for k, v in numerics().items() if k != "cpu_flags"}
    journal, specs, notes = _header_journal(tmp_path, era)
    played = _counting(monkeypatch)
    doc = evaluate(ENV, specs, [0, 1], journal=journal, on_note=notes.append)
    assert (played, notes) == ([], []) and "journal_numerics" not in doc
    # What such a record does hold is still compared, and said as it is.
    assert differs({**era, "cpu_kernels": "AVX2" if era["cpu_kernels"] != "AVX2" else "DEFAULT"})
    assert describe(era).endswith("(flags not recorded)")


def test_an_empty_journal_left_by_a_kill_gets_its_header_and_resumes(tmp_path: Path) -> None:
    journal = tmp_path / "episodes.jsonl"
    journal.write_text("", encoding="utf-8")
    evaluate(ENV, [PolicySpec("wait")], [0], journal=journal)
    assert json.loads(journal.read_text(encoding="utf-8").splitlines()[0])["schema"] == "esper.eval/1"
    evaluate(ENV, [PolicySpec("wait")], [0, 1], journal=journal)
    assert len(journal.read_text(encoding="utf-8").splitlines()) == 3


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
    mine = {"torch": torch.__version__, "cpu_kernels": "AVX512", "cpu": "This CPU", "cpu_flags": "fedcba987654"}
    dirs = [_summary(tmp_path, "a", 0, mine), _summary(tmp_path, "b", 1, OTHER_MACHINE if other else mine)]
    result = CliRunner().invoke(main, ["compare", *map(str, dirs)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert ("computed on 2 kinds of machine" in said) is other
    if other:
        assert "torch 2.0.0, AVX2 kernels, Some Other CPU (flags 0123456789ab)" in said
